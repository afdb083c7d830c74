"""Exact cache of embedding vectors, scoped by tenant and model.

An embedding is a pure function of (model, input), so a repeat is answered with a copy, never an
approximation: there is no semantic layer here. The key still carries the tenant scope, because a
shared entry would let one tenant learn, from the speed of an answer, which texts another embedded.
Hot entries live in an in-process L1; Redis calls go through the cache service's fail-open guard
(lookup budget, store-down state), so a slow or absent Redis only means computing the vectors.
"""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from cache.l1 import L1Cache
from cache.service import CacheService

_HEADER = struct.Struct("<II")  # prompt tokens, rows


@dataclass(frozen=True, slots=True)
class Vectors:
    """Rows of float32 vectors and the prompt tokens they cost."""

    tokens: int
    rows: np.ndarray  # shape (n, dim), float32

    def encode(self) -> bytes:
        rows = np.ascontiguousarray(self.rows, dtype="<f4")
        return _HEADER.pack(self.tokens, rows.shape[0]) + rows.tobytes()

    @classmethod
    def decode(cls, blob: bytes) -> Vectors:
        """ValueError for a blob that is not one (damaged, or written by something else)."""
        if len(blob) < _HEADER.size:
            raise ValueError("vector entry too short")
        tokens, n = _HEADER.unpack_from(blob)
        flat = np.frombuffer(blob, dtype="<f4", offset=_HEADER.size)
        if n == 0 or flat.size % n:
            raise ValueError("vector entry has a ragged shape")
        return cls(tokens, flat.reshape(n, -1).astype(np.float32))


def vector_key(scope: str, model: str, item: Any) -> str:
    """Digest of (tenant scope, model identity, input): one text, or a whole forwarded request."""
    return hashlib.sha256(orjson.dumps([scope, model, item], option=orjson.OPT_SORT_KEYS)).hexdigest()[:40]


class VectorCache:
    def __init__(self, service: CacheService, ttl_s: int, l1_max_bytes: int, l1_max_age_s: float = 30.0) -> None:
        self.service = service
        self.ttl_s = ttl_s
        self.l1 = L1Cache(l1_max_bytes, l1_max_age_s)
        self._prefix = f"{service.store.cfg.index_prefix}:vec:"

    async def get_many(self, keys: list[str]) -> list[Vectors | None]:
        """The cached vectors for each key (None: not cached, damaged, or the store is unavailable)."""
        found: list[Vectors | None] = [None] * len(keys)
        wanted: list[int] = []
        for i, key in enumerate(keys):
            hot = self.l1.get(key)
            if hot is not None:
                found[i] = hot.answer["v"]
            else:
                wanted.append(i)
        if not wanted:
            return found
        topology = self.service.store.topology
        blobs = await self.service.guarded(lambda: topology.mget([self._prefix + keys[i] for i in wanted]),
                                           "vectors")
        for i, blob in zip(wanted, blobs or [], strict=False):
            if blob is None:
                continue
            try:
                found[i] = vectors = Vectors.decode(blob)
            except ValueError:
                continue  # a damaged entry is recomputed and overwritten
            self.l1.put(keys[i], {"v": vectors}, time.time(), self.ttl_s)
        return found

    def put_later(self, items: dict[str, Vectors]) -> None:
        """Write computed vectors in the background: the response never waits for the cache."""
        if not items:
            return
        now = time.time()
        for key, v in items.items():
            self.l1.put(key, {"v": v}, now, self.ttl_s)
        self.service.spawn(self._put(items))

    async def _put(self, items: dict[str, Vectors]) -> None:
        redis = self.service.store.redis
        blobs = {self._prefix + key: v.encode() for key, v in items.items()}

        async def write() -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for key, blob in blobs.items():
                    pipe.set(key, blob, ex=self.ttl_s)
                await pipe.execute()

        await self.service.guarded(write, "vectors_store", self.service.store.cfg.store_timeout_ms / 1000.0)
