"""Identical in-flight misses share one upstream call (a burst of the same question costs one generation).

Two levels: :class:`SingleFlight` joins identical misses inside this process; :class:`ReplicaFlights`
joins the process leaders of all gateway replicas through Redis (docs/replicas.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from serving import metrics

log = logging.getLogger("cachestack")

T = TypeVar("T")


class SingleFlight:
    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[object]] = {}

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` unless one with the same key is running; then wait for its result (or error)."""
        pending = self._calls.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)  # type: ignore[return-value]
            except asyncio.CancelledError:
                if pending.cancelled():  # the leader's client went away, not ours: call ourselves
                    return await call()
                raise
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._calls[key] = fut
        try:
            result = await call()
        except BaseException as exc:
            if isinstance(exc, Exception):
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: there may be no follower
            else:
                fut.cancel()
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            self._calls.pop(key, None)

    def __len__(self) -> int:
        return len(self._calls)


# SET NX PX, or who holds the lease: one round trip, so a follower knows whose result to wait for.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, ARGV[1]} end
return {0, redis.call('GET', KEYS[1]) or ''}
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RETRY = object()  # the leader failed or vanished: claim again


class Lead:
    """This replica holds the lease: it generates, then :meth:`finish` hands followers the answer
    (or releases them to claim again). The lease is renewed while the generation runs."""

    def __init__(self, flights: ReplicaFlights, key: str, token: str) -> None:
        self._flights = flights
        self.key = key
        self.token = token
        self._renew = asyncio.get_running_loop().create_task(self._renewing())
        self._done = False

    async def _renewing(self) -> None:
        f = self._flights
        while True:
            await asyncio.sleep(f.lease_ms / 3000.0)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(f.op_timeout_s):
                    if not await f.redis.eval(_EXTEND, 1, f.lease_key(self.key), self.token, f.lease_ms):
                        return  # lost it (expired during a Redis hiccup): followers take over

    def finish(self, answer: dict[str, Any] | None) -> None:
        """The answer for every follower, or None (failed, cancelled, incomplete): they claim again.
        Callable once from sync code; the Redis writes run in the background."""
        if self._done:
            return
        self._done = True
        self._renew.cancel()
        self._flights.spawn(self._publish(answer))

    async def _publish(self, answer: dict[str, Any] | None) -> None:
        f = self._flights
        stream, lease = f.result_key(self.key, self.token), f.lease_key(self.key)
        fields = {"answer": orjson.dumps(answer)} if answer is not None else {"abort": "1"}
        async with asyncio.timeout(f.op_timeout_s):
            async with f.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
                pipe.pexpire(stream, f.lease_ms * 2)
                # an answer keeps the lease a while: a latecomer reads it here instead of generating
                # again before the background store lands; a failure frees it for a new leader
                if answer is not None:
                    pipe.eval(_EXTEND, 1, lease, self.token, f.lease_ms)
                else:
                    pipe.eval(_RELEASE, 1, lease, self.token)
                await pipe.execute()
        metrics.FLIGHTS.labels("published" if answer is not None else "aborted").inc()


class ReplicaFlights:
    """Single-flight across gateway replicas: a short Redis lease (``SET NX PX``) elects one leader
    per exact key; the others wait for its answer on a Redis stream named after its lease token.

    A leader that fails or is cancelled writes an abort (its followers claim again at once); one that
    dies stops renewing and its lease expires after ``lease_ms``, which a waiting follower notices
    within ``poll_ms``. Exactly one of the claimants then leads. Redis trouble fails open: the
    request calls upstream alone.
    """

    def __init__(self, redis: Redis | RedisCluster, prefix: str, *, lease_ms: int, poll_ms: int, max_wait_s: float,
                 op_timeout_s: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.lease_ms = lease_ms
        self.poll_ms = poll_ms
        self.max_wait_s = max_wait_s
        self.op_timeout_s = op_timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    def lease_key(self, key: str) -> str:
        return f"{self.prefix}:flight:{key}"

    def result_key(self, key: str, token: str) -> str:
        return f"{self.prefix}:flight:{key}:{token}"

    def spawn(self, work: Awaitable[None]) -> None:
        async def quiet() -> None:
            try:
                await work
            except (RedisError, OSError, TimeoutError) as exc:
                log.info("single-flight release failed (%s); followers wait for the lease to expire",
                         type(exc).__name__)

        task = asyncio.get_running_loop().create_task(quiet())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def claim(self, key: str) -> Lead | dict[str, Any] | None:
        """Lead (generate, then ``finish``), the leader's answer, or None: call upstream alone
        (Redis trouble, or waited ``max_wait_s``)."""
        deadline = time.monotonic() + self.max_wait_s
        first = True
        while True:
            token = uuid.uuid4().hex
            try:
                async with asyncio.timeout(self.op_timeout_s):
                    won, holder = await self.redis.eval(_CLAIM, 1, self.lease_key(key), token, self.lease_ms)
            except (RedisError, OSError, TimeoutError) as exc:
                metrics.FLIGHTS.labels("alone").inc()
                log.info("single-flight claim failed (%s); calling upstream alone", type(exc).__name__)
                return None
            if won:
                metrics.FLIGHTS.labels("leader" if first else "takeover").inc()
                return Lead(self, key, token)
            first = False
            holder = holder.decode() if isinstance(holder, bytes) else str(holder)
            outcome = await self._follow(key, holder, deadline) if holder else _RETRY
            if outcome is not _RETRY:
                return outcome  # type: ignore[return-value]

    async def _follow(self, key: str, holder: str, deadline: float) -> dict[str, Any] | object | None:
        stream = self.result_key(key, holder)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                metrics.FLIGHTS.labels("gave_up").inc()
                return None
            try:
                async with asyncio.timeout(self.op_timeout_s + self.poll_ms / 1000.0):
                    reply = await self.redis.xread({stream: "0"}, count=1,
                                                   block=max(1, int(min(self.poll_ms / 1000.0, left) * 1000)))
                    if not reply:
                        current = await self.redis.get(self.lease_key(key))
            except (RedisError, OSError, TimeoutError):
                metrics.FLIGHTS.labels("alone").inc()
                return None
            if reply:
                fields = _first_entry(reply)
                if b"answer" in fields:
                    metrics.FLIGHTS.labels("followed").inc()
                    return orjson.loads(fields[b"answer"])
                return _RETRY
            if current is None or current.decode() != holder:
                return _RETRY  # the leader died (its lease expired) or another leads now

    async def aclose(self) -> None:
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.redis.aclose()


def _first_entry(reply: Any) -> dict[bytes, bytes]:
    """The fields of the first entry of an XREAD reply (RESP2 list or RESP3 map)."""
    streams = list(reply.values()) if isinstance(reply, dict) else [entries for _, entries in reply]
    entries = streams[0]
    if isinstance(entries, list) and entries and isinstance(entries[0], list):  # RESP3 {stream: [[...]]}
        entries = entries[0]
    _, fields = entries[0]
    return dict(fields)
