"""A lookup that overruns its budget once (a busy gateway, a short Redis stall) skips the cache for that
request only; consecutive timeouts skip the store for everyone once a PING confirms that Redis, not
the gateway, is slow. The stall is real: CLIENT PAUSE."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio as aioredis

from cache.config import CacheConfig, RedisConfig
from cache.decision import build_rule
from cache.embedder import MicroBatcher
from cache.policy import CachePlan
from cache.service import CacheService
from cache.store import CacheStore


def chat(q: str) -> dict[str, Any]:
    return {"model": "smollm2", "temperature": 0, "messages": [{"role": "user", "content": q}]}


async def service_with_entry(redis_url: str, embedder: Any, question: str,
                             answer: str) -> tuple[CacheService, CacheStore, CachePlan]:
    """A service (L1 off: every lookup reaches Redis; 50 ms budget; trips after 3 timeouts) holding
    one stored answer, and the plan that finds it."""
    cfg = CacheConfig.model_validate({"l1_max_bytes": 0})
    store = CacheStore(RedisConfig(url=redis_url, index_prefix=f"trip{uuid.uuid4().hex[:8]}"), embedder.dim)
    svc = CacheService(cfg, store, MicroBatcher(embedder), build_rule(cfg.decision), budget_ms=50,
                       retry_after_s=30, trip_after_timeouts=3)
    plan = svc.plan("chat", chat(question), "t", None, None)
    await svc._store(plan, {"choices": [{"message": {"role": "assistant", "content": answer},
                                         "finish_reason": "stop"}]}, None)
    return svc, store, plan


async def test_one_timeout_does_not_trip_but_consecutive_ones_do(redis_url: str, embedder: Any) -> None:
    svc, store, plan = await service_with_entry(redis_url, embedder, "What is the capital of France?", "Paris.")
    assert (await svc.lookup(plan)).hit is not None
    admin = aioredis.from_url(redis_url)
    try:
        await admin.execute_command("CLIENT", "PAUSE", 400, "ALL")
        assert (await svc.lookup(plan)).hit is None  # this request skipped the cache...
        assert not svc.degraded  # ...but the store is not given up on
        await asyncio.sleep(0.5)
        assert (await svc.lookup(plan)).hit is not None
        await admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        for _ in range(3):
            assert (await svc.lookup(plan)).hit is None
        await asyncio.sleep(store.cfg.store_timeout_ms / 1000 + 0.1)  # the confirming PING gives up too
        assert svc.degraded
    finally:
        await asyncio.sleep(1.6)
        await admin.aclose()
        await store.aclose()


async def test_timeouts_on_a_healthy_redis_do_not_trip(redis_url: str, embedder: Any) -> None:
    """Lookups that overran their budget because the gateway was busy (a saturated event loop, a burst
    on a cold connection pool), not because Redis was slow: the confirming PING answers, so the store
    stays in use for everyone. (A busy loop cannot be staged reliably here: once the loop is free,
    Redis's reply is read before the timeout fires; so the overruns are reported as the lookup does.)"""
    svc, store, plan = await service_with_entry(redis_url, embedder, "What is the capital of Spain?", "Madrid.")
    try:
        for _ in range(5):
            svc._failed(TimeoutError(), "lookup")
        assert svc._probe is not None
        await svc.drain()
        assert not svc.degraded and svc._timeouts == 0
        assert (await svc.lookup(plan)).hit is not None
    finally:
        await store.aclose()
