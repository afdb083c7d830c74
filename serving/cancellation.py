"""A generation request ends when its deadline passes or its client leaves, whatever it is waiting on.

Starlette notices a client that left only while a streamed response is being sent; a non-streamed
miss would keep its upstream call, and vLLM's generation, running for no one. This ASGI middleware
owns the connection's receive channel once the body is in: the next message can only be a
disconnect, and when it comes before the response is complete the request's task is cancelled.
Cancelling reaches the upstream call, whose connection then closes, which is how vLLM aborts.

The same task carries ``server.request_timeout_s``: when it passes before the response started the
client gets an OpenAI-shaped 504; a stream already under way ends with an error event instead.
Nothing is stored either way, since the store step runs only after a complete answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from serving.protocol import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestLifetime:
    """Deadline and disconnect handling for the ASGI paths in ``paths`` (the generation routes)."""

    def __init__(self, app: ASGIApp, paths: Collection[str], timeout_s: float) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        await _Request(self, scope, receive, send).run()


class _Request:
    """One request's progress: body read, response started, response complete, client gone."""

    def __init__(self, owner: RequestLifetime, scope: Scope, receive: Receive, send: Send) -> None:
        self.owner = owner
        self.scope = scope
        self._receive = receive
        self._send = send
        self.task = asyncio.current_task()
        self.gone = asyncio.Event()
        self.watcher: asyncio.Task[None] | None = None
        self.started = False
        self.stream = False
        self.complete = False
        self.cancelled_by_us = False

    async def run(self) -> None:
        try:
            async with asyncio.timeout(self.owner.timeout_s) as deadline:
                await self.owner.app(self.scope, self.receive, self.send)
        except TimeoutError:
            if not deadline.expired():
                raise
            await self._deadline_passed()
        except asyncio.CancelledError:
            if self.cancelled_by_us and self.task is not None and self.task.uncancel() == 0:
                return  # the client left: there is no one to answer
            raise
        finally:
            if self.watcher is not None:
                self.watcher.cancel()

    async def receive(self) -> Message:
        if self.watcher is not None:  # the body is in: only the disconnect is left to hear
            await self.gone.wait()
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.gone.set()
        elif not message.get("more_body", False):
            self.watcher = asyncio.get_running_loop().create_task(self._watch(), name="cachestack-disconnect")
        return message

    async def _watch(self) -> None:
        await self._receive()  # servers answer http.disconnect here, also once the response is complete
        self.gone.set()
        if not self.complete and self.task is not None:
            self.cancelled_by_us = True
            self.task.cancel()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = dict(message.get("headers") or [])
            self.stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        await self._send(message)

    async def _deadline_passed(self) -> None:
        if self.complete:
            return
        body = error_body(f"the request took longer than the server's {self.owner.timeout_s:g} s deadline",
                          "timeout_error", code="request_timeout")
        with contextlib.suppress(OSError):  # the client may be gone as well
            if not self.started:
                await self._send({"type": "http.response.start", "status": 504,
                                  "headers": [(b"content-type", b"application/json"),
                                              (b"content-length", str(len(body)).encode())]})
                await self._send({"type": "http.response.body", "body": body})
            elif self.stream:
                await self._send({"type": "http.response.body", "body": b"data: " + body + b"\n\n"})
            else:
                await self._send({"type": "http.response.body", "body": b""})
        self.complete = True
