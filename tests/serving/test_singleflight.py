"""serving/singleflight.py: identical in-flight calls share one run; errors and cancellation."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from serving.singleflight import SingleFlight


class Upstream:
    """A call that blocks until released and counts how often it ran."""

    def __init__(self, result: object = "answer") -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.result = result
        self.started = asyncio.Event()

    async def __call__(self) -> object:
        self.runs += 1
        self.started.set()
        await self.release.wait()
        if isinstance(self.result, BaseException):
            raise self.result
        return {"run": self.runs, "value": self.result}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_same_key_runs_once() -> None:
    sf, up = SingleFlight(), Upstream()
    tasks = [asyncio.ensure_future(sf.run("k", up)) for _ in range(10)]
    await settle()
    assert len(sf) == 1 and up.runs == 1
    up.release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert up.runs == 1
    assert all(r is results[0] for r in results) and results[0] == {"run": 1, "value": "answer"}
    assert len(sf) == 0


async def test_different_keys_run_separately() -> None:
    sf, up = SingleFlight(), Upstream()
    tasks = [asyncio.ensure_future(sf.run(k, up)) for k in ("a", "b", "a", "b", "c")]
    await settle()
    assert up.runs == 3 and len(sf) == 3
    up.release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert results[0] is results[2] and results[1] is results[3]
    assert results[0] is not results[1] and results[4] is not results[0]


async def test_after_completion_a_new_call_runs_again() -> None:
    sf, up = SingleFlight(), Upstream()
    up.release.set()
    first = await sf.run("k", up)
    second = await sf.run("k", up)
    assert up.runs == 2 and first != second


async def test_exception_reaches_every_caller() -> None:
    boom = RuntimeError("upstream 502")
    sf, up = SingleFlight(), Upstream(boom)
    tasks = [asyncio.ensure_future(sf.run("k", up)) for _ in range(5)]
    await settle()
    up.release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert up.runs == 1
    assert all(r is boom for r in results)
    assert len(sf) == 0
    # the key is free again: the next call runs
    up.result = "ok"
    assert (await sf.run("k", up))["value"] == "ok" and up.runs == 2


async def test_exception_without_followers_leaves_no_unretrieved_future() -> None:
    sf = SingleFlight()

    async def fail() -> None:
        raise ValueError("x")

    with warnings.catch_warnings(record=True):
        loop = asyncio.get_running_loop()
        seen: list[dict] = []
        old = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        try:
            with pytest.raises(ValueError):
                await sf.run("k", fail)
            gc.collect()
            await settle()
        finally:
            loop.set_exception_handler(old)
    assert not [c for c in seen if "never retrieved" in str(c.get("message", ""))]


async def test_cancelled_leader_makes_followers_run_their_own_call() -> None:
    sf, up = SingleFlight(), Upstream()
    leader = asyncio.ensure_future(sf.run("k", up))
    await settle()
    followers = [asyncio.ensure_future(sf.run("k", up)) for _ in range(3)]
    await settle()
    assert up.runs == 1
    leader.cancel()
    await settle()
    assert up.runs == 4  # each follower started its own call
    up.release.set()
    results = await asyncio.wait_for(asyncio.gather(*followers), 5)
    assert leader.cancelled()
    assert all(r["value"] == "answer" for r in results)
    assert len(sf) == 0


async def test_cancelled_follower_does_not_disturb_the_others() -> None:
    sf, up = SingleFlight(), Upstream()
    leader = asyncio.ensure_future(sf.run("k", up))
    await settle()
    quitter = asyncio.ensure_future(sf.run("k", up))
    stayer = asyncio.ensure_future(sf.run("k", up))
    await settle()
    quitter.cancel()
    await settle()
    up.release.set()
    a, b = await asyncio.wait_for(asyncio.gather(leader, stayer), 5)
    assert quitter.cancelled()
    assert a is b and up.runs == 1
