"""cache.batching: concurrent submits share one run, each caller gets its own result or the error."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cache.batching import Batcher
from cache.decision import Candidate, RuleSettings, VerifiedRule, decide_each


async def test_concurrent_submits_share_runs_and_keep_order() -> None:
    runs: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        runs.append(items)
        return [i * i for i in items]

    b: Batcher[int, int] = Batcher(square, name="t", max_batch=8)
    out = await asyncio.gather(*(b.submit(i) for i in range(20)))
    assert out == [i * i for i in range(20)]
    assert len(runs) < 20 and all(len(r) <= 8 for r in runs)


async def test_run_happens_off_the_event_loop() -> None:
    seen: list[int] = []
    b: Batcher[int, int] = Batcher(lambda items: seen.append(threading.get_ident()) or items, name="t")
    assert await b.submit(3) == 3
    assert seen and seen[0] != threading.get_ident()


async def test_wrong_result_count_is_an_error_not_a_hang() -> None:
    b: Batcher[int, int] = Batcher(lambda items: items[:-1], name="t")
    with pytest.raises(RuntimeError, match="results for"):
        await asyncio.wait_for(b.submit(1), 5)
    # and the batcher keeps working
    good: Batcher[int, int] = Batcher(lambda items: items, name="t")
    assert await asyncio.wait_for(good.submit(2), 5) == 2


def test_decide_each_groups_by_settings_and_keeps_order() -> None:
    calls: list[RuleSettings] = []

    class Spy(VerifiedRule):
        def decide(self, items, settings):  # type: ignore[no-untyped-def]
            calls.append(settings)
            return super().decide(items, settings)

    rule = Spy(None, guards_enabled=False)
    strict, loose = RuleSettings(0.95), RuleSettings(0.80)
    c = Candidate("a", "how do i reset my password", 0.90)
    items = [("how can i reset my password", [c], strict), ("how can i reset my password", [c], loose),
             ("how can i reset my password", [c], strict)]
    d = decide_each(rule, items)
    assert [x.hit for x in d] == [False, True, False]
    assert sorted(calls, key=lambda s: s.threshold) == [loose, strict]  # one call per distinct settings
