"""App factory and lifespan: builds the upstream client, router, embedder, store and cache once."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from fastapi import FastAPI
from redis.exceptions import RedisError
from redisvl.exceptions import RedisVLError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from cache.batching import Unavailable
from cache.decision import build_rule
from cache.breaker import CircuitBreaker
from cache.embedder import Embedder, MicroBatcher, embedder_from_config
from cache.service import CacheService
from cache.topology import client_for
from cache.store import CacheStore
from cache.topology import client_for
from cache.vectors import VectorCache
from serving import metrics
from serving.auth import Authenticator
from serving.cancellation import RequestLifetime
from serving.catalog import ModelCatalog
from serving.checks import ask_judge
from serving.config import ConfigError, Settings
from serving.limits import HeaderLimit, TenantSlots
from serving.embedding_deployment import Deployment
from serving.embeddings import Embeddings, LocalModel, local_name
from serving.prefix_hygiene import PrefixHygiene
from serving.protocol import OpenAIError, error_body
from serving.rate_limits import RateLimiter
from serving.router import Router
from serving.routes import admin, chat, completions, embeddings, models, ops, responses
from serving.singleflight import ReplicaFlights, SingleFlight
from serving.upstream import UpstreamClient

log = logging.getLogger("cachestack")


@dataclass
class Gateway:
    """Everything a request handler needs, built once per process."""

    cfg: Settings
    auth: Authenticator
    upstream: UpstreamClient
    router: Router
    catalog: ModelCatalog
    cache: CacheService | None
    singleflight: SingleFlight
    hygiene: PrefixHygiene | None
    embeddings: Embeddings
    slots: TenantSlots  # server.max_in_flight_per_tenant
    flights: ReplicaFlights | None = None  # single-flight across replicas (with the cache only)
    limiter: RateLimiter | None = None  # rate_limits, when any limit is configured


async def build_cache(settings: Settings, batcher: MicroBatcher | None) -> CacheService | None:
    if not settings.cache.enabled or batcher is None:
        return None
    store = CacheStore(settings.redis, batcher.embedder.dim, embedder_id=batcher.embedder.identity)
    service = CacheService(settings.cache, store, batcher,
                           build_rule(settings.cache.decision, embedder=settings.embedder.model),
                           budget_ms=settings.redis.lookup_budget_ms, retry_after_s=settings.redis.retry_after_s,
                           trip_after_timeouts=settings.redis.trip_after_timeouts)
    if not await service.connect():
        log.warning("cache store not reachable at start; serving without it until it answers")
    return service


def build_flights(settings: Settings) -> ReplicaFlights:
    """Single-flight across replicas on its own Redis client: a follower's blocking XREAD must not
    wait for, or hold, a socket that lookups need."""
    r, rc = settings.redis, settings.cache.replicas
    client = client_for(r, socket_connect_timeout=r.store_timeout_ms / 1000.0, max_connections=r.max_connections)
    return ReplicaFlights(client, f"{r.index_prefix}", lease_ms=rc.flight_lease_ms, poll_ms=rc.flight_poll_ms,
                          max_wait_s=rc.flight_max_wait_s, op_timeout_s=r.lookup_budget_ms / 1000.0,
                          batch_ms=rc.flight_batch_ms)


def build_limiter(settings: Settings) -> RateLimiter | None:
    """The per-tenant rate limiter, on its own Redis client, if any limit is configured."""
    rl, r = settings.rate_limits, settings.redis
    if all(t.requests_per_minute is None and t.tokens_per_minute is None for t in (rl.default, *rl.tenants.values())):
        return None
    client = client_for(r, socket_connect_timeout=r.lookup_budget_ms / 1000.0,
                        socket_timeout=r.store_timeout_ms / 1000.0, max_connections=r.max_connections)
    return RateLimiter(client, r.index_prefix, rl, timeout_s=r.lookup_budget_ms / 1000.0,
                       breaker=CircuitBreaker(retry_after_s=r.retry_after_s, trip_after_timeouts=r.trip_after_timeouts))


async def build_embedder(settings: Settings, embedder: Embedder | None) -> MicroBatcher | None:
    """The one local embedder (cache lookups and /v1/embeddings share it), if either needs it."""
    if not settings.cache.enabled and not settings.embeddings.local:
        return None
    e = settings.embedder
    if embedder is None or embedder.backend != e.backend:  # a shared model only stands in for its own backend
        embedder = await asyncio.to_thread(embedder_from_config, e)
    return MicroBatcher(embedder, e.batch_wait_ms, e.max_batch, max_waiting=settings.cache.semantic_max_queue)


async def build_embeddings(settings: Settings, batcher: MicroBatcher | None, cache: CacheService | None) -> Embeddings:
    e = settings.embeddings
    local = None
    if e.local and batcher is not None:
        local = LocalModel(local_name(settings.embedder.model, e.local_name), batcher.embedder, batcher)
    vectors = None
    if e.cache and cache is not None:
        vectors = VectorCache(cache, e.cache_ttl_s, settings.cache.l1_max_bytes // 4)
    deployment = None
    if e.deployment is not None:
        deployment = Deployment(e.deployment)
        await deployment.start()
    return Embeddings(local, vectors, e.max_inputs, deployment)


def check_embedding_names(settings: Settings) -> None:
    """ConfigError when the local model's id is also one the embedding deployment serves."""
    e = settings.embeddings
    name = local_name(settings.embedder.model, e.local_name)
    if e.local and e.deployment is not None and name in e.deployment.models:
        raise ConfigError(f"embeddings.deployment.models lists {name!r}, the local embedder's id: set "
                          "embeddings.local_name or embeddings.local: false")


def create_app(settings: Settings, *, embedder: Embedder | None = None) -> FastAPI:
    """The gateway. ``embedder`` lets tests share one loaded model across apps.

    Raises ConfigError for tenants or namespace ACLs that do not fit together, before anything starts.
    """
    auth = Authenticator(settings.auth)
    auth.check_namespaces(settings.cache)
    auth.check_rate_limits(settings.rate_limits.tenants)
    check_embedding_names(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream = UpstreamClient(settings.upstreams)
        await upstream.start()
        router = Router(settings.upstreams)
        await router.start()
        collectors = [router.collector(), router.vllm_metrics]
        metrics.LIVE_APP.attach(collectors)
        ph = settings.prefix_hygiene
        catalog = ModelCatalog(upstream, router, settings.upstreams.models_refresh_s)
        batcher = await build_embedder(settings, embedder)
        cache = await build_cache(settings, batcher)
        gw = app.state.gw = Gateway(settings, auth, upstream, router, catalog, cache,
                                    SingleFlight(), PrefixHygiene(ph.window, ph.head_chars) if ph.enabled else None,
                                    await build_embeddings(settings, batcher, cache),
                                    TenantSlots(settings.server.max_in_flight_per_tenant))
        gw.limiter = build_limiter(settings)
        if cache is not None:
            gw.flights = build_flights(settings)
            cache.model_label = catalog.label
            if settings.cache.decision.judge.enabled or settings.cache.decision.judge.background:
                cache.judge = partial(ask_judge, gw)
        await catalog.refresh()
        # Startup leaves long-lived objects that every full GC pass would walk while all requests wait:
        # with torch loaded (~500k objects) a pass took 226 ms, and the p99 of exact hits at
        # concurrency 32 was 231-291 ms; the onnx embedder without torch still leaves ~94k (30 ms).
        # Frozen, they are never scanned again.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if gw.flights is not None:
                await gw.flights.aclose()
            if gw.limiter is not None:
                await gw.limiter.aclose()
            if cache is not None:
                await cache.drain()
                await cache.aclose()
            if gw.embeddings.deployment is not None:
                await gw.embeddings.deployment.aclose()
            metrics.LIVE_APP.detach(collectors)
            await router.aclose()
            await upstream.aclose()

    app = FastAPI(title="cachestack", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    for module in (chat, completions, responses, embeddings, models, ops, admin):
        app.router.routes.extend(module.routes)
    app.add_middleware(RequestLifetime, paths=[r.path for m in (chat, completions) for r in m.routes],
                       timeout_s=settings.server.request_timeout_s)
    app.add_middleware(HeaderLimit, max_bytes=settings.server.max_header_bytes)

    @app.exception_handler(OpenAIError)
    async def openai_error(_: Request, exc: OpenAIError) -> Response:
        return Response(exc.body(), exc.status, media_type="application/json", headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = "unknown route" if exc.status_code == 404 else str(exc.detail)
        return Response(error_body(message, kind, None, exc.status_code), exc.status_code,
                        media_type="application/json", headers=getattr(exc, "headers", None))

    @app.exception_handler(Unavailable)
    async def model_unavailable(_: Request, exc: Unavailable) -> Response:
        return Response(error_body(f"cache model unavailable: {exc}", "service_unavailable"), 503,
                        media_type="application/json")

    @app.exception_handler(RedisVLError)
    @app.exception_handler(RedisError)
    async def store_error(_: Request, exc: RedisError) -> Response:
        return Response(error_body(f"cache store unavailable: {type(exc).__name__}", "service_unavailable"),
                        503, media_type="application/json")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")  # the trace stays in our log, never in the response
        return Response(error_body("internal error", "internal_error"), 500, media_type="application/json")

    return RequestMetrics(app)  # type: ignore[return-value]


class RequestMetrics:
    """Counts requests by route, model and status (pure ASGI: no per-request task like BaseHTTPMiddleware)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.state = app.state

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 499  # stays so when no response started: the client left and the request was cancelled
        started = time.perf_counter()

        async def send_status(message):  # type: ignore[no-untyped-def]
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.IN_FLIGHT.dec()
            path = getattr(scope.get("route"), "path", "unmatched")
            model = scope.get("state", {}).get("model") if status < 400 or status >= 500 else None
            model = "none" if model is None else self.state.gw.catalog.label(model)
            metrics.REQUESTS.labels(path, model, str(status)).inc()
            if path not in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"):
                metrics.REQUEST_SECONDS.labels(path, "none").observe(time.perf_counter() - started)
