"""serving/shared_stream.py: another replica's vLLM events, in any split, reach a follower under its own
id and created, parse with the official ``openai`` client like a live stream, and a broken-off relay ends
with an OpenAI-shaped error event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import openai
import orjson
import pytest

from serving.shared_stream import SharedEvents, following_response
from serving.singleflight import FlightBroken


def vllm_stream(words: list[str], usage: bool = True) -> bytes:
    """What vLLM sends for a chat stream that asked for usage."""
    head = {"id": "chatcmpl-leader", "object": "chat.completion.chunk", "created": 111, "model": "m"}

    def ev(obj: dict) -> bytes:
        return b"data: " + orjson.dumps({**head, **obj}) + b"\n\n"

    out = [ev({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})]
    out += [ev({"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}) for w in words]
    out.append(ev({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if usage:
        out.append(ev({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": len(words),
                                                "total_tokens": 3 + len(words)}}))
    return b"".join(out) + b"data: [DONE]\n\n"


class FakeFollowing:
    """Hands out the given pieces, then ends (the answer landed) or breaks."""

    def __init__(self, pieces: list[bytes], broken: bool = False) -> None:
        self.pieces = pieces
        self.broken = broken

    async def chunks(self) -> AsyncIterator[bytes]:
        for p in self.pieces:
            await asyncio.sleep(0)
            yield p
        if self.broken:
            raise FlightBroken("the leader failed")


def split(data: bytes, n: int) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)]


@pytest.mark.parametrize("size", [1, 7, 10_000])
def test_events_in_any_split_get_this_responses_id_and_created(size: int) -> None:
    events = SharedEvents(id="chatcmpl-cache-f", created=222, include_usage=False)
    out = b"".join(events.feed(p) for p in split(vllm_stream(["Hel", "lo"]), size))
    objs = [orjson.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    assert {(o["id"], o["created"]) for o in objs} == {("chatcmpl-cache-f", 222)}
    assert not any("usage" in o for o in objs)  # asked for the cache's sake only
    assert out.endswith(b"data: [DONE]\n\n") and events.ended


def test_usage_is_kept_for_a_client_that_asked() -> None:
    events = SharedEvents(id="i", created=1, include_usage=True)
    out = events.feed(vllm_stream(["a"]))
    assert b'"usage":{"prompt_tokens":3' in out


async def body_of(response) -> bytes:  # noqa: ANN001
    return b"".join([chunk async for chunk in response.body_iterator])


def parse_with_openai(data: bytes) -> list:
    client = openai.OpenAI(api_key="x", base_url="http://gw/v1", http_client=httpx.Client(
        transport=httpx.MockTransport(lambda _: httpx.Response(
            200, content=data, headers={"content-type": "text/event-stream"}))))
    return list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}], stream=True))


async def test_a_relayed_stream_parses_with_the_openai_client_like_a_live_one() -> None:
    live = vllm_stream(["The ", "sky ", "is ", "blue."], usage=False)
    response = following_response(FakeFollowing(split(vllm_stream(["The ", "sky ", "is ", "blue."]), 13)),
                                  "chat", include_usage=False)
    relayed = await body_of(response)
    ours, theirs = parse_with_openai(relayed), parse_with_openai(live)
    assert len(ours) == len(theirs)
    assert len({c.id for c in ours}) == 1 and ours[0].id.startswith("chatcmpl-cache-")
    assert len({c.created for c in ours}) == 1
    assert [c.model_dump(exclude={"id", "created"}) for c in ours] == \
           [c.model_dump(exclude={"id", "created"}) for c in theirs]


async def test_a_relay_that_breaks_off_ends_with_an_openai_error_event() -> None:
    whole = vllm_stream(["a", "b", "c"])
    cut = whole[: whole.index(b"\n\n", 200) + 2]  # a few complete events, then the leader failed
    relayed = await body_of(following_response(FakeFollowing([cut], broken=True), "chat", include_usage=False))
    last = relayed.rstrip().split(b"\n\n")[-1]
    assert orjson.loads(last[6:])["error"]["type"] == "upstream_error"
    with pytest.raises(openai.APIError):
        parse_with_openai(relayed)
