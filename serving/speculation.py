"""The upstream call a miss starts while the semantic lookup still runs (``cache.speculative_upstream``),
so a miss does not pay for the lookup; a hit abandons it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from serving.relay import OpenedStream

T = TypeVar("T")


class Speculation(Generic[T]):
    """An upstream call started early by :meth:`start`, or on demand by :meth:`result`."""

    def __init__(self, call: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._call = call
        self._task: asyncio.Task[T] | None = None

    def start(self) -> None:
        """Start the call now (the lookup calls this as its semantic stage begins)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._call())

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
