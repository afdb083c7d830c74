"""GET /health (alive), GET /ready (an upstream answers; the cache state), GET /metrics."""

from starlette.routing import Route
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

import orjson

async def health(_: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    """200 when at least one upstream answers. The cache never makes the gateway unready: it fails
    open, so a down Redis shows as "degraded", not as a reason to pull the pod from the Service."""
    gw = request.app.state.gw
    await gw.catalog.refresh()
    upstreams = {url: ("up" if ok else "down") for url, ok in gw.catalog.reachable.items()}
    body: dict[str, object] = {"upstreams": upstreams, "replicas": gw.router.status()}
    if gw.cache is None:
        body["cache"] = "disabled"
    else:
        body["cache"] = "ok" if await gw.cache.ready() else "degraded"  # never switches the cache off
        if gw.cache.last_error:
            body["cache_error"] = gw.cache.last_error
    is_ready = any(v == "up" for v in upstreams.values())
    body["status"] = "ready" if is_ready else "not ready"
    down = [url for url, state in upstreams.items() if state == "down"]
    if down:
        body["down"] = down
    return Response(orjson.dumps(body), 200 if is_ready else 503, media_type="application/json")


async def prometheus_metrics(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/health", health, methods=["GET"]), Route("/ready", ready, methods=["GET"]),
          Route("/metrics", prometheus_metrics, methods=["GET"])]
