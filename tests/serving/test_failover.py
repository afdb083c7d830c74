"""Failover: a replica that cannot be reached is skipped for the next one; nothing else is retried.

The replicas are real sockets on 127.0.0.1: a closed port refuses the connection, a listener that
closes every connection drops it before the status line, a small aiohttp server answers or hangs.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from serving import failover
from serving.config import RoutingConfig, TimeoutConfig, UpstreamConfig
from serving.protocol import OpenAIError
from serving.router import Router
from serving.upstream import UpstreamClient


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once it is closed


@pytest.fixture
async def answering(serve_app: Callable[[web.Application], Awaitable[str]]) -> tuple[str, list[str]]:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path == "/hang":
            await asyncio.sleep(30)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    return await serve_app(app), seen


@pytest.fixture
async def dropping() -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


async def client_and_router(urls: list[str], read_s: float = 5.0, eject_after_failures: int = 5,
                            eject_for_s: float = 10.0) -> tuple[UpstreamClient, Router]:
    cfg = UpstreamConfig(urls=urls, timeouts=TimeoutConfig(connect_s=1.0, read_s=read_s),
                         routing=RoutingConfig(policy="round_robin", eject_after_failures=eject_after_failures,
                                               eject_for_s=eject_for_s))
    client = UpstreamClient(cfg)
    await client.start()
    return client, Router(cfg)


@pytest.mark.parametrize("dead", ["refused", "dropped"])
async def test_unreachable_replica_is_skipped_for_the_next(answering, dropping, dead):
    url, seen = answering
    first = closed_port() if dead == "refused" else dropping
    client, router = await client_and_router([first, url])
    try:
        for _ in range(4):  # round robin starts on the dead replica every other time
            replica, resp = await failover.send(router, client, "", "/v1/chat/completions", b"{}")
            assert replica.url == url and resp.status == 200
            await resp.read()
            router.release(replica, True)
        assert len(seen) == 4
        dead_replica = next(r for r in router.replicas() if r.url == first)
        assert dead_replica.in_flight == 0 and dead_replica.failures == dead_replica.chosen >= 2
    finally:
        await client.aclose()


async def test_every_replica_unreachable_is_502_after_one_try_each():
    urls = [closed_port(), closed_port()]
    client, router = await client_and_router(urls)
    try:
        with pytest.raises(OpenAIError) as err:
            await failover.send(router, client, "", "/v1/chat/completions", b"{}")
        assert err.value.status == 502 and err.value.code == "upstream_unreachable"
        assert [r.failures for r in router.replicas()] == [1, 1]
        assert all(r.in_flight == 0 for r in router.replicas())
    finally:
        await client.aclose()


async def test_a_read_timeout_is_not_retried(answering):
    url, seen = answering
    client, router = await client_and_router([url, closed_port()], read_s=0.3)
    try:
        with pytest.raises(OpenAIError) as err:
            await failover.send(router, client, "", "/hang", b"{}")
        assert err.value.status == 504
        assert [r.failures for r in router.replicas()] == [1, 0]  # the second was never tried
    finally:
        await client.aclose()


async def test_no_replica_left_is_503():
    client, router = await client_and_router([closed_port()])
    router.set_urls([])
    try:
        with pytest.raises(OpenAIError) as err:
            await failover.send(router, client, "", "/v1/chat/completions", b"{}")
        assert err.value.status == 503 and err.value.code == "no_upstream_available"
    finally:
        await client.aclose()


async def test_a_single_replica_that_stalled_is_used_again_as_soon_as_it_answers(serve_app):
    """One replica stalls long enough to be ejected, then recovers. The gateway keeps sending to it
    (there is no better one) instead of answering 503 for eject_for_s. A stall on cue is a fault
    vLLM cannot produce, hence the stand-in."""
    stalling = {"on": True}

    async def handler(_: web.Request) -> web.Response:
        if stalling["on"]:
            await asyncio.sleep(30)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    client, router = await client_and_router([await serve_app(app)], read_s=0.2, eject_after_failures=2,
                                             eject_for_s=60.0)
    (only,) = router.replicas()
    try:
        for _ in range(2):
            with pytest.raises(OpenAIError) as err:
                await failover.send(router, client, "", "/v1/chat/completions", b"{}")
            assert err.value.status == 504
        assert only.ejections == 1 and not only.available(time.monotonic())
        stalling["on"] = False
        replica, resp = await failover.send(router, client, "", "/v1/chat/completions", b"{}")
        assert replica is only and resp.status == 200 and await resp.read() == b'{"ok": true}'
        router.release(replica, True)
        assert only.while_ejected == 1 and only.in_flight == 0
    finally:
        await client.aclose()
