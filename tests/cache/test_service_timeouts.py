"""The store's breaker in the service, against the real Valkey: a lookup that overruns its budget once
(a busy gateway, a short Redis stall) skips the cache for that request only; consecutive timeouts skip
the store for everyone once a check run outside the event loop confirms that Redis, not the gateway,
is slow; a readiness probe never switches the cache off; a Redis that is really gone is skipped at
once. Stalls are real (CLIENT PAUSE, a blocked event loop, a stopped Valkey)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from service_helpers import hog_loop, service_with_entry

from cache.policy import CacheControl, Caller


async def test_one_timeout_does_not_trip_but_consecutive_ones_do(redis_url: str, embedder: Any) -> None:
    svc, store, plan = await service_with_entry(redis_url, embedder, "What is the capital of France?", "Paris.")
    assert (await svc.lookup(plan)).hit is not None
    admin = aioredis.from_url(redis_url)
    try:
        await admin.execute_command("CLIENT", "PAUSE", 400, "ALL")
        assert (await svc.lookup(plan)).hit is None  # this request skipped the cache...
        assert not svc.degraded  # ...but the store is not given up on
        await asyncio.sleep(0.5)
        assert (await svc.lookup(plan)).hit is not None
        await admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        for _ in range(3):
            assert (await svc.lookup(plan)).hit is None
        await asyncio.sleep(store.cfg.store_timeout_ms / 1000 + 0.2)  # the confirming check gives up too
        assert svc.degraded and svc.breaker.trips == 1
    finally:
        await asyncio.sleep(1.6)
        await admin.aclose()
        await store.aclose()


async def test_lookups_on_a_saturated_event_loop_never_trip(redis_url: str, embedder: Any) -> None:
    """Concurrent lookups while the loop is held 80 ms at a time: budgets overrun on a healthy Redis
    and confirming checks start, but they run in a thread, Redis answers them, and the store stays on."""
    svc, store, plan = await service_with_entry(redis_url, embedder, "What is the capital of Spain?", "Madrid.")
    try:
        async def lookups() -> None:
            for _ in range(10):
                await asyncio.gather(*(svc.lookup(plan) for _ in range(8)))

        await asyncio.gather(hog_loop(2.0), lookups())
        await svc.drain()
        assert svc.breaker.trips == 0 and not svc.degraded
        assert (await svc.lookup(plan)).hit is not None
    finally:
        await store.aclose()


async def test_readiness_under_client_pause_never_trips(redis_url: str, embedder: Any) -> None:
    """A readiness probe while Redis stalls: it reports the stall, and lookups keep using the store."""
    svc, store, plan = await service_with_entry(redis_url, embedder, "What is the capital of Italy?", "Rome.")
    admin = aioredis.from_url(redis_url)
    try:
        await admin.execute_command("CLIENT", "PAUSE", 800, "ALL")
        assert await svc.ready() is False
        assert svc.last_error is not None and not svc.degraded and svc.breaker.trips == 0
        await asyncio.sleep(0.9)
        assert (await svc.lookup(plan)).hit is not None
        assert await svc.ready() is True and svc.last_error is None
    finally:
        await admin.aclose()
        await store.aclose()


async def test_readiness_on_a_saturated_event_loop_never_trips(redis_url: str, embedder: Any) -> None:
    """Kubelet's probe arriving while the loop is busy: the check's verdict is Redis's, not the loop's."""
    svc, store, plan = await service_with_entry(redis_url, embedder, "What is the capital of Peru?", "Lima.")
    try:
        results = await asyncio.gather(*(svc.ready() for _ in range(5)), hog_loop(1.0))
        assert results[:5] == [True] * 5
        assert svc.breaker.trips == 0 and not svc.degraded
        assert (await svc.lookup(plan)).hit is not None
    finally:
        await store.aclose()


async def test_a_stopped_redis_trips_at_once_and_comes_back(embedder: Any, tmp_path: Path) -> None:
    """Real lookup failures still switch the store off: one refused connection, and every later lookup
    skips the store without waiting; a readiness probe does not switch it back on while Redis is gone;
    once Redis answers again the next check after retry_after_s restores it."""
    from serving.local.processes import free_port, valkey_child, wait_redis

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    child = valkey_child(port, tmp_path)
    child.start()
    svc = store = None
    try:
        wait_redis(child, port)
        svc, store, plan = await service_with_entry(url, embedder, "What is the capital of Chile?", "Santiago.")
        svc.breaker.retry_after_s = 0.5
        assert (await svc.lookup(plan)).hit is not None
        child.stop(grace_s=0.1)
        assert (await svc.lookup(plan)).hit is None
        assert svc.degraded and svc.breaker.trips == 1 and "lookup" in (svc.last_error or "")
        started = time.perf_counter()
        assert (await svc.lookup(plan)).hit is None
        assert time.perf_counter() - started < 0.01  # skipped, not tried
        assert await svc.ready() is False and svc.degraded
        child = valkey_child(port, tmp_path)
        child.start()
        wait_redis(child, port)
        await asyncio.sleep(0.6)
        assert (await svc.lookup(plan)).hit is None  # the new Redis is empty; the store is in use again
        assert not svc.degraded and svc.breaker.trips == 1
    finally:
        if store is not None:
            await store.aclose()
        child.stop()


def test_what_counts_as_running_out_of_time() -> None:
    """redis-py's own socket timeout and a wait for a pooled connection fire on a saturated loop just as
    the budget does, also when redisvl wraps them; a refused connection or a server error does not."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redisvl.exceptions import RedisSearchError

    from cache.service import timed_out

    def wrapped(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except Exception as exc:
                raise RedisSearchError("index.exists failed") from exc
        except RedisSearchError as outer:
            return outer

    assert timed_out(TimeoutError()) and timed_out(RedisTimeoutError("Timeout reading from socket"))
    assert timed_out(RedisConnectionError("No connection available."))
    assert timed_out(wrapped(RedisTimeoutError("Timeout connecting to server")))
    assert not timed_out(RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))
    assert not timed_out(ResponseError("OOM command not allowed"))
    assert not timed_out(wrapped(RedisConnectionError("Connection refused")))


async def test_a_full_connection_pool_never_trips(redis_url: str, embedder: Any) -> None:
    """One pooled socket, writes paused: stores queue for the socket and give up (a wait, not a Redis
    failure); the store stays on for everyone."""
    from service_helpers import chat, make_service

    svc, store = make_service(redis_url, embedder, redis={"max_connections": 1, "store_timeout_ms": 300})
    assert await svc.connect()
    admin = aioredis.from_url(redis_url)
    answer = {"choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}
    try:
        await admin.execute_command("CLIENT", "PAUSE", 1000, "WRITE")
        for i in range(6):
            svc.store_later(svc.plan("chat", chat(f"pool question {i}?"), Caller("t"), CacheControl(), None), answer)
        await svc.drain()
        assert svc.breaker.trips == 0 and not svc.degraded
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        await store.aclose()
