"""POST /v1/embeddings end to end: the gateway's own MiniLM, real Valkey, the official openai client."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import httpx
import numpy as np
import openai
import pytest

pytestmark = pytest.mark.e2e

MODEL = "all-MiniLM-L6-v2"
KEYS = {"a": "sk-emb-a", "b": "sk-emb-b"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def gw(gateway_factory, redis_url):
    """No vLLM needed: the local model answers. Two tenants."""
    return gateway_factory(None, redis_url, embeddings={"max_inputs": 8},
                           auth={"tenants": [{"name": t, "key_sha256": [sha(k)]} for t, k in KEYS.items()]})


def oai(gw, tenant: str = "a") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[tenant], max_retries=0)


def post(gw, body: dict, tenant: str = "a", **headers: str) -> httpx.Response:
    r = httpx.post(gw.url + "/v1/embeddings", json=body, timeout=30,
                   headers={"authorization": f"Bearer {KEYS[tenant]}", **headers})
    gw.drain()
    return r


def error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_openai_client_gets_the_local_models_vectors(gw, embedder):
    texts = ["What is the capital of France?", "How do I reset my password?"]
    out = oai(gw).embeddings.create(model=MODEL, input=texts)  # the client asks for base64 by default
    assert [d.index for d in out.data] == [0, 1] and out.model == MODEL
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    want = embedder.encode(texts)
    assert got.shape == (2, embedder.dim)
    assert np.allclose(got, want, atol=1e-6)
    assert out.usage.prompt_tokens == sum(embedder.token_counts(texts)) == out.usage.total_tokens


def test_float_and_base64_carry_the_same_little_endian_float32(gw):
    as_float = post(gw, {"model": MODEL, "input": "hello world", "encoding_format": "float"}).json()
    as_b64 = post(gw, {"model": MODEL, "input": "hello world", "encoding_format": "base64"}).json()
    floats = np.array(as_float["data"][0]["embedding"], dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(as_b64["data"][0]["embedding"]), dtype="<f4")
    assert floats.shape == (384,) and np.array_equal(floats, decoded)
    assert abs(float(np.linalg.norm(floats)) - 1.0) < 1e-5


def test_models_lists_the_embedder(gw):
    assert MODEL in [m.id for m in oai(gw).models.list().data]


def test_repeat_is_an_exact_hit_scoped_to_the_tenant(gw):
    body = {"model": MODEL, "input": ["cached text one", "cached text two"]}
    first = post(gw, body)
    again = post(gw, body)
    other = post(gw, body, tenant="b")
    partly = post(gw, {"model": MODEL, "input": ["cached text one", "a new text"]})
    assert first.headers["x-cache"] == "MISS" and again.headers["x-cache"] == "HIT"
    assert again.json()["data"] == first.json()["data"] and again.json()["usage"] == first.json()["usage"]
    assert other.headers["x-cache"] == "MISS"  # tenant b never reads a's entries
    assert partly.headers["x-cache"] == "MISS"
    assert partly.json()["data"][0]["embedding"] == first.json()["data"][0]["embedding"]
    assert post(gw, body, **{"cache-control": "no-cache"}).headers["x-cache"] == "MISS"


def test_hit_survives_the_l1_from_redis(gw):
    body = {"model": MODEL, "input": "only in redis after the l1 is cleared"}
    first = post(gw, body)
    gw.gw.embeddings.vectors.l1.clear()
    again = post(gw, body)
    assert again.headers["x-cache"] == "HIT" and again.json()["data"] == first.json()["data"]


def test_async_client(gw):
    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEYS["a"], max_retries=0)
        outs = await asyncio.gather(*(client.embeddings.create(model=MODEL, input=f"question {i}") for i in range(4)))
        await client.close()
        return outs

    outs = asyncio.run(run())
    vecs = np.array([o.data[0].embedding for o in outs])
    assert vecs.shape == (4, 384) and len({v.tobytes() for v in vecs}) == 4


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"input": [101, 7592, 102]}, 400, "input"),                     # token ids: refused, never guessed
    ({"input": [[101, 7592, 102]]}, 400, "input"),
    ({"input": "hi", "dimensions": 128}, 400, "dimensions"),         # MiniLM has no Matryoshka sizes
    ({"input": ["x"] * 9}, 400, "input"),                            # over embeddings.max_inputs
    ({"input": ["short", "word " * 300]}, 400, "input[1]"),          # over the 256 tokens MiniLM reads
    ({"input": []}, 400, "input"),
    ({"input": ""}, 400, "input"),
    ({"input": "hi", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "hi", "model": "no-such-embedder"}, 404, "model"),
    ({}, 400, "input"),
])
def test_bad_requests_get_openai_errors(gw, body, status, param):
    e = error(post(gw, {"model": MODEL, **body}), status)
    assert e["param"] == param and e["type"] == "invalid_request_error"


def test_openai_client_raises_on_token_ids(gw):
    with pytest.raises(openai.BadRequestError) as info:
        oai(gw).embeddings.create(model=MODEL, input=[101, 7592, 102])
    assert "check_embedding_ctx_length=False" in info.value.message


def test_auth_is_required(gw):
    r = httpx.post(gw.url + "/v1/embeddings", json={"model": MODEL, "input": "hi"})
    assert error(r, 401)["code"] == "invalid_api_key"


def test_redis_down_still_embeds(gateway_factory, embedder):
    down = gateway_factory(None, "redis://127.0.0.1:9/0")
    r = httpx.post(down.url + "/v1/embeddings", json={"model": MODEL, "input": "hi"}, timeout=30)
    assert r.status_code == 200 and r.headers["x-cache"] == "MISS"
    assert np.allclose(r.json()["data"][0]["embedding"], embedder.encode(["hi"])[0], atol=1e-6)
