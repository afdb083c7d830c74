"""One pooled HTTP client to the vLLM replicas.

aiohttp, not httpx: at concurrency 32 against a fast upstream on this 2-core machine aiohttp relayed
more requests/s with less CPU (loadtests/bench_http_clients.py prints the comparison). Transport
failures become OpenAI-shaped 502/504 errors here, so no caller handles aiohttp exceptions.
Closing an :class:`UpstreamResponse` early closes its connection, which is how vLLM learns that the
client went away and aborts the generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

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
        self._headers = {"content-type": "application/json"}
        if cfg.api_key_file:
            with open(cfg.api_key_file) as fh:
                self._headers["authorization"] = f"Bearer {fh.read().strip()}"

    async def start(self) -> None:
        t = self.cfg.timeouts
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.cfg.max_connections, limit_per_host=self.cfg.max_connections,
                                           keepalive_timeout=30, ttl_dns_cache=10),
            timeout=aiohttp.ClientTimeout(total=None, connect=t.connect_s, sock_connect=t.connect_s,
                                          sock_read=t.read_s),
            skip_auto_headers=("User-Agent",),
            auto_decompress=False,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

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
        try:
            resp = await self.session.post(base_url + path, data=body, headers=self._headers)
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
