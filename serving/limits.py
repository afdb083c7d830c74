"""Request limits applied before any work: the body's size and each tenant's concurrent requests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from serving.protocol import OpenAIError


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
