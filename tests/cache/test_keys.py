"""cache/keys.py: what counts as the same context, and the query that is compared."""

from __future__ import annotations

import pytest

from cache.keys import (
    NON_OUTPUT_FIELDS,
    OPENAI_DEFAULTS,
    canonical_messages,
    canonical_params,
    exact_key,
    fingerprint,
    message_text,
    normalise_query,
)

# -- normalise_query -------------------------------------------------------------------------


def test_normalise_harmless_changes_collapse() -> None:
    a = normalise_query("  How   do I reset\tmy\nPASSWORD?  ")
    b = normalise_query("how do i reset my password")
    assert a == b == "how do i reset my password"


def test_normalise_fullwidth_and_trailing_punctuation() -> None:
    assert normalise_query("Ｈｅｌｌｏ？") == normalise_query("hello") == "hello"
    assert normalise_query("hello...") == "hello"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Refund for order 1234", "Refund for order 1243"),
        ("Write 2 paragraphs", "Write 3 paragraphs"),
        ("version 3.5", "version 35"),
        ("What is 1.5", "What is 15"),
        ("How do I enable 2FA", "How do I disable 2FA"),
        ("Is the store open on Sunday", "Is the store not open on Sunday"),
        ("Why can't I log in", "Why can I log in"),
        ("Convert USD to EUR", "Convert EUR to USD"),
        ("dog bites man", "man bites dog"),
        ("-5 degrees", "5 degrees"),
    ],
)
def test_normalise_keeps_meaning(a: str, b: str) -> None:
    assert normalise_query(a) != normalise_query(b)


def test_normalise_keeps_inner_punctuation_and_digits() -> None:
    out = normalise_query("Is 3.14 > 3?")
    assert "3.14" in out and ">" in out


def test_normalise_superscript_digits_are_not_plain_digits() -> None:
    assert normalise_query("What is 10²?") != normalise_query("What is 102?")


def test_normalise_trailing_factorial_is_kept() -> None:
    assert normalise_query("what is 5!") != normalise_query("what is 5")


# -- message_text ----------------------------------------------------------------------------


def test_message_text_string_and_parts() -> None:
    assert message_text("hi") == "hi"
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert message_text(parts) == "one\ntwo"
    assert message_text([]) == ""


def test_message_text_non_text_parts_are_none() -> None:
    assert message_text([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]) is None
    assert message_text([{"type": "text", "text": 5}]) is None
    assert message_text(None) is None
    assert message_text(42) is None


def test_canonical_messages_text_parts_equal_string() -> None:
    a = canonical_messages([{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    b = canonical_messages([{"role": "user", "content": "hello"}])
    assert a == b
    img = [{"type": "image_url", "image_url": {"url": "http://x/1.png"}}]
    img2 = [{"type": "image_url", "image_url": {"url": "http://x/2.png"}}]
    assert canonical_messages([{"role": "user", "content": img}]) != canonical_messages(
        [{"role": "user", "content": img2}])


def test_canonical_messages_keep_name_and_tool_calls() -> None:
    base = {"role": "assistant", "content": None}
    calls = [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert canonical_messages([base]) != canonical_messages([{**base, "tool_calls": calls}])
    assert canonical_messages([{"role": "user", "content": "x", "name": "a"}]) != canonical_messages(
        [{"role": "user", "content": "x", "name": "b"}])
    assert canonical_messages([{"role": "tool", "content": "1", "tool_call_id": "a"}]) != canonical_messages(
        [{"role": "tool", "content": "1", "tool_call_id": "b"}])


# -- canonical_params ------------------------------------------------------------------------


def fp_of(body: dict, model: str = "m", version: str = "v", context: object = None) -> str:
    return fingerprint(model, version, context, canonical_params(body))


@pytest.mark.parametrize(
    "explicit",
    [
        {"temperature": 1.0},
        {"temperature": 1},
        {"top_p": 1},
        {"top_p": 1.0},
        {"n": 1},
        {"presence_penalty": 0},
        {"presence_penalty": 0.0},
        {"frequency_penalty": 0},
        {"stop": []},
        {"logprobs": False},
        {"response_format": {"type": "text"}},
        {"logit_bias": {}},
        {"temperature": None, "top_p": None, "max_tokens": None},
    ],
)
def test_explicit_default_hashes_like_omitted(explicit: dict) -> None:
    assert canonical_params(explicit) == {}
    assert fp_of(explicit) == fp_of({})


def test_every_shipped_default_drops_out() -> None:
    assert canonical_params(dict(OPENAI_DEFAULTS)) == {}


def test_stop_string_equals_single_list() -> None:
    assert fp_of({"stop": "x"}) == fp_of({"stop": ["x"]})
    assert fp_of({"stop": "x"}) != fp_of({})
    assert fp_of({"stop": ["x"]}) != fp_of({"stop": ["x", "y"]})
    assert fp_of({"stop": "x"}) != fp_of({"stop": "y"})


def test_max_completion_tokens_is_max_tokens() -> None:
    assert fp_of({"max_tokens": 20}) == fp_of({"max_completion_tokens": 20})
    assert fp_of({"max_tokens": 20}) != fp_of({"max_completion_tokens": 21})
    assert fp_of({"max_tokens": 20}) != fp_of({})


def test_integral_floats_equal_ints() -> None:
    assert fp_of({"temperature": 0}) == fp_of({"temperature": 0.0})
    assert fp_of({"max_tokens": 16.0}) == fp_of({"max_tokens": 16})


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"temperature": 0}, {"temperature": 0.7}),
        ({"temperature": 0}, {}),
        ({"top_p": 0.9}, {}),
        ({"n": 2}, {}),
        ({"presence_penalty": 0.5}, {}),
        ({"frequency_penalty": -0.5}, {}),
        ({"max_tokens": 10}, {"max_tokens": 11}),
        ({"seed": 1}, {"seed": 2}),
        ({"seed": 1}, {}),
        ({"logprobs": True}, {}),
        ({"top_logprobs": 2}, {"top_logprobs": 3}),
        ({"response_format": {"type": "json_object"}}, {}),
        ({"logit_bias": {"50256": -100}}, {}),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, {}),
        ({"tool_choice": "required"}, {"tool_choice": "none"}),
        ({"echo": True}, {}),
        ({"best_of": 3}, {}),
        ({"suffix": "!"}, {}),
        ({"top_k": 5}, {}),
        ({"top_k": 5}, {"top_k": 6}),
        ({"min_p": 0.1}, {}),
        ({"repetition_penalty": 1.2}, {}),
    ],
)
def test_output_params_change_fingerprint(a: dict, b: dict) -> None:
    assert fp_of(a) != fp_of(b)


def test_unknown_extras_are_included() -> None:
    assert canonical_params({"top_k": 40, "min_tokens": 3}) == {"top_k": 40, "min_tokens": 3}


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": True},
        {"stream_options": {"include_usage": True}},
        {"user": "alice"},
        {"metadata": {"a": "b"}},
        {"store": True},
        {"service_tier": "auto"},
        {"request_id": "r1"},
        {"priority": 5},
        {"cache_salt": "s"},
        {"model": "other"},
        {"messages": [{"role": "user", "content": "x"}]},
        {"prompt": "x"},
    ],
)
def test_non_output_fields_do_not_change_fingerprint(extra: dict) -> None:
    body = {"temperature": 0, "max_tokens": 5}
    assert fp_of({**body, **extra}) == fp_of(body)
    assert set(extra) <= NON_OUTPUT_FIELDS


def test_completion_logprobs_zero_is_not_default() -> None:
    assert fp_of({"logprobs": 0}) != fp_of({})


def test_param_order_does_not_matter() -> None:
    assert fp_of({"temperature": 0, "max_tokens": 5, "seed": 3}) == fp_of({"seed": 3, "max_tokens": 5, "temperature": 0})


# -- fingerprint / exact_key -----------------------------------------------------------------


def test_fingerprint_differs_by_model_version_context() -> None:
    ctx = [{"role": "system", "content": "be brief"}]
    base = fingerprint("m1", "ns:1:t", ctx, {})
    assert fingerprint("m2", "ns:1:t", ctx, {}) != base
    assert fingerprint("m1", "ns:2:t", ctx, {}) != base
    assert fingerprint("m1", "ns:1:t", [{"role": "system", "content": "be long"}], {}) != base
    assert fingerprint("m1", "ns:1:t", None, {}) != base
    assert fingerprint("m1", "ns:1:t", [], {}) != fingerprint("m1", "ns:1:t", None, {})
    assert fingerprint("m1", "ns:1:t", ctx, {}) == base


def test_fingerprint_is_stable_hex() -> None:
    fp = fingerprint("m", "v", None, {"b": 1, "a": 2})
    assert fp == fingerprint("m", "v", None, {"a": 2, "b": 1})
    assert len(fp) == 32 and int(fp, 16) >= 0


def test_exact_key_differs_by_fingerprint_and_query() -> None:
    f1, f2 = fingerprint("m", "v", None, {}), fingerprint("m", "w", None, {})
    assert exact_key(f1, "q") == exact_key(f1, "q")
    assert exact_key(f1, "q") != exact_key(f2, "q")
    assert exact_key(f1, "q") != exact_key(f1, "q2")
    assert exact_key(f1, "") != exact_key(f1, "q")


def test_exact_key_is_byte_exact() -> None:
    f = fingerprint("m", "1", None, {})
    assert exact_key(f, "def f():\n    return") != exact_key(f, "def f(): return")
    assert exact_key(f, "Hello") != exact_key(f, "hello")
    assert exact_key(f, "hi ") != exact_key(f, "hi")
