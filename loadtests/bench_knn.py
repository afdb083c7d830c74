"""KNN lookup latency of the store at scale, with the scoping filter the service uses.

Loads N entries (random unit 384-d vectors; tags spread over tenants and fingerprints as a multi-tenant
deployment would: each tenant has one large single-turn fingerprint and many small multi-turn ones),
then times ``CacheStore.knn`` (the real code path, redisvl included) for the service's five-tag
filter, against an unfiltered KNN on the same index. Reports load time and Redis memory.

python loadtests/bench_knn.py --sizes 100000 [--redis URL] [--tenants 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import ExitStack
from typing import Any

import numpy as np

from common import write_json, REPO, summary

DIM = 384


def tags_for(i: int, tenants: int, rng: np.random.Generator) -> dict[str, str]:
    tenant = f"tenant-{i % tenants}"
    # 70% single-turn (one fingerprint per tenant), 30% spread over 1,000 conversation fingerprints
    fp = f"fp-{tenant}-single" if rng.random() < 0.7 else f"fp-{tenant}-conv-{rng.integers(1000)}"
    return {"scope": tenant, "fingerprint": fp, "model": "smollm2", "version": "1", "namespace": "default"}


async def load(store: Any, n: int, tenants: int, rng: np.random.Generator) -> float:
    from cache.store import encode_answer, tag_value

    blob = encode_answer({"choices": [{"message": {"role": "assistant", "content": "x" * 200}}]})
    for t in range(tenants):  # the partitions' indexes, as the first write of each would create them
        await store._ensure_partition(store.partition_of(tags_for(t, tenants, rng)))
    started = time.perf_counter()
    batch = 2000
    for start in range(0, n, batch):
        vecs = rng.standard_normal((min(batch, n - start), DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        pipe = store.redis.pipeline(transaction=False)
        for j, v in enumerate(vecs):
            i = start + j
            tg = tags_for(i, tenants, rng)
            fields = {"answer": blob, "query": f"q{i}", "created": time.time(), "embedding": v.tobytes(),
                      **{k: tag_value(val) for k, val in tg.items()}, "tenant": tag_value(tg["scope"])}
            pipe.hset(store.key(store.entry_id(tg, f"k{i}")), mapping=fields)
        await pipe.execute()
        if start and start % 50_000 == 0:
            print(f"  loaded {start} ({time.perf_counter() - started:.0f} s)", flush=True)
    while await store.count() < n:  # wait for the indexer
        await asyncio.sleep(1)
    return time.perf_counter() - started


async def drop_all(store: Any) -> None:
    for pid in await store.partitions():
        await store._index(pid).delete(drop=True)


async def bench(redis_url: str, n: int, tenants: int, queries: int, with_baseline: bool) -> dict[str, Any]:
    from redisvl.query import VectorQuery

    from cache.config import RedisConfig
    from cache.store import CacheStore

    rng = np.random.default_rng(n)
    store = CacheStore(RedisConfig(url=redis_url, index_prefix=f"knn{n}", store_timeout_ms=60_000), DIM)
    await drop_all(store)
    print(f"\n{n} entries, {tenants} tenants")
    load_s = await load(store, n, tenants, rng)
    mem = (await store.redis.info("memory"))["used_memory"]
    print(f"  load {load_s:.0f} s, Redis used_memory {mem / 2**30:.2f} GiB")
    qv = rng.standard_normal((queries, DIM)).astype(np.float32)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    out: dict[str, Any] = {"entries": n, "load_s": load_s, "memory_gib": mem / 2**30}
    cases: dict[str, Any] = {
        "unfiltered (one global index)": None,
        "scoped, single-turn, engine's choice": lambda i: tags_for(0, tenants, np.random.default_rng(0)) | {
            "scope": f"tenant-{i % tenants}", "fingerprint": f"fp-tenant-{i % tenants}-single"},
        "scoped, single-turn, BATCHES hint (shipped)": (True, lambda i: {
            "scope": f"tenant-{i % tenants}", "fingerprint": f"fp-tenant-{i % tenants}-single",
            "model": "smollm2", "version": "1", "namespace": "default"}),
        "scoped, conversation, engine's choice (shipped)": lambda i: {
            "scope": f"tenant-{i % tenants}", "fingerprint": f"fp-tenant-{i % tenants}-conv-{i % 1000}",
            "model": "smollm2", "version": "1", "namespace": "default"},
    }
    # unfiltered baseline: one global index over every entry, as a single-index layout would have
    from redisvl.index import AsyncSearchIndex

    from cache.store import schema_for
    baseline = AsyncSearchIndex(schema_for(f"knn{n}-global", store.key_prefix, DIM, store.cfg), redis_client=store.redis)
    if with_baseline:
        await baseline.create(overwrite=True)
        while int((await baseline.info()).get("num_docs", 0)) < n:
            await asyncio.sleep(1)
    else:
        del cases["unfiltered (one global index)"]
    for name, tag_fn in cases.items():
        lat = []
        for i in range(queries):
            t = time.perf_counter()
            if tag_fn is None:
                await baseline.query(VectorQuery(vector=qv[i].tobytes(), vector_field_name="embedding",
                                                 return_fields=["query", "created"], num_results=3))
            elif isinstance(tag_fn, tuple):
                await store.knn(qv[i], tag_fn[1](i), 3, large=tag_fn[0])
            else:
                await store.knn(qv[i], tag_fn(i), 3)
            lat.append(time.perf_counter() - t)
        out[name] = summary(f"  KNN-3 {name}", lat)
    if with_baseline:
        await baseline.delete(drop=False)
    await drop_all(store)
    await store.aclose()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000", help="comma-separated entry counts")
    p.add_argument("--tenants", type=int, default=20)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--redis")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the global unfiltered index (it doubles the load time)")
    p.add_argument("--json")
    args = p.parse_args()
    from serving.config import LocalStackConfig
    from serving.local.processes import free_port
    from serving.local.stack import start_stack

    results = []
    with ExitStack() as stack:
        redis = args.redis or stack.enter_context(start_stack(
            LocalStackConfig(data_dir=str(REPO / ".cachestack")), vllm=False, redis_port=free_port())).redis_url
        for n in (int(s) for s in args.sizes.split(",")):
            results.append(asyncio.run(bench(redis, n, args.tenants, args.queries, not args.no_baseline)))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
