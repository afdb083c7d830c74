"""Answering from the cache: the X-Cache response headers, and a hit as JSON or as a replayed stream."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from starlette.responses import Response

from cache.service import CacheHit
from serving.protocol import ResponsesRequest, SamplingFields
from serving.responses_events import fresh_response, replay_events
from serving.streaming import replay

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def cache_headers(result: str, hit: CacheHit | None = None) -> dict[str, str]:
    """``X-Cache: HIT|MISS|BYPASS``; on a hit also its layer, age and (semantic) similarity."""
    headers = {"x-cache": result}
    if hit is not None:
        headers["x-cache-layer"] = hit.layer
        headers["x-cache-store"] = hit.store
        headers["age"] = str(int(hit.age_s))
        if hit.similarity is not None:
            headers["x-cache-similarity"] = f"{hit.similarity:.4f}"
    return headers


def fresh_id(kind: str) -> str:
    """An id for an answer this gateway gives from another generation than the client's own."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-cache-{uuid.uuid4().hex}"


def hit_response(hit: CacheHit, kind: str, parsed: SamplingFields | ResponsesRequest) -> Response:
    """The stored answer under a fresh id and creation time, in the shape the request asked for."""
    return answer_response(hit.answer, kind, parsed, cache_headers("HIT", hit))


def answer_response(answer: dict[str, Any], kind: str, parsed: SamplingFields | ResponsesRequest,
                    headers: dict[str, str]) -> Response:
    """A complete answer (a hit's, or another replica's generation) as JSON or a replayed stream."""
    if kind == "responses":  # fresh response and item ids; a stream replays the typed events
        return _response_hit(answer, parsed.stream, headers)
    new_id = fresh_id(kind)
    created = int(time.time())
    if parsed.stream:
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        # Many chunk events (as a live stream has), written at once: nothing is left to wait for.
        events = b"".join(replay(answer, kind, id=new_id, created=created, include_usage=include_usage))
        return Response(events, 200, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
    answer = {**answer, "id": new_id, "created": created}
    return Response(orjson.dumps(answer), 200, media_type="application/json", headers=headers)


def _response_hit(stored: dict[str, Any], stream: bool, headers: dict[str, str]) -> Response:
    answer = fresh_response(stored)
    if stream:
        return Response(b"".join(replay_events(answer)), 200, media_type="text/event-stream",
                        headers={**SSE_HEADERS, **headers})
    return Response(orjson.dumps(answer), 200, media_type="application/json", headers=headers)
