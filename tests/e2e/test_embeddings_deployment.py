"""POST /v1/embeddings forwarded to a vLLM embedding deployment (the session's vLLM CPU pooling server
of MiniLM), through the official openai client: vectors as the deployment computes them, the exact
tenant-scoped vector cache, auth, limits and OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import EMBED_MODEL
from tests.silent_server import Silent

pytestmark = pytest.mark.e2e

KEYS = {"a": "sk-dep-a", "b": "sk-dep-b"}
TEXTS = ["What is the capital of France?", "How do I reset my password?"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def tenants() -> dict:
    return {"tenants": [{"name": t, "key_sha256": [sha(k)]} for t, k in KEYS.items()]}


@pytest.fixture
def gw(gateway_factory, redis_url, vllm_embedding_url):
    return gateway_factory(None, redis_url, auth=tenants(), server={"max_in_flight_per_tenant": 4},
                           embeddings={"max_inputs": 8, "deployment": {"url": vllm_embedding_url,
                                                                        "models": [EMBED_MODEL]}})


def oai(gw, tenant: str = "a") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[tenant], max_retries=0)


def direct(vllm_embedding_url: str, texts: list[str]) -> np.ndarray:
    out = openai.OpenAI(base_url=vllm_embedding_url + "/v1", api_key="none", max_retries=0).embeddings.create(
        model=EMBED_MODEL, input=texts)
    return np.array([d.embedding for d in out.data], dtype=np.float32)


def created(gw, tenant: str = "a", **kw):
    raw = oai(gw, tenant).embeddings.with_raw_response.create(model=EMBED_MODEL, **kw)
    gw.drain()
    return raw.headers["x-cache"], raw.parse()


def test_openai_client_gets_the_deployments_vectors(gw, vllm_embedding_url):
    result, out = created(gw, input=TEXTS)  # the client asks for base64 by default
    assert result == "MISS" and out.model == EMBED_MODEL and [d.index for d in out.data] == [0, 1]
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    assert got.shape == (2, 384)
    assert np.allclose(got, direct(vllm_embedding_url, TEXTS), atol=1e-6)
    assert out.usage.prompt_tokens > 0 and out.usage.total_tokens == out.usage.prompt_tokens
    floats = oai(gw).embeddings.create(model=EMBED_MODEL, input=TEXTS[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, got[0], atol=1e-6)


def test_repeat_is_an_exact_hit_scoped_to_the_tenant(gw):
    first = created(gw, input=TEXTS)
    again = created(gw, input=TEXTS)
    other = created(gw, "b", input=TEXTS)
    assert first[0] == "MISS" and again[0] == "HIT" and other[0] == "MISS"  # b never reads a's vectors
    assert [d.embedding for d in again[1].data] == [d.embedding for d in first[1].data]
    assert again[1].usage == first[1].usage


def test_token_ids_are_forwarded_as_sent(gw, vllm_embedding_url):
    """The deployment's tokenizer is the one ids are meant for: [101, 7592, 2088, 102] is "[CLS] hello
    world [SEP]" in MiniLM's WordPiece, the vector of "hello world"."""
    r = httpx.post(gw.url + "/v1/embeddings", json={"model": EMBED_MODEL, "input": [101, 7592, 2088, 102]},
                   headers={"authorization": f"Bearer {KEYS['a']}"}, timeout=60)
    assert r.status_code == 200, r.text
    assert np.allclose(r.json()["data"][0]["embedding"], direct(vllm_embedding_url, ["hello world"])[0], atol=1e-5)


def test_models_lists_the_deployments_model(gw):
    ids = [m.id for m in oai(gw).models.list().data]
    assert EMBED_MODEL in ids and "all-MiniLM-L6-v2" in ids


def test_async_client(gw):
    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEYS["a"], max_retries=0)
        try:
            return await asyncio.gather(*(client.embeddings.create(model=EMBED_MODEL, input=f"question {i}")
                                          for i in range(4)))
        finally:
            await client.close()

    outs = asyncio.run(run())
    assert [len(o.data[0].embedding) for o in outs] == [384] * 4


def error(exc: openai.APIStatusError, status: int) -> dict:
    assert exc.status_code == status
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_deployment_refusals_are_openai_errors(gw):
    with pytest.raises(openai.BadRequestError) as dims:  # MiniLM has no matryoshka dimensions
        oai(gw).embeddings.create(model=EMBED_MODEL, input="hi", dimensions=8)
    assert error(dims.value, 400)["message"]
    with pytest.raises(openai.BadRequestError) as long:  # past the deployment's --max-model-len
        oai(gw).embeddings.create(model=EMBED_MODEL, input="word " * 400)
    assert "Traceback" not in error(long.value, 400)["message"]
    with pytest.raises(openai.BadRequestError) as many:  # the gateway's own limit, before forwarding
        oai(gw).embeddings.create(model=EMBED_MODEL, input=["x"] * 9)
    assert error(many.value, 400)["param"] == "input"
    with pytest.raises(openai.NotFoundError) as unknown:
        oai(gw).embeddings.create(model="no-such-model", input="hi")
    assert error(unknown.value, 404)["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-wrong", max_retries=0).embeddings.create(
            model=EMBED_MODEL, input="hi")


@pytest.mark.parametrize("kind", ["refusing", "hanging"])
def test_a_deployment_down_is_a_502_or_504(gateway_factory, redis_url, kind):
    silent = Silent() if kind == "hanging" else None
    url = silent.url if silent else "http://127.0.0.1:9"
    try:
        gw = gateway_factory(None, redis_url, auth=tenants(), embeddings={
            "deployment": {"url": url, "models": [EMBED_MODEL], "timeouts": {"read_s": 0.5}}})
        with pytest.raises(openai.APIStatusError) as down:
            oai(gw).embeddings.create(model=EMBED_MODEL, input="hi")
        err = error(down.value, 502 if kind == "refusing" else 504)
        assert err["type"] == "upstream_error" and err["code"] in ("upstream_unreachable", "upstream_timeout")
    finally:
        if silent:
            silent.close()


def test_a_local_name_clash_is_refused_at_start(redis_url):
    from serving.app import create_app
    from serving.config import ConfigError, load_config

    cfg = load_config(None, embeddings={"deployment": {"url": "http://127.0.0.1:9", "models": ["all-MiniLM-L6-v2"]}})
    with pytest.raises(ConfigError, match="local_name"):
        create_app(cfg)
