"""Index lifecycle through the service: a namespace version bumped in the config retires the old
partitions when a gateway starts, and an admin purge by model drops that model's partitions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from service_helpers import chat

from cache.config import CacheConfig, RedisConfig
from cache.decision import build_rule
from cache.embedder import MicroBatcher
from cache.policy import CacheControl, Caller
from cache.service import CacheService
from cache.store import CacheStore

pytestmark = pytest.mark.e2e
ANSWER = {"choices": [{"message": {"role": "assistant", "content": "Nairobi."}, "finish_reason": "stop"}]}


def service(redis_url: str, embedder: Any, prefix: str, version: str) -> CacheService:
    cfg = CacheConfig.model_validate({"l1_max_bytes": 0, "namespaces": {"default": {"version": version}}})
    store = CacheStore(RedisConfig(url=redis_url, index_prefix=prefix, store_timeout_ms=5000), embedder.dim)
    return CacheService(cfg, store, MicroBatcher(embedder), build_rule(cfg.decision), budget_ms=2000,
                        retry_after_s=30)


async def test_a_start_with_a_bumped_version_drops_the_old_partitions(redis_url: str, embedder: Any) -> None:
    prefix = f"life{uuid.uuid4().hex[:8]}"
    old, new = service(redis_url, embedder, prefix, "1"), service(redis_url, embedder, prefix, "2")
    try:
        assert await old.connect()
        plan = old.plan("chat", chat("What is the capital of Kenya?"), Caller("t"), CacheControl(), None)
        await old._store(plan, ANSWER, None)
        assert len(await old.store.partitions()) == 1
        assert await new.connect()
        await new.drain()  # the retirement runs in the background after the first check
        assert await new.store.partitions() == []
        assert await new.store.count() == 0
        assert (await old.lookup(plan)).hit is None  # the old replica's entries are gone too
    finally:
        for svc in (old, new):
            await svc.store.drop_all()
            await svc.aclose()


async def test_purge_by_model_retires_its_partitions(redis_url: str, embedder: Any) -> None:
    svc = service(redis_url, embedder, f"life{uuid.uuid4().hex[:8]}", "1")
    try:
        assert await svc.connect()
        for model in ("smollm2", "smollm2-b"):
            body = chat("What is the capital of Kenya?") | {"model": model}
            await svc._store(svc.plan("chat", body, Caller("t"), CacheControl(), None), ANSWER, None)
        assert len(await svc.store.partitions()) == 2
        assert await svc.purge(tags={"model": "smollm2"}) == 1
        assert [p.model for p in await svc.store.registry.all()] == ["smollm2-b"]
        assert await svc.store.count() == 1
    finally:
        await svc.store.drop_all()
        await svc.aclose()
