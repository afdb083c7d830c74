"""Calling a vLLM replica and relaying its answer: whole (JSON) or as server-sent events.

Every call holds its replica through a :class:`Lease`, the one place a replica is released: an upstream
failure (transport error, 5xx, a stream that broke off) counts against the replica; a cancellation
(a cache hit or a client that left) and a 4xx do not. vLLM's 5xx bodies never reach a client: they
become the gateway's own 502/503 (:func:`upstream_error`); its 4xx are passed on as they are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response, StreamingResponse

from serving import failover, metrics
from serving.hits import SSE_HEADERS, cache_headers
from serving.protocol import OpenAIError
from serving.router import Replica, Router
from serving.singleflight import Lead
from serving.responses_events import ResponsesAssembler
from serving.streaming import StreamAssembler
from serving.upstream import UpstreamResponse

if TYPE_CHECKING:
    from serving.app import Gateway

log = logging.getLogger("cachestack")


class Lease:
    """One replica answering one upstream call, released exactly once with its verdict on the replica."""

    def __init__(self, router: Router, replica: Replica) -> None:
        self._router = router
        self.replica = replica
        self._held = True

    @classmethod
    async def send(cls, gw: Gateway, affinity: str, path: str, data: bytes) -> tuple[Lease, UpstreamResponse]:
        """POST to a replica (failing over on connect errors, serving/failover.py); the started response."""
        replica, resp = await failover.send(gw.router, gw.upstream, affinity, path, data)
        return cls(gw.router, replica), resp

    def release(self, healthy: bool) -> None:
        if self._held:
            self._held = False
            self._router.release(self.replica, healthy)

    @contextmanager
    def failing_on_upstream_error(self) -> Iterator[None]:
        """Release on any exception out of the block: unhealthy for an upstream error, healthy otherwise."""
        try:
            yield
        except OpenAIError as exc:
            metrics.UPSTREAM_ERRORS.labels(str(exc.code)).inc()
            self.release(False)
            raise
        except BaseException:  # a hit, a client that left, a closed generator: not the replica's failure
            self.release(True)
            raise


@dataclass(frozen=True, slots=True)
class OpenedStream:
    """A streamed upstream response that answered 200, and the lease it holds until it is closed;
    ``flight``: other replicas wait for this stream's answer (serving/singleflight.py)."""

    lease: Lease
    resp: UpstreamResponse
    flight: Lead | None = None

    def close(self) -> None:
        """Drop an unwanted stream (aborts the generation in vLLM); the replica did nothing wrong."""
        self.resp.close()
        self.lease.release(True)
        if self.flight is not None:
            self.flight.finish(None)


@dataclass(slots=True)
class RequestTimer:
    """Observes ``cachestack_request_seconds`` once: at the response headers, or a stream's first byte."""

    path: str
    started: float
    done: bool = False

    def observe(self, result: str) -> None:
        if not self.done:
            self.done = True
            metrics.REQUEST_SECONDS.labels(self.path, result).observe(time.perf_counter() - self.started)


def upstream_failure(status: int, payload: bytes) -> OpenAIError:
    """vLLM 5xx -> the gateway's own 502 (503 stays 503: overloaded, worth a retry).

    vLLM's body is never passed on: a 5xx body can hold a stack trace or internals. Its first bytes go
    to the log at debug level only, since an engine's message may quote the prompt.
    """
    metrics.UPSTREAM_ERRORS.labels(f"http_{status}").inc()
    log.warning("upstream answered HTTP %d", status)
    log.debug("upstream HTTP %d body: %r", status, payload[:500])
    return OpenAIError(503 if status == 503 else 502, f"upstream answered HTTP {status}", "upstream_error",
                       code="upstream_error")


def upstream_error(status: int, payload: bytes) -> tuple[int, bytes, str]:
    """:func:`upstream_failure` as (status, body, content type)."""
    err = upstream_failure(status, payload)
    return err.status, err.body(), "application/json"


async def call(gw: Gateway, path: str, affinity: str, data: bytes) -> tuple[int, bytes, str]:
    """A non-streamed upstream call: (status, body, content type), vLLM's 5xx already mapped."""
    lease, resp = await Lease.send(gw, affinity, path, data)
    with lease.failing_on_upstream_error():
        payload = await resp.read()
    lease.release(resp.status < 500)
    if resp.status >= 500:
        return upstream_error(resp.status, payload)
    return resp.status, payload, resp.content_type


async def open_stream(gw: Gateway, path: str, affinity: str, data: bytes) -> OpenedStream | Response:
    """Send a streamed request; the open response to relay, or vLLM's refusal as a Response."""
    lease, resp = await Lease.send(gw, affinity, path, data)
    if resp.status == 200:
        return OpenedStream(lease, resp)
    with lease.failing_on_upstream_error():
        try:
            payload = await resp.read()
        finally:
            resp.close()
    lease.release(resp.status < 500)
    status, payload, ctype = upstream_error(resp.status, payload) if resp.status >= 500 else (
        resp.status, payload, resp.content_type)
    return Response(payload, status, media_type=ctype)


def json_object(data: bytes) -> dict[str, Any] | None:
    """``data`` decoded when it is a JSON object, else None."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def relay_stream(opened: OpenedStream, assembler: StreamAssembler | ResponsesAssembler, result: str, timer: RequestTimer,
                 on_answer: Callable[[dict[str, Any]], None]) -> StreamingResponse:
    """Relay an opened stream to the client as it comes; a complete answer goes to ``on_answer`` after it.

    The upstream breaking off ends the stream with an OpenAI-style error event; a client leaving closes
    the upstream connection, which aborts the generation.
    """
    lease, resp = opened.lease, opened.resp

    async def events() -> AsyncIterator[bytes]:
        answer = None
        try:
            async for out in relayed():
                yield out
            answer = assembler.complete_answer()
        finally:
            if opened.flight is not None:
                opened.flight.finish(answer)  # None (broke off, client left): the followers claim again
        if answer is not None:
            on_answer(answer)

    async def relayed() -> AsyncIterator[bytes]:
        try:
            with lease.failing_on_upstream_error():
                async for chunk in resp.chunks():
                    if opened.flight is not None:
                        opened.flight.relay(chunk)  # followers on other replicas get it as it comes
                    out = assembler.feed(chunk)
                    if out:
                        timer.observe(result)
                        yield out
                rest = assembler.flush()
                if rest:
                    yield rest
        except OpenAIError as exc:  # upstream broke off: tell the client in-band, store nothing
            assembler.broken = True
            yield b"data: " + exc.body() + b"\n\n"
        finally:
            resp.close()
            lease.release(True)  # no-op when the upstream failed: the lease was released unhealthy

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**SSE_HEADERS, **cache_headers(result)})
