"""Verification off the request path (cache/background_judge.py) and verdicts shared through Redis
(cache/verdicts.py), on the real store, embedder and verifier. The judge is a fake: it stands for the
served model's verdict, which is what these tests inject."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np

from cache import metrics
from cache.adaptive import unpack
from cache.background_judge import BackgroundJudge, JudgeJob
from cache.config import CacheConfig, RedisConfig
from cache.decision import build_rule
from cache.embedder import MicroBatcher
from cache.policy import CacheControl, Caller
from cache.service import CacheService
from cache.store import CacheStore

CALLER = Caller("t")

CACHED = "How do I learn Python quickly?"
THIRD = "What's the quickest way to learn Python?"
ASKED = "What is the fastest way to learn Python?"  # near CACHED, below a 0.99 verifier threshold


def chat(q: str) -> dict[str, Any]:
    return {"model": "smollm2", "temperature": 0, "messages": [{"role": "user", "content": q}]}


def answer(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def content(a: dict[str, Any]) -> str:
    return str(a["choices"][0]["message"]["content"])


class FakeJudge:
    """The served model's verdict, injected: log P(yes) - log P(no) (> 0 is a yes)."""

    def __init__(self, verdict: float | None, gate: asyncio.Event | None = None) -> None:
        self.verdict = verdict
        self.gate = gate
        self.calls: list[tuple[str, str, str]] = []

    async def __call__(self, model: str, cached: str, asked: str) -> float | None:
        self.calls.append((model, cached, asked))
        if self.gate is not None:
            await self.gate.wait()
        return self.verdict


def service(redis_url: str, embedder: Any, prefix: str, *, adaptive: bool = False,
            judge: dict[str, Any] | None = None) -> CacheService:
    cfg = CacheConfig.model_validate({
        "l1_max_bytes": 0, "lookup_deadline_ms": 30000,  # a shared machine: no lookup gives up here
        "namespaces": {"default": {"threshold": 0.7, "verifier_threshold": 0.99, "adaptive": adaptive}},
        "decision": {"judge": {"background": True, "min_score": 0.3, "timeout_ms": 2000, **(judge or {})}},
    })
    store = CacheStore(RedisConfig(url=redis_url, index_prefix=prefix, store_timeout_ms=5000), embedder.dim)
    return CacheService(cfg, store, MicroBatcher(embedder), build_rule(cfg.decision), budget_ms=2000,
                        retry_after_s=1)


async def cached_then_asked(svc: CacheService, fresh: str) -> Any:
    """CACHED stored with "Answer A"; ASKED looked up (a miss with a near candidate) and its fresh
    answer handed to the store step, as the gateway does after the response; returns that lookup."""
    assert await svc.connect()
    plan_a = svc.plan("chat", chat(CACHED), CALLER, CacheControl(), None)
    assert await svc._store(plan_a, answer("Answer A"), None)
    plan_b = svc.plan("chat", chat(ASKED), CALLER, CacheControl(), None)
    found = await svc.lookup(plan_b)
    assert found.hit is None and found.near is not None
    assert 0.3 <= found.near.score < 0.99
    svc.store_later(plan_b, answer(fresh), found)
    return found


async def test_a_yes_stores_the_new_question_as_an_alias_so_its_next_ask_hits(redis_url: str, embedder: Any) -> None:
    svc = service(redis_url, embedder, f"bj{uuid.uuid4().hex[:8]}")
    judge = svc.judge = FakeJudge(4.0)
    try:
        found = await cached_then_asked(svc, "Answer B")
        await svc.drain()
        assert judge.calls == [("smollm2", found.near.candidate.query, svc.plan("chat", chat(ASKED), CALLER,
                                                                                  CacheControl(), None).query)]
        plan = svc.plan("chat", chat(ASKED), CALLER, CacheControl(), None)
        again = await svc.lookup(plan)
        assert again.hit is not None and content(again.hit.answer) == "Answer A"  # the vetted answer
        alias = svc.store.key(svc.store.entry_id(svc._tags(plan), plan.exact_key))
        raw = await svc.store.redis.hgetall(alias)
        assert raw[b"alias_of"].decode() == found.near.candidate.entry_id
        target_ttl = await svc.store.redis.pttl(svc.store.key(found.near.candidate.entry_id))
        assert 0 < await svc.store.redis.pttl(alias) <= target_ttl  # it expires with the entry it copies
        # the yes is a verdict on the cached entry, shared through Redis
        target = await svc.store.redis.hget(svc.store.key(found.near.candidate.entry_id), "verdicts")
        assert [v.correct for v in unpack(target)] == [True]
    finally:
        await svc.aclose()


async def test_an_answer_that_comes_before_the_verifier_decided_still_gets_its_near_candidate_judged(
        redis_url: str, embedder: Any) -> None:
    """The gateway starts a miss's upstream call as the semantic stage begins, so on a busy machine
    the answer can arrive while the verifier still runs: its store waits for the lookup to end and
    then hands the near candidate to the judge, as it does when the lookup ends first."""
    svc = service(redis_url, embedder, f"bj{uuid.uuid4().hex[:8]}")
    judge = svc.judge = FakeJudge(4.0)
    try:
        assert await svc.connect()
        assert await svc._store(svc.plan("chat", chat(CACHED), CALLER, CacheControl(), None), answer("Answer A"), None)
        plan = svc.plan("chat", chat(ASKED), CALLER, CacheControl(), None)
        running = svc.new_lookup()
        task = asyncio.create_task(svc.lookup(plan, into=running))
        await asyncio.sleep(0)  # the lookup has started; nothing is embedded or decided yet
        assert running.finished is not None and not running.finished.is_set() and running.near is None
        svc.store_later(plan, answer("Answer B"), running)  # the upstream answer, first
        found = await task
        await svc.drain()
        assert found.hit is None and found.near is not None
        assert judge.calls == [("smollm2", found.near.candidate.query, plan.query)]
        again = await svc.lookup(plan)
        assert again.hit is not None and content(again.hit.answer) == "Answer A"  # the judge's yes: an alias
    finally:
        await svc.aclose()


async def test_a_no_leaves_the_fresh_answer_and_records_a_wrong_verdict(redis_url: str, embedder: Any) -> None:
    svc = service(redis_url, embedder, f"bj{uuid.uuid4().hex[:8]}")
    svc.judge = FakeJudge(-3.0)
    try:
        found = await cached_then_asked(svc, "Answer B")
        await svc.drain()
        plan = svc.plan("chat", chat(ASKED), CALLER, CacheControl(), None)
        again = await svc.lookup(plan)
        assert again.hit is not None and content(again.hit.answer) == "Answer B"
        assert not await svc.store.redis.hexists(svc.store.key(svc.store.entry_id(svc._tags(plan), plan.exact_key)),
                                                 "alias_of")
        target = await svc.store.redis.hget(svc.store.key(found.near.candidate.entry_id), "verdicts")
        assert [v.correct for v in unpack(target)] == [False]
    finally:
        await svc.aclose()


async def test_lookups_never_wait_for_the_judge(redis_url: str, embedder: Any) -> None:
    """A judge that has not answered yet holds up no lookup; it gives up after its timeout."""
    svc = service(redis_url, embedder, f"bj{uuid.uuid4().hex[:8]}", judge={"timeout_ms": 300})
    gate = asyncio.Event()
    judge = svc.judge = FakeJudge(4.0, gate)
    errors = metrics.BACKGROUND_JUDGE.labels("error")._value.get()
    try:
        await cached_then_asked(svc, "Answer B")
        while not judge.calls:  # the store ran and the judge has the pair
            await asyncio.sleep(0.01)
        found = await asyncio.wait_for(svc.lookup(svc.plan("chat", chat(ASKED), CALLER, CacheControl(), None)), 5)
        assert found.hit is not None and content(found.hit.answer) == "Answer B"  # no alias yet
        await svc.drain()  # the judge times out: no alias, counted
        assert metrics.BACKGROUND_JUDGE.labels("error")._value.get() == errors + 1
        again = await svc.lookup(svc.plan("chat", chat(ASKED), CALLER, CacheControl(), None))
        assert again.hit is not None and content(again.hit.answer) == "Answer B"
    finally:
        gate.set()
        await svc.aclose()


async def test_the_queue_is_bounded() -> None:
    gate = asyncio.Event()
    judge = FakeJudge(1.0, gate)
    aliased: list[str] = []

    async def alias(job: JudgeJob) -> bool:
        aliased.append(job.alias_id)
        return True

    bj = BackgroundJudge(judge, alias, None, max_pending=1, concurrency=1, timeout_ms=5000)
    dropped = metrics.BACKGROUND_JUDGE.labels("dropped")._value.get()
    job = JudgeJob("m", "a", "b", "p:t", "p:x", np.zeros(3, dtype=np.float32), 0.6, 60)
    assert bj.submit(job)
    await asyncio.sleep(0.01)  # the worker takes the first
    assert bj.submit(job)  # one waits
    assert not bj.submit(job)  # the next is dropped, not queued without bound
    assert metrics.BACKGROUND_JUDGE.labels("dropped")._value.get() == dropped + 1
    gate.set()
    await bj.join()
    assert aliased == ["p:x", "p:x"]
    await bj.aclose()


async def test_replicas_share_verdicts_and_the_learned_rule_serves_below_the_static_threshold(
        redis_url: str, embedder: Any) -> None:
    prefix = f"ad{uuid.uuid4().hex[:8]}"
    a = service(redis_url, embedder, prefix, adaptive=True, judge={"background": False})
    b = service(redis_url, embedder, prefix, adaptive=True, judge={"background": False})
    try:
        found = await cached_then_asked(a, "Answer A")  # the fresh answer agrees with the cached one
        await a.drain()
        entry = found.near.candidate.entry_id
        scope = a.verdicts.scope_of(entry)
        assert [v.correct for v in unpack(await a.store.redis.hget(a.store.key(entry), "verdicts"))] == [True]
        # more verdicts in this neighbourhood, written by replica a: right above 0.3, wrong below
        rng = np.random.default_rng(0)
        neighbour = f"{scope}:another-entry"
        for s in rng.random(60):
            await a.verdicts.record(neighbour, float(s), bool(s > 0.3), ttl_s=60, source="answers")
        assert await b.connect()
        await b.verdicts._refresh(scope)
        assert len(b.verdicts.learner.verdicts(scope)) == 61
        b.verdicts.learner.explore = 0.0
        for s in rng.random(200):  # b's recent traffic: the budget is spent over it
            b.verdicts.learner._window(scope)
            b.verdicts.learner._scores[scope].append(float(s))
        plan = b.plan("chat", chat(THIRD), CALLER, CacheControl(), None)
        hit = (await b.lookup(plan)).hit
        assert hit is not None and hit.layer == "semantic" and content(hit.answer) == "Answer A"
        assert hit.score is not None and hit.score < 0.99  # the static threshold would have missed
        # the entry's own verdicts, returned with the KNN reply, override the neighbourhood's
        for _ in range(8):
            await a.verdicts.record(hit.entry_id, hit.score, False, ttl_s=60, source="answers")
        again = (await b.lookup(plan)).hit
        assert again is None or again.entry_id != hit.entry_id
    finally:
        await a.aclose()
        await b.aclose()

