"""Which store answered an exact hit (the gateway's X-Cache-Store), against the real Valkey."""

from __future__ import annotations

from typing import Any

from service_helpers import service_with_entry


async def test_exact_hits_name_the_store_that_answered(redis_url: str, embedder: Any) -> None:
    svc, store, plan = await service_with_entry(redis_url, embedder, "What is the capital of France?", "Paris.",
                                                budget_ms=2000, l1_max_bytes=1 << 20)
    try:
        first, second = (await svc.lookup(plan)).hit, (await svc.lookup(plan)).hit
        assert first is not None and second is not None
        assert first.layer == second.layer == "exact"
        assert (first.store, second.store) == ("redis", "l1")  # the Redis hit is kept in L1
        svc.l1.clear()
        again = (await svc.lookup(plan)).hit
        assert again is not None and again.store == "redis"
    finally:
        await store.aclose()
