"""cache/breaker.py: the store's circuit breaker, every transition on a fake clock."""

from __future__ import annotations

from cache.breaker import CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, trip_after: int = 3) -> CircuitBreaker:
    return CircuitBreaker(retry_after_s=2.0, trip_after_timeouts=trip_after, clock=clock)


def test_unchecked_until_the_first_check_passes() -> None:
    b = breaker(Clock())
    assert b.state is State.HALF_OPEN  # a restarted Redis is empty: nothing is used unchecked
    assert b.check_passed() is True
    assert b.state is State.CLOSED
    assert b.check_passed() is False  # already closed: no transition to report


def test_an_error_opens_it_for_retry_after_then_half_open() -> None:
    clock = Clock()
    b = breaker(clock)
    b.check_passed()
    b.trip("lookup: ConnectionError")
    assert b.state is State.OPEN and b.trips == 1 and b.last_error == "lookup: ConnectionError"
    assert b.remaining_s == 2.0
    clock.now += 1.99
    assert b.state is State.OPEN
    clock.now += 0.02
    assert b.state is State.HALF_OPEN  # the next use checks first
    assert b.check_passed() is True and b.state is State.CLOSED and b.last_error is None


def test_a_failed_check_in_half_open_opens_it_again() -> None:
    clock = Clock()
    b = breaker(clock)
    b.trip("a")
    clock.now += 2.5
    assert b.state is State.HALF_OPEN
    b.trip("check: TimeoutError")
    assert b.state is State.OPEN and b.trips == 2


def test_timeouts_only_ask_for_a_check_and_never_open_it() -> None:
    b = breaker(Clock(), trip_after=3)
    b.check_passed()
    assert b.timeout() is False
    assert b.timeout() is False
    assert b.timeout() is True  # the third in a row: confirm with a check
    assert b.timeout() is True
    assert b.state is State.CLOSED and b.trips == 0


def test_an_answered_call_ends_the_run_of_timeouts() -> None:
    b = breaker(Clock(), trip_after=3)
    b.check_passed()
    b.timeout()
    b.timeout()
    b.call_ok()
    assert b.timeout() is False and b.timeouts == 1


def test_a_late_reply_does_not_close_an_open_breaker() -> None:
    """A call sent before the breaker opened may answer after: that says nothing about Redis now."""
    b = breaker(Clock())
    b.check_passed()
    b.trip("store: ConnectionError")
    b.call_ok()
    assert b.state is State.OPEN


def test_a_passed_check_closes_an_open_breaker_early() -> None:
    """E.g. a readiness probe that reached Redis: the cache comes back without waiting retry_after_s."""
    b = breaker(Clock())
    b.check_passed()
    b.trip("x")
    b.timeout()
    assert b.check_passed() is True
    assert b.state is State.CLOSED and b.timeouts == 0 and b.remaining_s == 0.0
