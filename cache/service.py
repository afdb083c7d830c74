"""Lookup and store orchestration: the request flow's steps 3-7, without HTTP.

Fails open. The whole lookup has one deadline (``lookup_deadline_ms``); inside it every Redis round
trip has the lookup budget, and the semantic stage is skipped when its CPU queue is full. Only Redis
round trips feed the store's circuit breaker (cache/breaker.py): an error opens it at once, so a dead
Redis costs a few budgets, not one per request; consecutive timeouts start a check that runs PING in a
thread, so a busy event loop (which overruns budgets on a healthy Redis) can never switch the cache
off. Readiness probes run the same check without ever opening the breaker.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redisvl.exceptions import RedisVLError

from cache import metrics
from cache.background_judge import BackgroundJudge, JudgeJob
from cache.batching import Batcher, Busy, Unavailable
from cache.breaker import CircuitBreaker, State
from cache.config import CacheConfig
from cache.decision import Candidate, Decision, DecisionRule, RuleSettings, decide_each, resolve_settings
from cache.embedder import MicroBatcher
from cache.invalidation import PurgeWatch
from cache.shared_counts import SharedCounts
from cache.keys import normalise_query
from cache.l1 import L1Cache
from cache.policy import CacheControl, CachePlan, Caller, make_plan
from cache.store import CacheStore, Neighbour, decode_answer
from cache.verdicts import VerdictBook, answers_agree

log = logging.getLogger("cachestack.cache")
T = TypeVar("T")
Judge = Callable[[str, str, str], Awaitable[float | None]]
STORE_ERRORS = (RedisError, RedisVLError, OSError, asyncio.TimeoutError)
# reasons of a decision on a candidate past the floor and the guards, scored by the rule
_SCORED = ("same query", "verified", "confident", "verifier rejected", "cosine", "cosine + guards")


def timed_out(exc: BaseException | None) -> bool:
    """Whether a failed call ran out of time rather than failing: our budget, redis-py's own socket
    timeout (on a saturated loop it fires together with ours), a wait for a free pooled connection,
    or any of these wrapped by redisvl. Such failures say nothing certain about Redis."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (TimeoutError, RedisTimeoutError)):
            return True
        if isinstance(exc, RedisConnectionError) and "no connection available" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: dict[str, Any]
    layer: str  # "exact" or "semantic"
    similarity: float | None
    age_s: float
    entry_id: str
    store: str = "redis"  # "l1" (this process's LRU) or "redis": which store answered
    score: float | None = None  # the rule's score of a semantic hit (its verdict's x)


@dataclass(frozen=True, slots=True)
class Near:
    """A miss's candidate that passed the floor and the guards: its later verdict is about it."""

    candidate: Neighbour
    score: float


@dataclass(slots=True)
class Lookup:
    """The outcome of a lookup; a miss keeps the query embedding so the store need not redo it.

    Filled in as the lookup goes (the embedding as soon as it exists), so a caller that stopped
    waiting for the lookup still finds the embedding here when it stores the answer. A miss also
    keeps its near candidate, which the store step judges (or compares with the fresh answer), and
    the purge generation seen before the answer was generated (:meth:`CacheService.new_lookup`).
    ``finished`` is set when a running lookup ends: a miss's upstream answer can arrive before the
    verifier has named the near candidate, and its store waits for it (in the background)."""

    hit: CacheHit | None = None
    embedding: np.ndarray | None = None
    near: Near | None = None
    generation: int | None = None
    finished: asyncio.Event | None = None  # None: no lookup was started for this request


class CacheService:
    def __init__(self, cfg: CacheConfig, store: CacheStore, embedder: MicroBatcher, rule: DecisionRule, *,
                 budget_ms: float, retry_after_s: float,
                 judge: Judge | None = None, trip_after_timeouts: int = 1,
                 model_label: Callable[[str], str] | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.embedder = embedder
        self.rule = rule
        self.judge = judge  # (model, cached query, new query) -> verdict; used when decision.judge.enabled
        # The metric label of a model: the gateway passes its catalog's (served models, else "other"),
        # so a client-chosen name never becomes a time series.
        self.model_label = model_label or (lambda model: model if model in cfg.prices else "other")
        # concurrent lookups share one verifier run (one ONNX batch), off the event loop
        self._decider: Batcher[tuple[str, list[Candidate], RuleSettings], Decision] = Batcher(
            lambda items: decide_each(self.rule, items), name="verify", max_batch=cfg.decision.max_batch,
            max_waiting=cfg.semantic_max_queue)
        self.budget_s = budget_ms / 1000.0
        self.deadline_s = cfg.lookup_deadline_ms / 1000.0
        self.breaker = CircuitBreaker(retry_after_s=retry_after_s, trip_after_timeouts=trip_after_timeouts)
        self._check: asyncio.Task[bool] | None = None  # the one running breaker check (see _confirm)
        self._ready_error: str | None = None
        rc = cfg.replicas
        self.l1 = L1Cache(cfg.l1_max_bytes, rc.l1_max_age_s)
        self.watch = PurgeWatch(
            Redis.from_url(store.cfg.url, password=store.cfg.password(),
                           socket_connect_timeout=store.cfg.store_timeout_ms / 1000.0), store.redis,
            generation_key=store.generation_key, channel=store.purge_channel, on_purge=self.l1.clear,
            heartbeat_s=rc.heartbeat_ms / 1000.0, max_silence_s=rc.max_silence_ms / 1000.0)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: dict[str, int] = {"store": 0, "shadow": 0}
        self.counts = SharedCounts(store.redis, store.cfg.index_prefix, flush_s=rc.stats_flush_s,
                                   timeout_s=store.cfg.store_timeout_ms / 1000.0, on_flush=_shadow_rates)
        self.verdicts = VerdictBook(store, cosine_scores=getattr(rule, "verifier", None) is None,
                                    timeout_s=store.cfg.store_timeout_ms / 1000.0)
        self._background_judge: BackgroundJudge | None = None
        # partitions of any other (namespace, version) are retired: at start and on each new index
        store.set_live_versions({name: ns.version for name, ns in cfg.namespaces.items()})
        metrics.REDIS_UP.set(1)

    # -- the store's health --------------------------------------------------------------------
    @property
    def degraded(self) -> bool:
        return self.breaker.state is State.OPEN

    @property
    def last_error(self) -> str | None:
        return self.breaker.last_error or self._ready_error

    def _failed(self, exc: BaseException, op: str) -> None:
        """A Redis round trip failed. An error opens the breaker; a timeout only counts, and enough
        of them in a row start a check (a saturated event loop overruns budgets on a healthy Redis)."""
        metrics.BYPASSES.labels(f"{op}_error").inc()
        if timed_out(exc):
            if self.breaker.timeout():
                self._start_check()
            return
        self._trip(f"{op}: {type(exc).__name__}", "error")

    def _trip(self, reason: str, cause: str) -> None:
        self.breaker.trip(reason)
        metrics.STORE_TRIPS.labels(cause).inc()
        metrics.REDIS_UP.set(0)
        log.warning("cache store failed (%s); skipping it for %.1fs", reason, self.breaker.retry_after_s)

    def _passed(self) -> None:
        self.store.forget_partitions()  # Redis may have restarted empty: recreate indexes on write
        if self.breaker.check_passed():
            metrics.REDIS_UP.set(1)
            log.info("cache store reachable again")

    async def _probe(self) -> str | None:
        """PING and FT._LIST in a thread, within the store timeout; the failure, or None."""
        try:
            await asyncio.to_thread(self.store.probe)
        except STORE_ERRORS as exc:
            return f"check: {type(exc).__name__}"
        return None

    def _start_check(self) -> asyncio.Task[bool]:
        if self._check is None:
            self._check = asyncio.get_running_loop().create_task(self._run_check())
            self._tasks.add(self._check)
            self._check.add_done_callback(self._tasks.discard)
        return self._check

    async def _run_check(self) -> bool:
        try:
            failure = await self._probe()
        finally:
            self._check = None
        if failure is None:
            self._passed()
            return True
        self._trip(failure, "check")
        return False

    async def _usable(self) -> bool:
        """May this call use the store? Half-open: every caller waits for the one shared check."""
        state = self.breaker.state
        if state is State.CLOSED:
            return True
        if state is State.OPEN:
            return False
        return await asyncio.shield(self._start_check())  # a lookup's deadline leaves the check running

    async def connect(self) -> bool:
        """The first check, at start: a store that does not answer is skipped until it does. Starts
        listening for purges (cache/invalidation.py), and in the background drops the partitions of
        namespace versions the config no longer has."""
        ok = await self._start_check()
        self.counts.start()
        if ok:
            await self.watch.start(self.store.cfg.store_timeout_ms / 1000.0)
            # not one of the capped background stores: it must not take an answer's place
            task = asyncio.get_running_loop().create_task(self._retire())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            await self.watch.start(0)
        return ok

    async def _retire(self) -> None:
        try:
            retired = await self.store.retire()
        except STORE_ERRORS as exc:  # the next start, or the next new index, tries again
            log.warning("retiring old cache partitions failed: %s", type(exc).__name__)
            return
        if retired:
            log.info("retired %d cache partitions of old namespace versions", len(retired))

    def new_lookup(self) -> Lookup:
        """A lookup record for one request, holding the purge generation seen now, before its answer
        is generated: its store is refused if a purge comes in between."""
        return Lookup(generation=self.watch.generation)

    async def ready(self) -> bool:
        """Readiness: does the store answer? Never opens the breaker (a probe must not switch the
        cache off); a store that answers closes it early."""
        failure = await self._probe()
        self._ready_error = failure
        if failure is None:
            self._passed()
        return failure is None

    # -- policy ------------------------------------------------------------------------------
    def plan(self, kind: str, body: Mapping[str, Any], caller: Caller, cache_control: CacheControl,
             namespace: str | None) -> CachePlan:
        plan = make_plan(self.cfg, kind, body, caller, cache_control, namespace)
        if not plan.lookup and not plan.store:
            metrics.REQUESTS.labels("BYPASS", "none", plan.namespace).inc()
        return plan

    # -- lookup ------------------------------------------------------------------------------
    async def lookup(self, plan: CachePlan, on_semantic: Callable[[], None] | None = None,
                     into: Lookup | None = None) -> Lookup:
        """Exact tiers, then the semantic one, all within ``lookup_deadline_ms``; ``on_semantic`` is
        called as the semantic stage starts (the gateway starts its upstream call there, so a miss
        does not wait for the lookup). ``into`` is filled in as the lookup goes and returned."""
        started = time.perf_counter()
        result = into if into is not None else self.new_lookup()
        result.finished = asyncio.Event()
        deadline = asyncio.timeout(self.deadline_s)
        try:
            async with deadline:
                await self._lookup(plan, on_semantic, result)
        except TimeoutError:
            if not deadline.expired():
                raise
            metrics.BYPASSES.labels("deadline").inc()  # a miss for this request; the breaker never hears of it
        finally:
            outcome = "HIT" if result.hit else "MISS"
            metrics.LOOKUP_SECONDS.labels(outcome).observe(time.perf_counter() - started)
            layer = result.hit.layer if result.hit else ("semantic" if plan.semantic else "exact")
            metrics.REQUESTS.labels(outcome, layer, plan.namespace).inc()
            self.counts.add(f"lookup:{outcome}:{layer}")
            if result.hit:
                self._count_savings(plan.model, result.hit.answer)
            result.finished.set()
        return result

    async def guarded(self, call: Callable[[], Awaitable[T]], stage: str, timeout_s: float | None = None) -> T | None:
        """One store round trip for a cache built on this one (cache/vectors.py), failing open exactly
        like a lookup: None when the store is being skipped, or the call fails or overruns its time
        (``timeout_s``, default the lookup budget)."""
        if not await self._usable():
            metrics.BYPASSES.labels("store_down").inc()
            return None
        t = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s or self.budget_s):
                result = await call()
        except STORE_ERRORS as exc:
            self._failed(exc, "lookup")
            return None
        metrics.STAGE_SECONDS.labels(stage).observe(time.perf_counter() - t)
        self.breaker.call_ok()
        return result

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run background work (a store) like the cache's own stores: capped, timed, drained."""
        self._background_task("store", work)

    def _fresh(self, created: float, plan: CachePlan) -> bool:
        return plan.max_age is None or time.time() - created <= plan.max_age

    async def _redis(self, call: Awaitable[T], stage: str) -> T:
        """One store round trip within the budget. Local CPU work (embedding, the decision rule) runs
        outside it, so a busy gateway is never mistaken for a slow Redis."""
        t = time.perf_counter()
        async with asyncio.timeout(self.budget_s):
            result = await call
        metrics.STAGE_SECONDS.labels(stage).observe(time.perf_counter() - t)
        self.breaker.call_ok()
        return result

    @staticmethod
    def _decoded(blob: bytes, entry_id: str) -> dict[str, Any] | None:
        try:
            return decode_answer(blob)
        except ValueError:  # a damaged entry is one miss, not a reason to doubt the store
            log.warning("cache entry %s holds no readable answer", entry_id)
            return None

    async def _lookup(self, plan: CachePlan, on_semantic: Callable[[], None] | None, found: Lookup) -> None:
        live = self.watch.live()  # the L1 answers only while purges would reach it
        hot = self.l1.get(plan.exact_key) if live else None
        if hot is not None and self._fresh(hot.created, plan):
            found.hit = CacheHit(hot.answer, "exact", None, time.time() - hot.created, plan.exact_key, "l1")
            return
        if not await self._usable():
            metrics.BYPASSES.labels("store_down").inc()
            return
        epoch = self.l1.epoch
        try:
            entry = await self._redis(self.store.get(self.store.entry_id(self._tags(plan), plan.exact_key)), "exact")
        except STORE_ERRORS as exc:
            self._failed(exc, "lookup")
            return
        if entry is not None and self._fresh(entry.created, plan):
            answer = self._decoded(entry.blob, plan.exact_key)
            if answer is not None:
                if live:
                    self.l1.put(plan.exact_key, answer, entry.created, plan.settings.ttl_s, epoch)
                found.hit = CacheHit(answer, "exact", None, time.time() - entry.created, plan.exact_key)
                return
        if not plan.semantic:
            return

        if on_semantic is not None:
            on_semantic()
        t = time.perf_counter()
        try:
            found.embedding = await self.embedder.embed(plan.query, bounded=True)
        except Busy:  # a backlog: exact tiers only for this request
            return
        except Unavailable:  # a remote embedder failing or too slow (cache/vllm_encoder.py): the same
            metrics.BYPASSES.labels("embed_unavailable").inc()
            return
        metrics.STAGE_SECONDS.labels("embed").observe(time.perf_counter() - t)
        try:
            neighbours = await self._redis(
                self.store.knn(found.embedding, self._tags(plan), self.cfg.decision.top_k, large=plan.head), "knn")
        except STORE_ERRORS as exc:
            self._failed(exc, "lookup")
            return
        neighbours = [n for n in neighbours if self._fresh(n.created, plan)]
        if not neighbours:
            return
        metrics.SIMILARITY.labels(plan.namespace).observe(neighbours[0].similarity)
        t = time.perf_counter()
        try:
            decision = await self._decide(plan, neighbours)
        except Busy:
            return
        metrics.STAGE_SECONDS.labels("decision").observe(time.perf_counter() - t)
        if decision is None:
            return
        chosen, score, hit = decision
        if not hit:
            found.near = Near(chosen, score)
            return
        answer = self._decoded(chosen.blob, chosen.entry_id)
        if answer is not None:
            found.hit = CacheHit(answer, "semantic", chosen.similarity, time.time() - chosen.created,
                                 chosen.entry_id, score=score)

    async def _decide(self, plan: CachePlan, neighbours: list[Neighbour]) -> tuple[Neighbour, float, bool] | None:
        """(candidate, score, hit), or None without a candidate past the floor and the guards.

        With ``adaptive`` on, a candidate past the guards is served by the learned rule
        (cache/verdicts.py) once its entry or partition has verdicts; the static verifier threshold
        decides before that."""
        ns = plan.settings
        settings = resolve_settings(
            self.rule,
            ns.threshold if ns.threshold is not None else self.cfg.decision.threshold,
            ns.verifier_threshold if ns.verifier_threshold is not None else self.cfg.decision.verifier_threshold,
            ns.confident_gate if ns.confident_gate is not None else self.cfg.decision.confident_gate,
        )
        candidates = [Candidate(n.entry_id, n.query, n.similarity) for n in neighbours]
        decision = await self._decider.submit((plan.query, candidates, settings), bounded=True)
        if decision.candidate is None or decision.reason not in _SCORED:
            return None
        chosen = next(n for n in neighbours if n.entry_id == decision.candidate.entry_id)
        if ns.adaptive and decision.reason != "same query":
            served = self.verdicts.decide(chosen, decision.score, ns.max_false_hit_rate)
            if served is not None:
                return chosen, decision.score, served
        if not decision.hit:
            j = self.cfg.decision.judge
            if not (j.enabled and self.judge is not None and decision.reason == "verifier rejected"
                    and decision.score >= j.min_score):
                return chosen, decision.score, False
            if not await self._judged_same(plan, decision.candidate.query, j.model, j.timeout_ms):
                return chosen, decision.score, False
        return chosen, decision.score, True

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

    def _count_savings(self, model: str, answer: dict[str, Any]) -> None:
        usage = answer.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)  # chat's, or Responses'
        completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        label = self.model_label(model)
        metrics.TOKENS_SAVED.labels("prompt", label).inc(prompt)
        metrics.TOKENS_SAVED.labels("completion", label).inc(completion)
        price = self.cfg.prices.get(model)
        if price is not None:
            metrics.MONEY_SAVED.labels(model).inc(
                prompt / 1000 * price.prompt_per_1k + completion / 1000 * price.completion_per_1k)

    @staticmethod
    def _tags(plan: CachePlan) -> dict[str, str]:
        return {"scope": plan.scope, "fingerprint": plan.fingerprint, "model": plan.model,
                "version": plan.settings.version, "namespace": plan.namespace}

    # -- background work ---------------------------------------------------------------------
    def _background_task(self, kind: str, work: Coroutine[Any, Any, None]) -> bool:
        """Run ``work`` after the response, if fewer than the configured number of its kind are in
        flight, and for at most ``background.timeout_s``; False (and counted) if it was dropped."""
        bg = self.cfg.background
        if self._background[kind] >= (bg.max_stores if kind == "store" else bg.max_shadows):
            work.close()
            metrics.BYPASSES.labels(f"{kind}_backlog").inc()
            return False

        async def bounded() -> None:
            try:
                async with asyncio.timeout(bg.timeout_s):
                    await work
            except TimeoutError:
                metrics.BYPASSES.labels(f"{kind}_timeout").inc()
            finally:
                self._background[kind] -= 1

        self._background[kind] += 1
        task = asyncio.get_running_loop().create_task(bounded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    # -- store -------------------------------------------------------------------------------
    def store_later(self, plan: CachePlan, answer: dict[str, Any], lookup: Lookup | None = None) -> None:
        """Write a complete answer in the background: the response never waits for the cache. Then a
        miss's near candidate gets its verdict (:meth:`_learn_from_miss`). ``lookup``: this request's
        (its embedding, near candidate and the purge generation seen before the answer was
        generated); None: none ran, the generation is now's."""
        if plan.store and not self._background_task("store", self._store_and_learn(plan, answer, lookup)):
            metrics.STORES.labels(plan.namespace, "dropped").inc()

    async def _store_and_learn(self, plan: CachePlan, answer: dict[str, Any], lookup: Lookup | None) -> None:
        if lookup is None:
            await self._store(plan, answer, None)
            return
        if lookup.finished is not None:  # bounded by the lookup's own deadline
            await lookup.finished.wait()
        embedding, near = lookup.embedding, lookup.near
        if await self._store(plan, answer, embedding, lookup.generation) and near is not None and embedding is not None:
            await self._learn_from_miss(plan, answer, embedding, near)

    async def _learn_from_miss(self, plan: CachePlan, answer: dict[str, Any], embedding: np.ndarray,
                               near: Near) -> None:
        """A stored miss with a candidate past the guards: just below the threshold, the background
        judge gets the pair (cache/background_judge.py); otherwise, with ``adaptive`` on, the fresh
        answer compared with the candidate's is the verdict (vCache's exploration)."""
        j = self.cfg.decision.judge
        vthr = next((t for t in (plan.settings.verifier_threshold, self.cfg.decision.verifier_threshold,
                                 getattr(self.rule, "default_verifier_threshold", None)) if t is not None), 1.0)
        if j.background and self.judge is not None and j.min_score <= near.score < vthr:
            self._judge_queue().submit(JudgeJob(
                model=j.model or plan.model, cached_query=near.candidate.query, query=plan.query,
                target_id=near.candidate.entry_id, alias_id=self.store.entry_id(self._tags(plan), plan.exact_key),
                embedding=embedding, score=near.score, ttl_s=plan.settings.ttl_s))
            return
        cached = self._decoded(near.candidate.blob, near.candidate.entry_id)
        if plan.settings.adaptive and cached is not None:
            agree = await answers_agree(self.embedder, cached, answer)
            if agree is not None:
                await self.verdicts.record(near.candidate.entry_id, near.score, agree, ttl_s=plan.settings.ttl_s,
                                           source="answers")

    def _judge_queue(self) -> BackgroundJudge:
        if self._background_judge is None:
            assert self.judge is not None
            j = self.cfg.decision.judge

            async def alias(job: JudgeJob) -> bool:
                async with asyncio.timeout(self.store.cfg.store_timeout_ms / 1000.0):
                    return await self.store.put_alias(job.target_id, job.alias_id, query=job.query,
                                                      embedding=job.embedding)

            async def record(job: JudgeJob, same: bool) -> None:
                await self.verdicts.record(job.target_id, job.score, same, ttl_s=job.ttl_s, source="judge")

            self._background_judge = BackgroundJudge(self.judge, alias, record, max_pending=j.max_pending,
                                                     concurrency=j.concurrency, timeout_ms=j.timeout_ms)
        return self._background_judge

    async def _store(self, plan: CachePlan, answer: dict[str, Any], embedding: np.ndarray | None,
                     generation: int | None = None) -> bool:
        """Write the answer unless a purge was announced after ``generation`` (None: now)."""
        answer = {k: v for k, v in answer.items() if k not in ("id", "created")}
        if generation is None:
            generation = self.watch.generation
        if generation is None:  # not subscribed to purges: a write could resurrect a purged entry
            metrics.STORES.labels(plan.namespace, "unsynced").inc()
            return False
        if len(orjson.dumps(answer)) > self.cfg.max_entry_bytes:
            metrics.STORES.labels(plan.namespace, "too_large").inc()
            return False
        if not await self._usable():
            metrics.STORES.labels(plan.namespace, "skipped").inc()
            return False
        if plan.semantic and embedding is None:
            try:
                embedding = await self.embedder.embed(plan.query, bounded=True)
            except Unavailable:  # a backlog or a failing remote embedder: stored for exact hits only
                metrics.STORES.labels(plan.namespace, "exact_only").inc()
        try:
            t = time.perf_counter()
            async with asyncio.timeout(self.store.cfg.store_timeout_ms / 1000.0):
                written = await self.store.put(self.store.entry_id(self._tags(plan), plan.exact_key), answer=answer,
                                               query=plan.query,
                                               embedding=embedding if plan.semantic else None,
                                               tags={**self._tags(plan), **_owner(plan)},
                                               ttl_s=plan.settings.ttl_s, generation=generation)
            metrics.STAGE_SECONDS.labels("store").observe(time.perf_counter() - t)
        except STORE_ERRORS as exc:
            metrics.STORES.labels(plan.namespace, "error").inc()
            self._failed(exc, "store")
            return False
        self.breaker.call_ok()
        if not written:
            metrics.STORES.labels(plan.namespace, "purged").inc()
            return False
        metrics.STORES.labels(plan.namespace, "stored").inc()
        self.counts.add("stored")
        return True

    # -- shadow mode -------------------------------------------------------------------------
    def maybe_shadow(self, plan: CachePlan, hit: CacheHit, fresh: Callable[[], Awaitable[dict[str, Any] | None]],
                     agree_threshold: float = 0.8) -> None:
        """For a sampled share of semantic hits, compare the cached answer with a fresh one."""
        if hit.layer != "semantic" or random.random() >= plan.settings.shadow_rate:
            return
        self._background_task("shadow", self._shadow(plan, hit, fresh, agree_threshold))

    async def _shadow(self, plan: CachePlan, hit: CacheHit,
                      fresh: Callable[[], Awaitable[dict[str, Any] | None]], agree_threshold: float) -> None:
        try:
            answer = await fresh()
        except Exception as exc:  # a failed shadow call says nothing about the cache
            log.info("shadow check skipped: %s", type(exc).__name__)
            return
        if answer is None:
            return
        agree = await answers_agree(self.embedder, hit.answer, answer, agree_threshold)
        if agree is None:
            return
        if plan.settings.adaptive and hit.score is not None:
            await self.verdicts.record(hit.entry_id, hit.score, agree, ttl_s=plan.settings.ttl_s, source="answers")
        metrics.SHADOW.labels(plan.namespace, str(agree).lower()).inc()
        # the false-hit estimate is the fleet's: the gauge is set from the shared totals at each flush
        self.counts.add(f"shadow:{plan.namespace}:{'agree' if agree else 'disagree'}")

    # -- invalidation ------------------------------------------------------------------------
    async def purge(self, *, tags: Mapping[str, str], key: str | None = None, similar_to: str | None = None,
                    threshold: float | None = None) -> int:
        """Delete entries by tags, by exact key, or near a text. Announced first (cache/invalidation.py):
        every replica clears its L1, and stores begun before are refused."""
        await self.watch.announce()
        self.l1.clear()
        if key is not None:
            return await self.store.purge_key(key)
        vector = await self.embedder.embed(normalise_query(similar_to)) if similar_to is not None else None
        return await self.store.purge(dict(tags), vector=vector, threshold=threshold)

    async def stats(self) -> dict[str, Any]:
        """Entries and partitions (in Redis, every replica's), the fleet's counted lookups, stores and
        shadow checks (cache/shared_counts.py), and this replica's L1."""
        totals, replicas = await self.counts.totals()
        lookups = {k.split(":", 1)[1]: v for k, v in totals.items() if k.startswith("lookup:")}
        return {"entries": await self.store.count(), "partitions": len(await self.store.partitions()),
                "store": "degraded" if self.degraded else "ok",
                "fleet": {"replicas": replicas, "lookups": lookups, "stored": totals.get("stored", 0),
                          "shadow": shadow_estimates(totals)},
                "replica": {"l1_entries": len(self.l1), "l1_bytes": self.l1.bytes}}

    async def drain(self) -> None:
        """Wait for background stores, shadow checks, judge runs and breaker checks (shutdown, tests)."""
        while True:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            if self._background_judge is not None:
                await self._background_judge.join()
            if not self._tasks:
                return

    async def aclose(self) -> None:
        """Stop the background judge's workers and close the store (after :meth:`drain`)."""
        if self._background_judge is not None:
            await self._background_judge.aclose()
        await self.watch.aclose()
        await self.counts.aclose()
        await self.store.aclose()


def shadow_estimates(totals: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Per namespace: shadow checks that agreed, disagreed, and the false-hit estimate they give."""
    out: dict[str, dict[str, float]] = {}
    for field, n in totals.items():
        if field.startswith("shadow:"):
            _, ns, verdict = field.split(":", 2)
            out.setdefault(ns, {"agree": 0, "disagree": 0})[verdict] = n
    for counts in out.values():
        counts["false_hit_rate"] = counts["disagree"] / max(1, counts["agree"] + counts["disagree"])
    return out


def _shadow_rates(totals: Mapping[str, int]) -> None:
    for ns, est in shadow_estimates(totals).items():
        metrics.SHADOW_FALSE_HIT_RATE.labels(ns).set(est["false_hit_rate"])


def _owner(plan: CachePlan) -> dict[str, str]:
    """Who an entry belongs to, for purges: the writing tenant, and the end user in a per_user namespace."""
    owner = {"tenant": plan.tenant or ""}
    if plan.end_user:
        owner["user"] = plan.end_user
    return owner

