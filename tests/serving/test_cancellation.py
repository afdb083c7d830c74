"""RequestLifetime: the deadline answers 504 (or ends a stream with an error event), and a client that
leaves cancels the request at once, whatever the handler is waiting on. Driven as ASGI directly."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from serving.cancellation import RequestLifetime

PATH = "/v1/chat/completions"


class Connection:
    """The server side of one request: the body, then (maybe) a disconnect; what was sent back."""

    def __init__(self, leave_after_s: float | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self._messages = [{"type": "http.request", "body": b"{}", "more_body": False}]
        self._leave_after_s = leave_after_s
        self.complete = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self._messages:
            return self._messages.pop(0)
        if self._leave_after_s is None:
            await self.complete.wait()  # as uvicorn: a disconnect once the response is complete
        else:
            await asyncio.sleep(self._leave_after_s)
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.complete.set()

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def scope(path: str = PATH) -> dict[str, Any]:
    return {"type": "http", "path": path, "method": "POST", "headers": []}


async def read_body(receive: Any) -> None:
    while (await receive()).get("more_body"):
        pass


async def test_deadline_before_the_response_is_an_openai_504():
    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        await asyncio.sleep(10)

    conn = Connection()
    await asyncio.wait_for(RequestLifetime(slow, [PATH], 0.2)(scope(), conn.receive, conn.send), 2)
    assert conn.sent[0]["status"] == 504
    assert orjson.loads(conn.body())["error"]["code"] == "request_timeout"


async def test_deadline_mid_stream_ends_it_with_an_error_event():
    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        while True:
            await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
            await asyncio.sleep(0.05)

    conn = Connection()
    await asyncio.wait_for(RequestLifetime(stream, [PATH], 0.3)(scope(), conn.receive, conn.send), 2)
    assert conn.sent[0]["status"] == 200
    last = conn.sent[-1]
    assert not last.get("more_body", False)
    event = last["body"]
    assert event.startswith(b"data: ") and orjson.loads(event[6:])["error"]["type"] == "timeout_error"


async def test_client_leaving_cancels_the_handler():
    cancelled = asyncio.Event()

    async def waits(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        try:
            await asyncio.sleep(10)  # an upstream call
        except asyncio.CancelledError:
            cancelled.set()
            raise

    conn = Connection(leave_after_s=0.1)
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(RequestLifetime(waits, [PATH], 60)(scope(), conn.receive, conn.send), 2)
    assert cancelled.is_set() and asyncio.get_running_loop().time() - started < 1
    assert conn.sent == []  # no one to answer


async def test_a_complete_response_is_not_cancelled_and_the_handler_sees_the_disconnect():
    heard: list[str] = []

    async def answers(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        heard.append((await receive())["type"])  # e.g. starlette listening for the disconnect

    conn = Connection()
    await asyncio.wait_for(RequestLifetime(answers, [PATH], 60)(scope(), conn.receive, conn.send), 2)
    assert conn.body() == b"ok" and heard == ["http.disconnect"]


async def test_other_paths_pass_through_untouched():
    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.3)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    conn = Connection()
    await RequestLifetime(slow, [PATH], 0.05)(scope("/ready"), conn.receive, conn.send)
    assert conn.body() == b"ok"
