"""Concurrent calls folded into one blocking batch call run in a worker thread.

Both CPU stages of a semantic lookup (the query embedding and the verifier) cost far less per item in
a batch than one at a time, and two of them running at once would only fight over the cores. So each
stage has one worker: callers that arrive while it is busy share its next run. An idle worker starts
at once (after ``wait_ms``, default 0), so a lone request pays no wait. At most ``max_waiting``
callers wait for a run: beyond that ``submit`` raises :class:`Busy` at once, so a caller that can do
without the result (a lookup skips its semantic stage) never queues behind a backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from cache import metrics

In = TypeVar("In")
Out = TypeVar("Out")


class Unavailable(RuntimeError):
    """This stage cannot give a result now: a caller that can do without it goes on without it."""


class Busy(Unavailable):
    """More than ``max_waiting`` callers are already waiting for this stage."""


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]


class Batcher(Generic[In, Out]):
    """``await submit(item)`` runs ``run([item, ...])`` (one result per item, same order) off the loop."""

    def __init__(self, run: Callable[[list[In]], Sequence[Out]], *, name: str, wait_ms: float = 0.0,
                 max_batch: int = 64, max_waiting: int | None = None) -> None:
        self.run = run
        self.name = name
        self.wait_s = wait_ms / 1000.0
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._queue: list[_Pending[In, Out]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one run at a time

    @property
    def waiting(self) -> int:
        """Callers queued for the next run (the running batch not counted)."""
        return len(self._queue)

    async def submit(self, item: In, *, bounded: bool = False) -> Out:
        """The item's result; raises Busy if ``bounded`` and ``max_waiting`` callers already wait."""
        if bounded and self.max_waiting is not None and len(self._queue) >= self.max_waiting:
            metrics.BYPASSES.labels(f"{self.name}_busy").inc()
            raise Busy(f"{self.name}: {len(self._queue)} callers waiting")
        fut: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, fut))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        if self.wait_s > 0 and len(self._queue) < self.max_batch:
            await asyncio.sleep(self.wait_s)
        async with self._lock:  # while a run is going, newcomers queue up for the next one
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            self._flusher = asyncio.get_running_loop().create_task(self._flush()) if self._queue else None
            batch = [p for p in batch if not p.future.done()]  # drop callers that went away
            if not batch:
                return
            metrics.BATCH_SIZE.labels(self.name).observe(len(batch))
            try:
                results = await asyncio.to_thread(self.run, [p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch run returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # every waiter learns of the failure
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
        for p, r in zip(batch, results):
            if not p.future.done():
                p.future.set_result(r)
