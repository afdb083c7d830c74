"""Three gateway replicas (own CacheService, L1 and single-flight each, separate uvicorn servers) on one
Valkey + RediSearch and the real vLLM: purges reach every replica, identical concurrent misses spread
over the replicas cost one generation (streams included), and a failed leader hands over to one
follower. Upstream calls are counted by a pass-through proxy in front of vLLM (it fails a call only
where a test asks it to)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import MODEL

pytestmark = pytest.mark.e2e

ADMIN = "admin-secret-replicas"


class CountingProxy:
    """Forwards to vLLM and counts generation requests; ``fail_next`` answers that many with 500 after
    ``fail_after_s`` (a leader whose upstream fails, which a real vLLM cannot be made to do on cue).
    ``event_delay_s`` paces vLLM's stream events (a slow token rate, so that a relay's timing shows),
    and ``break_stream_after`` cuts the next stream's connection after that many events (an upstream
    that breaks off mid-stream)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls = 0
        self.fail_next = 0
        self.fail_after_s = 1.0
        self.event_delay_s = 0.0
        self.break_stream_after: int | None = None
        self.client: httpx.AsyncClient | None = None

    async def generate(self, request: Request) -> Response:
        self.calls += 1
        body = await request.body()
        if self.fail_next:
            self.fail_next -= 1
            await asyncio.sleep(self.fail_after_s)
            return JSONResponse({"error": {"message": "injected"}}, 500)
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=300)
        req = self.client.build_request("POST", self.upstream + request.url.path, content=body,
                                        headers={"content-type": "application/json"})
        resp = await self.client.send(req, stream=True)
        body_iter = resp.aiter_raw()
        if resp.headers.get("content-type", "").startswith("text/event-stream") and \
                (self.event_delay_s or self.break_stream_after is not None):
            cut, self.break_stream_after = self.break_stream_after, None
            body_iter = self._paced(resp, cut)
        return StreamingResponse(body_iter, resp.status_code, media_type=resp.headers.get("content-type"),
                                 background=None)

    async def _paced(self, resp: httpx.Response, cut: int | None) -> Any:
        buf, sent = b"", 0
        try:
            async for raw in resp.aiter_raw():
                buf += raw
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if cut is not None and sent >= cut:
                        raise RuntimeError("injected: the upstream broke off mid-stream")  # the connection drops
                    await asyncio.sleep(self.event_delay_s)
                    sent += 1
                    yield event + b"\n\n"
            if buf:
                yield buf
        finally:
            await resp.aclose()

    async def models(self, _: Request) -> Response:
        r = httpx.get(self.upstream + "/v1/models", timeout=30)
        return Response(r.content, r.status_code, media_type="application/json")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.generate, methods=["POST"]),
                                 Route("/v1/completions", self.generate, methods=["POST"]),
                                 Route("/v1/models", self.models), Route("/metrics", lambda _: Response(""))])


@pytest.fixture
def proxy(vllm_url: str) -> Iterator[tuple[str, CountingProxy]]:
    from serving.local.processes import free_port

    counting = CountingProxy(vllm_url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(counting.app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "proxy did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", counting
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def replicas(gateway_factory: Any, proxy: tuple[str, CountingProxy], redis_url: str) -> list[Any]:
    url, _ = proxy
    prefix = f"rep{uuid.uuid4().hex[:8]}"
    return [gateway_factory(url, redis_url, redis={"index_prefix": prefix},
                            auth={"admin_key_sha256": hashlib.sha256(ADMIN.encode()).hexdigest()})
            for _ in range(3)]


def body(question: str, stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "temperature": 0, "max_tokens": 24, "stream": stream,
            "messages": [{"role": "user", "content": question}]}


async def burst(gateways: list[Any], question: str, n: int, stream: Any = False) -> list[httpx.Response]:
    """``n`` identical requests at once, spread round-robin over the gateways."""
    async with httpx.AsyncClient(timeout=300) as client:
        return list(await asyncio.gather(*(
            client.post(gateways[i % len(gateways)].url + "/v1/chat/completions",
                        json=body(question, stream(i) if callable(stream) else stream))
            for i in range(n))))


def text_of(r: httpx.Response) -> str:
    if r.headers["content-type"].startswith("text/event-stream"):
        import orjson

        out = []
        for line in r.text.splitlines():
            if line.startswith("data: {"):
                for choice in orjson.loads(line[6:]).get("choices", []):
                    out.append((choice.get("delta") or {}).get("content") or "")
        return "".join(out)
    return r.json()["choices"][0]["message"]["content"]


def test_a_purge_on_one_replica_stops_every_replica_serving_it_within_a_second(replicas, proxy):
    a, b, c = replicas
    q = f"What is the capital of France? ({uuid.uuid4().hex[:6]})"
    assert httpx.post(a.url + "/v1/chat/completions", json=body(q), timeout=300).status_code == 200
    a.drain()
    for gw in (b, c):  # the first read fills each replica's L1, the second is served from it
        for store in ("redis", "l1"):
            r = httpx.post(gw.url + "/v1/chat/completions", json=body(q), timeout=60)
            assert (r.headers["x-cache"], r.headers.get("x-cache-store")) == ("HIT", store)
    started = time.monotonic()
    r = httpx.post(a.url + "/admin/cache/purge", json={"namespace": "default"},
                   headers={"authorization": f"Bearer {ADMIN}"}, timeout=60)
    assert r.status_code == 200 and r.json()["purged"] >= 1
    for gw in (b, c):
        while len(gw.gw.cache.l1):
            assert time.monotonic() - started < 1.0, f"{gw.url} still holds the purged entry in its L1"
            time.sleep(0.01)
        r = httpx.post(gw.url + "/v1/chat/completions", json=body(q), headers={"cache-control": "no-store"},
                       timeout=300)
        assert r.headers["x-cache"] == "MISS"


@pytest.mark.parametrize("stream", ["none", "mixed"])
def test_identical_misses_over_three_replicas_cost_one_generation(replicas, proxy, stream):
    _, counting = proxy
    q = f"Name three colours of the rainbow. ({uuid.uuid4().hex[:6]})"
    n = 9
    rs = asyncio.run(burst(replicas, q, n, (lambda i: i % 2 == 1) if stream == "mixed" else False))
    assert [r.status_code for r in rs] == [200] * n, [r.text[:200] for r in rs]
    assert counting.calls == 1, f"{counting.calls} upstream calls for {n} identical concurrent misses"
    assert len({text_of(r) for r in rs}) == 1  # every client got the one generation
    if stream == "mixed":
        assert any(r.headers["content-type"].startswith("text/event-stream") for r in rs)


def test_a_failed_leader_hands_over_to_one_follower(replicas, proxy):
    _, counting = proxy
    counting.fail_next, counting.fail_after_s = 1, 1.5
    q = f"Name a large ocean. ({uuid.uuid4().hex[:6]})"
    started = time.monotonic()
    rs = asyncio.run(burst(replicas, q, 6))
    statuses = sorted(r.status_code for r in rs)
    assert counting.calls == 2, f"{counting.calls} upstream calls: one failed leader, then one takeover"
    # the failed leader's gateway answered its two requests (the leader and its in-process follower,
    # which shares its process leader's outcome) with the failure; the other replicas' four got the takeover
    assert statuses == [200] * 4 + [502] * 2, statuses
    assert time.monotonic() - started < 120


class Streamed:
    """One client's stream as the official openai client saw it: chunk ids, content, times, error."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.created: set[int] = set()
        self.content = ""
        self.first: float | None = None  # monotonic time of the first chunk
        self.end = 0.0
        self.error: Exception | None = None

    @property
    def leader(self) -> bool:
        return not any("-cache-" in i for i in self.ids)  # a follower's id is its gateway's own


async def stream_burst(gateways: list[Any], question: str, n: int) -> tuple[float, list[Streamed]]:
    """``n`` identical streams at once over the gateways (round-robin), read with the openai client."""
    import openai

    clients = [openai.AsyncOpenAI(api_key="x", base_url=gw.url + "/v1", max_retries=0, timeout=300)
               for gw in gateways]
    started = time.monotonic()

    async def one(i: int) -> Streamed:
        out = Streamed()
        try:
            stream = await clients[i % len(clients)].chat.completions.create(
                model=MODEL, temperature=0, max_tokens=24, stream=True,
                messages=[{"role": "user", "content": question}])
            async for chunk in stream:
                out.first = out.first or time.monotonic()
                out.ids.add(chunk.id)
                out.created.add(chunk.created)
                for choice in chunk.choices:
                    out.content += choice.delta.content or ""
        except openai.APIError as exc:
            out.error = exc
        out.end = time.monotonic()
        return out

    try:
        return started, list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        for c in clients:
            await c.close()


def test_streaming_followers_on_other_replicas_get_the_leaders_chunks_as_they_come(replicas, proxy):
    _, counting = proxy
    # ~25 events 120 ms apart: a ~3 s stream, long next to the spread of the six lookups on a loaded machine,
    # so that "as they come" shows in the timing
    counting.event_delay_s = 0.12
    q = f"Describe the sea in one sentence. ({uuid.uuid4().hex[:6]})"
    started, rs = asyncio.run(stream_burst(replicas, q, 6))
    assert [r.error for r in rs] == [None] * 6
    assert counting.calls == 1, f"{counting.calls} upstream calls for 6 identical concurrent streams"
    (leader,) = [r for r in rs if r.leader]
    followers = [r for r in rs if not r.leader]
    assert leader.content and all(f.content == leader.content for f in followers)
    assert all(len(r.ids) == 1 and len(r.created) == 1 for r in rs)  # one id and created per response
    assert len({next(iter(f.ids)) for f in followers}) == 5  # and each follower its own
    lead_ttft, lead_span = leader.first - started, leader.end - leader.first
    for f in followers:  # relayed as they come: a follower's first chunk lands well before the leader ends
        assert f.first < leader.end - lead_span / 2, (
            f"follower's first chunk {f.first - started:.2f} s, leader's {lead_ttft:.2f} s, "
            f"leader ended {leader.end - started:.2f} s")


def test_a_leader_stream_that_breaks_off_ends_its_followers_with_an_error_event(replicas, proxy):
    import openai

    _, counting = proxy
    counting.event_delay_s, counting.break_stream_after = 0.08, 8
    q = f"Describe a mountain in one sentence. ({uuid.uuid4().hex[:6]})"
    _, rs = asyncio.run(stream_burst(replicas, q, 6))
    assert counting.calls == 1, "a follower that had relayed chunks must not start another generation"
    (leader,) = [r for r in rs if r.leader]
    assert isinstance(leader.error, openai.APIError)
    for f in rs:
        assert isinstance(f.error, openai.APIError), f"a stream ended without an error: {f.content!r}"
        assert "upstream" in str(f.error)
        assert leader.content.startswith(f.content) or f.content.startswith(leader.content)
        assert f.end - leader.end < 1.0, f"a follower ended {f.end - leader.end:.2f} s after the leader broke off"


def _not_at_a_minute_boundary() -> None:
    """The limits count per clock minute: start a test well inside one."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def test_three_replicas_share_one_request_limit(gateway_factory, vllm_url, redis_url):
    prefix = f"rl{uuid.uuid4().hex[:8]}"
    gws = [gateway_factory(vllm_url, redis_url, redis={"index_prefix": prefix},
                           rate_limits={"default": {"requests_per_minute": 4}}) for _ in range(3)]
    _not_at_a_minute_boundary()
    # an unknown model: admitted requests are refused after the limiter (404) and cost no generation
    rs = [httpx.post(gws[i % 3].url + "/v1/chat/completions", timeout=60,
                     json={**body("hello"), "model": "no-such-model"}) for i in range(9)]
    assert sorted(r.status_code for r in rs) == [404] * 4 + [429] * 5
    refused = next(r for r in rs if r.status_code == 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}


def test_tokens_generated_on_one_replica_count_on_the_others(gateway_factory, vllm_url, redis_url):
    prefix = f"rl{uuid.uuid4().hex[:8]}"
    a, b = (gateway_factory(vllm_url, redis_url, redis={"index_prefix": prefix},
                            rate_limits={"default": {"tokens_per_minute": 10}}) for _ in range(2))
    _not_at_a_minute_boundary()
    r = httpx.post(a.url + "/v1/chat/completions", json={**body("Say hi."), "max_tokens": 4}, timeout=300)
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] > 10
    deadline = time.monotonic() + 5
    while (r := httpx.post(b.url + "/v1/chat/completions", json=body("Say hi."), timeout=300)).status_code != 429:
        assert time.monotonic() < deadline, "the tokens charged on replica A never limited replica B"
        time.sleep(0.2)
    assert "tokens per minute" in r.json()["error"]["message"]
