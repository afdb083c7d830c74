"""serving/responses_events.py against a stream captured from vLLM 0.32's /v1/responses (SmolLM2), read
back with the official openai client's own event types and stream accumulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from serving.responses_events import ResponsesAssembler, fresh_response, replay_events, storable_response

CAPTURED = (Path(__file__).parent / "data" / "vllm_responses_stream.sse").read_bytes()
EVENTS = TypeAdapter(ResponseStreamEvent)


def datas(stream: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[5:]) for line in stream.split(b"\n") if line.startswith(b"data:")]


def completed(stream: bytes) -> dict[str, Any]:
    return next(d["response"] for d in datas(stream) if d["type"] == "response.completed")


def assemble(stream: bytes, size: int = 7) -> tuple[bytes, dict[str, Any] | None]:
    a = ResponsesAssembler()
    out = b"".join(a.feed(stream[i:i + size]) for i in range(0, len(stream), size)) + a.flush()
    return out, a.complete_answer()


def test_assembler_relays_every_byte_and_keeps_the_completed_response() -> None:
    out, answer = assemble(CAPTURED)
    assert out == CAPTURED
    assert answer == completed(CAPTURED)
    assert answer["output"][0]["content"][0]["text"] == "The capital of France is Paris."


def test_a_stream_that_broke_off_or_failed_is_not_stored() -> None:
    cut = CAPTURED[: CAPTURED.index(b"event: response.completed")]
    assert assemble(cut)[1] is None
    failed = cut + b'event: error\ndata: {"type":"error","message":"boom","sequence_number":99}\n\n'
    assert assemble(failed + CAPTURED[len(cut):])[1] is None


@pytest.mark.parametrize("change", [
    {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}},
    {"incomplete_details": {"reason": "max_output_tokens"}},   # what vLLM sends on a length stop
    {"output": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]},
    {"output": []},
])
def test_only_completed_text_messages_are_storable(change: dict[str, Any]) -> None:
    answer = completed(CAPTURED)
    assert storable_response(answer)
    assert not storable_response({**answer, **change})


def test_replay_is_the_event_sequence_the_official_client_reads() -> None:
    answer = fresh_response(completed(CAPTURED))
    stream = b"".join(replay_events(answer))
    events = [EVENTS.validate_python(d) for d in datas(stream)]
    names = [line[7:].decode() for line in stream.split(b"\n") if line.startswith(b"event: ")]
    assert names == [e.type for e in events]
    assert names[:2] == ["response.created", "response.in_progress"] and names[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == "The capital of France is Paris."
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for e in events:
        state.handle_event(e)
    final = events[-1].response
    assert final.output_text == "The capital of France is Paris." and final.id == answer["id"]
    assert events[0].response.status == "in_progress" and final.status == "completed"


def test_fresh_ids_per_replay() -> None:
    answer = completed(CAPTURED)
    a, b = fresh_response(answer), fresh_response(answer)
    assert len({answer["id"], a["id"], b["id"]}) == 3 and a["id"].startswith("resp_")
    assert len({answer["output"][0]["id"], a["output"][0]["id"], b["output"][0]["id"]}) == 3
    assert a["output"][0]["content"] == answer["output"][0]["content"]
