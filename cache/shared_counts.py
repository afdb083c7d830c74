"""Counters every gateway replica adds to, in one Redis hash: the stats API and the shadow-mode
false-hit estimate are the fleet's, not the one pod's that happened to answer.

Counts gather in memory and are flushed every ``flush_s`` in one pipeline (an L1 hit must not pay a
Redis round trip to be counted); a failed flush keeps them for the next one. Each flush also marks
this replica alive in a sorted set, so the stats can say how many replicas reported recently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cache.tasks import stop_task

log = logging.getLogger("cachestack.cache")


class SharedCounts:
    def __init__(self, redis: Redis, prefix: str, *, flush_s: float, timeout_s: float,
                 on_flush: Callable[[dict[str, int]], None] | None = None) -> None:
        self.redis = redis
        self.key = f"{prefix}:stats"
        self.replicas_key = f"{prefix}:stats-replicas"
        self.flush_s = flush_s
        self.timeout_s = timeout_s
        self.on_flush = on_flush  # gets the fleet's totals after each flush
        self.replica_id = uuid.uuid4().hex[:12]
        self._pending: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, field: str, n: int = 1) -> None:
        self._pending[field] = self._pending.get(field, 0) + n

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="cachestack-shared-counts")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await self.flush()

    async def flush(self) -> dict[str, int]:
        """Add this replica's counts to the fleet's; the fleet's totals. On failure the counts stay."""
        pending, self._pending = self._pending, {}
        now = time.time()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for field, n in pending.items():
                        pipe.hincrby(self.key, field, n)
                    pipe.zadd(self.replicas_key, {self.replica_id: now})
                    pipe.zremrangebyscore(self.replicas_key, 0, now - self.flush_s * 5)
                    pipe.hgetall(self.key)
                    replies = await pipe.execute()
        except BaseException:
            for field, n in pending.items():
                self.add(field, n)
            raise
        totals = {_text(k): int(v) for k, v in replies[-1].items()}
        if self.on_flush is not None:
            self.on_flush(totals)
        return totals

    async def totals(self) -> tuple[dict[str, int], int]:
        """The fleet's totals (this replica's unflushed counts included) and how many replicas
        flushed within the last few intervals."""
        async with asyncio.timeout(self.timeout_s):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.key)
                pipe.zcount(self.replicas_key, time.time() - self.flush_s * 5, "+inf")
                raw, replicas = await pipe.execute()
        out = {_text(k): int(v) for k, v in raw.items()}
        for field, n in self._pending.items():
            out[field] = out.get(field, 0) + n
        return out, max(int(replicas), 1)

    async def aclose(self) -> None:
        await stop_task(self._task)
        self._task = None
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self.flush()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
