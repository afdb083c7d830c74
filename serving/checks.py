"""Upstream calls the cache makes off the request path: a fresh answer for a shadow check of a hit,
and the LLM judge's verdict on a borderline pair (cache/judge.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from cache.judge import judge_request, judge_verdict
from serving.relay import call, json_object
from serving.router import affinity_text

if TYPE_CHECKING:
    from serving.app import Gateway


async def fresh_answer(gw: Gateway, path: str, body: dict[str, Any], data: bytes) -> dict[str, Any] | None:
    """A non-streamed fresh answer to the request a hit answered, for its shadow check."""
    if body.get("stream"):
        data = orjson.dumps({**orjson.loads(data), "stream": False})
    status, payload, _ = await call(gw, path, affinity_text(body), data)
    return json_object(payload) if status == 200 else None


async def ask_judge(gw: Gateway, model: str, cached: str, asked: str) -> float | None:
    """The judge's verdict on whether ``cached`` and ``asked`` are the same question, asked of a replica."""
    status, payload, _ = await call(gw, "/v1/chat/completions", "", orjson.dumps(judge_request(model, cached, asked)))
    answer = json_object(payload) if status == 200 else None
    return judge_verdict(answer) if answer is not None else None
