"""POST /v1/responses end to end: real vLLM 0.32 (SmolLM2), Valkey + RediSearch, MiniLM, official openai client."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import openai
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.e2e

KEYS = {"a": "sk-resp-a", "b": "sk-resp-b"}
FRANCE = "What is the capital of France?"
ARGS = {"model": MODEL, "temperature": 0, "max_output_tokens": 24}


@pytest.fixture
def gw(gateway_factory, vllm_url, redis_url):
    tenants = [{"name": t, "key_sha256": [hashlib.sha256(k.encode()).hexdigest()]} for t, k in KEYS.items()]
    # a generous lookup deadline: on this shared machine CPU contention would turn semantic hits into misses
    return gateway_factory(vllm_url, redis_url, auth={"tenants": tenants}, cache={"lookup_deadline_ms": 10000})


def oai(gw, tenant: str = "a") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[tenant], max_retries=0, timeout=120)


def create(gw, tenant: str = "a", **kw):
    raw = oai(gw, tenant).responses.with_raw_response.create(**{**ARGS, **kw})
    gw.drain()
    return raw.headers["x-cache"], raw.parse()


def test_repeat_is_a_hit_with_fresh_ids(gw):
    miss_state, first = create(gw, input=FRANCE)
    hit_state, second = create(gw, input=FRANCE)
    assert (miss_state, hit_state) == ("MISS", "HIT")
    assert "paris" in first.output_text.lower() and second.output_text == first.output_text
    assert second.id != first.id and second.output[0].id != first.output[0].id
    assert second.status == "completed" and second.usage.output_tokens == first.usage.output_tokens


def test_paraphrase_and_message_list_input_are_keyed_on_the_input(gw):
    create(gw, input=FRANCE)
    state, hit = create(gw, input=[{"role": "user", "content": [{"type": "input_text",
                                                                  "text": "what's the capital city of France"}]}])
    assert state == "HIT" and "paris" in hit.output_text.lower()
    assert create(gw, input="What is the capital of Spain?")[0] == "MISS"
    assert create(gw, input=FRANCE, instructions="Answer in French.")[0] == "MISS"  # instructions are context


def test_streamed_miss_is_stored_and_replayed_as_the_same_typed_events(gw):
    live = list(oai(gw).responses.create(**ARGS, input=FRANCE, stream=True))
    gw.drain()
    live_text = "".join(e.delta for e in live if e.type == "response.output_text.delta")
    with oai(gw).responses.with_streaming_response.create(**ARGS, input=FRANCE, stream=True) as r:
        assert r.headers["x-cache"] == "HIT"
        replayed = list(r.parse())
    assert [e.type for e in replayed][:2] == [e.type for e in live][:2] == ["response.created", "response.in_progress"]
    assert {e.type for e in replayed} == {e.type for e in live}
    assert "".join(e.delta for e in replayed if e.type == "response.output_text.delta") == live_text
    assert replayed[-1].response.id != live[-1].response.id
    with oai(gw).responses.stream(**ARGS, input=FRANCE) as s:  # the client's accumulating helper
        final = s.get_final_response()
    assert final.output_text == live_text and final.id.startswith("resp_")
    # a plain request is answered from the streamed one's entry
    assert create(gw, input=FRANCE) [0] == "HIT"


def test_async_client_plain_and_stream(gw):
    async def run() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEYS["a"], max_retries=0, timeout=120)
        plain = await client.responses.create(**ARGS, input="Name a primary color.")
        stream = await client.responses.create(**ARGS, input="Name a primary color.", stream=True)
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        await client.close()
        return plain.output_text, text

    plain, streamed = asyncio.run(run())
    assert plain and streamed == plain


def test_tenants_share_neither_entries_nor_response_ids(gw):
    _, first = create(gw, input=FRANCE, tenant="a")
    assert first.id.startswith("resp_")
    assert create(gw, input=FRANCE, tenant="b")[0] == "MISS"
    with pytest.raises(openai.NotFoundError) as info:  # b may not continue a's conversation
        oai(gw, "b").responses.create(**ARGS, input="And Germany?", previous_response_id=first.id)
    assert info.value.body["code"] == "response_not_found" and info.value.body["param"] == "previous_response_id"


def test_previous_response_id_bypasses_the_cache(gw):
    _, first = create(gw, input=FRANCE)
    r = httpx.post(gw.url + "/v1/responses", timeout=120, headers={"authorization": f"Bearer {KEYS['a']}"},
                   json={**ARGS, "input": "And Germany?", "previous_response_id": first.id})
    assert r.headers["x-cache"] == "BYPASS"
    # vLLM's response store is off (its default): its 404 reaches the client in OpenAI's shape
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_sampled_requests_bypass_like_chat(gw):
    assert create(gw, input=FRANCE, temperature=None)[0] == "BYPASS"  # absent: OpenAI's 1.0


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"input": FRANCE, "temperature": 3}, 400, "temperature"),
    ({"input": ""}, 400, "input"),
    ({"input": [{"role": "robot", "content": "hi"}]}, 400, "input"),
    ({"input": FRANCE, "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({}, 400, "input"),
    ({"input": FRANCE, "model": "no-such-model"}, 404, "model"),
])
def test_bad_requests_get_openai_errors(gw, body, status, param):
    r = httpx.post(gw.url + "/v1/responses", json={"model": MODEL, **body}, timeout=60,
                   headers={"authorization": f"Bearer {KEYS['a']}"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param


def test_auth_is_required(gw):
    r = httpx.post(gw.url + "/v1/responses", json={"model": MODEL, "input": FRANCE})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
