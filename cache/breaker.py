"""The cache store's circuit breaker: when to stop asking Redis, and when to ask again.

closed --error--> open --retry_after_s--> half-open --check passes--> closed
closed --N consecutive timeouts--> (a confirming check is due; still closed) --check fails--> open

A timeout alone never opens the breaker: a lookup can overrun its budget because the gateway's event
loop is busy, not because Redis is slow, so timeouts only ask for a check, and the service runs that
check outside the event loop (cache/service.py). Errors open it at once. The breaker holds state
only; it does no I/O, so every transition is tested without Redis (tests/cache/test_breaker.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class State(str, Enum):
    CLOSED = "closed"  # the store is used
    OPEN = "open"  # the store is skipped until retry_after_s has passed
    HALF_OPEN = "half_open"  # the next use checks the store first (after open, and before the first use)


class CircuitBreaker:
    def __init__(self, *, retry_after_s: float, trip_after_timeouts: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after_s = retry_after_s
        self.trip_after_timeouts = trip_after_timeouts
        self._clock = clock
        self._open_until = 0.0
        self._checked = False  # a restarted Redis is empty: nothing is used unchecked
        self.timeouts = 0  # consecutive
        self.trips = 0
        self.last_error: str | None = None

    @property
    def state(self) -> State:
        if self._clock() < self._open_until:
            return State.OPEN
        return State.CLOSED if self._checked else State.HALF_OPEN

    def call_ok(self) -> None:
        """A Redis round trip answered: the timeouts in a row end (the state does not change: a reply
        to a call sent before the breaker opened says nothing about Redis now)."""
        self.timeouts = 0

    def check_passed(self) -> bool:
        """The store answered a check: close; True if the breaker was not closed."""
        changed = self.state is not State.CLOSED
        self.timeouts = 0
        self._open_until = 0.0
        self._checked = True
        self.last_error = None
        return changed

    def timeout(self) -> bool:
        """A call overran its budget; True when a confirming check is due (it alone may trip)."""
        self.timeouts += 1
        return self.timeouts >= self.trip_after_timeouts

    def trip(self, reason: str) -> None:
        """A round trip failed, or a check did: skip the store for ``retry_after_s``, then check it again."""
        self.timeouts = 0
        self._open_until = self._clock() + self.retry_after_s
        self._checked = False
        self.trips += 1
        self.last_error = reason

    @property
    def remaining_s(self) -> float:
        return max(0.0, self._open_until - self._clock())
