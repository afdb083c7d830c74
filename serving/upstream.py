"""One pooled HTTP client to the vLLM replicas.

aiohttp, not httpx: at concurrency 32 against a fast upstream on this 2-core machine aiohttp relayed
more requests/s with less CPU (loadtests/bench_http_clients.py prints the comparison). Transport
failures become OpenAI-shaped 502/504 errors here, so no caller handles aiohttp exceptions.
Closing an :class:`UpstreamResponse` early closes its connection, which is how vLLM learns that the
client went away and aborts the generation.

Idle pooled connections are kept ``upstreams.keepalive_s`` (2 s), below vLLM's own idle timeout (5 s):
aiohttp hands out the oldest idle connection first, so with a longer expiry requests regularly went
out on connections vLLM was closing at that moment, and after an event-loop stall on connections it had
already closed (ServerDisconnectedError / connection reset, seen as 502 bursts in the soak). A request
that still fails that way on a reused connection, before any response byte, is sent once more on a new
connection: vLLM never read it, so nothing ran twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson

from serving import metrics
from serving.config import UpstreamConfig
from serving.protocol import OpenAIError


class UpstreamUnreachable(OpenAIError):
    """The request got no response byte back (connect refused or timed out, connection dropped
    before the status line): the replica did not answer it, so another one may."""

    def __init__(self, message: str) -> None:
        super().__init__(502, message, "upstream_error", code="upstream_unreachable")


def _broken_off(exc: BaseException, when: str) -> OpenAIError:
    """A response that started and then failed: 504 on a read timeout, 502 otherwise."""
    if isinstance(exc, asyncio.TimeoutError):
        return OpenAIError(504, "upstream timed out", "upstream_error", code="upstream_timeout")
    return OpenAIError(502, f"upstream failed {when}: {type(exc).__name__}", "upstream_error", code="upstream_error")


class UpstreamResponse:
    """A started upstream response; read it whole or chunk by chunk, then it closes itself."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.content_type = resp.headers.get("content-type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            raise _broken_off(exc, "mid-response") from None
        finally:
            self._resp.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive. Raises OpenAIError if the upstream breaks off."""
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            raise _broken_off(exc, "mid-stream") from None
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection if unread (aborts the generation in vLLM), else return it to the pool."""
        if not self._resp.closed:
            self._resp.close()


class UpstreamClient:
    def __init__(self, cfg: UpstreamConfig) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # new connection per request: the resend
        self._headers = {"content-type": "application/json"}
        if cfg.api_key_file:
            with open(cfg.api_key_file) as fh:
                self._headers["authorization"] = f"Bearer {fh.read().strip()}"

    async def start(self) -> None:
        t = self.cfg.timeouts
        timeout = aiohttp.ClientTimeout(total=None, connect=t.connect_s, sock_connect=t.connect_s, sock_read=t.read_s)
        reuse = aiohttp.TraceConfig()
        reuse.on_connection_reuseconn.append(_mark_reused)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.cfg.max_connections, limit_per_host=self.cfg.max_connections,
                                           keepalive_timeout=self.cfg.keepalive_s, ttl_dns_cache=10),
            timeout=timeout, skip_auto_headers=("User-Agent",), auto_decompress=False, trace_configs=[reuse],
        )
        self._fresh = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.cfg.max_connections, force_close=True, ttl_dns_cache=10),
            timeout=timeout, skip_auto_headers=("User-Agent",), auto_decompress=False,
        )

    async def aclose(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        return self._session

    async def post(self, base_url: str, path: str, body: bytes) -> UpstreamResponse:
        """Send a request and return once the status line and headers are in.

        Raises :class:`UpstreamUnreachable` when no response byte came back (nothing to relay, so
        the caller may send the same bytes elsewhere), an :class:`OpenAIError` otherwise.
        """
        sent = SimpleNamespace(reused=False)
        try:
            try:
                resp = await self.session.post(base_url + path, data=body, headers=self._headers,
                                               trace_request_ctx=sent)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if not sent.reused or self._fresh is None:
                    raise
                metrics.UPSTREAM_STALE_RESENDS.inc()  # closed by vLLM as it was reused: vLLM never read it
                resp = await self._fresh.post(base_url + path, data=body, headers=self._headers)
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamUnreachable("upstream did not accept the connection in time") from None
        except asyncio.TimeoutError:
            raise OpenAIError(504, "upstream did not answer in time", "upstream_error",
                              code="upstream_timeout") from None
        except aiohttp.ClientConnectionError as exc:  # refused, reset, or closed before answering
            raise UpstreamUnreachable(f"upstream unreachable: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:  # it answered, but not in HTTP
            raise OpenAIError(502, f"upstream answered badly: {type(exc).__name__}", "upstream_error",
                              code="upstream_error") from None
        return UpstreamResponse(resp)

    async def get_json(self, url: str, timeout_s: float = 2.0) -> Any:
        """GET a small JSON document (models list, health); errors as OpenAIError 502/504."""
        try:
            async with self.session.get(url, headers=self._headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                if r.status != 200:
                    raise OpenAIError(502, f"upstream answered {r.status}", "upstream_error", code="upstream_error")
                return orjson.loads(await r.read())
        except asyncio.TimeoutError:
            raise OpenAIError(504, "upstream did not answer in time", "upstream_error", code="upstream_timeout") from None
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise OpenAIError(502, f"upstream unreachable: {type(exc).__name__}", "upstream_error",
                              code="upstream_unreachable") from None


async def _mark_reused(_session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: object) -> None:
    """aiohttp trace hook: this request went out on a pooled connection, not a new one."""
    if ctx.trace_request_ctx is not None:
        ctx.trace_request_ctx.reused = True
