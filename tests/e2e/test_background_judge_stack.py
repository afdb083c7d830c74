"""Verification off the request path through the real stack (vLLM CPU, Valkey + RediSearch, MiniLM,
the shipped verifier): a near candidate the rule rejects is answered upstream, and after a yes from
the judge (injected here: it stands for the served model's verdict) the new question is an alias of
the cached entry, so its next ask is a hit with the cached answer."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.e2e

CACHED = "How do I learn Python quickly?"
ASKED = "What is the fastest way to learn Python?"
SYSTEM = "Answer in one short sentence."


def ask(gw, question: str) -> httpx.Response:
    body = {"model": MODEL, "temperature": 0, "max_tokens": 96,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    gw.drain()
    return r


def content(r: httpx.Response) -> str:
    return str(r.json()["choices"][0]["message"]["content"])


@pytest.mark.parametrize("verdict", [4.0, -4.0])
def test_a_rejected_near_candidate_hits_on_its_second_ask_after_a_yes(gateway_factory, vllm_url, redis_url,
                                                                      verdict: float) -> None:
    gw = gateway_factory(vllm_url, redis_url, cache={
        "lookup_deadline_ms": 30000,
        # a floor and a verifier threshold of the test's own, so a recalibrated model keeps this pair
        # a near miss: past the floor and the guards, below the threshold, above the judge's band start
        "namespaces": {"default": {"threshold": 0.7, "verifier_threshold": 0.99}},
        "decision": {"judge": {"background": True, "min_score": 0.3, "timeout_ms": 5000}}})
    calls: list[tuple[str, str, str]] = []

    async def judge(model: str, cached: str, asked: str) -> float:
        calls.append((model, cached, asked))
        return verdict

    gw.gw.cache.judge = judge
    first = ask(gw, CACHED)
    assert first.headers["x-cache"] == "MISS" and first.json()["choices"][0]["finish_reason"] in ("stop", "length")
    second = ask(gw, ASKED)
    assert second.headers["x-cache"] == "MISS"  # below the threshold: answered upstream, as without a judge
    assert second.json()["choices"][0]["finish_reason"] in ("stop", "length")  # both are stored
    assert content(second) != content(first)  # so the answer served next says which entry it came from
    assert calls == [(MODEL, "how do i learn python quickly", "what is the fastest way to learn python")], \
        gw.cache_counters()
    third = ask(gw, ASKED)
    assert third.headers["x-cache"] == "HIT", gw.cache_counters()
    if verdict > 0:
        assert content(third) == content(first)  # the alias: the cached entry's answer
    else:
        assert content(third) == content(second)  # its own stored answer, untouched by a no
