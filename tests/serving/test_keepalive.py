"""Keep-alive races on both hops, caused for real: a real uvicorn server with a short idle timeout and
an event loop that stalls across it (time.sleep on the loop, as a loaded machine does), so the request
goes out on a pooled connection the server has already closed. Before the fix each was a 502 from the
gateway (gateway -> vLLM) or a reset seen by the client (client -> gateway) in the 30-minute soak."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import uvicorn

from serving import metrics
from serving.commands.serve import uvicorn_options
from serving.config import Settings, UpstreamConfig
from serving.local.processes import free_port
from serving.upstream import UpstreamClient


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), (b"content-length", b"12")]})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


@contextmanager
def _server(**options: Any) -> Iterator[str]:
    """A real uvicorn (httptools, as vLLM and the gateway run it) in a thread of its own."""
    options = {"host": "127.0.0.1", "port": free_port(), "log_level": "warning", "http": "httptools",
               "lifespan": "off", **options}
    server = uvicorn.Server(uvicorn.Config(_app, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{options['port']}"
    finally:
        server.should_exit = True
        thread.join(10)


def _stalled_second_request(client_post: Any, stall_s: float) -> Any:
    async def go() -> Any:
        await client_post()
        await asyncio.sleep(0.05)
        time.sleep(stall_s)  # the loop is blocked while the server's idle timer closes the connection
        return await client_post()
    return go


def test_upstream_pool_expires_idle_connections_before_vllm_closes_them() -> None:
    # vLLM's uvicorn closes idle connections after 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE)
    assert UpstreamConfig().keepalive_s < 5
    with _server(timeout_keep_alive=5) as url:
        async def run() -> int:
            client = UpstreamClient(UpstreamConfig(urls=[url]))
            await client.start()
            try:
                async def post() -> int:
                    resp = await client.post(url, "/v1/chat/completions", b"{}")
                    await resp.read()
                    return resp.status
                before = metrics.UPSTREAM_STALE_RESENDS._value.get()
                status = await _stalled_second_request(post, 5.5)()
                assert metrics.UPSTREAM_STALE_RESENDS._value.get() == before  # expired in the pool, not resent
                return status
            finally:
                await client.aclose()
        assert asyncio.run(run()) == 200


def test_request_on_a_connection_the_upstream_closed_is_resent_once_on_a_new_one() -> None:
    # the upstream's idle timeout (1 s) below the pool's expiry (30 s): the reused connection is dead
    with _server(timeout_keep_alive=1) as url:
        async def run() -> tuple[int, float]:
            client = UpstreamClient(UpstreamConfig(urls=[url], keepalive_s=30))
            await client.start()
            try:
                async def post() -> int:
                    resp = await client.post(url, "/v1/chat/completions", b"{}")
                    await resp.read()
                    return resp.status
                before = metrics.UPSTREAM_STALE_RESENDS._value.get()
                status = await _stalled_second_request(post, 1.5)()
                return status, metrics.UPSTREAM_STALE_RESENDS._value.get() - before
            finally:
                await client.aclose()
        assert asyncio.run(run()) == (200, 1)


def _idle_close_s(url: str, limit_s: float) -> float:
    """Seconds an idle HTTP/1.1 connection stays open after a response (limit_s: still open)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while not buf.endswith(b'{"ok": true}'):
            buf += s.recv(65536)
        started = time.monotonic()
        s.settimeout(limit_s)
        try:
            assert s.recv(1) == b""
        except TimeoutError:
            return limit_s
        return time.monotonic() - started


def test_gateway_keeps_idle_client_connections_for_server_keep_alive_s() -> None:
    opts = uvicorn_options(Settings(server={"keep_alive_s": 1.0}), port=free_port())
    with _server(**{**opts, "log_level": "warning", "loop": "asyncio"}) as url:
        assert 0.8 <= _idle_close_s(url, 5.0) < 3.0
    assert Settings().server.keep_alive_s >= 60  # longer than clients and load balancers keep theirs


def test_client_reusing_an_idle_connection_after_a_stall_is_not_reset() -> None:
    # the soak's client: aiohttp's default pool (idle connections kept 15 s), a stall of 5.5 s
    opts = uvicorn_options(Settings(), port=free_port())
    with _server(**{**opts, "log_level": "warning", "loop": "asyncio"}) as url:
        async def run() -> int:
            async with aiohttp.ClientSession() as http:
                async def post() -> int:
                    async with http.post(url + "/v1/chat/completions", data=b"{}") as r:
                        await r.read()
                        return r.status
                return await _stalled_second_request(post, 5.5)()
        assert asyncio.run(run()) == 200
