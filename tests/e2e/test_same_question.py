"""What counts as the same question, through the real stack (vLLM, Valkey + RediSearch, MiniLM, the
shipped verifier): the exact tier is byte-exact, a pair too long for the verifier to read whole is no
semantic hit, and a swapped identifier is never a semantic hit."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.e2e

KEY = "sk-tenant-same"


@pytest.fixture
def gw(gateway_factory, vllm_url, redis_url):
    return gateway_factory(vllm_url, redis_url, auth={
        "tenants": [{"name": "t", "key_sha256": [hashlib.sha256(KEY.encode()).hexdigest()]}]}, cache={
        "namespaces": {"default": {}, "lenient": {"verifier_threshold": 0.0}}})


def post(gw, path: str, body: dict, namespace: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEY}"}
    if namespace:
        headers["x-cache-namespace"] = namespace
    r = httpx.post(gw.url + path, json={"model": MODEL, "temperature": 0, "max_tokens": 40, "stop": ["\n", ".", ","], **body},
                   headers=headers, timeout=300)
    assert r.status_code == 200, r.text
    gw.drain()
    return r


def chat(gw, text: str, namespace: str | None = None) -> httpx.Response:
    return post(gw, "/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}, namespace)


def stored(r: httpx.Response) -> httpx.Response:
    assert r.headers["x-cache"] == "MISS" and r.json()["choices"][0]["finish_reason"] == "stop", r.text
    return r


def test_code_differing_only_in_whitespace_or_case_is_not_an_exact_hit(gw):
    code = "def area(r):\n    return 3.14159 * r * r\nWhat does this function return?"
    stored(chat(gw, code))
    again = chat(gw, code)
    assert again.headers["x-cache"] == "HIT" and again.headers["x-cache-layer"] == "exact"
    for variant in ("def area(r): return 3.14159 * r * r\nWhat does this function return?",
                    "DEF AREA(R):\n    RETURN 3.14159 * R * R\nWHAT DOES THIS FUNCTION RETURN?"):
        assert chat(gw, variant).headers.get("x-cache-layer") != "exact"


def test_completions_prompts_differing_in_case_are_not_one_exact_entry(gw):
    prompt = "Q: Name the largest planet in the Solar System.\nA:"
    stored(post(gw, "/v1/completions", {"prompt": prompt}))
    assert post(gw, "/v1/completions", {"prompt": prompt}).headers["x-cache-layer"] == "exact"
    lower = post(gw, "/v1/completions", {"prompt": prompt.lower()})
    assert lower.headers.get("x-cache-layer") != "exact"


def test_a_question_too_long_to_verify_is_never_a_semantic_hit(gw):
    """Over 512 tokens a pair: the verifier cannot read it whole, so even a verifier threshold of 0
    serves nothing (the embedder reads 256 tokens: the two embed alike)."""
    long_q = " ".join(["x1"] * 320)
    stored(chat(gw, long_q, "lenient"))
    assert chat(gw, long_q + " please", "lenient").headers["x-cache"] == "MISS"
    assert chat(gw, long_q, "lenient").headers["x-cache-layer"] == "exact"


def test_a_swapped_reference_code_is_not_a_semantic_hit(gw):
    """At verifier threshold 0 only the guards stand between the two: the identifier guard."""
    stored(chat(gw, "Where is my package? Reference code QWERTYU.", "lenient"))
    assert chat(gw, "Where is my package? Reference code ZXCVBNM.", "lenient").headers["x-cache"] == "MISS"
    same = chat(gw, "Reference code QWERTYU: where is my package?", "lenient")
    assert same.headers["x-cache"] == "HIT" and same.headers["x-cache-layer"] == "semantic"
