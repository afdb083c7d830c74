"""The lookup's deadline, the semantic stage's queue bound and the caps on background work, with the
real MiniLM embedder and Valkey: a CPU backlog costs a request its semantic stage, never its time,
and never the store."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from service_helpers import chat, make_service, service_with_entry

from cache.policy import CacheControl, Caller
from cache.service import CacheHit

LONG = " ".join(f"word{i} of a longer text" for i in range(12))
# Generous Redis budgets: the backlog loads the CPU, and these tests are about the CPU stages
BUDGET_MS = 2000


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def backlog(svc: Any, n: int) -> list[asyncio.Task[Any]]:
    """``n`` embeddings queued ahead of everything else (unbounded, as an admin purge's are)."""
    return [asyncio.ensure_future(svc.embedder.embed(f"{i} {LONG}")) for i in range(n)]


async def test_the_deadline_ends_a_lookup_stuck_behind_the_embedder(redis_url: str, embedder: Any) -> None:
    svc, store, _ = await service_with_entry(redis_url, embedder, "What is the capital of Norway?", "Oslo.", BUDGET_MS,
                                             lookup_deadline_ms=100, semantic_max_queue=10_000)
    try:
        before = counted("cachestack_cache_bypass_total", reason="deadline")
        queued = backlog(svc, 64)
        await asyncio.sleep(0)
        plan = svc.plan("chat", chat("What is the capital city of Norway?"), Caller("t"), CacheControl(), None)
        found = await svc.lookup(plan)
        assert found.hit is None and found.embedding is None
        assert not all(t.done() for t in queued)  # it left before the backlog was through
        assert counted("cachestack_cache_bypass_total", reason="deadline") == before + 1
        assert svc.breaker.trips == 0 and svc.breaker.timeouts == 0  # CPU time is not Redis's fault
        await asyncio.gather(*queued)
    finally:
        await store.aclose()


async def test_a_full_semantic_queue_skips_the_semantic_stage_at_once(redis_url: str, embedder: Any) -> None:
    svc, store, plan = await service_with_entry(redis_url, embedder, "What is the capital of Kenya?", "Nairobi.",
                                                BUDGET_MS, lookup_deadline_ms=30_000, semantic_max_queue=4)
    try:
        before = counted("cachestack_cache_bypass_total", reason="embed_busy")
        queued = backlog(svc, 80)  # one run takes 64 (max_batch); 16 wait
        await asyncio.sleep(0)
        paraphrase = svc.plan("chat", chat("What is the capital city of Kenya?"), Caller("t"), CacheControl(), None)
        found = await svc.lookup(paraphrase)
        assert found.hit is None and found.embedding is None
        assert counted("cachestack_cache_bypass_total", reason="embed_busy") == before + 1
        assert not all(t.done() for t in queued)
        exact = await svc.lookup(plan)  # the exact tiers still answer during the backlog
        assert exact.hit is not None and exact.hit.layer == "exact"
        await asyncio.gather(*queued)
        found = await svc.lookup(paraphrase)  # backlog gone: the semantic stage runs again
        assert found.hit is not None and found.hit.layer == "semantic"
    finally:
        await store.aclose()


async def test_background_stores_are_capped_in_number_and_time(redis_url: str, embedder: Any) -> None:
    """Redis paused: two stores wait in flight (the cap), the rest are dropped and counted; the two are
    cancelled at background.timeout_s, before the store timeout."""
    svc, store = make_service(redis_url, embedder, background={"max_stores": 2, "timeout_s": 0.2})
    assert await svc.connect()
    admin = aioredis.from_url(redis_url)
    answer = {"choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}
    try:
        dropped = counted("cachestack_cache_stores_total", namespace="default", outcome="dropped")
        timed_out = counted("cachestack_cache_bypass_total", reason="store_timeout")
        await admin.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
        for i in range(5):
            svc.store_later(svc.plan("chat", chat(f"question {i}?"), Caller("t"), CacheControl(), None), answer)
        assert counted("cachestack_cache_stores_total", namespace="default", outcome="dropped") == dropped + 3
        await asyncio.wait_for(svc.drain(), 1.0)  # gone at 0.2 s, not at the 0.5 s store timeout
        assert counted("cachestack_cache_bypass_total", reason="store_timeout") == timed_out + 2
        assert svc.breaker.trips == 0
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        await store.aclose()


async def test_shadow_checks_are_capped(redis_url: str, embedder: Any) -> None:
    svc, store = make_service(redis_url, embedder, background={"max_shadows": 1},
                              namespaces={"default": {"shadow_rate": 1.0}})
    started: list[int] = []
    release = asyncio.Event()

    async def fresh() -> dict[str, Any] | None:
        started.append(1)
        await release.wait()
        return None

    try:
        plan = svc.plan("chat", chat("q?"), Caller("t"), CacheControl(), None)
        hit = CacheHit({"choices": [{"message": {"content": "a"}}]}, "semantic", 0.9, 1.0, "e")
        for _ in range(4):
            svc.maybe_shadow(plan, hit, fresh)
        await asyncio.sleep(0.05)
        assert len(started) == 1
        release.set()
        await svc.drain()
        svc.maybe_shadow(plan, hit, fresh)  # a slot is free again
        await svc.drain()
        assert len(started) == 2
    finally:
        await store.aclose()
