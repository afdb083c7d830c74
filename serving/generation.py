"""The request flow of /v1/chat/completions and /v1/completions, steps 1-8 of DESIGN.md.

auth -> protocol -> cache plan (policy, keys) -> lookup -> HIT: answer from cache
                                                        -> MISS: single-flight -> router -> vLLM -> relay
-> store after the response is sent (only complete answers) -> metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from cache.judge import judge_request, judge_verdict
from cache.policy import CachePlan, PolicyError
from cache.service import CacheHit, Lookup
from serving import failover, metrics
from serving.cache_control import parse_cache_control
from serving.protocol import (ChatCompletionRequest, CompletionRequest, OpenAIError, ResponsesRequest, SamplingFields,
                              parse_request)
from serving.responses_events import (ResponsesAssembler, fresh_response, owns_response, replay_events,
                                      storable_response, tenant_response_id)
from serving.router import Replica, affinity_text
from serving.streaming import StreamAssembler, replay
from serving.upstream import UpstreamResponse

if TYPE_CHECKING:
    from serving.app import Gateway

KINDS: dict[str, tuple[str, type[SamplingFields | ResponsesRequest]]] = {
    "chat": ("/v1/chat/completions", ChatCompletionRequest),
    "completion": ("/v1/completions", CompletionRequest),
    "responses": ("/v1/responses", ResponsesRequest),
}
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OpenAIError(413, f"request body is larger than {limit} bytes", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise OpenAIError(413, f"request body is larger than {limit} bytes", code="request_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise OpenAIError(400, "client disconnected while sending the body", code="client_disconnected") from None
    return b"".join(chunks)


def cache_headers(result: str, hit: CacheHit | None = None) -> dict[str, str]:
    headers = {"x-cache": result}
    if hit is not None:
        headers["x-cache-layer"] = hit.layer
        headers["x-cache-store"] = hit.store
        headers["age"] = str(int(hit.age_s))
        if hit.similarity is not None:
            headers["x-cache-similarity"] = f"{hit.similarity:.4f}"
    return headers


async def handle(request: Request, kind: str) -> Response:
    gw: Gateway = request.app.state.gw
    tenant = gw.auth.tenant(request.headers.get("authorization"))
    limit = gw.cfg.server.max_in_flight_per_tenant
    if limit is None:
        return await _handle(request, gw, kind, tenant)
    if gw.in_flight.get(tenant, 0) >= limit:
        raise OpenAIError(429, f"more than {limit} concurrent requests for this API key", "rate_limit_error",
                          code="rate_limit_exceeded", headers={"retry-after": "1"})
    gw.in_flight[tenant] = gw.in_flight.get(tenant, 0) + 1
    try:
        response = await _handle(request, gw, kind, tenant)
    except BaseException:
        gw.in_flight[tenant] -= 1
        raise
    if isinstance(response, StreamingResponse):  # the stream holds its slot until it ends or is left
        response.body_iterator = _holding_slot(response.body_iterator, gw, tenant)
    else:
        gw.in_flight[tenant] -= 1
    return response


async def _holding_slot(chunks: AsyncIterator[Any], gw: Gateway, tenant: str) -> AsyncIterator[Any]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        gw.in_flight[tenant] -= 1


async def _handle(request: Request, gw: Gateway, kind: str, tenant: str) -> Response:
    path, model_cls = KINDS[kind]
    started = time.perf_counter()
    raw = await read_body(request, gw.cfg.server.max_body_bytes)
    body, parsed = parse_request(raw, model_cls)
    await gw.catalog.check(parsed.model)
    request.state.model = parsed.model

    if kind == "responses" and gw.auth.multi_tenant:
        previous = body.get("previous_response_id")
        if isinstance(previous, str) and not owns_response(tenant, previous):  # as if it did not exist
            raise OpenAIError(404, f"Response with id '{previous}' not found.", param="previous_response_id",
                              code="response_not_found")
        body = {**body, "request_id": tenant_response_id(tenant)}
    forward = _forward_body(gw, body, raw, tenant)
    plan: CachePlan | None = None
    if gw.cache is not None:
        try:
            plan = gw.cache.plan(kind, body, gw.auth.caller(tenant, request.headers, body),
                                 parse_cache_control(request.headers.get("cache-control")),
                                 request.headers.get("x-cache-namespace"))
        except PolicyError as exc:
            raise OpenAIError(404, str(exc), param=exc.param, code="namespace_not_found") from None
    result = "MISS" if plan is not None and (plan.lookup or plan.store) else "BYPASS"
    affinity = affinity_text(body)
    wants_usage = bool(parsed.stream and parsed.stream_options and parsed.stream_options.include_usage)
    if parsed.stream and plan is not None and plan.store and not wants_usage and kind != "responses":
        # usage is part of a stored answer (savings, replays that ask for it): ask vLLM for it and
        # drop the usage event on its way to this client, who did not ask
        forward = orjson.dumps({**orjson.loads(forward), "stream_options": {"include_usage": True}})
    lookup = Lookup()  # its embedding is filled in when the lookup ends; the store step reads it then

    def upstream() -> Coroutine[Any, Any, Any]:
        if parsed.stream:
            return _open_stream(gw, path, affinity, forward)
        generate = lambda: _generate(gw, path, affinity, forward, plan, lookup)  # noqa: E731
        if plan is not None and plan.store:  # followers share the leader's answer, stored and counted once
            return gw.singleflight.run(plan.exact_key, generate)
        return generate()

    speculative: asyncio.Task[Any] | None = None
    if gw.cache is not None and plan is not None and plan.lookup:

        def speculate() -> None:
            nonlocal speculative
            speculative = asyncio.get_running_loop().create_task(upstream())

        try:
            found = await gw.cache.lookup(plan, speculate if gw.cfg.cache.speculative_upstream else None)
        except BaseException:
            _abandon(gw, speculative)
            raise
        lookup.embedding, lookup.near = found.embedding, found.near
        if found.hit is not None:
            _abandon(gw, speculative)
            metrics.REQUEST_SECONDS.labels(path, "HIT").observe(time.perf_counter() - started)
            gw.cache.maybe_shadow(plan, found.hit, lambda: _fresh_answer(gw, path, body, forward))
            return _hit_response(found.hit, kind, parsed)
    if gw.hygiene is not None:  # only misses reach vLLM, so only they matter to its prefix cache
        gw.hygiene.observe(plan.namespace if plan is not None else "-", affinity)

    outcome = await (speculative if speculative is not None else upstream())
    if parsed.stream:
        if isinstance(outcome, Response):  # vLLM refused the request: its error, passed on
            outcome.headers.update(cache_headers(result))
            return outcome
        assembler = ResponsesAssembler() if kind == "responses" else StreamAssembler(kind, hide_usage=not wants_usage)
        return _relay_stream(gw, path, outcome, plan, lookup, assembler, result, started)
    status, data, ctype = outcome
    metrics.REQUEST_SECONDS.labels(path, result).observe(time.perf_counter() - started)
    return Response(data, status, media_type=ctype, headers=cache_headers(result))


@dataclass(frozen=True, slots=True)
class OpenedStream:
    """A streamed upstream response that answered 200, and the replica it holds until it is closed."""

    replica: Replica
    resp: UpstreamResponse


def _abandon(gw: Gateway, task: asyncio.Task[Any] | None) -> None:
    """Drop a speculative upstream call after a hit: cancelling it closes the connection (vLLM aborts
    the request); a stream that already opened is closed and its replica released as healthy."""
    if task is None:
        return
    if not task.done():
        task.cancel()
        return
    if task.cancelled():
        return
    if task.exception() is not None:  # retrieved: an upstream error matters to no one now
        return
    outcome = task.result()
    if isinstance(outcome, OpenedStream):
        outcome.resp.close()
        gw.router.release(outcome.replica, True)


async def _generate(gw: Gateway, path: str, affinity: str, data: bytes, plan: CachePlan | None,
                    lookup: Lookup) -> tuple[int, bytes, str]:
    """One upstream call for a non-streamed miss, then its usage metrics and the store step."""
    status, payload, ctype = await _call(gw, path, affinity, data)
    if status == 200:
        answer = _json_object(payload)
        if answer is None:
            metrics.UPSTREAM_ERRORS.labels("invalid_json").inc()
            raise OpenAIError(502, "upstream sent a response that is not a JSON object", "upstream_error",
                              code="upstream_invalid_response")
        _after_answer(gw, plan, lookup, answer)
    return status, payload, ctype


def _forward_body(gw: Gateway, body: dict[str, Any], raw: bytes, tenant: str) -> bytes:
    """The bytes sent to vLLM: the client's own, unless the tenant's prefix-cache salt must be set.

    With tenants configured, ``cache_salt`` is always the gateway's (a client-chosen salt could
    probe another tenant's prefix cache); without tenants the client's own is passed through.
    """
    if not gw.auth.multi_tenant:
        return raw
    salt = hashlib.sha256(b"cachestack-tenant:" + tenant.encode()).hexdigest()[:32]
    return orjson.dumps({**body, "cache_salt": salt})


async def _call(gw: Gateway, path: str, affinity: str, data: bytes) -> tuple[int, bytes, str]:
    replica, resp = await failover.send(gw.router, gw.upstream, affinity, path, data)
    ok = False
    try:
        payload = await resp.read()
        ok = resp.status < 500
        if resp.status >= 500:
            return _upstream_error(resp.status, payload)
        return resp.status, payload, resp.content_type
    except OpenAIError as exc:
        metrics.UPSTREAM_ERRORS.labels(str(exc.code)).inc()
        raise
    except asyncio.CancelledError:  # a hit or a client that left: not the replica's failure
        ok = True
        raise
    finally:
        gw.router.release(replica, ok)


def _upstream_error(status: int, payload: bytes) -> tuple[int, bytes, str]:
    """vLLM 5xx -> 502 (503 stays 503), keeping vLLM's message when it is OpenAI-shaped."""
    metrics.UPSTREAM_ERRORS.labels(f"http_{status}").inc()
    out = 503 if status == 503 else 502
    try:
        doc = orjson.loads(payload)
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            return out, payload, "application/json"
    except orjson.JSONDecodeError:
        pass
    return out, OpenAIError(out, f"upstream answered HTTP {status}", "upstream_error").body(), "application/json"


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


async def _fresh_answer(gw: Gateway, path: str, body: dict[str, Any], data: bytes) -> dict[str, Any] | None:
    """A non-streamed fresh answer for shadow checks of a hit."""
    if body.get("stream"):
        data = orjson.dumps({**orjson.loads(data), "stream": False})
    status, payload, _ = await _call(gw, path, affinity_text(body), data)
    return _json_object(payload) if status == 200 else None


async def ask_judge(gw: Gateway, model: str, cached: str, asked: str) -> float | None:
    """The LLM judge's verdict on a borderline pair (cache/judge.py), asked of an upstream replica."""
    status, payload, _ = await _call(gw, "/v1/chat/completions", "", orjson.dumps(judge_request(model, cached, asked)))
    answer = _json_object(payload) if status == 200 else None
    return judge_verdict(answer) if answer is not None else None


def _after_answer(gw: Gateway, plan: CachePlan | None, lookup: Lookup, answer: dict[str, Any]) -> None:
    """Cached-token metrics, and the store step for a complete answer (after it was sent)."""
    usage = answer.get("usage") or {}
    model = str(answer.get("model") or "unknown")
    metrics.PROMPT_TOKENS.labels(model).inc(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    if cached:
        metrics.CACHED_PROMPT_TOKENS.labels(model).inc(cached)
    if plan is not None and plan.store and gw.cache is not None:
        choices = answer.get("choices") or []
        if storable_response(answer) or (choices and all(c.get("finish_reason") == "stop" for c in choices)):
            gw.cache.store_later(plan, answer, lookup.embedding, lookup.near)


async def _open_stream(gw: Gateway, path: str, affinity: str, data: bytes) -> OpenedStream | Response:
    """Send a streamed request; the open response to relay, or vLLM's refusal as a Response."""
    replica, resp = await failover.send(gw.router, gw.upstream, affinity, path, data)
    if resp.status == 200:
        return OpenedStream(replica, resp)
    try:
        payload = await resp.read()
    finally:
        resp.close()
        gw.router.release(replica, resp.status < 500)
    status, payload, ctype = _upstream_error(resp.status, payload) if resp.status >= 500 else (
        resp.status, payload, resp.content_type)
    return Response(payload, status, media_type=ctype)


def _relay_stream(gw: Gateway, path: str, opened: OpenedStream, plan: CachePlan | None,
                  lookup: Lookup, assembler: StreamAssembler | ResponsesAssembler, result: str,
                  started: float) -> Response:
    replica, resp = opened.replica, opened.resp

    async def relay() -> AsyncIterator[bytes]:
        failed = False  # the upstream's fault; a client leaving is not, and must not eject the replica
        first = True
        try:
            async for chunk in resp.chunks():
                out = assembler.feed(chunk)
                if out:
                    if first:
                        metrics.REQUEST_SECONDS.labels(path, result).observe(time.perf_counter() - started)
                        first = False
                    yield out
            rest = assembler.flush()
            if rest:
                yield rest
        except OpenAIError as exc:  # upstream broke off: tell the client in-band, store nothing
            failed = True
            metrics.UPSTREAM_ERRORS.labels(str(exc.code)).inc()
            yield b"data: " + exc.body() + b"\n\n"
        finally:  # also on client disconnect: closing the upstream connection aborts the generation
            resp.close()
            gw.router.release(replica, not failed)
        answer = assembler.complete_answer()
        if answer is not None:
            _after_answer(gw, plan, lookup, answer)

    return StreamingResponse(relay(), media_type="text/event-stream",
                             headers={**SSE_HEADERS, **cache_headers(result)})


def _hit_response(hit: CacheHit, kind: str, parsed: SamplingFields | ResponsesRequest) -> Response:
    if kind == "responses":  # fresh response and item ids; a stream replays the typed events
        return _response_hit(hit, parsed.stream)
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    new_id = f"{prefix}-cache-{uuid.uuid4().hex}"
    created = int(time.time())
    headers = cache_headers("HIT", hit)
    if parsed.stream:
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        # Many chunk events (as a live stream has), written at once: nothing is left to wait for.
        events = b"".join(replay(hit.answer, kind, id=new_id, created=created, include_usage=include_usage))
        return Response(events, 200, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
    answer = {**hit.answer, "id": new_id, "created": created}
    return Response(orjson.dumps(answer), 200, media_type="application/json", headers=headers)



def _response_hit(hit: CacheHit, stream: bool) -> Response:
    answer = fresh_response(hit.answer)
    headers = cache_headers("HIT", hit)
    if stream:
        return Response(b"".join(replay_events(answer)), 200, media_type="text/event-stream",
                        headers={**SSE_HEADERS, **headers})
    return Response(orjson.dumps(answer), 200, media_type="application/json", headers=headers)
