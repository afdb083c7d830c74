"""serving/streaming.py: rebuilding a streamed answer from SSE bytes, and replaying a stored one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from serving.answers import storable
from serving.streaming import DONE, StreamAssembler, replay

CONTENT = "Paris is the capital of France.\n\nIt has  ~2.1M people — “café” ✓ {\"json\": true}"


def ev(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat_chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0, **extra: Any) -> bytes:
    return ev({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra})


def chat_stream(text: str = CONTENT, finish: str = "stop", usage: dict[str, int] | None = None,
                done: bool = True, pieces: int = 7) -> list[bytes]:
    step = max(1, len(text) // pieces)
    parts = [text[i:i + step] for i in range(0, len(text), step)]
    out = [chat_chunk({"role": "assistant", "content": ""})]
    out += [chat_chunk({"content": p}) for p in parts]
    out.append(chat_chunk({}, finish))
    if usage:
        out.append(ev({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [], "usage": usage}))
    if done:
        out.append(DONE)
    return out


def completion_stream(text: str = CONTENT, finish: str = "stop", done: bool = True) -> list[bytes]:
    out = [ev({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
               "choices": [{"index": 0, "text": text[i:i + 5], "logprobs": None, "finish_reason": None}]})
           for i in range(0, len(text), 5)]
    out.append(ev({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                   "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": finish}]}))
    if done:
        out.append(DONE)
    return out


def assemble(kind: str, chunks: Iterable[bytes], bytewise: bool = True) -> dict[str, Any] | None:
    a = StreamAssembler(kind)
    raw = b"".join(chunks)
    if bytewise:
        for i in range(len(raw)):
            a.feed(raw[i:i + 1])
    else:
        a.feed(raw)
    return a.complete_answer()


def text_of(answer: dict[str, Any], kind: str, i: int = 0) -> str:
    c = answer["choices"][i]
    return c["message"]["content"] if kind == "chat" else c["text"]


# -- assembling ------------------------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [True, False])
def test_assembles_chat(bytewise: bool) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    ans = assemble("chat", chat_stream(usage=usage), bytewise)
    assert ans is not None
    assert ans["object"] == "chat.completion" and ans["model"] == "m" and ans["id"] == "chatcmpl-1"
    assert ans["choices"] == [{"index": 0, "message": {"role": "assistant", "content": CONTENT},
                               "finish_reason": "stop", "logprobs": None}]
    assert ans["usage"] == usage


@pytest.mark.parametrize("bytewise", [True, False])
def test_assembles_completion(bytewise: bool) -> None:
    ans = assemble("completion", completion_stream(), bytewise)
    assert ans is not None and ans["object"] == "text_completion"
    assert text_of(ans, "completion") == CONTENT and ans["choices"][0]["finish_reason"] == "stop"


def test_multibyte_utf8_split_mid_character() -> None:
    raw = b"".join(chat_stream("ü✓日本語 😀"))
    a = StreamAssembler("chat")
    for i in range(0, len(raw), 3):
        a.feed(raw[i:i + 3])
    ans = a.complete_answer()
    assert ans is not None and text_of(ans, "chat") == "ü✓日本語 😀"


def test_ignores_comments_and_other_fields() -> None:
    chunks = chat_stream("hello world")
    chunks.insert(1, b": keep-alive\n\n")
    chunks.insert(2, b"event: message\nid: 7\n" + chat_chunk({"content": ""}))
    ans = assemble("chat", chunks)
    assert ans is not None and text_of(ans, "chat") == "hello world"


def test_several_choices() -> None:
    chunks = [chat_chunk({"role": "assistant"}, index=0), chat_chunk({"role": "assistant"}, index=1),
              chat_chunk({"content": "one"}, index=0), chat_chunk({"content": "two"}, index=1),
              chat_chunk({}, "stop", index=1), chat_chunk({}, "stop", index=0), DONE]
    ans = assemble("chat", chunks)
    assert ans is not None
    assert [(c["index"], c["message"]["content"]) for c in ans["choices"]] == [(0, "one"), (1, "two")]


def test_unfinished_choice_is_not_stored() -> None:
    chunks = [chat_chunk({"role": "assistant", "content": "one"}, index=0),
              chat_chunk({"role": "assistant", "content": "tw"}, index=1),
              chat_chunk({}, "stop", index=0), DONE]
    assert assemble("chat", chunks) is None


@pytest.mark.parametrize(("finish", "stored"), [("stop", True), ("length", True), ("tool_calls", False),
                                               ("content_filter", False), ("abort", False)])
def test_finish_reason_is_kept_and_decides_the_store(finish: str, stored: bool) -> None:
    """A "length" answer is the whole answer for its max_tokens (part of the key); filtered ones are not."""
    for kind, chunks in (("chat", chat_stream(finish=finish)), ("completion", completion_stream(finish=finish))):
        ans = assemble(kind, chunks)
        assert ans is not None and ans["choices"][0]["finish_reason"] == finish
        assert text_of(ans, kind) == CONTENT
        assert storable(ans) is stored


def test_reasoning_content_is_assembled_and_replayed_before_the_content() -> None:
    thought = "The user asks for a capital.  France -> Paris."
    chunks = [chat_chunk({"role": "assistant", "content": ""})]
    chunks += [chat_chunk({"reasoning_content": thought[i:i + 6]}) for i in range(0, len(thought), 6)]
    chunks += [chat_chunk({"content": CONTENT[:10]}), chat_chunk({"content": CONTENT[10:]}),
               chat_chunk({}, "stop"), DONE]
    ans = assemble("chat", chunks)
    assert ans is not None
    assert ans["choices"][0]["message"] == {"role": "assistant", "content": CONTENT, "reasoning_content": thought}
    out = events(list(replay(ans, "chat", id="x", created=1, include_usage=False)))
    deltas = [o["choices"][0]["delta"] for o in out[:-1]]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning == thought and content == CONTENT
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning_content" not in d for d in deltas[first_content:])
    # replayed and assembled again: the same answer (what a streaming hit gives a streaming client)
    again = assemble("chat", list(replay(ans, "chat", id="x", created=1, include_usage=False)))
    assert again is not None and again["choices"][0]["message"] == ans["choices"][0]["message"]


def test_answer_without_reasoning_has_no_reasoning_field() -> None:
    ans = assemble("chat", chat_stream())
    assert ans is not None and "reasoning_content" not in ans["choices"][0]["message"]


def test_stream_with_logprobs_is_not_assembled() -> None:
    """Token logprobs are not rebuilt from chunks: storing such a stream would lose them."""
    lp = {"content": [{"token": "Paris", "logprob": -0.1, "bytes": None, "top_logprobs": []}]}
    chunks = [chat_chunk({"role": "assistant", "content": ""}),
              ev({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                  "choices": [{"index": 0, "delta": {"content": "Paris"}, "logprobs": lp, "finish_reason": None}]}),
              chat_chunk({}, "stop"), DONE]
    assert assemble("chat", chunks) is None


def test_replay_of_an_answer_with_logprobs_carries_them() -> None:
    lp = {"content": [{"token": "Par", "logprob": -0.1, "bytes": None, "top_logprobs": []},
                      {"token": "is", "logprob": -0.2, "bytes": None, "top_logprobs": []}]}
    ans = stored_chat("Paris")
    ans["choices"][0]["logprobs"] = lp
    out = events(list(replay(ans, "chat", id="x", created=1, include_usage=False)))
    carried = [o["choices"][0]["logprobs"] for o in out[:-1] if o["choices"][0]["logprobs"]]
    assert carried == [lp]
    comp = stored_completion("Paris")
    comp["choices"][0]["logprobs"] = {"tokens": ["Par", "is"], "token_logprobs": [-0.1, -0.2],
                                      "top_logprobs": None, "text_offset": [0, 3]}
    out = events(list(replay(comp, "completion", id="x", created=1, include_usage=False)))
    assert [o["choices"][0]["logprobs"] for o in out[:-1] if o["choices"][0]["logprobs"]] == [
        comp["choices"][0]["logprobs"]]
    assert "".join(o["choices"][0]["text"] for o in out[:-1]) == "Paris"


def test_missing_done_yields_nothing() -> None:
    assert assemble("chat", chat_stream(done=False)) is None
    assert assemble("completion", completion_stream(done=False)) is None


def test_done_without_trailing_blank_line_yields_nothing() -> None:
    chunks = chat_stream(done=False) + [b"data: [DONE]"]
    assert assemble("chat", chunks) is None


def test_missing_finish_yields_nothing() -> None:
    chunks = [c for c in chat_stream() if b'"finish_reason":"stop"' not in c]
    assert assemble("chat", chunks) is None


def test_broken_off_mid_event_yields_nothing() -> None:
    raw = b"".join(chat_stream(done=False))
    assert assemble("chat", [raw[:-5]]) is None


@pytest.mark.parametrize("where", [0, 3, -2])
def test_error_event_yields_nothing(where: int) -> None:
    chunks = chat_stream()
    err = ev({"error": {"message": "upstream failed", "type": "internal_error", "code": 500}})
    chunks.insert(where if where >= 0 else len(chunks) + where, err)
    assert assemble("chat", chunks) is None


def test_invalid_json_yields_nothing() -> None:
    chunks = chat_stream()
    chunks.insert(2, b"data: {not json\n\n")
    assert assemble("chat", chunks) is None


def test_tool_call_deltas_yield_nothing() -> None:
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    chunks = [chat_chunk({"role": "assistant", "content": ""}), chat_chunk({"tool_calls": [call]}),
              chat_chunk({}, "stop"), DONE]
    assert assemble("chat", chunks) is None
    legacy = [chat_chunk({"role": "assistant"}), chat_chunk({"function_call": {"name": "f", "arguments": ""}}),
              chat_chunk({}, "stop"), DONE]
    assert assemble("chat", legacy) is None


def test_empty_stream_yields_nothing() -> None:
    assert assemble("chat", [DONE]) is None
    assert StreamAssembler("chat").complete_answer() is None


# -- replay ----------------------------------------------------------------------------------


def stored_chat(text: str = CONTENT, usage: dict[str, int] | None = None) -> dict[str, Any]:
    return {"object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": usage}


def stored_completion(text: str = CONTENT) -> dict[str, Any]:
    return {"object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}], "usage": None}


def events(raw: list[bytes]) -> list[Any]:
    out = []
    for chunk in raw:
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n"), chunk
        body = chunk[6:-2]
        out.append(body if body == b"[DONE]" else orjson.loads(body))
    return out


def test_replay_chat_shape() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
    raw = list(replay(stored_chat(usage=usage), "chat", id="chatcmpl-x", created=123, include_usage=True))
    ev_ = events(raw)
    assert raw[-1] == DONE and ev_[-1] == b"[DONE]"
    objs = ev_[:-1]
    assert all(o["id"] == "chatcmpl-x" and o["created"] == 123 and o["model"] == "m"
               and o["object"] == "chat.completion.chunk" for o in objs)
    first = objs[0]["choices"][0]
    assert first["delta"]["role"] == "assistant" and first["finish_reason"] is None
    content = [o for o in objs if o["choices"] and o["choices"][0]["delta"].get("content")]
    assert len(content) > 3
    assert all(o["choices"][0]["finish_reason"] is None for o in content)
    finish = [o for o in objs if o["choices"] and o["choices"][0]["finish_reason"] is not None]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "stop"
    assert objs.index(finish[0]) > objs.index(content[-1])
    usage_chunks = [o for o in objs if o.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0]["usage"] == usage and usage_chunks[0]["choices"] == []
    assert objs[-1] is usage_chunks[0]


def test_replay_usage_only_when_asked() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
    objs = events(list(replay(stored_chat(usage=usage), "chat", id="x", created=1, include_usage=False)))[:-1]
    assert not any("usage" in o for o in objs)
    objs = events(list(replay(stored_chat(usage=None), "chat", id="x", created=1, include_usage=True)))[:-1]
    assert not any(o.get("usage") for o in objs)


@pytest.mark.parametrize("text", [CONTENT, "", "one", "  leading and trailing  ", "a\n\nb\tc", "日本語のテキスト"])
def test_replay_chat_roundtrips_through_assembler(text: str) -> None:
    stored = stored_chat(text, usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    raw = list(replay(stored, "chat", id="chatcmpl-r", created=5, include_usage=True))
    ans = assemble("chat", raw)
    assert ans is not None
    assert ans["choices"] == stored["choices"] and ans["usage"] == stored["usage"]
    assert ans["id"] == "chatcmpl-r" and ans["model"] == "m"


@pytest.mark.parametrize("text", [CONTENT, "", "x y z"])
def test_replay_completion_roundtrips_through_assembler(text: str) -> None:
    raw = list(replay(stored_completion(text), "completion", id="cmpl-r", created=5, include_usage=False))
    objs = events(raw)[:-1]
    assert all(o["object"] == "text_completion" for o in objs)
    assert sum(1 for o in objs if o["choices"][0]["finish_reason"] == "stop") == 1
    ans = assemble("completion", raw)
    assert ans is not None and ans["choices"] == stored_completion(text)["choices"]


def test_replay_several_choices_roundtrip() -> None:
    stored = stored_chat("first answer here")
    stored["choices"].append({"index": 1, "message": {"role": "assistant", "content": "second one"},
                              "finish_reason": "stop", "logprobs": None})
    ans = assemble("chat", list(replay(stored, "chat", id="x", created=1, include_usage=False)))
    assert ans is not None and ans["choices"] == stored["choices"]


def test_replay_is_not_one_lump() -> None:
    text = " ".join(f"word{i}" for i in range(50))
    raw = list(replay(stored_chat(text), "chat", id="x", created=1, include_usage=False))
    assert len(raw) >= 50
    assert all(len(c) < 300 for c in raw)
