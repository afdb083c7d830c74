"""Verification off the request path (Krites: asynchronous verification for semantic caching).

A lookup whose nearest candidate passed the floor and the guards but scored just below the serving
threshold (verifier probability in [judge.min_score, threshold)) is a miss, answered upstream as
always. After its answer has been stored, the judge (cache/judge.py: the served model asked whether
the two questions want the same answer) looks at the pair in the background; on a yes the new
question is stored as an alias of the cached entry (its own vector, the cached answer, the same
tags and partition, expiring with the entry), so its next ask is served the vetted answer, and the
verdict goes to the learned thresholds. Bounded: at most ``max_pending`` pairs wait (more are
dropped and counted), ``concurrency`` run at once, each within ``timeout_ms``; nothing here is
awaited by a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from cache import metrics

log = logging.getLogger("cachestack.cache")
Judge = Callable[[str, str, str], Awaitable[float | None]]  # (model, cached query, new query) -> verdict


@dataclass(frozen=True, slots=True)
class JudgeJob:
    model: str
    cached_query: str
    query: str
    target_id: str  # the cached entry
    alias_id: str  # where the new question is stored
    embedding: np.ndarray  # the new question's vector
    score: float  # the rule's score for the pair
    ttl_s: int


Alias = Callable[[JudgeJob], Awaitable[bool]]
Record = Callable[[JudgeJob, bool], Awaitable[None]]


class BackgroundJudge:
    """A bounded queue of pairs for the judge, drained by ``concurrency`` worker tasks."""

    def __init__(self, judge: Judge, alias: Alias, record: Record | None, *, max_pending: int,
                 concurrency: int, timeout_ms: float) -> None:
        self.judge = judge
        self.alias = alias
        self.record = record
        self.timeout_s = timeout_ms / 1000.0
        self.concurrency = concurrency
        self._queue: asyncio.Queue[JudgeJob] = asyncio.Queue(max_pending)
        self._workers: list[asyncio.Task[None]] = []

    def submit(self, job: JudgeJob) -> bool:
        """Queue a pair; False (and counted) when the queue is full."""
        if not self._workers:
            loop = asyncio.get_running_loop()
            self._workers = [loop.create_task(self._work()) for _ in range(self.concurrency)]
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            metrics.BACKGROUND_JUDGE.labels("dropped").inc()
            return False
        return True

    async def join(self) -> None:
        """Wait until every queued pair has been judged (shutdown, tests)."""
        if self._workers:
            await self._queue.join()

    async def aclose(self) -> None:
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._one(job)
            except Exception as exc:  # one failed pair never stops the worker
                metrics.BACKGROUND_JUDGE.labels("error").inc()
                log.info("background judge failed: %s", type(exc).__name__)
            finally:
                self._queue.task_done()

    async def _one(self, job: JudgeJob) -> None:
        async with asyncio.timeout(self.timeout_s):
            verdict = await self.judge(job.model, job.cached_query, job.query)
        if verdict is None:
            metrics.BACKGROUND_JUDGE.labels("unsure").inc()
            return
        same = verdict > 0
        if self.record is not None:
            await self.record(job, same)
        if same and await self.alias(job):
            metrics.BACKGROUND_JUDGE.labels("yes").inc()
        else:
            metrics.BACKGROUND_JUDGE.labels("yes_target_gone" if same else "no").inc()
