"""``cachestack cache-plan --entries N``: Redis memory of the semantic cache, per shard, and shards needed.

The model (cache/capacity.py) counts what scales with the input and adds two overheads fitted to
loadtests/bench_knn.py; measured there: 4.40 GiB for 1M entries of 384 dimensions and 260-byte answers."""

from __future__ import annotations

import argparse
import sys

from cache.capacity import GIB, CachePlan, plan


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cache-plan", help="Redis memory of the semantic cache and the shards it needs",
                       description=__doc__)
    p.add_argument("--entries", type=int, required=True, help="cached answers to hold (e.g. 1000000)")
    p.add_argument("--dim", type=int, default=384, help="embedding dimension (all-MiniLM-L6-v2: 384)")
    p.add_argument("--answer-bytes", type=int, default=1024,
                   help="one stored answer as stored: the completion's JSON, zlib-compressed above 512 bytes")
    p.add_argument("--query-chars", type=int, default=60, help="average length of the cached questions")
    p.add_argument("--hnsw-m", type=int, default=16, help="redis.hnsw_m")
    p.add_argument("--shard-gib", type=float, default=16.0, help="memory of one shard (primary)")
    p.add_argument("--usable-share", type=float, default=0.75,
                   help="share of a shard's memory the cache may fill (maxmemory; the rest: fragmentation, fork, buffers)")
    p.add_argument("--replicas", type=int, default=0, help="replicas per shard (memory counted, shards unchanged)")
    p.set_defaults(func=run)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def report(r: CachePlan) -> str:
    total = f"  total: {_gib(r.total_bytes)}"
    if r.replicas:
        total += f"; with {r.replicas} replica(s) per shard {_gib(r.total_with_replicas_bytes)}"
    return "\n".join([
        f"{r.entries:,} entries, {r.dim} dimensions, {r.answer_bytes:,}-byte answers, HNSW M={r.hnsw_m}",
        f"  per entry: {r.bytes_per_entry:,} bytes (hash {r.entry_bytes:,}, index {r.index_bytes:,})",
        total,
        (f"  shards: {r.shards} of {r.shard_gib:g} GiB, filled to {r.usable_share:.0%}: "
         f"{_gib(r.per_shard_bytes)} per shard"),
        ("  note: each partition (tenant scope, namespace, model, version) lives on one shard: "
         "with few partitions, size for the largest one"),
    ])


def run(args: argparse.Namespace) -> int:
    try:
        result = plan(args.entries, args.dim, args.answer_bytes, query_chars=args.query_chars,
                      hnsw_m=args.hnsw_m, shard_gib=args.shard_gib, usable_share=args.usable_share,
                      replicas=args.replicas)
    except ValueError as exc:
        print(f"cachestack cache-plan: {exc}", file=sys.stderr)
        return 2
    print(report(result))
    return 0
