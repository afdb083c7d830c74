"""Admin API (admin key): POST /admin/cache/purge, GET /admin/cache/stats.

Every purge, and every refused one, is logged to ``cachestack.audit``: who, which filter, how many
entries; a ``similar_to`` text is logged as its length and an end user as its digest, never in clear.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.routing import Route
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from serving.limits import read_body
from cache.policy import user_scope
from serving.protocol import OpenAIError

audit = logging.getLogger("cachestack.audit")


class PurgeRequest(BaseModel):
    """At least one filter; filters combine with AND. ``similar_to`` purges near-duplicates of a text."""

    model_config = ConfigDict(extra="forbid")
    namespace: str | None = Field(None, min_length=1)
    tenant: str | None = Field(None, min_length=1)
    user: str | None = Field(None, min_length=1, description="the end user, in per_user namespaces")
    model: str | None = Field(None, min_length=1)
    version: str | None = Field(None, min_length=1)
    key: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    similar_to: str | None = Field(None, min_length=1)
    threshold: float | None = Field(None, ge=0.0, le=1.0)


def _cache(request: Request):  # type: ignore[no-untyped-def]
    gw = request.app.state.gw
    gw.auth.require_admin(request.headers.get("authorization"))
    if gw.cache is None:
        raise OpenAIError(409, "the cache is disabled in this gateway's config", code="cache_disabled")
    return gw.cache


def audit_filter(req: PurgeRequest) -> dict[str, Any]:
    """The purge filter as logged: no prompt text, no end user id in clear."""
    shown: dict[str, Any] = req.model_dump(exclude_none=True)
    if req.similar_to is not None:
        shown["similar_to"] = f"<{len(req.similar_to)} chars>"
    if req.user is not None:
        shown["user"] = user_scope(req.user)
    return shown


async def purge(request: Request) -> Response:
    try:
        cache = _cache(request)
    except OpenAIError as exc:
        audit.warning("purge refused (%s) from %s", exc.code, request.client.host if request.client else "-")
        raise
    raw = await read_body(request, 65536)
    try:
        req = PurgeRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise OpenAIError(400, f"invalid purge request: {param}: {first['msg']}", param=param) from None
    tags = {k: v for k, v in {"namespace": req.namespace, "tenant": req.tenant, "model": req.model,
                              "version": req.version, "user": req.user and user_scope(req.user)}.items() if v}
    if not tags and req.key is None and req.similar_to is None:
        raise OpenAIError(400, "name at least one filter: namespace, tenant, user, model, version, key or similar_to")
    purged = await cache.purge(tags=tags, key=req.key, similar_to=req.similar_to, threshold=req.threshold)
    audit.info("purge by admin: filter %s, %d entries", orjson.dumps(audit_filter(req)).decode(), purged)
    return Response(orjson.dumps({"purged": purged}), media_type="application/json")


async def stats(request: Request) -> Response:
    cache = _cache(request)
    return Response(orjson.dumps(await cache.stats()), media_type="application/json")


routes = [Route("/admin/cache/purge", purge, methods=["POST"]),
          Route("/admin/cache/stats", stats, methods=["GET"])]
