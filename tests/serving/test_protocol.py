"""serving/protocol.py: request validation with 400s that name the field; extras pass through."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from serving.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError, error_body, parse_request

MSG = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": MSG, **fields})


def completion(**fields: Any) -> bytes:
    return orjson.dumps({"model": "m", "prompt": "hi", **fields})


def err(raw: bytes, model: type = ChatCompletionRequest) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        parse_request(raw, model)
    e = info.value
    assert e.status == 400
    body = orjson.loads(e.body())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return e


def test_valid_chat_keeps_extras_and_returns_body_as_sent() -> None:
    raw = chat(temperature=0, top_k=40, min_p=0.1, repetition_penalty=1.1, chat_template_kwargs={"x": 1},
               stream=True, stream_options={"include_usage": True, "extra": 1})
    body, parsed = parse_request(raw, ChatCompletionRequest)
    assert body == orjson.loads(raw)
    assert body["top_k"] == 40 and body["chat_template_kwargs"] == {"x": 1}
    assert isinstance(parsed, ChatCompletionRequest)
    assert parsed.stream is True and parsed.temperature == 0.0 and parsed.stream_options.include_usage is True


def test_valid_completion_prompt_shapes() -> None:
    for prompt in ("hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        body, parsed = parse_request(orjson.dumps({"model": "m", "prompt": prompt, "best_of": 2}), CompletionRequest)
        assert body["prompt"] == prompt and isinstance(parsed, CompletionRequest)


def test_message_extras_kept() -> None:
    msgs = [{"role": "user", "content": [{"type": "text", "text": "x"}], "custom": 1}]
    body, parsed = parse_request(orjson.dumps({"model": "m", "messages": msgs}), ChatCompletionRequest)
    assert body["messages"] == msgs


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (chat(temperature=3), "temperature"),
        (chat(temperature=-0.1), "temperature"),
        (chat(temperature="hot"), "temperature"),
        (chat(top_p=0), "top_p"),
        (chat(top_p=1.5), "top_p"),
        (chat(n=0), "n"),
        (chat(n=1000), "n"),
        (chat(n=1.5), "n"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_completion_tokens=0), "max_completion_tokens"),
        (chat(presence_penalty=3), "presence_penalty"),
        (chat(frequency_penalty=-3), "frequency_penalty"),
        (chat(top_logprobs=21), "top_logprobs"),
        (chat(stream=[1]), "stream"),
        (chat(seed="s"), "seed"),
        (chat(tools="f"), "tools"),
        (chat(stream_options={"include_usage": "maybe"}), "stream_options.include_usage"),
        (orjson.dumps({"model": "", "messages": MSG}), "model"),
        (orjson.dumps({"messages": MSG}), "model"),
        (orjson.dumps({"model": 5, "messages": MSG}), "model"),
        (orjson.dumps({"model": "m"}), "messages"),
        (orjson.dumps({"model": "m", "messages": []}), "messages"),
        (orjson.dumps({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}), "messages.0.role"),
        (orjson.dumps({"model": "m", "messages": [{"content": "x"}]}), "messages.0.role"),
        (orjson.dumps({"model": "m", "messages": [MSG[0], {"role": "user", "content": 5}]}), "messages.1.content"),
    ],
)
def test_chat_errors_name_the_field(raw: bytes, param: str) -> None:
    e = err(raw)
    assert e.param is not None
    assert e.param == param or e.param.startswith(param + "."), e.param
    assert param in e.message


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (orjson.dumps({"model": "m"}), "prompt"),
        (orjson.dumps({"model": "m", "prompt": 5}), "prompt"),
        (completion(best_of=0), "best_of"),
        (completion(echo="x"), "echo"),
        (completion(suffix=5), "suffix"),
    ],
)
def test_completion_errors_name_the_field(raw: bytes, param: str) -> None:
    e = err(raw, CompletionRequest)
    assert e.param is not None and (e.param == param or e.param.startswith(param + ".")), e.param


def test_union_field_error_param_is_the_field() -> None:
    assert err(chat(stop=5)).param == "stop"


@pytest.mark.parametrize(("raw", "model"), [(chat(logprobs=5), ChatCompletionRequest),
                                            (completion(logprobs=True), CompletionRequest)])
def test_logprobs_type_error_names_logprobs(raw: bytes, model: type) -> None:
    e = err(raw, model)
    assert e.param == "logprobs"


def test_logprobs_type_rules() -> None:
    with pytest.raises(OpenAIError):
        parse_request(chat(logprobs=5), ChatCompletionRequest)
    with pytest.raises(OpenAIError):
        parse_request(completion(logprobs=True), CompletionRequest)
    parse_request(chat(logprobs=True, top_logprobs=2), ChatCompletionRequest)
    parse_request(completion(logprobs=2), CompletionRequest)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"{'a': 1}", b"\xff\xfe"])
def test_invalid_json_is_400(raw: bytes) -> None:
    e = err(raw)
    assert e.code == "invalid_json" and e.param is None


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"x"', b"null", b"[{\"model\": \"m\"}]"])
def test_non_object_is_400(raw: bytes) -> None:
    e = err(raw)
    assert e.code == "invalid_json"


def test_error_body_shape() -> None:
    body = orjson.loads(error_body("bad", "invalid_request_error", "temperature", "invalid_value"))
    assert body == {"error": {"message": "bad", "type": "invalid_request_error", "param": "temperature",
                              "code": "invalid_value"}}
    e = OpenAIError(429, "slow down", "rate_limit_error", headers={"Retry-After": "2"})
    assert e.status == 429 and e.headers == {"Retry-After": "2"} and str(e) == "slow down"
    assert orjson.loads(e.body())["error"]["param"] is None


def test_embedding_input_forms() -> None:
    from serving.protocol import EmbeddingRequest

    def parsed(inp: object) -> EmbeddingRequest:
        return parse_request(orjson.dumps({"model": "m", "input": inp}), EmbeddingRequest)[1]

    assert parsed("a").texts() == ["a"] and parsed(["a", "b"]).texts() == ["a", "b"]
    assert parsed([1, 2]).texts() is None and parsed([[1], [2, 3]]).texts() is None
    assert parsed("a").encoding_format == "float"
    for bad in ([], "", ["a", ""], ["a", 1], [True], [[1], []], None):
        e = err(orjson.dumps({"model": "m", "input": bad}), EmbeddingRequest)
        assert e.param == "input"


# -- bounds on every value: the cache hashes the whole body and vLLM parses it -------------------------

BIG = b"18446744073709551616"  # 2**64: orjson decodes it as a float, the fingerprint would re-encode an int


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_k": ' + BIG + b"}", "top_k"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": -' + BIG + b"}", "seed"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 9223372036854775808}', "seed"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 1e300}}',
     "logit_bias.5"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi", "x": [1, ' + BIG + b"]}]}",
     "messages.0.x.1"),
])
def test_numbers_beyond_64_bits_are_400_naming_the_field(raw: bytes, param: str) -> None:
    e = err(raw)
    assert e.param == param and "64-bit" in e.message


def test_best_of_beyond_64_bits_is_400() -> None:
    e = err(b'{"model": "m", "prompt": "hi", "best_of": ' + BIG + b"}", CompletionRequest)
    assert e.param == "best_of"
    assert err(completion(best_of=129), CompletionRequest).param == "best_of"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_400(literal: bytes) -> None:
    err(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "min_p": ' + literal + b"}")


def test_deep_nesting_is_400_naming_the_field() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = {"a": deep}
    e = err(chat(chat_template_kwargs=deep))
    assert e.param is not None and e.param.startswith("chat_template_kwargs.a.a") and "nested" in e.message
    parse_request(chat(chat_template_kwargs={"a": {"b": [[1, 2.5, 9223372036854775807]]}}), ChatCompletionRequest)


@pytest.mark.parametrize("model, field", [(ChatCompletionRequest, "max_output_tokens"),
                                          (CompletionRequest, "max_completion_tokens"),
                                          (CompletionRequest, "max_output_tokens")])
@pytest.mark.parametrize("value", [[], "many", {"n": 1}, 10**9])
def test_an_undeclared_token_field_of_any_type_passes_through(model: type, field: str, value: object) -> None:
    # found by loadtests/hostile_input.py: a list here was compared with the bound (TypeError, 500)
    body = orjson.loads(chat()) if model is ChatCompletionRequest else {"model": "m", "prompt": "hi"}
    raw = orjson.dumps({**body, field: value})
    forwarded, _ = parse_request(raw, model, max_tokens=100)
    assert forwarded[field] == value


def test_message_count_and_max_tokens_limits() -> None:
    many = orjson.dumps({"model": "m", "messages": MSG * 11})
    with pytest.raises(OpenAIError) as info:
        parse_request(many, ChatCompletionRequest, max_messages=10)
    assert info.value.status == 400 and info.value.param == "messages"
    parse_request(many, ChatCompletionRequest, max_messages=11)
    for name in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(OpenAIError) as info:
            parse_request(chat(**{name: 101}), ChatCompletionRequest, max_tokens=100)
        assert info.value.param == name
    with pytest.raises(OpenAIError) as info:
        parse_request(completion(max_tokens=101), CompletionRequest, max_tokens=100)
    assert info.value.param == "max_tokens"
    parse_request(chat(max_tokens=100), ChatCompletionRequest, max_tokens=100)


# -- property: whatever JSON arrives, a 400 or a body the cache can key --------------------------------

import json  # noqa: E402
import os  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cache.config import CacheConfig  # noqa: E402
from cache.policy import CacheControl, Caller, PolicyError, make_plan  # noqa: E402

_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30)
_FIELDS = ["model", "messages", "prompt", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens",
           "max_completion_tokens", "stop", "seed", "logprobs", "top_logprobs", "best_of", "top_k", "tools",
           "tool_choice", "response_format", "logit_bias", "echo", "suffix", "user", "min_p", "max_output_tokens"]
_BASES = {"chat": {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]},
          "completion": {"model": "m", "temperature": 0, "prompt": "hi"}}
_MODELS = {"chat": ChatCompletionRequest, "completion": CompletionRequest}


@st.composite
def _bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["chat", "completion"]))
    body = dict(_BASES[kind])
    for field in draw(st.lists(st.sampled_from(_FIELDS), max_size=3)):
        body[field] = draw(_json)
    if draw(st.booleans()):  # a message with odd parts, roles and extras
        body["messages"] = draw(st.lists(st.dictionaries(st.sampled_from(["role", "content", "name", "x"]), _json,
                                                         max_size=4), max_size=3))
    # json writes integers of any size (orjson refuses beyond 64 bits): what a hostile client can send
    raw = json.dumps(body).encode()
    if draw(st.booleans()):  # truncated
        raw = raw[: draw(st.integers(min_value=0, max_value=len(raw)))]
    return kind, raw


@settings(max_examples=int(os.environ.get("CACHESTACK_PROTOCOL_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow], database=None)
@given(_bodies())
def test_any_body_is_a_400_or_can_be_keyed(case: tuple[str, bytes]) -> None:
    kind, raw = case
    try:
        body, _ = parse_request(raw, _MODELS[kind], max_messages=8, max_tokens=4096)
    except OpenAIError as exc:
        assert exc.status == 400 and set(orjson.loads(exc.body())["error"]) == {"message", "type", "param", "code"}
        return
    try:
        make_plan(CacheConfig(), kind, body, Caller(None), CacheControl(no_store=True), None)  # keys every value
    except PolicyError:
        pass
    orjson.dumps(body)  # what is forwarded can be encoded again
