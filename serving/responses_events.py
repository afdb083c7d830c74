"""The Responses API's answers: which may be stored, assembling a relayed stream, replaying a hit.

A Responses stream is typed server-sent events (``event: response.output_text.delta`` ...) that end
with ``response.completed``, whose data carries the whole response object; that object (the shape a
non-streamed request gets) is what is stored, so one entry serves both kinds of client. Only a
response that completed with nothing but text messages is stored: never an incomplete one
(``max_output_tokens``), a failed one, function calls, or a stream that broke off.

A hit is replayed as the full event sequence a live stream has, with fresh response and item ids,
so the official client's stream helpers read it exactly like one.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

_WORDS = re.compile(r"\S+\s*|\s+")
STORED_OUT = ("id", "created_at")  # per response; a replay gets fresh ones


def storable_response(answer: dict[str, Any]) -> bool:
    """A completed response whose every output item is a finished text message."""
    if answer.get("object") != "response" or answer.get("status") != "completed":
        return False
    if answer.get("incomplete_details") or answer.get("error"):
        return False
    output = answer.get("output")
    if not isinstance(output, list) or not output:
        return False
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "message" or item.get("status") not in (None, "completed"):
            return False
        parts = item.get("content")
        if not isinstance(parts, list) or not all(isinstance(p, dict) and p.get("type") == "output_text"
                                                  for p in parts):
            return False
    return True


class ResponsesAssembler:
    """Fed a relayed Responses stream; keeps the ``response.completed`` object if the stream had one.

    Same interface as serving/streaming.py's StreamAssembler, so one relay serves both APIs.
    """

    MAX_EVENT_BYTES = 1 << 22  # response.completed repeats the whole answer

    def __init__(self) -> None:
        self._buf = b""
        self._final: dict[str, Any] | None = None
        self.broken = False

    def feed(self, chunk: bytes) -> bytes:
        """Take upstream bytes and return them: every event passes to the client as it is."""
        if self.broken:
            return chunk
        self._buf += chunk
        while (end := self._buf.find(b"\n\n")) >= 0:
            event, self._buf = self._buf[:end], self._buf[end + 2:]
            self._event(event)
        if len(self._buf) > self.MAX_EVENT_BYTES:  # not SSE as we know it: stop parsing
            self.broken = True
            self._buf = b""
        return chunk

    def flush(self) -> bytes:
        self._buf = b""
        return b""  # feed already passed every byte on

    def _event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            try:
                obj = orjson.loads(line[5:].strip())
            except orjson.JSONDecodeError:
                self.broken = True
                return
            kind = obj.get("type") if isinstance(obj, dict) else None
            if kind in ("error", "response.failed", "response.incomplete"):
                self.broken = True
            elif kind == "response.completed" and isinstance(obj.get("response"), dict):
                self._final = obj["response"]

    def complete_answer(self) -> dict[str, Any] | None:
        """The completed response, when it may be stored."""
        if self.broken or self._final is None or not storable_response(self._final):
            return None
        return self._final


def fresh_response(answer: dict[str, Any]) -> dict[str, Any]:
    """A stored response under a new response id, creation time and item ids."""
    output = [{**item, "id": f"msg_{uuid.uuid4().hex}"} for item in answer.get("output") or []]
    return {**answer, "id": f"resp_cache{uuid.uuid4().hex}", "created_at": int(time.time()), "output": output}


def replay_events(answer: dict[str, Any]) -> Iterator[bytes]:
    """A response (already under fresh ids) as the typed event sequence of a live Responses stream."""
    seq = 0

    def event(kind: str, **data: Any) -> bytes:
        nonlocal seq
        body = orjson.dumps({**data, "sequence_number": seq, "type": kind})
        seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n"

    started = {**answer, "status": "in_progress", "output": [], "usage": None}
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    for index, item in enumerate(answer.get("output") or []):
        yield event("response.output_item.added", output_index=index,
                    item={**item, "content": [], "status": "in_progress"})
        for c, part in enumerate(item.get("content") or []):
            text = part.get("text") or ""
            ids = {"item_id": item["id"], "output_index": index, "content_index": c}
            yield event("response.content_part.added", **ids, part={**part, "text": ""})
            for piece in _WORDS.findall(text):
                yield event("response.output_text.delta", **ids, delta=piece, logprobs=[])
            yield event("response.output_text.done", **ids, text=text, logprobs=[])
            yield event("response.content_part.done", **ids, part=part)
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=answer)


def tenant_response_id(tenant: str) -> str:
    """A response id bound to its tenant: ``resp_<tenant tag><random>``, sent to vLLM as ``request_id``
    (vLLM names the response after it). vLLM keeps stored responses under bare ids for every caller,
    so a ``previous_response_id`` is only forwarded when it carries the caller's own tag."""
    return f"resp_{_tenant_tag(tenant)}{uuid.uuid4().hex}"


def owns_response(tenant: str, response_id: str) -> bool:
    return response_id.startswith(f"resp_{_tenant_tag(tenant)}")


def _tenant_tag(tenant: str) -> str:
    return hashlib.sha256(b"cachestack-response:" + tenant.encode()).hexdigest()[:12]
