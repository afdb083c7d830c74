"""serving/speculation.py: a miss's early upstream call against its still-running lookup.

The gateway tests run a real gateway on the session's Valkey + RediSearch with the real MiniLM and
verifier. The lookup is made slow by holding the real embedder (a CPU-starved or hanging embedding,
which a test cannot produce on cue otherwise); the upstream is an aiohttp stand-in, since it must
answer at once, fail or hold a stream's first event on cue, and give the background judge's verdict.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from cache import metrics
from cache.keys import normalise_query
from serving.speculation import Speculation, ready_answer
from tests.conftest import gateway_settings, run_gateway

CACHED = "How do I learn Python quickly?"
ASKED = "What is the fastest way to learn Python?"  # near CACHED: a verifier score between 0.3 and 0.99


def ok(outcome: object) -> bool:
    return outcome == "answer"


async def test_the_lookup_decides_when_it_ends_first() -> None:
    upstream = asyncio.Event()

    async def call() -> str:
        await upstream.wait()
        return "answer"

    spec: Speculation[str] = Speculation(call)
    spec.start()
    lookup = asyncio.ensure_future(asyncio.sleep(0.01, result="hit"))
    assert await asyncio.wait_for(spec.unless_ready(lookup, ok), 5) == "hit"
    spec.abandon()


async def test_a_ready_answer_does_not_wait_for_the_lookup() -> None:
    async def call() -> str:
        return "answer"

    spec: Speculation[str] = Speculation(call)
    gate = asyncio.Event()

    async def lookup() -> str:
        spec.start()  # as the semantic stage begins
        await gate.wait()  # a slow embedder or verifier
        return "hit"

    looking = asyncio.ensure_future(lookup())
    assert await asyncio.wait_for(spec.unless_ready(looking, ok), 5) is None
    assert not looking.done()  # left running: the caller decides what becomes of it
    assert await spec.result() == "answer"
    gate.set()
    assert await looking == "hit"


async def test_an_answer_and_a_lookup_that_end_together_go_to_the_lookup() -> None:
    async def call() -> str:
        return "answer"

    spec: Speculation[str] = Speculation(call)

    async def lookup() -> str:
        spec.start()
        await asyncio.sleep(0)  # the call's task runs and ends in this step too
        await asyncio.sleep(0)
        return "hit"

    looking = asyncio.ensure_future(lookup())
    await asyncio.sleep(0.01)  # both are done before anyone looks
    assert looking.done() and await asyncio.wait_for(spec.unless_ready(looking, ok), 5) == "hit"


async def test_an_upstream_error_waits_for_the_lookup() -> None:
    async def failing() -> str:
        raise RuntimeError("upstream down")

    async def refused() -> str:
        return "502"

    for call in (failing, refused):
        spec: Speculation[str] = Speculation(call)

        async def lookup(spec: Speculation[str] = spec) -> str:
            spec.start()
            await asyncio.sleep(0.05)
            return "hit"

        assert await asyncio.wait_for(spec.unless_ready(asyncio.ensure_future(lookup()), ok), 5) == "hit"
        spec.abandon()


async def test_without_an_early_call_the_lookup_is_awaited() -> None:
    async def call() -> str:
        return "answer"

    spec: Speculation[str] = Speculation(call)  # speculative_upstream off: never started during the lookup
    looking = asyncio.ensure_future(asyncio.sleep(0.02, result="miss"))
    assert await asyncio.wait_for(spec.unless_ready(looking, ok), 5) == "miss"


def test_ready_means_a_200_answer_or_a_stream_with_its_first_event() -> None:
    from starlette.responses import Response

    from serving.relay import OpenedStream

    class Resp:
        def __init__(self, started: bool) -> None:
            self.started = started

    assert ready_answer((200, b"{}", "application/json"))
    assert not ready_answer((502, b"{}", "application/json"))
    assert ready_answer(Response(b"{}", 200)) and not ready_answer(Response(b"{}", 400))
    assert ready_answer(OpenedStream(None, Resp(True)))  # type: ignore[arg-type]
    assert not ready_answer(OpenedStream(None, Resp(False)))  # type: ignore[arg-type]  # headers only


# -- through a gateway ---------------------------------------------------------------------------

class HeldEmbedder:
    """The real embedder, held on cue: ``hold()`` makes every embedding wait until ``release()``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._open = threading.Event()
        self._open.set()
        self.waiting = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, texts: list[str]) -> Any:
        self.waiting += 1
        try:
            assert self._open.wait(60), "the embedder was never released"
        finally:
            self.waiting -= 1
        return self._inner.encode(texts)

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()


class StandIn:
    """An OpenAI-shaped upstream in a thread of its own: answers at once (``text``), or with a
    500 (``fail``); an answer, or a stream's first event, comes once ``first_event`` is set; a judge request
    (max_tokens 1 with logprobs) gets a yes, and its prompt is kept in ``judged``."""

    def __init__(self) -> None:
        self.fail = False
        self.text = "Fresh answer"
        self.first_event = threading.Event()
        self.first_event.set()
        self.received = threading.Event()
        self.judged: list[str] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        started = threading.Event()
        threading.Thread(target=self._serve, args=(started,), daemon=True).start()
        assert started.wait(10)

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        started.set()
        self._loop.run_forever()

    @staticmethod
    async def _models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "smollm2", "object": "model"}]})

    @staticmethod
    async def _metrics(_: web.Request) -> web.Response:
        return web.Response(text="")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("max_tokens") == 1 and body.get("logprobs"):
            self.judged.append(body["messages"][-1]["content"])
            return web.json_response({"object": "chat.completion", "model": body["model"], "choices": [{
                "index": 0, "message": {"role": "assistant", "content": "Yes"}, "finish_reason": "length",
                "logprobs": {"content": [{"token": "Yes", "logprob": -0.01, "top_logprobs": [
                    {"token": "Yes", "logprob": -0.01}, {"token": "No", "logprob": -6.0}]}]}}]})
        self.received.set()
        if self.fail:
            return web.json_response({"error": "engine died"}, status=500)
        if not body.get("stream"):
            while not self.first_event.is_set():
                await asyncio.sleep(0.01)
            return web.json_response(answer(self.text, body["model"]))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)  # the headers at once, as vLLM sends them on accepting a request
        while not self.first_event.is_set():  # a stream's first token; a whole answer's generation
            await asyncio.sleep(0.01)
        for delta, finish in (({"role": "assistant", "content": self.text}, None), ({}, "stop")):
            await resp.write(b"data: " + orjson.dumps({
                "id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def close(self) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


def answer(text: str, model: str = "smollm2") -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}


def ask(gw: Any, question: str, *, stream: bool = False, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"model": "smollm2", "temperature": 0, "stream": stream, "messages": [{"role": "user", "content": question}]}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=10)


def content(r: httpx.Response) -> str:
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [orjson.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: {")]
        return "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))
    return str(r.json()["choices"][0]["message"]["content"])


def counted(metric: Any, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    up = StandIn()
    yield up
    up.close()


@pytest.fixture
def held(embedder: Any) -> Iterator[HeldEmbedder]:
    h = HeldEmbedder(embedder)
    yield h
    h.release()


def start(stand_in: StandIn, redis_url: str, held: HeldEmbedder, verifier_threshold: float) -> Any:
    """A gateway with L1 off, the background judge on, and CACHED stored with "Answer A"."""
    cm = run_gateway(gateway_settings(stand_in.url, redis_url, cache={
        "l1_max_bytes": 0,
        "namespaces": {"default": {"threshold": 0.7, "verifier_threshold": verifier_threshold}},
        "decision": {"judge": {"background": True, "min_score": 0.3, "timeout_ms": 5000}}}), held)
    gw = cm.__enter__()
    stand_in.text = "Answer A"
    assert ask(gw, CACHED).headers["x-cache"] == "MISS"
    gw.drain()
    stand_in.text = "Fresh answer"
    stand_in.received.clear()
    return cm, gw


def test_a_ready_answer_is_served_while_the_lookup_runs_and_its_store_still_gets_the_near_candidate_judged(
        stand_in: StandIn, redis_url: str, held: HeldEmbedder) -> None:
    cm, gw = start(stand_in, redis_url, held, verifier_threshold=0.99)  # ASKED: a near candidate, no hit
    try:
        held.hold()
        r = ask(gw, ASKED)  # returns while the lookup waits for its embedding
        assert held.waiting == 1, "the lookup should still be embedding"
        assert r.status_code == 200 and r.headers["x-cache"] == "MISS" and content(r) == "Fresh answer"
        assert stand_in.judged == []  # the store waits for the lookup's near candidate
        held.release()
        gw.drain()
        assert len(stand_in.judged) == 1, gw.cache_counters()
        assert normalise_query(CACHED) in stand_in.judged[0] and normalise_query(ASKED) in stand_in.judged[0]
        again = ask(gw, ASKED)  # the judge's yes made ASKED an alias of CACHED's entry
        assert again.headers["x-cache"] == "HIT" and content(again) == "Answer A", gw.cache_counters()
    finally:
        held.release()
        cm.__exit__(None, None, None)


def test_a_hit_found_after_the_answer_was_served_is_neither_served_nor_counted(
        stand_in: StandIn, redis_url: str, held: HeldEmbedder) -> None:
    cm, gw = start(stand_in, redis_url, held, verifier_threshold=0.3)  # ASKED: a semantic hit
    hits, misses = counted(metrics.REQUESTS, "HIT", "semantic", "default"), counted(
        metrics.REQUESTS, "MISS", "semantic", "default")
    superseded = counted(metrics.LOOKUP_SUPERSEDED, "hit", "default")
    try:
        held.hold()
        r = ask(gw, ASKED, headers={"cache-control": "no-store"})  # the lookup's hit stays the only entry
        assert held.waiting == 1
        assert r.headers["x-cache"] == "MISS" and content(r) == "Fresh answer"
        held.release()
        gw.drain()
        assert counted(metrics.LOOKUP_SUPERSEDED, "hit", "default") == superseded + 1, gw.cache_counters()
        assert counted(metrics.REQUESTS, "HIT", "semantic", "default") == hits
        assert counted(metrics.REQUESTS, "MISS", "semantic", "default") == misses + 1
        stats = gw.call(_flushed_stats(gw))
        # (the seed's lookup may have been superseded too, by a miss: the stand-in answers at once)
        assert stats["fleet"]["superseded"]["hit"] == 1 and "HIT:semantic" not in stats["fleet"]["lookups"]
        stand_in.first_event.clear()  # an upstream slower than the lookup, as a generating LLM is
        again = ask(gw, ASKED)  # the same lookup with nothing held: the hit it would have served
        assert again.headers["x-cache"] == "HIT" and again.headers["x-cache-layer"] == "semantic"
        assert content(again) == "Answer A"
    finally:
        stand_in.first_event.set()
        held.release()
        cm.__exit__(None, None, None)


async def _flushed_stats(gw: Any) -> Any:
    await gw.gw.cache.counts.flush()
    return await gw.gw.cache.stats()


def test_an_upstream_error_waits_for_the_lookup_which_serves_its_hit(
        stand_in: StandIn, redis_url: str, held: HeldEmbedder) -> None:
    cm, gw = start(stand_in, redis_url, held, verifier_threshold=0.3)
    try:
        stand_in.fail = True
        held.hold()
        result: list[httpx.Response] = []
        asking = threading.Thread(target=lambda: result.append(ask(gw, ASKED)))
        asking.start()
        assert stand_in.received.wait(10)  # the speculative call went out and gets its 500
        time.sleep(0.3)
        assert not result, "an upstream error must wait for the lookup"
        held.release()
        asking.join(20)
        assert result[0].headers["x-cache"] == "HIT" and content(result[0]) == "Answer A"
    finally:
        held.release()
        cm.__exit__(None, None, None)


def test_a_stream_is_served_from_its_first_event_while_the_lookup_runs(
        stand_in: StandIn, redis_url: str, held: HeldEmbedder) -> None:
    cm, gw = start(stand_in, redis_url, held, verifier_threshold=0.99)
    try:
        held.hold()
        r = ask(gw, ASKED, stream=True)
        assert held.waiting == 1
        assert r.headers["x-cache"] == "MISS" and content(r) == "Fresh answer"
        held.release()
        gw.drain()
        assert len(stand_in.judged) == 1, gw.cache_counters()  # the assembled stream's store got the pair
    finally:
        held.release()
        cm.__exit__(None, None, None)


def test_a_stream_that_opened_but_sent_no_event_yet_does_not_beat_a_hit(
        stand_in: StandIn, redis_url: str, held: HeldEmbedder) -> None:
    """vLLM answers a stream's headers as it accepts the request; the first token can take seconds.
    Only the first event makes the stream an answer, so a lookup that ends before it still serves its hit."""
    cm, gw = start(stand_in, redis_url, held, verifier_threshold=0.3)
    try:
        stand_in.first_event.clear()
        held.hold()
        result: list[httpx.Response] = []
        asking = threading.Thread(target=lambda: result.append(ask(gw, ASKED, stream=True)))
        asking.start()
        assert stand_in.received.wait(10)  # the stream's headers are sent
        time.sleep(0.3)
        held.release()
        asking.join(20)
        assert result[0].headers["x-cache"] == "HIT" and content(result[0]) == "Answer A"
    finally:
        stand_in.first_event.set()
        held.release()
        cm.__exit__(None, None, None)
