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
import redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.driver_info import DriverInfo
from redis.exceptions import ResponseError
from redisvl.exceptions import RedisSearchError
from redisvl.index import AsyncSearchIndex
from redisvl.query import CountQuery, FilterQuery, VectorQuery, VectorRangeQuery
from redisvl.query.filter import FilterExpression, Tag
from redisvl.schema import IndexSchema

from cache.config import RedisConfig

# Appends one packed verdict to an entry's field, keeping the last ARGV[2] bytes; an expired or
# purged entry is not recreated.
_APPEND_VERDICT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local v = (redis.call('HGET', KEYS[1], 'verdicts') or '') .. ARGV[1]
local keep = tonumber(ARGV[2])
if #v > keep then v = string.sub(v, #v - keep + 1) end
redis.call('HSET', KEYS[1], 'verdicts', v)
return 1
"""
# Copies the target entry's answer and tags to the alias key with the alias's own query and vector,
# the target's creation time (the answer is that old) and remaining lifetime; nothing when the target has expired or lost its answer.
_PUT_ALIAS = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 0 end
local f = redis.call('HMGET', KEYS[1], 'answer', 'scope', 'fingerprint', 'model', 'version', 'namespace', 'tenant',
                     'created')
for i = 1, 8 do if not f[i] then return 0 end end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'answer', f[1], 'scope', f[2], 'fingerprint', f[3], 'model', f[4], 'version', f[5],
           'namespace', f[6], 'tenant', f[7], 'created', f[8], 'query', ARGV[1], 'embedding', ARGV[2],
           'alias_of', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""
# HSET + EXPIRE of an entry, unless the purge generation (KEYS[2]) moved past the one the store's
# request saw (ARGV[1]): a store that lands after a purge must not write the entry back.
_PUT_IF_GENERATION = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
SCOPE_TAGS = ("scope", "fingerprint", "model", "version", "namespace")
PARTITION_TAGS = ("scope", "namespace", "model", "version")  # one index each; see CacheStore
_ZLIB = b"z"
_RAW = b"j"


@dataclass(frozen=True, slots=True)
class Entry:
    blob: bytes  # the stored answer (encode_answer); decoded by the reader, so a damaged one is a miss
    created: float
    query: str

    @property
    def answer(self) -> dict[str, Any]:
        """The decoded answer; ValueError if the stored blob is damaged."""
        return decode_answer(self.blob)


@dataclass(frozen=True, slots=True)
class Neighbour:
    entry_id: str
    query: str
    similarity: float
    created: float
    blob: bytes  # the stored answer (encode_answer), so a semantic hit needs no second round trip
    verdicts: bytes = b""  # packed verdicts on earlier lookups served from it (cache/adaptive.py)

    def answer(self) -> dict[str, Any]:
        return decode_answer(self.blob)


def encode_answer(answer: dict[str, Any]) -> bytes:
    raw = orjson.dumps(answer)
    return _ZLIB + zlib.compress(raw, 1) if len(raw) > 512 else _RAW + raw


def decode_answer(blob: bytes) -> dict[str, Any]:
    """The stored answer; ValueError if the blob is not one (damaged, or written by something else)."""
    try:
        body = zlib.decompress(blob[1:]) if blob[:1] == _ZLIB else blob[1:]
    except zlib.error as exc:
        raise ValueError(f"stored answer does not decompress: {exc}") from exc
    answer = orjson.loads(body)
    if not isinstance(answer, dict):
        raise ValueError("stored answer is not an object")
    return answer


def schema_for(name: str, key_prefix: str, dim: int, cfg: RedisConfig) -> IndexSchema:
    return IndexSchema.from_dict({
        "index": {"name": name, "prefix": key_prefix, "key_separator": ":", "storage_type": "hash"},
        "fields": [
            *({"name": tag, "type": "tag"} for tag in SCOPE_TAGS),
            {"name": "tenant", "type": "tag"},  # who wrote it, and for whom (per_user): purge filters
            {"name": "user", "type": "tag"},
            {"name": "created", "type": "numeric"},
            {"name": "embedding", "type": "vector", "attrs": {
                "dims": dim, "algorithm": "hnsw", "distance_metric": "cosine", "datatype": "float32",
                "m": cfg.hnsw_m, "ef_construction": cfg.hnsw_ef_construction, "ef_runtime": cfg.hnsw_ef_runtime}},
        ],
    })


class CacheStore:
    """Async access to the entries; every call may raise redis errors (the service fails open).

    Entries are partitioned by (scope, namespace, model, version): one HNSW index per partition,
    over its own key prefix, so the KNN filter left inside a partition is the context fingerprint
    alone. Why: with one global index the tenant filter keeps a middling share of the index (1/20
    for 20 tenants), which is exactly where the engine brute-forces the filtered subset; measured
    here at 100k entries that cost 14 ms p50 against 1.2 ms unfiltered (loadtests/bench_knn.py).
    Inside a partition a fingerprint is either most of it (single-turn questions: the fast filtered
    HNSW path) or tiny (a conversation: brute force over a few vectors).
    """

    def __init__(self, cfg: RedisConfig, dim: int, client: Redis | None = None, *, embedder_id: str = "") -> None:
        """``embedder_id`` names the vector space (cache.embedder.Embedder.identity): two models of one
        dimension get separate indexes and keys, so a model switch never compares or serves vectors
        of another model."""
        self.cfg = cfg
        self.dim = dim
        password = cfg.password()
        # Lookups are held to their budget by the service (asyncio.timeout), so the sockets may wait
        # longer: with a connect timeout of one lookup budget, a burst on a saturated loop failed
        # the confirming PING too, and the cache switched off while Redis was fine.
        timeouts = {"socket_connect_timeout": cfg.store_timeout_ms / 1000.0,
                    "socket_timeout": cfg.store_timeout_ms / 1000.0}
        # At most max_connections sockets: a caller beyond them waits for a free one (within its own
        # budget, so a full pool reads as a timeout, never as an error that trips the breaker).
        self.redis = client or Redis.from_pool(BlockingConnectionPool.from_url(
            cfg.url, password=password, max_connections=cfg.max_connections,
            timeout=cfg.store_timeout_ms / 1000.0, decode_responses=False, health_check_interval=0,
            retry_on_timeout=False,
            # One DriverInfo for the whole pool: without it redis-py reads its own package metadata
            # for every new connection (~2 ms of CPU each), and a burst of 32 lookups on a cold pool
            # overran the lookup budget on that alone (loadtests/README.md).
            driver_info=DriverInfo(), **timeouts))
        # The breaker's check runs in a thread on a blocking client of its own, so its verdict
        # depends on Redis and the socket timeout, never on how busy the event loop is.
        self._probe_client = redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(
            cfg.url, password=password, max_connections=2, timeout=cfg.store_timeout_ms / 1000.0,
            driver_info=DriverInfo(), **timeouts))
        space = f"{dim}-{embedder_id}" if embedder_id else str(dim)
        self.name_prefix = f"{cfg.index_prefix}-idx{space}-"
        self.key_prefix = f"{cfg.index_prefix}:e{space}:"
        self._indexes: dict[str, AsyncSearchIndex] = {}
        self._created: set[str] = set()
        self.generation_key = f"{cfg.index_prefix}:purge-generation"  # cache/invalidation.py
        self.purge_channel = f"{cfg.index_prefix}:purges"
        self.hybrid_hint = cfg.knn_hybrid_policy != "none"  # off once a server rejects it (valkey-search)

    # -- partitions --------------------------------------------------------------------------
    @staticmethod
    def partition_of(tags: dict[str, str]) -> str:
        missing = [t for t in PARTITION_TAGS if not tags.get(t)]
        if missing:
            raise ValueError(f"an entry needs every scoping tag; missing {missing}")
        return hashlib.sha256("\x1f".join(tags[t] for t in PARTITION_TAGS).encode()).hexdigest()[:16]

    def _index(self, pid: str) -> AsyncSearchIndex:
        index = self._indexes.get(pid)
        if index is None:
            schema = schema_for(self.name_prefix + pid, self.key_prefix + pid, self.dim, self.cfg)
            index = self._indexes[pid] = AsyncSearchIndex(schema, redis_client=self.redis)
        return index

    async def _ensure_partition(self, pid: str) -> None:
        if pid in self._created:
            return
        index = self._index(pid)
        if not await index.exists():
            try:
                await index.create(overwrite=False)
            except (ResponseError, RedisSearchError) as exc:  # another write (or replica) created it first
                if "already exists" not in str(exc).lower():
                    raise
        self._created.add(pid)

    async def partitions(self) -> list[str]:
        """Partition ids that have an index in Redis (all gateway replicas' included)."""
        names = await self.redis.execute_command("FT._LIST")
        out = []
        for raw in names:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if name.startswith(self.name_prefix):
                out.append(name[len(self.name_prefix):])
        return out

    async def ensure_index(self) -> None:
        """Check that the server has vector search; partitions' indexes are created on first write.

        A restarted (empty) Redis has lost them: forget what we created so the next write recreates it.
        """
        await self.partitions()
        self.forget_partitions()

    def forget_partitions(self) -> None:
        """Recreate each partition's index on its next write (after Redis may have restarted empty)."""
        self._created.clear()

    def probe(self) -> None:
        """PING and FT._LIST, blocking (run it in a thread); raises if Redis or its search module
        does not answer within the store timeout."""
        self._probe_client.ping()
        self._probe_client.execute_command("FT._LIST")

    # -- entries -----------------------------------------------------------------------------
    def entry_id(self, tags: dict[str, str], exact_key: str) -> str:
        return f"{self.partition_of(tags)}:{exact_key}"

    def key(self, entry_id: str) -> str:
        return self.key_prefix + entry_id

    async def get(self, entry_id: str) -> Entry | None:
        blob, created, query = await self.redis.hmget(self.key(entry_id), ["answer", "created", "query"])
        if blob is None:
            return None
        return Entry(blob, float(created or 0.0), (query or b"").decode())

    async def put(self, entry_id: str, *, answer: dict[str, Any], query: str, embedding: np.ndarray | None,
                  tags: dict[str, str], ttl_s: int, generation: int | None = None) -> bool:
        """Write an entry; with ``generation``, only if no purge was announced since (False: refused)."""
        await self._ensure_partition(entry_id.split(":", 1)[0])  # purge and count find entries via it
        fields: dict[str, Any] = {"answer": encode_answer(answer), "query": query, "created": time.time(),
                                  **{name: tag_value(value) for name, value in tags.items()}}
        if embedding is not None:
            fields["embedding"] = np.asarray(embedding, dtype=np.float32).tobytes()
        key = self.key(entry_id)
        if generation is not None:
            flat = [item for pair in fields.items() for item in pair]
            return bool(await self.redis.eval(_PUT_IF_GENERATION, 2, key, self.generation_key, str(generation),
                                              ttl_s, *flat))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, ttl_s)
            await pipe.execute()
        return True

    async def knn(self, vector: np.ndarray, tags: dict[str, str], k: int, *, large: bool = False,
                  hybrid_policy: str | None = None) -> list[Neighbour]:
        """The k nearest entries sharing every scoping tag, best first.

        ``large``: the fingerprint is expected to hold most of its partition (a first-turn lookup).
        Then the engine is told to walk the HNSW graph in batches (HYBRID_POLICY BATCHES) instead of
        brute-forcing the filtered set: at 100k entries 1.1 ms p50 instead of 2.3 ms. For a tiny set
        (a conversation) its own choice is right: 0.33 ms, against 4.0 ms with the hint.
        """
        if hybrid_policy is None and large and self.hybrid_hint:
            hybrid_policy = self.cfg.knn_hybrid_policy
        pid = self.partition_of(tags)
        if not tags.get("fingerprint"):
            raise ValueError("knn needs the fingerprint tag")
        # redisvl builds the query (schema field names, composable filters, the hybrid hint); the
        # reply is read here because redisvl decodes every returned field as text, which would
        # mangle the compressed answer blob. Returning the answer with its neighbours saves the
        # fetch round trip of a semantic hit: 0.56 ms against 1.07 ms for KNN + HMGET (p50 here).
        query = VectorQuery(
            vector=np.asarray(vector, dtype=np.float32).tobytes(), vector_field_name="embedding",
            return_fields=["query", "created", "answer", "verdicts"],
            filter_expression=scope_filter({"fingerprint": tags["fingerprint"]}),
            num_results=k, hybrid_policy=hybrid_policy,
        )
        params = [item for pair in query.params.items() for item in pair]
        try:
            reply = await self.redis.execute_command(
                "FT.SEARCH", self._index(pid).name, *query.get_args(), "PARAMS", len(params), *params)
        except ResponseError as exc:
            if _missing_index(exc):  # nothing stored in this partition yet (or Redis restarted)
                self._created.discard(pid)
                return []
            if hybrid_policy and "hybrid" in str(exc).lower():  # the server has no such hint
                self.hybrid_hint = False
                return await self.knn(vector, tags, k)
            raise
        prefix = self.key_prefix
        out = []
        for key, fields in _search_rows(reply):
            if not key.startswith(prefix) or b"answer" not in fields:
                continue  # expired while the query ran
            out.append(Neighbour(
                entry_id=key[len(prefix):],
                query=_text(fields.get(b"query")),
                similarity=1.0 - float(fields[b"vector_distance"]),
                created=float(fields.get(b"created") or 0.0),
                blob=fields[b"answer"],
                verdicts=fields.get(b"verdicts") or b"",
            ))
        return out

    # -- verdicts and aliases (cache/verdicts.py, cache/background_judge.py) --------------------
    async def add_verdict(self, entry_id: str, packed: bytes, *, keep_bytes: int, window: int, ttl_s: int) -> None:
        """Append a verdict to its entry (capped to ``keep_bytes``; nothing if the entry is gone) and
        to its partition's window (the last ``window`` verdicts, kept ``ttl_s``): replicas share both."""
        pid = entry_id.split(":", 1)[0]
        scope_key = self.verdict_key(pid)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.eval(_APPEND_VERDICT, 1, self.key(entry_id), packed, keep_bytes)
            pipe.rpush(scope_key, packed)
            pipe.ltrim(scope_key, -window, -1)
            pipe.expire(scope_key, ttl_s)
            await pipe.execute()

    def verdict_key(self, pid: str) -> str:
        """The partition's verdict window: outside the entries' prefix, so no index sees it."""
        return f"{self.cfg.index_prefix}:verdicts{self.dim}:{pid}"

    async def partition_verdicts(self, pid: str) -> list[bytes]:
        return list(await self.redis.lrange(self.verdict_key(pid), 0, -1))

    async def put_alias(self, target_id: str, alias_id: str, *, query: str, embedding: np.ndarray) -> bool:
        """Store ``query`` (its own vector) as an alias of the entry ``target_id``: same answer, tags
        and partition, expiring with the target. False when the target is gone or in another partition."""
        if target_id.split(":", 1)[0] != alias_id.split(":", 1)[0]:
            return False
        done = await self.redis.eval(_PUT_ALIAS, 2, self.key(target_id), self.key(alias_id), query,
                                     np.asarray(embedding, dtype=np.float32).tobytes(), target_id)
        return bool(done)

    # -- invalidation and stats --------------------------------------------------------------
    async def purge(self, filters: FilterExpression | None, *, vector: np.ndarray | None = None,
                    threshold: float | None = None) -> int:
        """Delete every entry matching the filters (and, with ``vector``, within ``threshold`` cosine)."""
        total = 0
        for pid in await self.partitions():
            index = self._index(pid)
            if vector is not None:
                ids = await self._ids(index, VectorRangeQuery(
                    vector=np.asarray(vector, dtype=np.float32).tobytes(), vector_field_name="embedding",
                    distance_threshold=1.0 - float(threshold if threshold is not None else 0.9),
                    filter_expression=filters or "*", return_fields=["created"], num_results=10_000))
                if ids:
                    total += await self.redis.unlink(*ids)
                continue
            while ids := await self._ids(index, FilterQuery(filters or "*", return_fields=["created"],
                                                            num_results=10_000)):
                total += await self.redis.unlink(*ids)
        return total

    async def purge_key(self, exact_key: str) -> int:
        """Delete the entry with this exact key in whichever partition holds it (an admin operation)."""
        total = 0
        async for key in self.redis.scan_iter(match=f"{self.key_prefix}*:{exact_key}", count=1000):
            total += await self.redis.unlink(key)
        return total

    async def _ids(self, index: AsyncSearchIndex, query: Any) -> list[str]:
        return [row["id"] for row in await index.query(query)]

    async def count(self, filters: FilterExpression | None = None) -> int:
        total = 0
        for pid in await self.partitions():
            total += int(await self._index(pid).query(CountQuery(filters or "*")))
        return total

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def aclose(self) -> None:
        await self.redis.aclose()
        self._probe_client.close()


def _search_rows(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """(key, {field: value}) rows of an FT.SEARCH reply, in RESP3 (a map) or RESP2 (a flat list)."""
    if isinstance(reply, dict):
        return [(_text(row[b"id"]), dict(row.get(b"extra_attributes") or {})) for row in reply.get(b"results", [])]
    rows = []
    for i in range(1, len(reply) - 1, 2):
        flat = reply[i + 1]
        rows.append((_text(reply[i]), {flat[j]: flat[j + 1] for j in range(0, len(flat) - 1, 2)}))
    return rows


def _missing_index(exc: Exception) -> bool:
    text = str(exc).lower()
    return "no such index" in text or "unknown index" in text or "not found" in text


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
