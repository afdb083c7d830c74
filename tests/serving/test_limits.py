"""serving/limits.py: the header limit answers an OpenAI-shaped 431 before any route runs."""

from __future__ import annotations

import httpx
from starlette.responses import Response

from serving.limits import HeaderLimit


async def _ok(scope, receive, send):  # type: ignore[no-untyped-def]
    await Response(b"ok")(scope, receive, send)


async def test_headers_over_the_limit_get_431_in_openai_shape() -> None:
    app = HeaderLimit(_ok, max_bytes=2048)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        small = await client.get("/", headers={"authorization": "Bearer " + "k" * 1000})
        assert small.status_code == 200 and small.text == "ok"
        big = await client.get("/", headers={"authorization": "Bearer " + "k" * 1000, "x-cache-namespace": "n" * 1100})
        assert big.status_code == 431
        err = big.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == "request_headers_too_large"
