"""A streaming follower's response: another replica's generation relayed to this client as it comes.

The leader's upstream bytes (vLLM's server-sent events, in whatever split they arrived) come through
Redis (serving/singleflight.py ``Following``). Each event reaches this client under its own id and
creation time, as a cache hit's replay does, and the usage event is dropped unless the client asked for
it (a storable stream always asks vLLM for usage). The stream ends at ``[DONE]``.

A leader that breaks off after this client got its first chunk is not taken over: a new generation
need not repeat the text already sent, and the client cannot be told to forget it. The stream ends
with an OpenAI-style error event instead, as a live stream whose upstream broke off does.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

import orjson
from starlette.responses import StreamingResponse

from serving import metrics
from serving.hits import SSE_HEADERS, fresh_id
from serving.protocol import error_body
from serving.singleflight import FlightBroken, Following

log = logging.getLogger("cachestack")

BROKE_OFF = b"data: " + error_body("the upstream generation this stream shared broke off", "upstream_error",
                                   code="upstream_error") + b"\n\n"


class SharedEvents:
    """Splits relayed bytes into events and gives them this response's id and creation time."""

    MAX_EVENT_BYTES = 1 << 20

    def __init__(self, *, id: str, created: int, include_usage: bool) -> None:
        self.id = id
        self.created = created
        self.include_usage = include_usage
        self.ended = False  # [DONE] or an error event was relayed: nothing may follow
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        """The complete events in ``data`` (and what was left over before it), rewritten for this client."""
        self._buf += data
        out: list[bytes] = []
        while not self.ended and (end := self._buf.find(b"\n\n")) >= 0:
            event, self._buf = self._buf[:end], self._buf[end + 2:]
            rewritten = self._event(event)
            if rewritten is not None:
                out.append(rewritten + b"\n\n")
        if len(self._buf) > self.MAX_EVENT_BYTES:
            raise FlightBroken("an event beyond the size bound")
        return b"".join(out)

    def _event(self, event: bytes) -> bytes | None:
        lines = []
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                lines.append(line)
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.ended = True
                lines.append(line)
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                lines.append(line)
                continue
            if not isinstance(obj, dict) or "error" in obj:
                self.ended = True  # the leader's upstream reported an error in-band: relayed as it is
                lines.append(line)
                continue
            if obj.get("usage") and not obj.get("choices") and not self.include_usage:
                return None
            obj["id"], obj["created"] = self.id, self.created
            lines.append(b"data: " + orjson.dumps(obj))
        return b"\n".join(lines)


def following_response(following: Following, kind: str, include_usage: bool) -> StreamingResponse:
    """The leader's stream as this client's: events as they arrive, an error event if it breaks off."""
    events = SharedEvents(id=fresh_id(kind), created=int(time.time()), include_usage=include_usage)

    async def body() -> AsyncIterator[bytes]:
        reason = "the answer landed before [DONE]"  # only when chunks were lost on the way
        try:
            async with contextlib.aclosing(following.chunks()) as chunks:
                async for data in chunks:
                    out = events.feed(data)
                    if out:
                        yield out
                    if events.ended:
                        return
        except FlightBroken as exc:
            reason = str(exc)
        metrics.FLIGHTS.labels("broke_off").inc()
        log.info("a relayed stream broke off (%s); the follower's stream ends with an error event", reason)
        yield BROKE_OFF

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)
