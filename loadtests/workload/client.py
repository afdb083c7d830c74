"""Sending one Request through a locust FastHttpUser and turning the response into a Sample.

Each request appears in locust's table under "<kind> <X-Cache> [<layer>]" (e.g. "faq HIT semantic"), so
locust's own stats already split latency by cache outcome. Streams are read chunk by chunk: the time to
the first content chunk and the mean time between the following ones are reported as their own locust
entries, ``time_to_first_token`` and ``latency_per_token`` (request type METRIC), as LLM benchmarks on
locust do, and the stream's own entry is its whole duration.
"""

from __future__ import annotations

import json
import time
from typing import Any

from locust.contrib.fasthttp import FastHttpUser

from loadtests.workload.samples import Sample, answer_signature, cache_layer
from loadtests.workload.scenarios import Request


def _name(req: Request, cache: str, layer: str) -> str:
    return " ".join(p for p in (req.kind, cache or "error", layer) if p)


def _answer(doc: Any) -> tuple[str, str, dict[str, Any]]:
    """(text, finish_reason, usage) of a JSON completion; ValueError if it is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list) or not doc["choices"]:
        raise ValueError("no choices")
    first = doc["choices"][0]
    text = (first.get("message") or {}).get("content") if "message" in first else first.get("text")
    return str(text or ""), str(first.get("finish_reason") or ""), doc.get("usage") or {}


def _sample(req: Request, t: float, ms: float, cache: str, layer: str, error: str, text: str = "",
            finish: str = "", usage: dict[str, Any] | None = None, **extra: Any) -> Sample:
    usage = usage or {}
    return Sample(t, req.kind, cache, layer, ms, error, req.intent, answer_signature(text, usage) if text else "",
                  finish, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                  int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
                  control=req.control, paraphrase=req.paraphrase, **extra)


def _error(r: Any) -> str:
    """``http_<status>[:<code>]`` with the OpenAI error's code when the body has one (502 alone does not
    say whether the upstream was unreachable or answered with an error); the exception type otherwise."""
    if not r.status_code:
        return type(r.error).__name__ if r.error else "connection"
    try:
        code = (r.json().get("error") or {}).get("code")
    except (ValueError, AttributeError, TypeError, OSError):
        code = None
    return f"http_{r.status_code}:{code}" if isinstance(code, str) and code else f"http_{r.status_code}"


def send_json(user: FastHttpUser, req: Request) -> tuple[Sample, str]:
    """A non-streamed request; returns its sample and the answer text."""
    t = time.time()
    with user.client.post(req.path, json=req.body, headers=req.headers, catch_response=True, name=req.kind) as r:
        cache = r.headers.get("x-cache", "") if r.headers else ""
        layer = cache_layer(r.headers) if cache == "HIT" else ""
        r.request_meta["name"] = _name(req, cache, layer)
        ms = r.request_meta["response_time"]
        if r.status_code != 200:
            error = _error(r)
            r.failure(error)
            return _sample(req, t, ms, cache, "", error), ""
        try:
            text, finish, usage = _answer(r.json())
        except ValueError:
            r.failure("bad_response")
            return _sample(req, t, ms, cache, layer, "bad_response"), ""
        if cache not in ("HIT", "MISS", "BYPASS"):
            r.failure("no_x_cache_header")
            return _sample(req, t, ms, cache, layer, "no_x_cache_header"), text
        return _sample(req, t, ms, cache, layer, "", text, finish, usage), text


def _metric(user: FastHttpUser, name: str, ms: float) -> None:
    user.environment.events.request.fire(request_type="METRIC", name=name, response_time=ms, response_length=0,
                                         exception=None, context={})


def send_stream(user: FastHttpUser, req: Request) -> tuple[Sample, str]:
    """A streamed request read to its end: text, usage, time to first token, time per token."""
    t = time.time()
    started = time.perf_counter()
    with user.client.post(req.path, json=req.body, headers=req.headers, catch_response=True, name=req.kind,
                          stream=True) as r:
        cache = r.headers.get("x-cache", "") if r.headers else ""
        layer = cache_layer(r.headers) if cache == "HIT" else ""
        r.request_meta["name"] = _name(req, cache, layer)
        if r.status_code != 200:
            error = _error(r)
            r.failure(error)
            return _sample(req, t, r.request_meta["response_time"], cache, "", error), ""
        parts: list[str] = []
        usage: dict[str, Any] = {}
        finish, error = "", ""
        first: float | None = None
        last = started
        chunks = 0
        # geventhttpclient's own response: readline hands over each SSE line as it arrives (locust's
        # iter_content waits for a full chunk_size of bytes, which would hide the time to first token)
        stream = r._response
        try:
            while line := stream.readline(b"\n"):
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                doc = json.loads(data)
                if "error" in doc:
                    error = "stream_error"
                    continue
                usage = doc.get("usage") or usage
                for choice in doc.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                    finish = choice.get("finish_reason") or finish
                    if piece:
                        now = time.perf_counter()
                        first = now if first is None else first
                        last = now
                        chunks += 1
                        parts.append(piece)
        except (OSError, ValueError) as exc:
            error = f"stream_{type(exc).__name__}"
        ms = (time.perf_counter() - started) * 1000
        r.request_meta["response_time"] = ms
        if cache not in ("HIT", "MISS", "BYPASS") and not error:
            error = "no_x_cache_header"
        if error:
            r.failure(error)
            return _sample(req, t, ms, cache, layer, error), ""
        ttft = (first - started) * 1000 if first is not None else None
        tpot = (last - first) * 1000 / (chunks - 1) if first is not None and chunks > 1 else None
        if ttft is not None:
            _metric(user, "time_to_first_token", ttft)
        if tpot is not None:
            _metric(user, "latency_per_token", tpot)
        text = "".join(parts)
        return _sample(req, t, ms, cache, layer, "", text, finish, usage, ttft_ms=ttft, tpot_ms=tpot), text
