"""serving/speculation.py: a miss's early upstream call against its still-running lookup."""

from __future__ import annotations

import asyncio

from serving.speculation import Speculation


def ok(outcome: object) -> bool:
    return outcome == "answer"


async def test_the_lookup_decides_when_it_ends_first() -> None:
    upstream = asyncio.Event()

    async def call() -> str:
        await upstream.wait()
        return "answer"

    spec: Speculation[str] = Speculation(call)
    spec.start()
    lookup = asyncio.ensure_future(asyncio.sleep(0.01, result="hit"))
    assert await asyncio.wait_for(spec.unless_ready(lookup, ok), 5) == "hit"
    spec.abandon()


async def test_a_ready_answer_does_not_wait_for_the_lookup() -> None:
    async def call() -> str:
        return "answer"

    spec: Speculation[str] = Speculation(call)
    gate = asyncio.Event()

    async def lookup() -> str:
        spec.start()  # as the semantic stage begins
        await gate.wait()  # a slow embedder or verifier
        return "hit"

    looking = asyncio.ensure_future(lookup())
    assert await asyncio.wait_for(spec.unless_ready(looking, ok), 5) is None
    assert not looking.done()  # still running: the caller decides what to do with it
    assert await spec.result() == "answer"
    looking.cancel()


async def test_an_upstream_error_waits_for_the_lookup() -> None:
    async def failing() -> str:
        raise RuntimeError("upstream down")

    async def refused() -> str:
        return "502"

    for call in (failing, refused):
        spec: Speculation[str] = Speculation(call)

        async def lookup() -> str:
            spec.start()
            await asyncio.sleep(0.05)
            return "hit"

        assert await asyncio.wait_for(spec.unless_ready(asyncio.ensure_future(lookup()), ok), 5) == "hit"
        spec.abandon()


async def test_without_an_early_call_the_lookup_is_awaited() -> None:
    async def call() -> str:
        return "answer"

    spec: Speculation[str] = Speculation(call)  # speculative_upstream off: never started during the lookup
    assert await asyncio.wait_for(spec.unless_ready(asyncio.ensure_future(asyncio.sleep(0.02, result="miss")), ok),
                                  5) == "miss"
