"""Lookup and store orchestration: the request flow's steps 3-7, without HTTP.

Fails open: every Redis call runs inside the lookup budget. An error, or consecutive timeouts that a
PING confirms, marks the store down for ``retry_after_s`` (lookups skip it at once meanwhile, so a
dead Redis costs a few budgets, not one per request), then the next request tries again:
reconnection is redis-py's own.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from redis.exceptions import RedisError
from redisvl.exceptions import RedisVLError

from cache import metrics
from cache.batching import Batcher
from cache.config import CacheConfig
from cache.decision import Candidate, Decision, DecisionRule, RuleSettings, decide_each
from cache.embedder import MicroBatcher
from cache.keys import normalise_query
from cache.l1 import L1Cache
from cache.policy import CachePlan, make_plan
from cache.store import CacheStore, Entry, Neighbour, scope_filter

log = logging.getLogger("cachestack.cache")
T = TypeVar("T")
Judge = Callable[[str, str, str], Awaitable[float | None]]
STORE_ERRORS = (RedisError, RedisVLError, OSError, asyncio.TimeoutError, ValueError)


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: dict[str, Any]
    layer: str  # "exact" or "semantic"
    similarity: float | None
    age_s: float
    entry_id: str


@dataclass(slots=True)
class Lookup:
    """The outcome of a lookup; a miss keeps the query embedding so the store need not redo it."""

    hit: CacheHit | None = None
    embedding: np.ndarray | None = None


class CacheService:
    def __init__(self, cfg: CacheConfig, store: CacheStore, embedder: MicroBatcher, rule: DecisionRule, *,
                 budget_ms: float, retry_after_s: float, l1_max_age_s: float = 30.0,
                 judge: Judge | None = None, trip_after_timeouts: int = 1) -> None:
        self.cfg = cfg
        self.store = store
        self.embedder = embedder
        self.rule = rule
        self.judge = judge  # (model, cached query, new query) -> verdict; used when decision.judge.enabled
        # concurrent lookups share one verifier run (one ONNX batch), off the event loop
        self._decider: Batcher[tuple[str, list[Candidate], RuleSettings], Decision] = Batcher(
            lambda items: decide_each(self.rule, items), name="verify", max_batch=cfg.decision.max_batch)
        self.budget_s = budget_ms / 1000.0
        self.retry_after_s = retry_after_s
        self.trip_after_timeouts = trip_after_timeouts
        self._timeouts = 0  # consecutive lookup/store timeouts
        self._probe: asyncio.Task[None] | None = None  # is Redis really down? (see _failed)
        self.l1 = L1Cache(cfg.l1_max_bytes, l1_max_age_s)
        self.down_until = 0.0
        self.last_error: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._shadow_counts: dict[tuple[str, bool], int] = {}
        self._recheck = True  # ping and (re)create the index before the next use: a restarted Redis is empty
        metrics.REDIS_UP.set(1)

    # -- state -------------------------------------------------------------------------------
    @property
    def degraded(self) -> bool:
        return time.monotonic() < self.down_until

    def _failed(self, exc: BaseException, op: str) -> None:
        metrics.BYPASSES.labels(f"{op}_error").inc()
        if op != "ping" and isinstance(exc, TimeoutError):
            # A saturated gateway's event loop can overrun the budget on a healthy Redis: skipping
            # the store for everyone after one such timeout turned a busy moment into a 40% miss
            # rate, and a burst on a cold connection pool produced several at once
            # (loadtests/README.md). So consecutive timeouts only start a probe: check() with the
            # store timeout; the store is skipped only if that fails too. Meanwhile each lookup
            # still gives up after its own budget.
            self._timeouts += 1
            if self._timeouts >= self.trip_after_timeouts and self._probe is None:
                self._probe = asyncio.get_running_loop().create_task(self._confirm_down())
                self._tasks.add(self._probe)
                self._probe.add_done_callback(self._tasks.discard)
            return
        self._trip(exc, op)

    async def _confirm_down(self) -> None:
        """The readiness check with the store timeout: it trips the store if Redis does not answer."""
        try:
            await self.check(self.store.cfg.store_timeout_ms / 1000.0)
        finally:
            self._probe = None

    def _trip(self, exc: BaseException, op: str) -> None:
        """Skip the store for everyone for ``retry_after_s``; the next use after that re-checks it."""
        self._timeouts = 0
        self.down_until = time.monotonic() + self.retry_after_s
        self._recheck = True
        self.last_error = f"{op}: {type(exc).__name__}"
        metrics.REDIS_UP.set(0)
        log.warning("cache store %s failed (%s); skipping it for %.1fs", op, type(exc).__name__, self.retry_after_s)

    def _ok(self) -> None:
        self._timeouts = 0
        if self.last_error is not None:
            self.last_error = None
            metrics.REDIS_UP.set(1)
            log.info("cache store reachable again")

    async def check(self, timeout_s: float | None = None) -> bool:
        """Ping the store (readiness); also ends a degraded period early when Redis is back."""
        try:
            async with asyncio.timeout(timeout_s or self.budget_s):
                await self.store.ping()
                await self.store.ensure_index()
        except STORE_ERRORS as exc:
            self._failed(exc, "ping")
            return False
        self.down_until = 0.0
        self._recheck = False
        self._ok()
        return True

    # -- policy ------------------------------------------------------------------------------
    def plan(self, kind: str, body: Mapping[str, Any], tenant: str, cache_control: str | None,
             namespace: str | None) -> CachePlan:
        plan = make_plan(self.cfg, kind, body, tenant, cache_control, namespace)
        if not plan.lookup and not plan.store:
            metrics.REQUESTS.labels("BYPASS", "none", plan.namespace).inc()
        return plan

    # -- lookup ------------------------------------------------------------------------------
    async def lookup(self, plan: CachePlan, on_semantic: Callable[[], None] | None = None) -> Lookup:
        """Exact tiers, then the semantic one; ``on_semantic`` is called as the semantic stage starts
        (the gateway starts its upstream call there, so a miss does not wait for the lookup)."""
        started = time.perf_counter()
        result = Lookup()
        try:
            result = await self._lookup(plan, on_semantic)
        finally:
            outcome = "HIT" if result.hit else "MISS"
            metrics.LOOKUP_SECONDS.labels(outcome).observe(time.perf_counter() - started)
            layer = result.hit.layer if result.hit else ("semantic" if plan.semantic else "exact")
            metrics.REQUESTS.labels(outcome, layer, plan.namespace).inc()
            if result.hit:
                self._count_savings(plan.model, result.hit.answer)
        return result

    async def guarded(self, call: Callable[[], Awaitable[T]], stage: str, timeout_s: float | None = None) -> T | None:
        """One store round trip for a cache built on this one (cache/vectors.py), failing open exactly
        like a lookup: None when the store is being skipped, or the call fails or overruns its time
        (``timeout_s``, default the lookup budget)."""
        if self.degraded:
            metrics.BYPASSES.labels("store_down").inc()
            return None
        if self._recheck and not await self.check():
            return None
        t = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s or self.budget_s):
                result = await call()
        except STORE_ERRORS as exc:
            self._failed(exc, "lookup")
            return None
        metrics.STAGE_SECONDS.labels(stage).observe(time.perf_counter() - t)
        self._ok()
        return result

    def spawn(self, work: Awaitable[None]) -> None:
        """Run background work (a store) that :meth:`drain` waits for."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fresh(self, created: float, plan: CachePlan) -> bool:
        return plan.max_age is None or time.time() - created <= plan.max_age

    async def _redis(self, call: Awaitable[T], stage: str) -> T:
        """One store round trip within the budget. Local CPU work (embedding, the decision rule) runs
        outside it, so a busy gateway is never mistaken for a slow Redis."""
        t = time.perf_counter()
        async with asyncio.timeout(self.budget_s):
            result = await call
        metrics.STAGE_SECONDS.labels(stage).observe(time.perf_counter() - t)
        return result

    async def _lookup(self, plan: CachePlan, on_semantic: Callable[[], None] | None) -> Lookup:
        hot = self.l1.get(plan.exact_key)
        if hot is not None and self._fresh(hot.created, plan):
            return Lookup(CacheHit(hot.answer, "exact", None, time.time() - hot.created, plan.exact_key))
        if self.degraded:
            metrics.BYPASSES.labels("store_down").inc()
            return Lookup()
        if self._recheck and not await self.check():
            return Lookup()
        try:
            entry = await self._redis(self.store.get(self.store.entry_id(self._tags(plan), plan.exact_key)), "exact")
        except STORE_ERRORS as exc:
            self._failed(exc, "lookup")
            return Lookup()
        self._ok()
        if entry is not None and self._fresh(entry.created, plan):
            self._remember(plan.exact_key, entry, plan)
            return Lookup(CacheHit(entry.answer, "exact", None, time.time() - entry.created, plan.exact_key))
        if not plan.semantic:
            return Lookup()

        if on_semantic is not None:
            on_semantic()
        t = time.perf_counter()
        vector = await self.embedder.embed(plan.query)
        metrics.STAGE_SECONDS.labels("embed").observe(time.perf_counter() - t)
        found = Lookup(embedding=vector)
        try:
            neighbours = await self._redis(
                self.store.knn(vector, self._tags(plan), self.cfg.decision.top_k, large=plan.head), "knn")
        except STORE_ERRORS as exc:
            self._failed(exc, "lookup")
            return found
        self._ok()
        neighbours = [n for n in neighbours if self._fresh(n.created, plan)]
        if not neighbours:
            return found
        metrics.SIMILARITY.labels(plan.namespace).observe(neighbours[0].similarity)
        t = time.perf_counter()
        decision = await self._decide(plan, neighbours)
        metrics.STAGE_SECONDS.labels("decision").observe(time.perf_counter() - t)
        if decision is None:
            return found
        chosen, _score = decision
        try:
            answer = chosen.answer()
        except ValueError:  # a damaged entry is one miss, not a reason to doubt the store
            log.warning("cache entry %s holds no readable answer", chosen.entry_id)
            return found
        return Lookup(CacheHit(answer, "semantic", chosen.similarity, time.time() - chosen.created,
                               chosen.entry_id), vector)

    async def _decide(self, plan: CachePlan, neighbours: list[Neighbour]) -> tuple[Neighbour, float] | None:
        ns = plan.settings
        settings = RuleSettings(
            threshold=ns.threshold if ns.threshold is not None else self.cfg.decision.threshold,
            verifier_threshold=ns.verifier_threshold if ns.verifier_threshold is not None
            else self.cfg.decision.verifier_threshold,
        )
        candidates = [Candidate(n.entry_id, n.query, n.similarity) for n in neighbours]
        decision = await self._decider.submit((plan.query, candidates, settings))
        if decision.candidate is None:
            return None
        if not decision.hit:
            j = self.cfg.decision.judge
            if not (j.enabled and self.judge is not None and decision.reason == "verifier rejected"
                    and decision.score >= j.min_score):
                return None
            if not await self._judged_same(plan, decision.candidate.query, j.model, j.timeout_ms):
                return None
        chosen = next(n for n in neighbours if n.entry_id == decision.candidate.entry_id)
        return chosen, decision.score

    async def _judged_same(self, plan: CachePlan, cached: str, model: str | None, timeout_ms: float) -> bool:
        """The LLM judge's word on a borderline pair; no verdict (timeout, error, unsure) is a no."""
        assert self.judge is not None
        try:
            async with asyncio.timeout(timeout_ms / 1000.0):
                verdict = await self.judge(model or plan.model, cached, plan.query)
        except Exception as exc:  # the judge is advice: its failure is a miss, never an error
            metrics.JUDGE.labels("error").inc()
            log.info("judge call failed: %s", type(exc).__name__)
            return False
        label = "unsure" if verdict is None else ("yes" if verdict > 0 else "no")
        metrics.JUDGE.labels(label).inc()
        return label == "yes"

    def _remember(self, key: str, entry: Entry, plan: CachePlan) -> None:
        self.l1.put(key, entry.answer, entry.created, plan.settings.ttl_s, entry.size)

    def _count_savings(self, model: str, answer: dict[str, Any]) -> None:
        usage = answer.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        metrics.TOKENS_SAVED.labels("prompt", model).inc(prompt)
        metrics.TOKENS_SAVED.labels("completion", model).inc(completion)
        price = self.cfg.prices.get(model)
        if price is not None:
            metrics.MONEY_SAVED.labels(model).inc(
                prompt / 1000 * price.prompt_per_1k + completion / 1000 * price.completion_per_1k)

    @staticmethod
    def _tags(plan: CachePlan) -> dict[str, str]:
        return {"scope": plan.scope, "fingerprint": plan.fingerprint, "model": plan.model,
                "version": plan.settings.version, "namespace": plan.namespace}

    # -- store -------------------------------------------------------------------------------
    def store_later(self, plan: CachePlan, answer: dict[str, Any], embedding: np.ndarray | None = None) -> None:
        """Write a complete answer in the background: the response never waits for the cache."""
        if not plan.store:
            return
        task = asyncio.get_running_loop().create_task(self._store(plan, answer, embedding))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, plan: CachePlan, answer: dict[str, Any], embedding: np.ndarray | None) -> None:
        answer = {k: v for k, v in answer.items() if k not in ("id", "created")}
        if len(orjson.dumps(answer)) > self.cfg.max_entry_bytes:
            metrics.STORES.labels(plan.namespace, "too_large").inc()
            return
        if self.degraded or (self._recheck and not await self.check()):
            metrics.STORES.labels(plan.namespace, "skipped").inc()
            return
        try:
            if plan.semantic and embedding is None:
                embedding = await self.embedder.embed(plan.query)
            t = time.perf_counter()
            async with asyncio.timeout(self.store.cfg.store_timeout_ms / 1000.0):
                await self.store.put(self.store.entry_id(self._tags(plan), plan.exact_key), answer=answer,
                                     query=plan.query,
                                     embedding=embedding if plan.semantic else None,
                                     tags={**self._tags(plan), "tenant": plan.tenant},
                                     ttl_s=plan.settings.ttl_s)
            metrics.STAGE_SECONDS.labels("store").observe(time.perf_counter() - t)
        except STORE_ERRORS as exc:
            metrics.STORES.labels(plan.namespace, "error").inc()
            self._failed(exc, "store")
            return
        metrics.STORES.labels(plan.namespace, "stored").inc()

    # -- shadow mode -------------------------------------------------------------------------
    def maybe_shadow(self, plan: CachePlan, hit: CacheHit, fresh: Callable[[], Awaitable[dict[str, Any] | None]],
                     agree_threshold: float = 0.8) -> None:
        """For a sampled share of semantic hits, compare the cached answer with a fresh one."""
        if hit.layer != "semantic" or random.random() >= plan.settings.shadow_rate:
            return
        task = asyncio.get_running_loop().create_task(self._shadow(plan, hit, fresh, agree_threshold))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, plan: CachePlan, hit: CacheHit,
                      fresh: Callable[[], Awaitable[dict[str, Any] | None]], agree_threshold: float) -> None:
        try:
            answer = await fresh()
        except Exception as exc:  # a failed shadow call says nothing about the cache
            log.info("shadow check skipped: %s", type(exc).__name__)
            return
        if answer is None:
            return
        a, b = answer_text(hit.answer), answer_text(answer)
        va, vb = await asyncio.gather(self.embedder.embed(a), self.embedder.embed(b))
        agree = a.strip() == b.strip() or float(np.dot(va, vb)) >= agree_threshold
        metrics.SHADOW.labels(plan.namespace, str(agree).lower()).inc()
        key = (plan.namespace, agree)
        self._shadow_counts[key] = self._shadow_counts.get(key, 0) + 1
        yes = self._shadow_counts.get((plan.namespace, True), 0)
        no = self._shadow_counts.get((plan.namespace, False), 0)
        metrics.SHADOW_FALSE_HIT_RATE.labels(plan.namespace).set(no / (yes + no))

    # -- invalidation ------------------------------------------------------------------------
    async def purge(self, *, tags: Mapping[str, str], key: str | None = None, similar_to: str | None = None,
                    threshold: float | None = None) -> int:
        """Delete entries by tags, by exact key, or near a text; clears this replica's L1."""
        self.l1.clear()
        if key is not None:
            return await self.store.purge_key(key)
        vector = await self.embedder.embed(normalise_query(similar_to)) if similar_to is not None else None
        return await self.store.purge(scope_filter(dict(tags)), vector=vector, threshold=threshold)

    async def stats(self) -> dict[str, Any]:
        return {"entries": await self.store.count(), "partitions": len(await self.store.partitions()),
                "l1_entries": len(self.l1), "l1_bytes": self.l1.bytes,
                "store": "degraded" if self.degraded else "ok"}

    async def drain(self) -> None:
        """Wait for background stores (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def answer_text(answer: Mapping[str, Any]) -> str:
    choices = answer.get("choices") or [{}]
    first = choices[0]
    return str((first.get("message") or {}).get("content") or first.get("text") or "")
