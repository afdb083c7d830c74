"""cache/l1.py: the in-process exact LRU, bounded in bytes and in age."""

from __future__ import annotations

import time

import pytest

from cache import l1 as l1mod
from cache.l1 import L1Cache


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


def test_put_get_roundtrip(clock: Clock) -> None:
    c = L1Cache(1000, 60)
    c.put("k", ans(1), clock.now, 3600, 10)
    e = c.get("k")
    assert e is not None and e.answer == ans(1) and e.created == clock.now and e.size == 10
    assert c.get("other") is None
    assert len(c) == 1 and c.bytes == 10


def test_byte_bound_evicts_oldest(clock: Clock) -> None:
    c = L1Cache(100, 60)
    for i in range(5):
        c.put(f"k{i}", ans(i), clock.now, 3600, 25)
        assert c.bytes <= 100
    assert len(c) == 4 and c.bytes == 100
    assert c.get("k0") is None
    assert all(c.get(f"k{i}") is not None for i in range(1, 5))


def test_lru_order_follows_reads(clock: Clock) -> None:
    c = L1Cache(100, 60)
    for i in range(4):
        c.put(f"k{i}", ans(i), clock.now, 3600, 25)
    assert c.get("k0") is not None  # k0 becomes most recent; k1 is now oldest
    c.put("k4", ans(4), clock.now, 3600, 25)
    assert c.get("k1") is None
    assert c.get("k0") is not None and c.get("k4") is not None


def test_replacing_a_key_does_not_double_count(clock: Clock) -> None:
    c = L1Cache(100, 60)
    c.put("k", ans(1), clock.now, 3600, 20)
    c.put("k", ans(2), clock.now, 3600, 10)
    assert len(c) == 1 and c.bytes == 10
    assert c.get("k").answer == ans(2)


def test_eviction_frees_enough_for_a_bigger_entry(clock: Clock) -> None:
    c = L1Cache(100, 60)
    for i in range(10):
        c.put(f"k{i}", ans(i), clock.now, 3600, 10)
    c.put("big", ans(99), clock.now, 3600, 25)
    assert c.bytes <= 100 and c.get("big") is not None
    assert c.get("k0") is None and c.get("k1") is None and c.get("k2") is None
    assert c.get("k9") is not None


def test_oversized_entry_refused(clock: Clock) -> None:
    c = L1Cache(100, 60)
    c.put("small", ans(0), clock.now, 3600, 10)
    c.put("huge", ans(1), clock.now, 3600, 26)  # over a quarter of the budget
    assert c.get("huge") is None
    assert c.get("small") is not None and c.bytes == 10
    c.put("quarter", ans(2), clock.now, 3600, 25)
    assert c.get("quarter") is not None


def test_zero_budget_disables(clock: Clock) -> None:
    c = L1Cache(0, 60)
    c.put("k", ans(1), clock.now, 3600, 0)
    assert c.get("k") is None and len(c) == 0


def test_expires_after_max_age(clock: Clock) -> None:
    c = L1Cache(1000, 5)
    c.put("k", ans(1), clock.now, 3600, 10)
    clock.now += 4.9
    assert c.get("k") is not None
    clock.now += 0.2
    assert c.get("k") is None
    assert len(c) == 0 and c.bytes == 0


def test_never_outlives_redis_ttl(clock: Clock) -> None:
    c = L1Cache(1000, 60)
    created = clock.now - 95  # stored in Redis 95 s ago with a 100 s TTL
    c.put("k", ans(1), created, 100, 10)
    clock.now += 4
    assert c.get("k") is not None
    clock.now += 2
    assert c.get("k") is None


def test_already_expired_entry_is_not_served(clock: Clock) -> None:
    c = L1Cache(1000, 60)
    c.put("k", ans(1), clock.now - 200, 100, 10)
    assert c.get("k") is None


def test_clear(clock: Clock) -> None:
    c = L1Cache(1000, 60)
    c.put("a", ans(1), clock.now, 3600, 10)
    c.put("b", ans(2), clock.now, 3600, 10)
    c.clear()
    assert len(c) == 0 and c.bytes == 0 and c.get("a") is None


def test_real_clock_expiry() -> None:
    c = L1Cache(1000, 0.15)
    c.put("k", ans(1), time.time(), 3600, 10)
    assert c.get("k") is not None
    time.sleep(0.25)
    assert c.get("k") is None
