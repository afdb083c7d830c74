"""cache/shared_counts.py through CacheService: the stats API and the shadow false-hit estimate add up
every replica's counts in Redis (real Valkey)."""

from __future__ import annotations

import uuid
from typing import Any

from cache import metrics
from cache.policy import CacheControl, Caller
from service_helpers import chat
from test_invalidation import ANSWER, replica


async def test_stats_and_the_shadow_estimate_are_the_fleets(redis_url: str, embedder: Any) -> None:
    prefix = f"cnt{uuid.uuid4().hex[:8]}"
    a, b = replica(redis_url, embedder, prefix), replica(redis_url, embedder, prefix)
    try:
        assert await a.connect() and await b.connect()
        plan = a.plan("chat", chat("What is the capital of Chile?"), Caller("t"), CacheControl(), None)
        await a.lookup(plan)  # a miss on A
        assert await a._store(plan, ANSWER, None)
        for _ in range(3):
            await b.lookup(plan)  # hits on B: Redis, then its L1
        a.counts.add("shadow:default:disagree")  # one shadow check disagreed on A, three agreed on B
        b.counts.add("shadow:default:agree", 3)
        await a.counts.flush()
        await b.counts.flush()
        assert metrics.SHADOW_FALSE_HIT_RATE.labels("default")._value.get() == 0.25  # the fleet's, on B too
        a.counts.add("lookup:HIT:exact")  # not flushed yet: the stats include it all the same
        for svc in (a, b):
            stats = await svc.stats()
            fleet = stats["fleet"]
            assert fleet["replicas"] == 2
            assert fleet["lookups"] == {"MISS:semantic": 1, "HIT:exact": 3 + (svc is a)}
            assert fleet["stored"] == 1
            assert fleet["shadow"]["default"] == {"agree": 3, "disagree": 1, "false_hit_rate": 0.25}
            assert stats["entries"] == 1
        assert (await b.stats())["replica"]["l1_entries"] == 1 and (await a.stats())["replica"]["l1_entries"] == 0
    finally:
        await a.aclose()
        await b.aclose()
