"""Server-sent events: assembling a relayed stream into a storable answer, and replaying one.

A stored answer always has the non-streaming shape (``chat.completion`` or ``text_completion``), so
one cache entry serves both ``stream: true`` and ``stream: false`` clients. A stream is assembled into
an answer only when it ended with ``[DONE]`` and every choice has a finish reason; an error event, a
stream that broke off, tool calls or token logprobs yield nothing. Whether an assembled answer may be
stored (its finish reasons) is decided in serving/answers.py. A chat delta's ``reasoning_content``
(reasoning models) is assembled next to ``content`` and replayed before it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
_WORDS = re.compile(r"\S+\s*|\s+")


class StreamAssembler:
    """Fed the upstream's SSE bytes as they pass; rebuilds the complete answer if there is one."""

    MAX_EVENT_BYTES = 1 << 20

    def __init__(self, kind: str, hide_usage: bool = False) -> None:
        self.kind = kind  # "chat" or "completion"
        self.hide_usage = hide_usage  # usage was asked for the cache's sake, not the client's
        self._buf = b""
        self._text: dict[int, list[str]] = {}
        self._reasoning: dict[int, list[str]] = {}
        self._finish: dict[int, str | None] = {}
        self._role: dict[int, str] = {}
        self._head: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.broken = False

    def feed(self, chunk: bytes) -> bytes:
        """Take upstream bytes; return the complete events to relay now (usage dropped if hidden)."""
        if self.broken:
            return chunk
        self._buf += chunk
        out: list[bytes] = []
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                break
            event, self._buf = self._buf[: end + 2], self._buf[end + 2 :]
            if self._event(event[:-2]):
                out.append(event)
        if len(self._buf) > self.MAX_EVENT_BYTES:  # not SSE as we know it: stop parsing, relay raw
            self.broken = True
            out.append(self._buf)
            self._buf = b""
        return b"".join(out)

    def flush(self) -> bytes:
        """Bytes of an unterminated last event, relayed as they are."""
        rest, self._buf = self._buf, b""
        return rest

    def _event(self, event: bytes) -> bool:
        keep = True
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                keep = self._data(line[5:].strip()) and keep
        return keep

    def _data(self, data: bytes) -> bool:
        """Record one event's data; False when the event must not reach the client."""
        if data == b"[DONE]":
            self.done = True
            return True
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.broken = True
            return True
        if not isinstance(obj, dict) or "error" in obj:
            self.broken = True
            return True
        if not self._head:
            self._head = {k: obj.get(k) for k in ("id", "model", "system_fingerprint")}
        if obj.get("usage"):
            self.usage = obj["usage"]
            if self.hide_usage and not obj.get("choices"):
                return False
        for choice in obj.get("choices") or []:
            i = int(choice.get("index", 0))
            if self.kind == "chat":
                delta = choice.get("delta") or {}
                if delta.get("role"):
                    self._role[i] = delta["role"]
                if delta.get("tool_calls") or delta.get("function_call"):
                    self.broken = True  # tool calls are not assembled; such answers are not stored
                if delta.get("reasoning_content"):
                    self._reasoning.setdefault(i, []).append(delta["reasoning_content"])
                piece = delta.get("content")
            else:
                piece = choice.get("text")
            if choice.get("logprobs"):
                self.broken = True  # token logprobs are not assembled: such answers are not stored
            if piece:
                self._text.setdefault(i, []).append(piece)
            if choice.get("finish_reason") is not None:
                self._finish[i] = choice["finish_reason"]
        return True

    def complete_answer(self) -> dict[str, Any] | None:
        """The answer in non-streaming shape, or None unless the stream ended and every choice finished."""
        if self.broken or not self.done or not self._finish:
            return None
        if (set(self._text) | set(self._role) | set(self._reasoning)) - set(self._finish):
            return None  # a choice that never finished
        choices = []
        for i in sorted(self._finish):
            text = "".join(self._text.get(i, []))
            reason = self._finish[i]
            if self.kind == "chat":
                msg: dict[str, Any] = {"role": self._role.get(i, "assistant"), "content": text}
                if i in self._reasoning:
                    msg["reasoning_content"] = "".join(self._reasoning[i])
                choices.append({"index": i, "message": msg, "finish_reason": reason, "logprobs": None})
            else:
                choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": None})
        return {
            "id": self._head.get("id"),
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "model": self._head.get("model"),
            "choices": choices,
            "usage": self.usage,
        }


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def replay(answer: dict[str, Any], kind: str, *, id: str, created: int, include_usage: bool) -> Iterator[bytes]:
    """A stored answer as OpenAI stream chunks: role, reasoning and content word by word, finish, usage,
    [DONE]. A choice stored with logprobs is replayed as one content chunk that carries them all."""
    obj_type = "chat.completion.chunk" if kind == "chat" else "text_completion"
    base = {"id": id, "object": obj_type, "created": created, "model": answer.get("model")}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return _event({**base, "choices": choices, **extra})

    for choice in answer.get("choices", []):
        i = choice.get("index", 0)
        if kind == "chat":
            message = choice.get("message") or {}
            yield chunk([{"index": i, "delta": {"role": message.get("role", "assistant"), "content": ""},
                          "logprobs": None, "finish_reason": None}])
            for piece in _WORDS.findall(message.get("reasoning_content") or ""):
                yield chunk([{"index": i, "delta": {"reasoning_content": piece}, "logprobs": None,
                              "finish_reason": None}])
            if choice.get("logprobs"):
                yield chunk([{"index": i, "delta": {"content": message.get("content") or ""},
                              "logprobs": choice["logprobs"], "finish_reason": None}])
            else:
                for piece in _WORDS.findall(message.get("content") or ""):
                    yield chunk([{"index": i, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
            yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}])
        else:
            if choice.get("logprobs"):
                yield chunk([{"index": i, "text": choice.get("text") or "", "logprobs": choice["logprobs"],
                              "finish_reason": None}])
            else:
                for piece in _WORDS.findall(choice.get("text") or ""):
                    yield chunk([{"index": i, "text": piece, "logprobs": None, "finish_reason": None}])
            yield chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")}])
    if include_usage and answer.get("usage"):
        yield chunk([], usage=answer["usage"])
    yield DONE
