"""cache/l1.py: the in-process exact LRU, bounded by the memory it really takes, and in age."""

from __future__ import annotations

import gc
import time
import tracemalloc

import pytest

from cache import l1 as l1mod
from cache.l1 import L1Cache, entry_size
from cache.store import decode_answer, encode_answer


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(l1mod.time, "time", c)
    return c


def ans(i: int) -> dict:
    return {"choices": [{"message": {"content": f"answer {i}"}}]}


S = entry_size("k0", ans(0))  # every key kN and answer ans(N) below, N < 10, has this size


def test_put_get_roundtrip(clock: Clock) -> None:
    c = L1Cache(100 * S, 60)
    c.put("k", ans(1), clock.now, 3600)
    e = c.get("k")
    assert e is not None and e.answer == ans(1) and e.created == clock.now and e.size == entry_size("k", ans(1))
    assert c.get("other") is None
    assert len(c) == 1 and c.bytes == e.size


def test_byte_bound_evicts_oldest(clock: Clock) -> None:
    c = L1Cache(4 * S, 60)
    for i in range(5):
        c.put(f"k{i}", ans(i), clock.now, 3600)
        assert c.bytes <= 4 * S
    assert len(c) == 4 and c.bytes == 4 * S
    assert c.get("k0") is None
    assert all(c.get(f"k{i}") is not None for i in range(1, 5))


def test_lru_order_follows_reads(clock: Clock) -> None:
    c = L1Cache(4 * S, 60)
    for i in range(4):
        c.put(f"k{i}", ans(i), clock.now, 3600)
    assert c.get("k0") is not None  # k0 becomes most recent; k1 is now oldest
    c.put("k4", ans(4), clock.now, 3600)
    assert c.get("k1") is None
    assert c.get("k0") is not None and c.get("k4") is not None


def test_replacing_a_key_does_not_double_count(clock: Clock) -> None:
    c = L1Cache(100 * S, 60)
    c.put("k", {"choices": [{"message": {"content": "a much longer first answer " * 5}}]}, clock.now, 3600)
    c.put("k", ans(2), clock.now, 3600)
    assert len(c) == 1 and c.bytes == entry_size("k", ans(2))
    assert c.get("k").answer == ans(2)


def test_eviction_frees_enough_for_a_bigger_entry(clock: Clock) -> None:
    c = L1Cache(10 * S, 60)
    for i in range(10):
        c.put(f"k{i}", ans(i), clock.now, 3600)
    big = {"choices": [{"message": {"content": "x" * (S + S // 2)}}]}  # about 2.5 entries' worth
    c.put("big", big, clock.now, 3600)
    assert c.bytes <= 10 * S and c.get("big") is not None
    assert c.get("k0") is None and c.get("k1") is None and c.get("k2") is None
    assert c.get("k9") is not None


def test_oversized_entry_refused(clock: Clock) -> None:
    c = L1Cache(8 * S, 60)
    c.put("k0", ans(0), clock.now, 3600)
    c.put("huge", {"choices": [{"message": {"content": "x" * (2 * S)}}]}, clock.now, 3600)  # over a quarter
    assert c.get("huge") is None
    assert c.get("k0") is not None and c.bytes == S
    c.put("k1", ans(1), clock.now, 3600)
    assert c.get("k1") is not None


def test_zero_budget_disables(clock: Clock) -> None:
    c = L1Cache(0, 60)
    c.put("k", ans(1), clock.now, 3600)
    assert c.get("k") is None and len(c) == 0


def test_expires_after_max_age(clock: Clock) -> None:
    c = L1Cache(100 * S, 5)
    c.put("k", ans(1), clock.now, 3600)
    clock.now += 4.9
    assert c.get("k") is not None
    clock.now += 0.2
    assert c.get("k") is None
    assert len(c) == 0 and c.bytes == 0


def test_never_outlives_redis_ttl(clock: Clock) -> None:
    c = L1Cache(100 * S, 60)
    created = clock.now - 95  # stored in Redis 95 s ago with a 100 s TTL
    c.put("k", ans(1), created, 100)
    clock.now += 4
    assert c.get("k") is not None
    clock.now += 2
    assert c.get("k") is None


def test_already_expired_entry_is_not_served(clock: Clock) -> None:
    c = L1Cache(100 * S, 60)
    c.put("k", ans(1), clock.now - 200, 100)
    assert c.get("k") is None


def test_clear(clock: Clock) -> None:
    c = L1Cache(100 * S, 60)
    c.put("a", ans(1), clock.now, 3600)
    c.put("b", ans(2), clock.now, 3600)
    c.clear()
    assert len(c) == 0 and c.bytes == 0 and c.get("a") is None


def test_real_clock_expiry() -> None:
    c = L1Cache(100 * S, 0.15)
    c.put("k", ans(1), time.time(), 3600)
    assert c.get("k") is not None
    time.sleep(0.25)
    assert c.get("k") is None


def test_the_byte_bound_holds_for_the_memory_really_used() -> None:
    """Filled past its budget with realistic answers decoded from stored blobs, the LRU's real heap
    use (tracemalloc) stays within its budget, and the count is not a wild overestimate either.
    Counting the compressed blob instead held ~8x the budget."""
    def answer(i: int) -> dict:
        return {"object": "chat.completion", "model": "smollm2", "usage": {"prompt_tokens": 20, "completion_tokens": 120},
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": f"Answer {i}: " + "Paris is the capital of France. " * 20}}]}

    blobs = [encode_answer(answer(i)) for i in range(3000)]
    budget = 1_000_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        c = L1Cache(budget, 60)
        for i, blob in enumerate(blobs):
            c.put(f"{i:064x}", decode_answer(blob), time.time(), 3600)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert c.bytes <= budget
    assert budget // 2 <= used <= budget, used
    assert sum(len(b) for b in blobs[-len(c):]) < budget // 5  # the blobs alone would have let ~5x more in
