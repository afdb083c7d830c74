"""Redis with vector search: the index schema, exact get/set, filtered KNN, purge.

One hash per entry, keyed by its exact key, so an exact hit is one HMGET and a KNN result points at
the same hash. The index schema is data (redisvl ``IndexSchema``); its name carries the embedding
dimension, so a model change creates a new index instead of writing vectors of the wrong size into
the old one. Only FT features that Redis Stack, Redis 8 and valkey-search share are used:
HNSW COSINE FLOAT32 vectors, TAG and NUMERIC fields, KNN with a TAG prefilter.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from redis.asyncio import Redis
from redisvl.index import AsyncSearchIndex
from redisvl.query import CountQuery, FilterQuery, VectorQuery, VectorRangeQuery
from redisvl.query.filter import FilterExpression, Tag
from redisvl.schema import IndexSchema

from cache.config import RedisConfig

SCOPE_TAGS = ("scope", "fingerprint", "model", "version", "namespace")
_ZLIB = b"z"
_RAW = b"j"


@dataclass(frozen=True, slots=True)
class Entry:
    answer: dict[str, Any]
    created: float
    query: str


@dataclass(frozen=True, slots=True)
class Neighbour:
    entry_id: str
    query: str
    similarity: float
    created: float


def encode_answer(answer: dict[str, Any]) -> bytes:
    raw = orjson.dumps(answer)
    return _ZLIB + zlib.compress(raw, 1) if len(raw) > 512 else _RAW + raw


def decode_answer(blob: bytes) -> dict[str, Any]:
    body = zlib.decompress(blob[1:]) if blob[:1] == _ZLIB else blob[1:]
    answer = orjson.loads(body)
    if not isinstance(answer, dict):
        raise ValueError("stored answer is not an object")
    return answer


def schema_for(prefix: str, dim: int, cfg: RedisConfig) -> IndexSchema:
    return IndexSchema.from_dict({
        "index": {"name": f"{prefix}-idx-{dim}", "prefix": f"{prefix}:e{dim}", "key_separator": ":",
                  "storage_type": "hash"},
        "fields": [
            *({"name": tag, "type": "tag"} for tag in SCOPE_TAGS),
            {"name": "tenant", "type": "tag"},
            {"name": "created", "type": "numeric"},
            {"name": "embedding", "type": "vector", "attrs": {
                "dims": dim, "algorithm": "hnsw", "distance_metric": "cosine", "datatype": "float32",
                "m": cfg.hnsw_m, "ef_construction": cfg.hnsw_ef_construction, "ef_runtime": cfg.hnsw_ef_runtime}},
        ],
    })


class CacheStore:
    """Async access to the entries; every call may raise redis errors (the service fails open)."""

    def __init__(self, cfg: RedisConfig, dim: int, client: Redis | None = None) -> None:
        self.cfg = cfg
        password = None
        if cfg.password_file:
            with open(cfg.password_file) as fh:
                password = fh.read().strip() or None
        self.redis = client or Redis.from_url(
            cfg.url, password=password, socket_connect_timeout=cfg.lookup_budget_ms / 1000.0,
            socket_timeout=cfg.store_timeout_ms / 1000.0, decode_responses=False,
            health_check_interval=0, retry_on_timeout=False,
        )
        self.schema = schema_for(cfg.index_prefix, dim, cfg)
        self.index = AsyncSearchIndex(self.schema, redis_client=self.redis)
        self.key_prefix = f"{cfg.index_prefix}:e{dim}:"

    async def ensure_index(self) -> None:
        """Create the index if missing; an existing one (a gateway restart) is kept as is."""
        if not await self.index.exists():
            await self.index.create(overwrite=False)

    def key(self, entry_id: str) -> str:
        return self.key_prefix + entry_id

    async def get(self, entry_id: str) -> Entry | None:
        blob, created, query = await self.redis.hmget(self.key(entry_id), ["answer", "created", "query"])
        if blob is None:
            return None
        return Entry(decode_answer(blob), float(created or 0.0), (query or b"").decode())

    async def put(self, entry_id: str, *, answer: dict[str, Any], query: str, embedding: np.ndarray | None,
                  tags: dict[str, str], ttl_s: int) -> None:
        fields: dict[str, Any] = {"answer": encode_answer(answer), "query": query, "created": time.time(),
                                  **{name: tag_value(value) for name, value in tags.items()}}
        if embedding is not None:
            fields["embedding"] = np.asarray(embedding, dtype=np.float32).tobytes()
        key = self.key(entry_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, ttl_s)
            await pipe.execute()

    async def knn(self, vector: np.ndarray, tags: dict[str, str], k: int) -> list[Neighbour]:
        """The k nearest entries sharing every scoping tag, best first."""
        missing = [t for t in SCOPE_TAGS if t not in tags]
        if missing:
            raise ValueError(f"knn needs every scoping tag; missing {missing}")
        query = VectorQuery(
            vector=np.asarray(vector, dtype=np.float32).tobytes(), vector_field_name="embedding",
            return_fields=["query", "created"], filter_expression=scope_filter(tags), num_results=k,
        )
        rows = await self.index.query(query)
        return [Neighbour(
            entry_id=row["id"][len(self.key_prefix):],
            query=_text(row.get("query")),
            similarity=1.0 - float(row["vector_distance"]),
            created=float(row.get("created") or 0.0),
        ) for row in rows]

    async def purge(self, filters: FilterExpression | None, *, vector: np.ndarray | None = None,
                    threshold: float | None = None) -> int:
        """Delete every entry matching the filters (and, with ``vector``, within ``threshold`` cosine)."""
        if vector is not None:
            ids = await self._ids(VectorRangeQuery(
                vector=np.asarray(vector, dtype=np.float32).tobytes(), vector_field_name="embedding",
                distance_threshold=1.0 - float(threshold if threshold is not None else 0.9),
                filter_expression=filters or "*", return_fields=["created"], num_results=10_000))
        else:
            ids = await self._ids(FilterQuery(filters or "*", return_fields=["created"], num_results=10_000))
        total = 0
        while ids:
            total += await self.redis.unlink(*ids)
            if vector is not None:
                break  # a range query returned everything within the threshold already
            ids = await self._ids(FilterQuery(filters or "*", return_fields=["created"], num_results=10_000))
        return total

    async def _ids(self, query: Any) -> list[str]:
        return [row["id"] for row in await self.index.query(query)]

    async def count(self, filters: FilterExpression | None = None) -> int:
        return int(await self.index.query(CountQuery(filters or "*")))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def aclose(self) -> None:
        await self.redis.aclose()


def tag_value(value: str) -> str:
    """What a TAG field holds: a digest of the value. RediSearch TAGs split on commas, fold case and
    trim spaces, and redisvl turns an empty value into a wildcard; a hex digest has none of those
    traps, so equal digests mean equal values and nothing a client sends can widen a filter."""
    return hashlib.sha256(value.encode()).hexdigest()[:24]


def scope_filter(tags: dict[str, str]) -> FilterExpression | None:
    """AND of TAG equalities on digests (see :func:`tag_value`)."""
    expr: FilterExpression | None = None
    for name, value in tags.items():
        term = Tag(name) == tag_value(value)
        expr = term if expr is None else expr & term
    return expr


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
