"""KNN lookup latency of the store at scale, in both index layouts, with the service's scoping filter.

Loads N entries (random unit 384-d vectors; tags spread over tenants and fingerprints as a multi-tenant
deployment would: each tenant has one large single-turn fingerprint and many small multi-turn ones)
while both layouts index them: the partition layout (one index per partition, the shipped default)
and the shared layout (one index, the partition's tags in the prefilter). Times ``CacheStore.knn``
(the real code path, redisvl included) in each, and an unfiltered KNN on the shared index. Then drops
the indexes one by one (keeping the entries) to measure what each layout takes in Redis: the number
``cachestack cache-plan`` is checked against.

python loadtests/bench_knn.py --sizes 100000,1000000 [--redis URL] [--tenants 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import ExitStack
from typing import Any

import numpy as np
from common import REPO, summary, write_json

DIM = 384


def tags_for(i: int, tenants: int, rng: np.random.Generator) -> dict[str, str]:
    tenant = f"tenant-{i % tenants}"
    # 70% single-turn (one fingerprint per tenant), 30% spread over 1,000 conversation fingerprints
    fp = f"fp-{tenant}-single" if rng.random() < 0.7 else f"fp-{tenant}-conv-{rng.integers(1000)}"
    return {"scope": tenant, "fingerprint": fp, "model": "smollm2", "version": "1", "namespace": "default"}


ANSWER_CHARS = 200


async def load(store: Any, n: int, tenants: int, rng: np.random.Generator) -> float:
    from cache.store import encode_answer, tag_value

    blob = encode_answer({"choices": [{"message": {"role": "assistant", "content": "x" * ANSWER_CHARS}}]})
    for t in range(tenants):  # the partitions' indexes, as the first write of each would create them
        tg = tags_for(t, tenants, rng)
        await store._ensure_partition(store.partition_of(tg), tg)
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
    await wait_indexed(store, n, started)
    return time.perf_counter() - started


async def wait_indexed(store: Any, n: int, started: float) -> None:
    last = time.perf_counter()
    while (done := await store.count()) < n:
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            print(f"  indexed {done} of {n} ({last - started:.0f} s)", flush=True)
        await asyncio.sleep(1)


def cases(tenants: int) -> dict[str, tuple[bool | None, Any]]:
    """name -> (the ``large`` hint, tags of lookup i); ``large`` None: the engine's choice, no hint."""
    def single(i: int) -> dict[str, str]:
        return {"scope": f"tenant-{i % tenants}", "fingerprint": f"fp-tenant-{i % tenants}-single",
                "model": "smollm2", "version": "1", "namespace": "default"}

    def conversation(i: int) -> dict[str, str]:
        return single(i) | {"fingerprint": f"fp-tenant-{i % tenants}-conv-{i % 1000}"}

    return {"single-turn, BATCHES hint (shipped)": (True, single),
            "single-turn, engine's choice": (False, single),
            "conversation, engine's choice (shipped)": (False, conversation)}


async def time_cases(store: Any, qv: np.ndarray, tenants: int, label: str) -> dict[str, Any]:
    out = {}
    for name, (large, tag_fn) in cases(tenants).items():
        lat = []
        for i in range(len(qv)):
            t = time.perf_counter()
            await store.knn(qv[i], tag_fn(i), 3, large=bool(large))
            lat.append(time.perf_counter() - t)
        out[name] = summary(f"  KNN-3 {label}, {name}", lat)
    return out


async def index_bytes(store: Any, index: Any) -> int:
    """What dropping ``index`` (keeping its entries) frees in Redis."""
    before = sum(await store.topology.used_memory())
    await index.delete(drop=False)
    await asyncio.sleep(1)
    return before - sum(await store.topology.used_memory())


async def bench(redis_url: str, n: int, tenants: int, queries: int) -> dict[str, Any]:
    from redisvl.query import VectorQuery

    from cache.config import RedisConfig
    from cache.store import CacheStore

    rng = np.random.default_rng(n)
    cfg = RedisConfig(url=redis_url, index_prefix=f"knn{n}", store_timeout_ms=60_000)
    store = CacheStore(cfg, DIM)
    shared = CacheStore(cfg.model_copy(update={"index_layout": "shared"}), DIM)
    await store.drop_all()
    await shared.drop_all()
    before = sum(await store.topology.used_memory())
    print(f"\n{n} entries, {tenants} tenants", flush=True)
    # Both layouts index the same entries as they are written (HNSW insertion on write is several
    # times faster than FT.CREATE's background scan of existing keys): one load serves both.
    tg = cases(tenants)["single-turn, engine's choice"][1](0)
    await shared._ensure_partition(shared.partition_of(tg), tg)
    load_s = await load(store, n, tenants, rng)
    await wait_indexed(shared, n, time.perf_counter())
    total = sum(await store.topology.used_memory()) - before
    print(f"  load into both layouts {load_s:.0f} s, Redis memory {total / 2**30:.3f} GiB", flush=True)
    qv = rng.standard_normal((queries, DIM)).astype(np.float32)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    out: dict[str, Any] = {"entries": n, "dim": DIM, "answer_chars": ANSWER_CHARS, "tenants": tenants,
                           "load_both_s": load_s}
    out["partition"] = await time_cases(store, qv, tenants, "partition layout")
    out["shared"] = await time_cases(shared, qv, tenants, "shared layout")
    index = await shared._index(shared.partition_of(tg))
    lat = []
    for i in range(queries):
        t = time.perf_counter()
        await index.query(VectorQuery(vector=qv[i].tobytes(), vector_field_name="embedding",
                                      return_fields=["query", "created"], num_results=3))
        lat.append(time.perf_counter() - t)
    out["shared"]["unfiltered"] = summary("  KNN-3 shared index, unfiltered", lat)

    shared_index = await index_bytes(shared, index)
    partition_mem = sum(await store.topology.used_memory()) - before
    partition_indexes = 0
    for idx in await store._searchable():
        partition_indexes += await index_bytes(store, idx)
    entries = partition_mem - partition_indexes
    out["memory_gib"] = {"partition_layout": partition_mem / 2**30, "shared_layout": (entries + shared_index) / 2**30,
                         "entries_alone": entries / 2**30, "partition_indexes": partition_indexes / 2**30,
                         "shared_index": shared_index / 2**30}
    out["bytes_per_entry"] = {k: v * 2**30 / n for k, v in out["memory_gib"].items()}
    print("  Redis memory (GiB): " + ", ".join(f"{k} {v:.3f}" for k, v in out["memory_gib"].items()), flush=True)
    batch: list[bytes] = []
    async for key in store.redis.scan_iter(match=f"{cfg.index_prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            await store.topology.unlink(batch)
            batch = []
    await store.topology.unlink(batch)
    await shared.aclose()
    await store.aclose()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000", help="comma-separated entry counts")
    p.add_argument("--tenants", type=int, default=20)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--redis")
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
            results.append(asyncio.run(bench(redis, n, args.tenants, args.queries)))
            write_json(args.json, results)  # each size as soon as it is done
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
