"""Building a CacheService on the real Valkey and MiniLM for the service tests, and a loop hog."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from cache.config import CacheConfig, RedisConfig
from cache.decision import build_rule
from cache.embedder import MicroBatcher
from cache.policy import CacheControl, CachePlan, Caller
from cache.service import CacheService
from cache.store import CacheStore


def chat(q: str) -> dict[str, Any]:
    return {"model": "smollm2", "temperature": 0, "messages": [{"role": "user", "content": q}]}


def make_service(redis_url: str, embedder: Any, budget_ms: float = 50, redis: dict[str, Any] | None = None,
                 **cache: Any) -> tuple[CacheService, CacheStore]:
    """L1 off (every lookup reaches Redis), a 50 ms budget, trips after 3 timeouts."""
    cfg = CacheConfig.model_validate({"l1_max_bytes": 0, **cache})
    store = CacheStore(RedisConfig(url=redis_url, index_prefix=f"trip{uuid.uuid4().hex[:8]}", **(redis or {})),
                       embedder.dim)
    svc = CacheService(cfg, store, MicroBatcher(embedder, max_waiting=cfg.semantic_max_queue),
                       build_rule(cfg.decision), budget_ms=budget_ms, retry_after_s=30, trip_after_timeouts=3)
    return svc, store


async def service_with_entry(redis_url: str, embedder: Any, question: str, answer: str, budget_ms: float = 50,
                             **cache: Any) -> tuple[CacheService, CacheStore, CachePlan]:
    """A connected service holding one stored answer, and the plan that finds it."""
    svc, store = make_service(redis_url, embedder, budget_ms, **cache)
    assert await svc.connect()
    plan = svc.plan("chat", chat(question), Caller("t"), CacheControl(), None)
    await svc._store(plan, {"choices": [{"message": {"role": "assistant", "content": answer},
                                         "finish_reason": "stop"}]}, None)
    return svc, store, plan


async def hog_loop(seconds: float, block_s: float = 0.08) -> None:
    """Saturate the event loop: hold it for ``block_s`` at a time (CPU work on the loop), for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(block_s)  # noqa: ASYNC251 - blocking the loop is the point
        await asyncio.sleep(0)
