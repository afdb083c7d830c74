"""serving/singleflight.py ``ReplicaFlights`` on the real Valkey, streams: a streaming leader's chunks
reach its followers as they come (batched), a leader that breaks off ends them within a bound, one that
fails before its first chunk is taken over, and a latecomer or a non-streaming follower gets the answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from serving.singleflight import FlightBroken, Following, Lead, ReplicaFlights

ANSWER: dict[str, Any] = {"id": "x", "object": "chat.completion", "model": "m",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "ab"},
                                       "finish_reason": "stop", "logprobs": None}], "usage": None}


@pytest.fixture
async def pods(redis_url: str) -> AsyncIterator[list[ReplicaFlights]]:
    """Three replicas' flights (each its own client) on one Valkey and one prefix."""
    prefix = f"sf{uuid.uuid4().hex[:8]}"
    flights = [ReplicaFlights(Redis.from_url(redis_url), prefix, lease_ms=600, poll_ms=50, max_wait_s=20,
                              op_timeout_s=2, batch_ms=30) for _ in range(3)]
    yield flights
    for f in flights:
        await f.aclose()


async def lead(flights: ReplicaFlights, key: str) -> Lead:
    claim = await flights.claim(key, stream=True)
    assert isinstance(claim, Lead)
    return claim


async def collect(following: Following, into: list[bytes]) -> None:
    async for data in following.chunks():
        into.append(data)


async def test_a_streaming_follower_gets_each_chunk_before_the_leader_ends(pods: list[ReplicaFlights]) -> None:
    a, b, c = pods
    leader = await lead(a, "k")
    followers = [asyncio.ensure_future(f.claim("k", stream=True)) for f in (b, c)]
    await asyncio.sleep(0.1)
    assert not any(f.done() for f in followers)  # nothing streamed yet: they wait
    leader.relay(b"data: 1\n\n")
    following = await asyncio.wait_for(asyncio.gather(*followers), 2)
    assert all(isinstance(f, Following) for f in following)
    got: list[list[bytes]] = [[], []]
    readers = [asyncio.ensure_future(collect(f, g)) for f, g in zip(following, got, strict=True)]
    leader.relay(b"data: 2")  # any split: the events are parsed on the follower's side
    leader.relay(b"\n\n")
    await asyncio.sleep(0.2)
    assert all(b"".join(g) == b"data: 1\n\ndata: 2\n\n" for g in got)  # before finish
    assert not any(r.done() for r in readers)
    leader.finish(ANSWER)
    await asyncio.wait_for(asyncio.gather(*readers), 2)


async def test_chunks_are_batched_to_one_write_per_interval(pods: list[ReplicaFlights], redis_url: str) -> None:
    a, b, _ = pods
    leader = await lead(a, "k")
    started = time.monotonic()
    for i in range(100):  # 100 chunks over ~0.3 s: about 10 batch intervals of 30 ms
        leader.relay(b"data: %d\n\n" % i)
        await asyncio.sleep(0.003)
    leader.finish(ANSWER)
    elapsed = time.monotonic() - started
    follower = await b.claim("k", stream=True)  # a latecomer: everything, from the first batch
    assert isinstance(follower, Following)
    got: list[bytes] = []
    await asyncio.wait_for(collect(follower, got), 2)
    assert b"".join(got) == b"".join(b"data: %d\n\n" % i for i in range(100))
    entries = await a.redis.xlen(a.result_key("k", leader.token))
    assert entries <= elapsed / 0.03 + 3, f"{entries} stream entries for 100 chunks in {elapsed:.2f} s"


async def test_a_leader_that_fails_mid_stream_ends_its_followers(pods: list[ReplicaFlights]) -> None:
    a, b, _ = pods
    leader = await lead(a, "k")
    leader.relay(b"data: 1\n\n")
    follower = await b.claim("k", stream=True)
    assert isinstance(follower, Following)
    got: list[bytes] = []
    reader = asyncio.ensure_future(collect(follower, got))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    leader.finish(None)
    with pytest.raises(FlightBroken):
        await asyncio.wait_for(reader, 2)
    assert time.monotonic() - started < 0.5 and got == [b"data: 1\n\n"]


async def test_a_leader_that_dies_mid_stream_ends_its_followers_within_the_lease(
        pods: list[ReplicaFlights]) -> None:
    a, b, _ = pods
    leader = await lead(a, "k")
    leader.relay(b"data: 1\n\n")
    follower = await b.claim("k", stream=True)
    assert isinstance(follower, Following)
    leader._renew.cancel()  # the pod died: no renewal, no more writes, no abort
    for task in a._tasks:
        task.cancel()
    started = time.monotonic()
    with pytest.raises(FlightBroken):
        await asyncio.wait_for(collect(follower, []), 5)
    assert time.monotonic() - started < (a.lease_ms + 2 * a.poll_ms) / 1000 + 0.3


async def test_a_leader_that_fails_before_its_first_chunk_is_taken_over_by_one(pods: list[ReplicaFlights]) -> None:
    a, b, c = pods
    leader = await lead(a, "k")
    followers = [asyncio.ensure_future(f.claim("k", stream=True)) for f in (b, c)]
    await asyncio.sleep(0.1)
    leader.finish(None)
    done, waiting = await asyncio.wait(followers, timeout=2, return_when=asyncio.FIRST_COMPLETED)
    (new_leader,) = [f.result() for f in done]
    assert isinstance(new_leader, Lead)  # one takes over; the other follows it
    new_leader.relay(b"data: 1\n\n")
    new_leader.finish(ANSWER)
    (other,) = waiting
    assert isinstance(await asyncio.wait_for(other, 2), Following)


async def test_a_non_streaming_follower_of_a_streaming_leader_gets_the_answer_at_the_end(
        pods: list[ReplicaFlights]) -> None:
    a, b, _ = pods
    leader = await lead(a, "k")
    follower = asyncio.ensure_future(b.claim("k"))
    leader.relay(b"data: 1\n\n")
    await asyncio.sleep(0.2)
    assert not follower.done()
    leader.finish(ANSWER)
    assert await asyncio.wait_for(follower, 2) == ANSWER


async def test_a_stream_whose_first_batches_are_gone_is_answered_whole(pods: list[ReplicaFlights]) -> None:
    a, b, _ = pods
    leader = await lead(a, "k")
    leader.relay(b"data: 1\n\n")
    await asyncio.sleep(0.1)
    await a.redis.xtrim(a.result_key("k", leader.token), maxlen=0)  # as MAXLEN trims a long stream
    leader.relay(b"data: 2\n\n")
    follower = asyncio.ensure_future(b.claim("k", stream=True))
    await asyncio.sleep(0.2)
    assert not follower.done()  # the chunks it found do not start at the first: it waits for the answer
    leader.finish(ANSWER)
    assert await asyncio.wait_for(follower, 2) == ANSWER
