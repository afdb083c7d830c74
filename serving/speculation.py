"""The upstream call a miss starts while the semantic lookup still runs (``cache.speculative_upstream``),
so a miss does not pay for the lookup; a hit abandons it, and an answer that is ready before the
lookup has decided is served without waiting for it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from serving.relay import OpenedStream

T = TypeVar("T")
U = TypeVar("U")


class Speculation(Generic[T]):
    """An upstream call started early by :meth:`start`, or on demand by :meth:`result`."""

    def __init__(self, call: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._call = call
        self._task: asyncio.Task[T] | None = None
        self._started = asyncio.Event()

    def start(self) -> None:
        """Start the call now (the lookup calls this as its semantic stage begins)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._call())
            self._started.set()

    async def unless_ready(self, other: asyncio.Future[U], ready: Callable[[T], bool]) -> U | None:
        """``other``'s result, or None as soon as the started call has an outcome ``ready`` accepts
        (``other`` then keeps running). An error or an outcome ``ready`` refuses waits for ``other``:
        a lookup may still find a hit where the upstream failed."""
        while not other.done():
            task = self._task
            waiter = task if task is not None else asyncio.ensure_future(self._started.wait())
            try:
                await asyncio.wait({other, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if task is None:
                    waiter.cancel()
            if task is not None and task.done():
                if not task.cancelled() and task.exception() is None and ready(task.result()):
                    return None
                await asyncio.wait({other})  # that outcome is no answer to serve: the lookup decides
        return other.result()

    async def result(self) -> T:
        """The call's outcome: the started one's, or a call made now."""
        return await (self._task if self._task is not None else self._call())

    def abandon(self) -> None:
        """Drop the call after a hit: cancelling it closes the connection (vLLM aborts the request);
        a stream that already opened is closed and its replica released as healthy."""
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
            return
        if task.cancelled() or task.exception() is not None:  # retrieved: an error matters to no one now
            return
        outcome = task.result()
        if isinstance(outcome, OpenedStream):
            outcome.close()
