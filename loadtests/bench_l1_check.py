"""What keeping the L1 in agreement across replicas costs an L1 hit, and how fast a purge reaches it.

Times ``CacheService.lookup`` of an L1-resident exact key (the real code path) three ways, interleaved
in rounds so machine load hits them alike:
- ``no check``: the L1 as if no other replica existed (the watch forced live), the floor;
- ``pubsub watch``: the shipped path: the purge watch's liveness check (a clock read) on each hit;
- ``generation GET``: the alternative, a per-scope generation counter read from Redis on each hit.
Then the purge's reach: replica A purges, the time until replica B's L1 is empty (B hears it on its
pub/sub subscription), over repeated purges. Real Valkey + RediSearch, real MiniLM (loaded, unused by
exact lookups).

python loadtests/bench_l1_check.py [--redis URL] [--n 20000] [--purges 100]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from contextlib import ExitStack
from typing import Any

from common import REPO, summary, write_json

ANSWER = {"choices": [{"message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 12, "completion_tokens": 3}}


def replica(redis_url: str, embedder: Any, prefix: str) -> Any:
    from cache.config import CacheConfig, RedisConfig
    from cache.decision import build_rule
    from cache.embedder import MicroBatcher
    from cache.service import CacheService
    from cache.store import CacheStore

    cfg = CacheConfig.model_validate({"l1_max_bytes": 1 << 24, "decision": {"verifier": "none"}})
    store = CacheStore(RedisConfig(url=redis_url, index_prefix=prefix, store_timeout_ms=5000), embedder.dim)
    return CacheService(cfg, store, MicroBatcher(embedder), build_rule(cfg.decision), budget_ms=5000, retry_after_s=1)


async def bench(redis_url: str, n: int, purges: int) -> dict[str, Any]:
    from cache.embedder import Embedder
    from cache.policy import CacheControl, Caller

    embedder = Embedder()
    prefix = f"l1chk{uuid.uuid4().hex[:6]}"
    a, b = replica(redis_url, embedder, prefix), replica(redis_url, embedder, prefix)
    assert await a.connect() and await b.connect()
    body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    plan = b.plan("chat", body, Caller("t"), CacheControl(), None)
    assert await b._store(plan, ANSWER, None)
    await b.lookup(plan)
    assert (await b.lookup(plan)).hit.store == "l1"
    live = b.watch.live
    key = b.store.generation_key

    async def shipped() -> None:
        await b.lookup(plan)

    async def unchecked() -> None:
        b.watch.live = lambda: True  # type: ignore[method-assign]
        try:
            await b.lookup(plan)
        finally:
            b.watch.live = live  # type: ignore[method-assign]

    async def generation_get() -> None:
        b.watch.live = lambda: True  # type: ignore[method-assign]
        try:
            await b.store.redis.get(key)
            await b.lookup(plan)
        finally:
            b.watch.live = live  # type: ignore[method-assign]

    variants = {"no check": unchecked, "pubsub watch (shipped)": shipped, "generation GET": generation_get}
    lat: dict[str, list[float]] = {name: [] for name in variants}
    rounds = 20
    for _ in range(rounds):
        for name, call in variants.items():
            for _ in range(n // rounds):
                t = time.perf_counter()
                await call()
                lat[name].append(time.perf_counter() - t)
    results: dict[str, Any] = {"l1_hit": {}}
    print(f"L1 hit, CacheService.lookup, {n} each, concurrency 1:")
    for name, values in lat.items():
        results["l1_hit"][name] = summary(f"  {name}", values)

    reach: list[float] = []
    for _ in range(purges):
        await b.lookup(plan)  # Redis (re-stored below) or L1: either way B's L1 holds it after this
        assert len(b.l1), "B's L1 should hold the entry before the purge"
        t = time.perf_counter()
        await a.purge(tags={"namespace": "default"})
        while len(b.l1):
            await asyncio.sleep(0)
        reach.append(time.perf_counter() - t)
        await asyncio.sleep(0.01)
        assert await b._store(plan, ANSWER, None, b.new_lookup().generation)
        await b.lookup(plan)
    print(f"purge on A until B's L1 is empty ({purges} purges, the purge's own Redis work included):")
    results["purge_reach"] = summary("  purge -> other replica's L1 empty", reach)
    for svc in (a, b):
        await svc.aclose()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis")
    p.add_argument("--n", type=int, default=20000, help="L1 hits per variant")
    p.add_argument("--purges", type=int, default=100)
    p.add_argument("--json")
    args = p.parse_args()
    from serving.config import LocalStackConfig
    from serving.local.processes import free_port
    from serving.local.stack import start_stack

    with ExitStack() as stack:
        redis = args.redis or stack.enter_context(start_stack(
            LocalStackConfig(data_dir=str(REPO / ".cachestack")), vllm=False, redis_port=free_port())).redis_url
        results = asyncio.run(bench(redis, args.n, args.purges))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
