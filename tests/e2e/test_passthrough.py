"""The gateway in front of the real vLLM CPU server, driven by the official openai client."""

from __future__ import annotations

import hashlib
import re
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

MODEL = "smollm2"
Q = [{"role": "user", "content": "What is the capital of France?"}]


def assert_openai_error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in resp.text
    return body["error"]


@pytest.fixture
def plain(gateway_factory, vllm_url):
    """A gateway without cache, straight to vLLM."""
    return gateway_factory(vllm_url, None)


def client(gw, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def test_models_merged_from_upstream(plain):
    ids = [m.id for m in client(plain).models.list().data]
    assert MODEL in ids and "no-such-model" not in ids


def test_chat_answers_through_openai_client(plain):
    out = client(plain).chat.completions.create(model=MODEL, messages=Q, max_tokens=20, temperature=0)
    assert "paris" in out.choices[0].message.content.lower()
    assert out.usage.prompt_tokens > 0
    # vLLM's --enable-prompt-tokens-details field passes through to the client
    assert out.usage.prompt_tokens_details is not None
    assert out.usage.prompt_tokens_details.cached_tokens is not None


def test_chat_stream_is_relayed_in_chunks(plain):
    stream = client(plain).chat.completions.create(
        model=MODEL, messages=Q, max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "paris" in content.lower()
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_stream_chunks_arrive_before_generation_ends(plain):
    """A relayed stream is not buffered: the first bytes come well before the last."""
    body = {"model": MODEL, "stream": True, "max_tokens": 120, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count from one to a hundred."}]}
    with httpx.Client(timeout=60) as http, http.stream("POST", plain.url + "/v1/chat/completions", json=body) as r:
        started = time.perf_counter()
        stamps = [time.perf_counter() - started for _ in r.iter_bytes()]
    assert len(stamps) > 10
    assert stamps[0] < stamps[-1] / 3


def test_completions_plain_and_stream(plain):
    c = client(plain)
    out = c.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert out.choices[0].text
    text = "".join(ch.choices[0].text for ch in c.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True) if ch.choices)
    assert text == out.choices[0].text


def test_unknown_model_is_404(plain):
    with pytest.raises(openai.NotFoundError) as err:
        client(plain).chat.completions.create(model="no-such-model", messages=Q)
    assert err.value.body["code"] == "model_not_found"
    assert err.value.body["param"] == "model"


def test_invalid_field_is_400_naming_it(plain):
    with pytest.raises(openai.BadRequestError) as err:
        client(plain).chat.completions.create(model=MODEL, messages=Q, temperature=7)
    assert err.value.body["param"] == "temperature"
    assert "temperature" in err.value.body["message"]


@pytest.mark.parametrize("payload, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b'{"model": "smollm2"}', "messages"),
    (b'{"model": "smollm2", "messages": []}', "messages"),
    (b'{"model": "smollm2", "messages": [{"role": "wizard", "content": "hi"}]}', "messages.0.role"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
])
def test_malformed_requests_are_400(plain, payload, param):
    r = httpx.post(plain.url + "/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
    err = assert_openai_error(r, 400)
    assert err["param"] == param


def test_body_over_limit_is_413(gateway_factory, vllm_url):
    gw = gateway_factory(vllm_url, None, server={"max_body_bytes": 2048})
    big = [{"role": "user", "content": "x" * 4000}]
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": MODEL, "messages": big})
    assert_openai_error(r, 413)


def test_upstream_4xx_passes_through_unchanged(plain, vllm_url):
    # within the gateway's own max_tokens bound (32768) but past vLLM's max_model_len (4096): vLLM's 400
    body = {"model": MODEL, "messages": Q, "max_tokens": 10_000}
    direct = httpx.post(vllm_url + "/v1/chat/completions", json=body)
    via = httpx.post(plain.url + "/v1/chat/completions", json=body)
    assert direct.status_code == 400
    assert via.status_code == direct.status_code
    assert via.json()["error"]["message"] == direct.json()["error"]["message"]


def test_unknown_route_is_openai_404(plain):
    assert_openai_error(httpx.get(plain.url + "/v1/nothing"), 404)


def test_health_ready_metrics(plain):
    assert httpx.get(plain.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(plain.url + "/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client(plain).chat.completions.create(model=MODEL, messages=Q, max_tokens=3)
    text = httpx.get(plain.url + "/metrics").text
    assert re.search(r'cachestack_requests_total\{model="smollm2",route="/v1/chat/completions",status="200"\} \d',
                     text)
    assert "cachestack_request_seconds_bucket" in text
    assert "cachestack_in_flight_requests" in text


def test_unreachable_upstream_is_502(gateway_factory):
    gw = gateway_factory("http://127.0.0.1:9", None)
    with pytest.raises(openai.APIStatusError) as err:
        client(gw).chat.completions.create(model=MODEL, messages=Q)
    assert err.value.status_code == 502
    assert err.value.body["code"] == "upstream_unreachable"


def test_tenant_keys_401_and_admin_403(gateway_factory, vllm_url):
    key = "sk-tenant-a"
    gw = gateway_factory(vllm_url, None, auth={
        "tenants": [{"name": "a", "key_sha256": [hashlib.sha256(key.encode()).hexdigest()]}],
        "admin_key_sha256": hashlib.sha256(b"admin-secret").hexdigest()})
    with pytest.raises(openai.AuthenticationError):
        client(gw, "wrong").chat.completions.create(model=MODEL, messages=Q)
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": MODEL, "messages": Q})
    assert assert_openai_error(r, 401)["code"] == "invalid_api_key"
    out = client(gw, key).chat.completions.create(model=MODEL, messages=Q, max_tokens=5)
    assert out.choices
    r = httpx.get(gw.url + "/admin/cache/stats", headers={"authorization": f"Bearer {key}"})
    assert_openai_error(r, 403)


def test_concurrency_limit_per_tenant_is_429_with_retry_after(gateway_factory, vllm_url):
    gw = gateway_factory(vllm_url, None, server={"max_in_flight_per_tenant": 1})
    body = {"model": MODEL, "stream": True, "max_tokens": 2000, "ignore_eos": True, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me a long story."}]}
    with httpx.Client(timeout=60) as http, http.stream("POST", gw.url + "/v1/chat/completions", json=body) as r:
        chunks = r.iter_bytes()  # keep the iterator: dropping it would close the stream
        next(chunks)  # the first stream holds the tenant's one slot (for ~20 s of tokens)
        second = httpx.post(gw.url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 5})
        err = assert_openai_error(second, 429)
        assert err["code"] == "rate_limit_exceeded" and second.headers["retry-after"] == "1"
    time.sleep(0.5)  # the abandoned stream gave its slot back
    ok = httpx.post(gw.url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 5}, timeout=60)
    assert ok.status_code == 200


def test_startup_objects_are_kept_out_of_the_gc(gateway_factory, vllm_url):
    """Without gc.freeze() every full collection walked the ~500k objects torch, transformers and the
    models leave behind: a measured 226 ms stall of every in-flight request (loadtests/README.md)."""
    import gc

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    gateway_factory(vllm_url, None, cache={"enabled": False})
    assert gc.get_freeze_count() > 10_000
