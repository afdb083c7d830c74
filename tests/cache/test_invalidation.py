"""cache/invalidation.py: a purge on one replica empties every replica's L1 within a second, a store
that lands after a purge is refused, and a replica that cannot hear purges stops serving its L1."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from cache.config import CacheConfig, RedisConfig
from cache.decision import build_rule
from cache.embedder import MicroBatcher
from cache.policy import CacheControl, Caller
from cache.service import CacheService
from cache.store import CacheStore
from service_helpers import chat

ANSWER = {"choices": [{"message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}]}


def replica(redis_url: str, embedder: Any, prefix: str, **replicas: Any) -> CacheService:
    """One gateway replica's cache: its own L1 and purge watch, the shared Redis prefix."""
    cfg = CacheConfig.model_validate({"l1_max_bytes": 1 << 20, "replicas": replicas})
    store = CacheStore(RedisConfig(url=redis_url, index_prefix=prefix, store_timeout_ms=2000), embedder.dim)
    return CacheService(cfg, store, MicroBatcher(embedder), build_rule(cfg.decision), budget_ms=2000,
                        retry_after_s=1)


async def test_a_purge_on_one_replica_empties_every_l1_within_a_second(redis_url: str, embedder: Any) -> None:
    prefix = f"inv{uuid.uuid4().hex[:8]}"
    a, b, c = (replica(redis_url, embedder, prefix) for _ in range(3))
    try:
        for svc in (a, b, c):
            assert await svc.connect()
        plan = a.plan("chat", chat("What is the capital of France?"), Caller("t"), CacheControl(), None)
        assert await a._store(plan, ANSWER, None)
        for svc in (b, c):
            assert (await svc.lookup(plan)).hit.store == "redis"
            assert (await svc.lookup(plan)).hit.store == "l1"  # filled: a local purge alone would leave it
        started = time.monotonic()
        assert await a.purge(tags={"namespace": "default"}) == 1
        while len(b.l1) or len(c.l1):
            assert time.monotonic() - started < 1.0, "a replica's L1 still holds the purged entry after 1 s"
            await asyncio.sleep(0.005)
        for svc in (b, c):
            assert (await svc.lookup(plan)).hit is None
    finally:
        for svc in (a, b, c):
            await svc.aclose()


async def test_a_store_that_lands_after_a_purge_does_not_write_the_entry_back(redis_url: str, embedder: Any) -> None:
    prefix = f"inv{uuid.uuid4().hex[:8]}"
    a, b = replica(redis_url, embedder, prefix), replica(redis_url, embedder, prefix)
    try:
        assert await a.connect() and await b.connect()
        plan = a.plan("chat", chat("What is the capital of Spain?"), Caller("t"), CacheControl(), None)
        before = a.new_lookup()  # the request starts; its answer is generated while ...
        await b.purge(tags={"namespace": "default"})  # ... another replica purges
        assert not await a._store(plan, ANSWER, None, before.generation)
        assert await a.store.get(a.store.entry_id(a._tags(plan), plan.exact_key)) is None
        assert (await b.lookup(plan)).hit is None
        # the watch has heard of the purge by now: a request begun after it stores normally
        await asyncio.sleep(0.2)
        assert await a._store(plan, ANSWER, None, a.new_lookup().generation)
        assert (await b.lookup(plan)).hit is not None
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_replica_that_cannot_hear_purges_stops_serving_its_l1(own_valkey: Any, embedder: Any) -> None:
    svc = replica(own_valkey.url, embedder, "deaf", heartbeat_ms=100, max_silence_ms=500)
    try:
        assert await svc.connect()
        plan = svc.plan("chat", chat("What is the capital of Italy?"), Caller("t"), CacheControl(), None)
        assert await svc._store(plan, ANSWER, None)
        await svc.lookup(plan)
        assert (await svc.lookup(plan)).hit.store == "l1"
        own_valkey.stop(grace_s=1)
        await asyncio.sleep(0.7)
        assert not svc.watch.live()
        assert svc.watch.generation is None
        assert (await svc.lookup(plan)).hit is None  # neither the L1 nor the (stopped) store answers
        own_valkey.start()  # empty: the entry is gone, and the reconnect empties the L1 as well
        deadline = time.monotonic() + 10
        while not svc.watch.live():
            assert time.monotonic() < deadline, "the purge watch did not reconnect"
            await asyncio.sleep(0.1)
        assert len(svc.l1) == 0
    finally:
        await svc.aclose()
