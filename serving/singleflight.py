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
from collections.abc import AsyncIterator, Awaitable, Callable
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
# A flight's stream keeps at most about this many chunk batches (XADD MAXLEN ~): a reader that finds
# the first batches trimmed sees the gap in their sequence numbers and waits for the whole answer.
MAX_BATCHES = 2000
READ_COUNT = 256  # entries per XREAD: a latecomer reads a finished stream in a few round trips


class FlightBroken(Exception):
    """The leader's stream ended without its answer (failed, cancelled, died, or chunks were lost)."""


class Lead:
    """This replica holds the lease: it generates, :meth:`relay` hands followers its upstream bytes as
    they come (in batches, at most one XADD per ``batch_ms``), then :meth:`finish` hands them the
    answer (or releases them to claim again). The lease is renewed while the generation runs."""

    def __init__(self, flights: ReplicaFlights, key: str, token: str) -> None:
        self._flights = flights
        self.key = key
        self.token = token
        self._renew = asyncio.get_running_loop().create_task(self._renewing())
        self._done = False
        self._pending: list[bytes] = []
        self._seq = 0  # batches written (or tried): a follower sees a lost one as a gap
        self._wake = asyncio.Event()
        self._finished = asyncio.Event()
        self._final: dict[str, Any] | None = None
        self._publishing = False

    async def _renewing(self) -> None:
        """The lease, and the chunk stream (if any yet) one lease longer, every ``lease_ms / 3``."""
        f = self._flights
        while True:
            await asyncio.sleep(f.lease_ms / 3000.0)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(f.op_timeout_s):
                    async with f.redis.pipeline(transaction=False) as pipe:
                        pipe.eval(_EXTEND, 1, f.lease_key(self.key), self.token, f.lease_ms)
                        pipe.pexpire(f.result_key(self.key, self.token), f.lease_ms * 2)
                        held, _ = await pipe.execute()
                    if not held:
                        return  # lost it (expired during a Redis hiccup): followers take over

    def relay(self, data: bytes) -> None:
        """Upstream stream bytes as they arrive (any split: followers parse the events themselves)."""
        if self._done or not data:
            return
        self._pending.append(data)
        self._start()

    def finish(self, answer: dict[str, Any] | None) -> None:
        """The answer for every follower, or None (failed, cancelled, incomplete): they claim again, or
        end their relayed stream with an error. Callable once from sync code; the writes run in the
        background, after the chunks still pending."""
        if self._done:
            return
        self._done = True
        self._final = answer
        self._renew.cancel()
        self._finished.set()
        self._start()

    def _start(self) -> None:
        self._wake.set()
        if not self._publishing:
            self._publishing = True
            self._flights.spawn(self._publish())

    async def _publish(self) -> None:
        """Write pending chunks at once, then at most once per ``batch_ms``; the final entry last."""
        f = self._flights
        while True:
            await self._wake.wait()
            self._wake.clear()
            final = self._done
            batch, self._pending = b"".join(self._pending), []
            try:
                await self._write(batch, final)
            except (RedisError, OSError, TimeoutError) as exc:
                if final:
                    raise
                log.info("single-flight chunk write failed (%s); followers see the gap", type(exc).__name__)
            if final:
                return
            with contextlib.suppress(TimeoutError):  # the batch interval, cut short by the end
                async with asyncio.timeout(f.batch_ms / 1000.0):
                    await self._finished.wait()

    async def _write(self, batch: bytes, final: bool) -> None:
        f = self._flights
        stream, lease = f.result_key(self.key, self.token), f.lease_key(self.key)
        async with asyncio.timeout(f.op_timeout_s):
            async with f.redis.pipeline(transaction=False) as pipe:
                creates = batch and self._seq == 0
                if batch:
                    pipe.xadd(stream, {"seq": self._seq, "chunk": batch},  # type: ignore[arg-type]
                              maxlen=MAX_BATCHES, approximate=True)
                    self._seq += 1
                answer = self._final
                if final:
                    fields = {"answer": orjson.dumps(answer)} if answer is not None else {"abort": "1"}
                    pipe.xadd(stream, fields)  # type: ignore[arg-type]
                if creates or final:  # the stream outlives the lease by one lease_ms (renewed with it)
                    pipe.pexpire(stream, f.lease_ms * 2)
                # an answer keeps the lease a while: a latecomer reads it here instead of generating
                # again before the background store lands; a failure frees it for a new leader
                if final and answer is not None:
                    pipe.eval(_EXTEND, 1, lease, self.token, f.lease_ms)
                elif final:
                    pipe.eval(_RELEASE, 1, lease, self.token)
                await pipe.execute()
        if final:
            metrics.FLIGHTS.labels("published" if answer is not None else "aborted").inc()


class Following:
    """A streaming follower whose leader has sent its first chunks: :meth:`chunks` yields the leader's
    upstream bytes as they arrive, from the first, and ends when the answer lands."""

    def __init__(self, flights: ReplicaFlights, key: str, holder: str, first: list[bytes], last_id: bytes,
                 seq: int) -> None:
        self._flights = flights
        self._key = key
        self._holder = holder
        self._first = first
        self._last_id = last_id
        self._seq = seq

    async def chunks(self) -> AsyncIterator[bytes]:
        """Raises :class:`FlightBroken` when the leader aborts, dies (lease gone: within ``lease_ms``
        plus ``poll_ms``), a batch is missing, or Redis fails; a live leader ends or aborts by its own
        upstream read timeout."""
        for data in self._first:
            yield data
        f = self._flights
        stream = f.result_key(self._key, self._holder)
        while True:
            try:
                async with asyncio.timeout(f.op_timeout_s + f.poll_ms / 1000.0):
                    reply = await f.redis.xread({stream: self._last_id}, count=READ_COUNT, block=f.poll_ms)
                    current = None if reply else await f.redis.get(f.lease_key(self._key))
            except (RedisError, OSError, TimeoutError) as exc:
                raise FlightBroken(f"Redis failed: {type(exc).__name__}") from None
            if not reply:
                if current is None or current.decode() != self._holder:
                    raise FlightBroken("the leader vanished")
                continue
            for entry_id, fields in _entries(reply):
                self._last_id = entry_id
                if b"answer" in fields:
                    return
                if b"abort" in fields:
                    raise FlightBroken("the leader failed")
                if int(fields[b"seq"]) != self._seq:
                    raise FlightBroken("chunks were lost")
                self._seq += 1
                yield fields[b"chunk"]


class ReplicaFlights:
    """Single-flight across gateway replicas: a short Redis lease (``SET NX PX``) elects one leader
    per exact key; the others read its chunks and answer from a Redis stream named after its lease
    token.

    A leader that fails or is cancelled writes an abort (its followers claim again at once); one that
    dies stops renewing and its lease expires after ``lease_ms``, which a waiting follower notices
    within ``poll_ms``. Exactly one of the claimants then leads. Redis trouble fails open: the
    request calls upstream alone.
    """

    def __init__(self, redis: Redis | RedisCluster, prefix: str, *, lease_ms: int, poll_ms: int, max_wait_s: float,
                 op_timeout_s: float, batch_ms: int = 20) -> None:
        self.redis = redis
        self.prefix = prefix
        self.lease_ms = lease_ms
        self.poll_ms = poll_ms
        self.max_wait_s = max_wait_s
        self.op_timeout_s = op_timeout_s
        self.batch_ms = batch_ms
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

    async def claim(self, key: str, stream: bool = False) -> Lead | Following | dict[str, Any] | None:
        """Lead (generate, then ``finish``), the leader's answer, or None: call upstream alone
        (Redis trouble, or waited ``max_wait_s``). A ``stream`` follower gets a :class:`Following` as
        soon as the leader's first chunk is in; before that, a failed leader is taken over."""
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
            outcome = await self._follow(key, holder, deadline, stream) if holder else _RETRY
            if outcome is not _RETRY:
                return outcome  # type: ignore[return-value]

    async def _follow(self, key: str, holder: str, deadline: float,
                      stream: bool) -> Following | dict[str, Any] | object | None:
        """Wait for the leader's first chunk (``stream``) or its answer. Chunks that do not start at
        the first batch (trimmed, or a write lost) are skipped: the answer is replayed instead."""
        name = self.result_key(key, holder)
        last_id = b"0"
        relayable = stream
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                metrics.FLIGHTS.labels("gave_up").inc()
                return None
            try:
                async with asyncio.timeout(self.op_timeout_s + self.poll_ms / 1000.0):
                    reply = await self.redis.xread({name: last_id}, count=READ_COUNT,
                                                   block=max(1, int(min(self.poll_ms / 1000.0, left) * 1000)))
                    if not reply:
                        current = await self.redis.get(self.lease_key(key))
            except (RedisError, OSError, TimeoutError):
                metrics.FLIGHTS.labels("alone").inc()
                return None
            if not reply:
                if current is None or current.decode() != holder:
                    return _RETRY  # the leader died (its lease expired) or another leads now
                continue
            first: list[bytes] = []
            chunk_id = last_id
            for entry_id, fields in _entries(reply):
                if first and (b"answer" in fields or b"abort" in fields):
                    break  # relay the chunks first: the Following reads this entry again
                last_id = entry_id
                if b"answer" in fields:
                    metrics.FLIGHTS.labels("followed").inc()
                    return orjson.loads(fields[b"answer"])
                if b"abort" in fields:
                    return _RETRY
                if relayable and int(fields[b"seq"]) == len(first):
                    first.append(fields[b"chunk"])
                    chunk_id = entry_id
                else:
                    relayable, first = False, []
            if first:
                metrics.FLIGHTS.labels("relayed").inc()
                return Following(self, key, holder, first, chunk_id, len(first))

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Let pending writes land (a bounded while: a lead still streaming is cut), then disconnect."""
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.redis.aclose()


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The (id, fields) entries of a one-stream XREAD reply (RESP2 list or RESP3 map)."""
    streams = list(reply.values()) if isinstance(reply, dict) else [entries for _, entries in reply]
    entries = streams[0]
    if isinstance(entries, list) and entries and isinstance(entries[0], list):  # RESP3 {stream: [[...]]}
        entries = entries[0]
    return [(entry_id, dict(fields)) for entry_id, fields in entries]
