"""The cache's embedder on a vLLM embedding deployment: vLLM CPU serving the same MiniLM folder
(``--runner pooling``), against the in-process ONNX path; the switch between them; failing open."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

from cache.config import RemoteEncoderConfig
from cache.embedder import Embedder
from cache.metrics import BYPASSES
from tests.conftest import EMBED_MODEL, MODEL, REPO
from tests.silent_server import Silent

pytestmark = pytest.mark.e2e

FRANCE = "What is the capital of France?"


def pairs() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (REPO / "tests/data/support_pairs.jsonl").read_text().splitlines()]
    out = [(r["text_a"], r["text_b"]) for r in rows[:48]]
    long = " ".join(["the quarterly invoice for my account lists a charge I do not recognise"] * 40)
    return [*out, (long, long + " again"), ("a", "b"), ("What's 2+2?", "what is two plus two")]


def remote(url: str, **kw) -> dict:
    return {"backend": "vllm", "remote": {"url": url, "model": EMBED_MODEL, **kw}}


@pytest.fixture(scope="module")
def vllm_embedder(vllm_embedding_url):
    # generous timeout: vLLM CPU on a shared, loaded machine; the deadline behaviour has its own test below
    return Embedder(backend="vllm", remote=RemoteEncoderConfig(url=vllm_embedding_url, model=EMBED_MODEL,
                                                               timeout_ms=180_000))


def test_cosines_equal_the_onnx_paths(vllm_embedder, embedder):
    """vLLM's pooling of the same folder gives the ONNX path's cosines to 1e-3 (the long pair is past
    256 tokens: both truncate it the same way)."""
    ps = pairs()
    a, b = [p[0] for p in ps], [p[1] for p in ps]
    local = np.sum(embedder.encode(a) * embedder.encode(b), axis=1)
    far = np.sum(vllm_embedder.encode(a) * vllm_embedder.encode(b), axis=1)
    diff = np.abs(local - far)
    print(f"max abs cosine diff over {len(ps)} pairs: {diff.max():.2e} (mean {diff.mean():.2e})")
    assert diff.max() < 1e-3
    assert max(embedder.token_counts([ps[-3][0]])[0], 0) > 256
    assert vllm_embedder.token_counts(a) == embedder.token_counts(a)
    assert (vllm_embedder.dim, vllm_embedder.max_tokens) == (embedder.dim, embedder.max_tokens)


def test_identity_is_the_weights_or_its_own(vllm_embedding_url, vllm_embedder, embedder):
    assert vllm_embedder.identity == embedder.identity  # the same folder: one vector space
    other = Embedder(backend="vllm", remote=RemoteEncoderConfig(url=vllm_embedding_url, model=EMBED_MODEL,
                                                                same_weights=False))
    assert other.identity != embedder.identity


def test_a_switch_never_mixes_vectors(gateway_factory, vllm_url, redis_url, vllm_embedding_url, embedder):
    """One Redis, one index prefix, three gateways in turn: the in-process embedder stores an answer;
    the deployment declared as other weights sees none of it (indexes and keys of its own), the
    deployment of the same folder hits it semantically, with its own query vector."""
    prefix = f"sw{time.time_ns() % 10**9}"
    redis = {"index_prefix": prefix}
    onnx = gateway_factory(vllm_url, redis_url, redis=redis)
    assert ask(onnx, FRANCE).headers["x-cache"] == "MISS"
    assert ask(onnx, FRANCE).headers["x-cache-layer"] == "exact"

    slow = {"lookup_deadline_ms": 30_000}  # vLLM CPU on a loaded machine takes seconds; not what is tested here
    other = gateway_factory(vllm_url, redis_url, redis=redis, cache=slow,
                            embedder=remote(vllm_embedding_url, same_weights=False, timeout_ms=25_000))
    assert other.gw.cache.store.key_prefix != onnx.gw.cache.store.key_prefix
    assert ask(other, FRANCE).headers["x-cache"] == "MISS"  # not even the exact entry: another space
    same = gateway_factory(vllm_url, redis_url, redis=redis, cache=slow,
                           embedder=remote(vllm_embedding_url, timeout_ms=25_000))
    assert same.gw.cache.store.key_prefix == onnx.gw.cache.store.key_prefix
    r = ask(same, "what's the capital city of France")
    assert r.headers["x-cache"] == "HIT" and r.headers["x-cache-layer"] == "semantic", r.headers


@pytest.mark.parametrize("kind", ["hanging", "refusing", "answering_404"])
def test_a_failing_deployment_is_a_miss_within_the_deadline(gateway_factory, vllm_url, redis_url, vllm_embedding_url,
                                                            kind):
    """The lookup goes on without the semantic stage: the request is answered upstream (MISS), never
    a 5xx, and a hanging deployment holds it no longer than its timeout (100 ms here)."""
    silent = Silent() if kind == "hanging" else None
    url = silent.url if silent else ("http://127.0.0.1:9" if kind == "refusing" else vllm_embedding_url)
    gw = gateway_factory(vllm_url, redis_url, embedder=remote(url, timeout_ms=100),
                         cache={"lookup_deadline_ms": 250})
    encoder = gw.gw.cache.embedder.embedder._remote
    if kind == "answering_404":  # the real deployment, asked for a model it does not serve
        encoder.served_model = "no-such-model"
    def skipped() -> float:  # the encoder gave up first, or (on a loaded machine) the lookup deadline
        return BYPASSES.labels("embed_unavailable")._value.get() + BYPASSES.labels("deadline")._value.get()

    bypasses = skipped()
    try:
        started = time.perf_counter()
        r = ask(gw, "How tall is the Eiffel Tower?")
        took = time.perf_counter() - started
        assert r.status_code == 200 and r.headers["x-cache"] == "MISS"
        assert skipped() > bypasses
        assert took < 10  # vLLM's answer; the hanging deployment alone would hold it forever
        if kind != "hanging":
            assert encoder.breaker.trips >= 1 and encoder.breaker.last_error
        print(f"{kind}: request answered in {took * 1000:.0f} ms")
    finally:
        if silent:
            silent.close()


def ask(gw, question: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 16}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    gw.drain()
    return r
