"""Memory of the semantic cache in Redis, and the shards it needs (``cachestack cache-plan``).

One entry is a hash (its key, the answer, the query, the float32 vector, six tag digests, the
creation time) plus its share of an HNSW index (a second copy of the vector, the graph's links, the
document table and the TAG and NUMERIC indexes). The byte counts of the parts that scale with the
input are computed; the two fixed overheads were fitted to ``loadtests/bench_knn.py`` at 100k
entries (Valkey 9.1 + RediSearch 2.10, libc malloc: ``loadtests/results/knn-layouts-100k.json``) and
the total checked against its 1M run (4.40 GiB, ``loadtests/results/knn_1m.json``). Pure functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024**3
TAG_FIELDS = 6  # scope, fingerprint, model, version, namespace, tenant (user only in per_user namespaces)
TAG_BYTES = 24  # a tag value is a 24-hex digest (cache.store.tag_value)
FIELD_NAMES_BYTES = 75  # "answer", "query", "created", "embedding" and the tag names
CREATED_BYTES = 18  # time.time() as text
KEY_BYTES = 32  # index prefix, embedder space and {partition id}, before the exact key
# Fitted at 100k entries (see the module docstring): what the measured bytes per entry hold beyond
# the parts counted here. The hash: its table of ~11 fields (hashtable encoding: the vector is far
# above hash-max-listpack-value), key object, expiry. The index: document table (a copy of the key),
# TAG inverted lists, the NUMERIC tree, HNSW node headers and block slack.
HASH_OVERHEAD_BYTES = 434
INDEX_OVERHEAD_BYTES = 547


@dataclass(frozen=True)
class CachePlan:
    entries: int
    dim: int
    answer_bytes: int
    hnsw_m: int
    shard_gib: float
    usable_share: float
    replicas: int
    entry_bytes: int  # the hash
    index_bytes: int  # its share of the index
    total_bytes: int
    shards: int
    per_shard_bytes: int

    @property
    def bytes_per_entry(self) -> int:
        return self.entry_bytes + self.index_bytes

    @property
    def total_with_replicas_bytes(self) -> int:
        return self.total_bytes * (1 + self.replicas)


def entry_bytes(dim: int, answer_bytes: int, query_chars: int, exact_key_chars: int) -> int:
    """One entry's hash in Redis."""
    return (KEY_BYTES + exact_key_chars + dim * 4 + answer_bytes + query_chars + TAG_FIELDS * TAG_BYTES
            + CREATED_BYTES + FIELD_NAMES_BYTES + HASH_OVERHEAD_BYTES)


def index_bytes(dim: int, hnsw_m: int) -> int:
    """One entry's share of its HNSW index: the vector's copy, 2M links on level 0, and on average
    M / (M - 1) upper-level links (a node reaches level l with probability 1/M^l, M links there)."""
    links = 2 * hnsw_m + hnsw_m / (hnsw_m - 1)
    return int(dim * 4 + links * 4 + INDEX_OVERHEAD_BYTES)


def plan(entries: int, dim: int, answer_bytes: int, *, query_chars: int = 60, exact_key_chars: int = 32,
         hnsw_m: int = 16, shard_gib: float = 16.0, usable_share: float = 0.75, replicas: int = 0) -> CachePlan:
    """Memory for ``entries`` and the primaries (shards) that hold it, each filled to ``usable_share``
    of ``shard_gib`` (the rest: fragmentation, the fork of a snapshot, replication and client buffers).

    Partitions pin to one slot each, so a shard's load is an even share only with many partitions
    (tenants x namespaces x models): with few, size for the largest partition."""
    for name, value in (("entries", entries), ("dim", dim), ("shard_gib", shard_gib)):
        if value <= 0:
            raise ValueError(f"{name} must be positive (got {value})")
    if answer_bytes < 0 or query_chars < 0 or replicas < 0:
        raise ValueError("answer_bytes, query_chars and replicas cannot be negative")
    if not 0 < usable_share <= 1:
        raise ValueError(f"usable_share must lie in (0, 1] (got {usable_share})")
    if hnsw_m < 2:
        raise ValueError(f"hnsw_m must be at least 2 (got {hnsw_m})")
    e = entry_bytes(dim, answer_bytes, query_chars, exact_key_chars)
    i = index_bytes(dim, hnsw_m)
    total = entries * (e + i)
    shards = max(1, math.ceil(total / (shard_gib * GIB * usable_share)))
    return CachePlan(entries, dim, answer_bytes, hnsw_m, shard_gib, usable_share, replicas, e, i, total,
                     shards, math.ceil(total / shards))
