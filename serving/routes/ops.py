"""GET /health (liveness: the process serves HTTP), GET /ready (readiness: see :func:`ready`), GET /metrics."""

from typing import Any

from starlette.routing import Route
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

import orjson

from serving.protocol import OpenAIError


async def health(_: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    """200 while this gateway can answer anything: an upstream answers, or the cache store does.

    A gateway with no upstream can still serve every hit, and all gateway pods share the same
    upstreams: pulling them all out of the Service during a vLLM rollout would stop the hits too and
    help no one. So the only 503 is "neither an upstream nor the cache store answers" (with the cache
    disabled: no upstream answers). Anonymous callers see counts; the admin key also sees replica
    URLs, their routing state and the store's last error.
    """
    gw = request.app.state.gw
    await gw.catalog.refresh()
    up = [url for url, ok in gw.catalog.reachable.items() if ok]
    down = [url for url, ok in gw.catalog.reachable.items() if not ok]
    # the store probe never switches the cache off (CacheService.ready)
    cache = "disabled" if gw.cache is None else ("ok" if await gw.cache.ready() else "degraded")
    is_ready = bool(up) or cache == "ok"
    body: dict[str, object] = {"status": "ready" if is_ready else "not ready", "cache": cache,
                               "upstreams": {"up": len(up), "down": len(down)}}
    if _is_admin(gw, request):
        body["upstreams"] = {**{url: "up" for url in up}, **{url: "down" for url in down}}
        body["replicas"] = gw.router.status()
        if down:
            body["down"] = down
        if gw.cache is not None and gw.cache.last_error:
            body["cache_error"] = gw.cache.last_error
    return Response(orjson.dumps(body), 200 if is_ready else 503, media_type="application/json")


def _is_admin(gw: Any, request: Request) -> bool:
    try:
        gw.auth.require_admin(request.headers.get("authorization"))
    except OpenAIError:
        return False
    return True


async def prometheus_metrics(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/health", health, methods=["GET"]), Route("/ready", ready, methods=["GET"]),
          Route("/metrics", prometheus_metrics, methods=["GET"])]
