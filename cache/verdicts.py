"""Where verdicts on served (or servable) answers are kept, and how the learned thresholds read them.

A verdict says whether a cached entry's answer was right for a lookup whose candidate scored s. It is
kept twice: on the entry itself (a capped field of its hash, returned by the KNN with the candidate, so
reading an entry's verdicts costs no round trip) and in its partition's window (a capped Redis list;
the neighbourhood fit of cache/adaptive.py). Gateway replicas share both. Each replica also keeps the
windows in process (:class:`ThresholdLearner`, bounded), refreshed from Redis in the background every
``refresh_s``; when Redis is unreachable the in-process window still learns, and a lookup never waits
for a verdict read or write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from cache import metrics
from cache.batching import Unavailable
from cache.adaptive import ThresholdLearner, Verdict, pack, unpack
from cache.embedder import MicroBatcher
from cache.store import CacheStore, Neighbour

log = logging.getLogger("cachestack.cache")
ENTRY_VERDICTS = 32  # per entry (160 bytes)


def answer_text(answer: Mapping[str, Any]) -> str:
    if answer.get("object") == "response":
        return "".join(str(part.get("text") or "") for item in answer.get("output") or []
                       for part in item.get("content") or [])
    choices = answer.get("choices") or [{}]
    first = choices[0]
    return str((first.get("message") or {}).get("content") or first.get("text") or "")


async def answers_agree(embedder: MicroBatcher, cached: Mapping[str, Any], fresh: Mapping[str, Any],
                        threshold: float = 0.8) -> bool | None:
    """Does a fresh answer say what the cached one says? Same text, or embeddings within ``threshold``;
    None when the embedder has a backlog (background work never adds to it) or is unavailable."""
    a, b = answer_text(cached), answer_text(fresh)
    if a.strip() == b.strip():
        return True
    try:
        va, vb = await asyncio.gather(embedder.embed(a, bounded=True), embedder.embed(b, bounded=True))
    except Unavailable:
        return None
    return float(np.dot(va, vb)) >= threshold


class VerdictBook:
    """Records verdicts (Redis and in process) and answers "serve this candidate?" from them."""

    def __init__(self, store: CacheStore, *, cosine_scores: bool, timeout_s: float, refresh_s: float = 5.0,
                 learner: ThresholdLearner | None = None) -> None:
        self.store = store
        self.cosine = cosine_scores  # the rule's score is a cosine in [-1, 1] (no verifier)
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self.learner = learner or ThresholdLearner(window=500, max_scopes=256)
        self._refreshed: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def scope_of(entry_id: str) -> str:
        return entry_id.split(":", 1)[0]  # the store partition: tenant scope, namespace, model, version

    def decide(self, candidate: Neighbour, score: float, delta: float) -> bool | None:
        """Serve ``candidate`` (rule score ``score``) under the bound ``delta``? None: not learned yet."""
        scope = self.scope_of(candidate.entry_id)
        self._refresh_soon(scope)
        served = self.learner.decide(scope, score, unpack(candidate.verdicts, cosine=self.cosine), delta=delta)
        metrics.ADAPTIVE.labels("static" if served is None else ("serve" if served else "explore")).inc()
        return served

    async def record(self, entry_id: str, score: float, correct: bool, *, ttl_s: int, source: str) -> None:
        verdict = Verdict(score, correct)
        scope = self.scope_of(entry_id)
        self.learner.record(scope, verdict)
        metrics.VERDICTS.labels(source, str(correct).lower()).inc()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.store.add_verdict(entry_id, pack(verdict, cosine=self.cosine),
                                             keep_bytes=5 * ENTRY_VERDICTS, window=self.learner.window, ttl_s=ttl_s)
        except (RedisError, OSError, TimeoutError) as exc:  # the in-process window has it
            log.info("verdict not shared: %s", type(exc).__name__)

    def _refresh_soon(self, scope: str) -> None:
        now = time.monotonic()
        if now - self._refreshed.get(scope, -1e9) < self.refresh_s:
            return
        self._refreshed[scope] = now
        if len(self._refreshed) > 4 * self.learner.max_scopes:
            self._refreshed = {scope: now}
        task = asyncio.get_running_loop().create_task(self._refresh(scope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, scope: str) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                blobs = await self.store.partition_verdicts(scope)
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("verdict window not refreshed: %s", type(exc).__name__)
            return
        if blobs:  # an empty list in Redis (restarted, expired) keeps what this replica learned
            self.learner.replace(scope, [v for b in blobs for v in unpack(b, cosine=self.cosine)])
