"""Request limits applied before any work: header and body size, and each tenant's concurrent requests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from serving.protocol import OpenAIError

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class HeaderLimit:
    """ASGI middleware: a request whose headers together pass ``max_bytes`` gets an OpenAI-shaped 431.

    Every route reads headers (Authorization, Cache-Control, X-Cache-Namespace): bounding them here
    bounds what auth and the cache policy parse, on every route.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_bytes:
            err = OpenAIError(431, f"request headers are larger than {self.max_bytes} bytes",
                              code="request_headers_too_large")
            await Response(err.body(), 431, media_type="application/json")(scope, receive, send)
            return
        await self.app(scope, receive, send)


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


class TenantSlots:
    """``server.max_in_flight_per_tenant``: a tenant's requests beyond the limit get 429.

    A streamed response holds its slot until the stream ends or the client leaves it.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._in_flight: dict[str, int] = {}

    def __getitem__(self, tenant: str) -> int:
        return self._in_flight.get(tenant, 0)

    async def run(self, tenant: str, handler: Callable[[], Awaitable[Response]]) -> Response:
        """``handler``'s response, run inside one of the tenant's slots."""
        if self.limit is None:
            return await handler()
        if self[tenant] >= self.limit:
            raise OpenAIError(429, f"more than {self.limit} concurrent requests for this API key",
                              "rate_limit_error", code="rate_limit_exceeded", headers={"retry-after": "1"})
        self._in_flight[tenant] = self[tenant] + 1
        try:
            response = await handler()
        except BaseException:
            self._release(tenant)
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._holding(response.body_iterator, tenant)
        else:
            self._release(tenant)
        return response

    async def _holding(self, chunks: AsyncIterator[Any], tenant: str) -> AsyncIterator[Any]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self._release(tenant)

    def _release(self, tenant: str) -> None:
        self._in_flight[tenant] -= 1
        if not self._in_flight[tenant]:
            del self._in_flight[tenant]
