"""The upstream call a miss starts while the semantic lookup still runs (``cache.speculative_upstream``),
so a miss does not pay for the lookup: a hit abandons the call, and an answer that is ready while the
lookup still runs is served without waiting for it (the lookup goes on for the store's sake)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from starlette.responses import Response

from serving.relay import OpenedStream

T = TypeVar("T")
U = TypeVar("U")
# a miss's upstream outcome: an opened stream, a Response (another replica's answer, or vLLM refusing a
# stream) or a whole answer as (status, body, content type)
Outcome = OpenedStream | Response | tuple[int, bytes, str]


def ready_answer(outcome: Outcome) -> bool:
    """Whether an upstream outcome answers the request without its lookup: a complete 200 answer,
    or a stream whose first event is in. An error is none: the lookup may still find a hit."""
    if isinstance(outcome, OpenedStream):
        return outcome.resp.started
    if isinstance(outcome, Response):
        return outcome.status_code == 200
    return outcome[0] == 200


class Speculation(Generic[T]):
    """An upstream call started early by :meth:`start`, or on demand by :meth:`result`."""

    def __init__(self, call: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._call = call
        self._task: asyncio.Task[T] | None = None
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        """Start the call now (the lookup calls this as its semantic stage begins)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._call())
            self._started.set_result(None)

    async def unless_ready(self, lookup: asyncio.Future[U], ready: Callable[[T], bool]) -> U | None:
        """``lookup``'s result, or None as soon as the started call has an outcome ``ready`` accepts
        while ``lookup`` still runs (it is left running). An error, or an outcome ``ready`` refuses,
        waits for ``lookup``: it may still find a hit."""
        while not lookup.done():
            task = self._task
            await asyncio.wait({lookup, task if task is not None else self._started},
                               return_when=asyncio.FIRST_COMPLETED)
            if lookup.done() or task is None or not task.done():
                continue
            if not task.cancelled() and task.exception() is None and ready(task.result()):
                return None
            await asyncio.wait({lookup})  # no answer to serve: the lookup decides
        return lookup.result()

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
