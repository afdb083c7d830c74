"""The request flow of /v1/chat/completions and /v1/completions, step by step (docs/architecture.md).

1 auth (serving/auth.py), the tenant's rate limits (rate_limits.py) and slot (limits.py) -> 2 body limit (limits.py) and protocol
(protocol.py) -> 3-4 cache plan (cache/policy.py, cache/keys.py) -> 5 lookup (cache/service.py), the
miss's upstream call started speculatively (speculation.py) -> 6a HIT: hits.py -> 6b MISS: single-flight
(singleflight.py) -> router -> vLLM -> relay.py -> 7 store after the answer was sent (answers.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cache.policy import CachePlan, PolicyError
from cache.service import Lookup
from serving import metrics
from serving.answers import AfterAnswer
from serving.cache_control import parse_cache_control
from serving.checks import fresh_answer
from serving.hits import answer_response, cache_headers, hit_response
from serving.limits import read_body
from serving.protocol import (ChatCompletionRequest, CompletionRequest, OpenAIError, ResponsesRequest, SamplingFields,
                              parse_request)
from serving.responses_events import ResponsesAssembler, owns_response, tenant_response_id
from serving.relay import OpenedStream, RequestTimer, call, json_object, open_stream, relay_stream
from serving.router import affinity_text
from serving.shared_stream import following_response
from serving.singleflight import Following, Lead
from serving.speculation import Speculation
from serving.streaming import StreamAssembler

if TYPE_CHECKING:
    from serving.app import Gateway

KINDS: dict[str, tuple[str, type[SamplingFields | ResponsesRequest]]] = {
    "chat": ("/v1/chat/completions", ChatCompletionRequest),
    "completion": ("/v1/completions", CompletionRequest),
    "responses": ("/v1/responses", ResponsesRequest),
}
Outcome = OpenedStream | Response | tuple[int, bytes, str]
prompt_log = logging.getLogger("cachestack.prompts")  # written only with server.log_prompts


async def handle(request: Request, kind: str) -> Response:
    """One chat or completions request, from its Authorization header to the response."""
    gw: Gateway = request.app.state.gw
    tenant = gw.auth.tenant(request.headers.get("authorization"))
    if gw.limiter is not None:
        await gw.limiter.admit(tenant)  # 429 past the tenant's per-minute limits, shared by all replicas
    return await gw.slots.run(tenant, partial(_handle, request, gw, kind, tenant))


async def _handle(request: Request, gw: Gateway, kind: str, tenant: str) -> Response:
    path, model_cls = KINDS[kind]
    timer = RequestTimer(path, time.perf_counter())
    raw = await read_body(request, gw.cfg.server.max_body_bytes)
    body, parsed = parse_request(raw, model_cls, max_messages=gw.cfg.server.max_messages,
                                 max_tokens=gw.cfg.server.max_tokens)
    await gw.catalog.check(parsed.model)
    request.state.model = parsed.model

    if kind == "responses" and gw.auth.multi_tenant:
        previous = body.get("previous_response_id")
        if isinstance(previous, str) and not owns_response(tenant, previous):  # as if it did not exist
            raise OpenAIError(404, f"Response with id '{previous}' not found.", param="previous_response_id",
                              code="response_not_found")
        body = {**body, "request_id": tenant_response_id(tenant)}
    plan = _plan(gw, request, kind, body, tenant)
    result = "MISS" if plan is not None and (plan.lookup or plan.store) else "BYPASS"
    if gw.cfg.server.log_prompts:
        prompt_log.info("tenant=%s model=%s namespace=%s query=%r", tenant, parsed.model,
                        plan.namespace if plan is not None else "-",
                        plan.query if plan is not None else affinity_text(body)[:2000])
    affinity = affinity_text(body)
    wants_usage = bool(parsed.stream and parsed.stream_options and parsed.stream_options.include_usage)
    # usage is part of a stored answer (savings, replays that ask for it): a stream that may be stored
    # asks vLLM for it, and the usage event is dropped on its way to a client who did not ask
    ask_usage = parsed.stream and plan is not None and plan.store and not wants_usage and kind != "responses"
    forward = _forward_body(gw, body, raw, tenant, ask_usage)
    lookup = gw.cache.new_lookup() if gw.cache is not None else Lookup()
    after = AfterAnswer(gw.cache, plan, lookup, partial(gw.limiter.charge, tenant) if gw.limiter else None)
    miss: Speculation[Outcome] = Speculation(Miss(gw, path, affinity, forward, parsed.stream, plan, after,
                                                  kind, parsed))

    if gw.cache is not None and plan is not None and plan.lookup:
        try:
            found = await gw.cache.lookup(plan, miss.start if gw.cfg.cache.speculative_upstream else None,
                                          into=lookup)  # the miss's store reads it once it is finished
        except BaseException:
            miss.abandon()
            raise
        if found.hit is not None:
            miss.abandon()
            timer.observe("HIT")
            gw.cache.maybe_shadow(plan, found.hit, partial(fresh_answer, gw, path, body, forward))
            return hit_response(found.hit, kind, parsed)
    if gw.hygiene is not None:  # only misses reach vLLM, so only they matter to its prefix cache
        gw.hygiene.observe(plan.namespace if plan is not None else "-", affinity)

    outcome = await miss.result()
    if isinstance(outcome, OpenedStream):
        assembler = ResponsesAssembler() if kind == "responses" else StreamAssembler(kind, hide_usage=not wants_usage)
        return relay_stream(outcome, assembler, result, timer, after)
    if isinstance(outcome, Response):  # vLLM refused a streamed request: its error, passed on
        outcome.headers.update(cache_headers(result))
        return outcome
    status, data, ctype = outcome
    timer.observe(result)
    return Response(data, status, media_type=ctype, headers=cache_headers(result))


def _plan(gw: Gateway, request: Request, kind: str, body: dict[str, Any], tenant: str) -> CachePlan | None:
    """What the cache may do with this request (None without a cache); a namespace it may not use is a 404."""
    if gw.cache is None:
        return None
    try:
        return gw.cache.plan(kind, body, gw.auth.caller(tenant, request.headers, body),
                             parse_cache_control(request.headers.get("cache-control")),
                             request.headers.get("x-cache-namespace"))
    except PolicyError as exc:  # unknown and forbidden alike: the answer does not reveal which exist
        raise OpenAIError(404, str(exc), param=exc.param, code="namespace_not_found") from None


def _forward_body(gw: Gateway, body: dict[str, Any], raw: bytes, tenant: str, ask_usage: bool) -> bytes:
    """The bytes sent to vLLM: the client's own, unless the gateway must set a field.

    With tenants configured, ``cache_salt`` is always the gateway's (a client-chosen salt could
    probe another tenant's prefix cache); without tenants the client's own is passed through.
    """
    extra: dict[str, Any] = {}
    if gw.auth.multi_tenant:
        extra["cache_salt"] = hashlib.sha256(b"cachestack-tenant:" + tenant.encode()).hexdigest()[:32]
    if ask_usage:
        extra["stream_options"] = {"include_usage": True}
    return orjson.dumps({**body, **extra}) if extra else raw


@dataclass(frozen=True, slots=True)
class Miss:
    """The upstream call that answers a miss: an opened stream, or a whole answer stored after it is sent.

    A storable miss is single-flight twice over: identical misses in this process share one call
    (serving/singleflight.py ``SingleFlight``), and across replicas one process leads through a Redis
    lease (``ReplicaFlights``) while the others get its answer (a stream follower of a streaming
    leader gets its chunks as they come, serving/shared_stream.py)."""

    gw: Gateway
    path: str
    affinity: str
    forward: bytes
    stream: bool
    plan: CachePlan | None
    after: AfterAnswer
    kind: str
    parsed: SamplingFields | ResponsesRequest

    async def __call__(self) -> Outcome:
        if self.stream:
            return await self._open()
        if self.plan is not None and self.plan.store:  # followers share the leader's answer, stored once
            return await self.gw.singleflight.run(self.plan.exact_key, self._generate)
        return await self._generate()

    async def _claim(self) -> Lead | Response | None:
        """Across replicas: this process leads (a Lead), another replica's answer (a Response), or
        no flight (None: not storable, Responses API, no Redis, or its trouble)."""
        flights, cache, plan = self.gw.flights, self.gw.cache, self.plan
        if flights is None or cache is None or plan is None or not plan.store or self.kind == "responses" \
                or cache.degraded:
            return None
        claim = await flights.claim(plan.exact_key, stream=self.stream)
        if isinstance(claim, dict):
            return answer_response(claim, self.kind, self.parsed, {})
        if isinstance(claim, Following):  # the leader streams: its chunks, relayed as they come
            return following_response(claim, self.kind, bool(self.parsed.stream_options
                                                             and self.parsed.stream_options.include_usage))
        return claim

    async def _open(self) -> OpenedStream | Response:
        lead = await self._claim()
        if isinstance(lead, Response):
            return lead
        try:
            opened = await open_stream(self.gw, self.path, self.affinity, self.forward)
        except BaseException:
            if lead is not None:
                lead.finish(None)
            raise
        if isinstance(opened, Response):  # refused: the followers try for themselves
            if lead is not None:
                lead.finish(None)
            return opened
        return OpenedStream(opened.lease, opened.resp, lead)

    async def _generate(self) -> Response | tuple[int, bytes, str]:
        lead = await self._claim()
        if isinstance(lead, Response):
            return lead
        answer = None
        try:
            status, payload, ctype = await call(self.gw, self.path, self.affinity, self.forward)
            if status == 200:
                answer = json_object(payload)
                if answer is None:
                    metrics.UPSTREAM_ERRORS.labels("invalid_json").inc()
                    raise OpenAIError(502, "upstream sent a response that is not a JSON object", "upstream_error",
                                      code="upstream_invalid_response")
                self.after(answer)
        finally:
            if lead is not None:
                lead.finish(answer)
        return status, payload, ctype
