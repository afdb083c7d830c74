"""The optional LLM judge: reading its verdict, and how the service uses it on borderline pairs.

The service tests use the real Redis, MiniLM and verifier; the judge itself is a plain async function
here (its real counterpart, the served model, is exercised in tests/e2e/test_cache.py)."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import pytest

from cache.config import CacheConfig, RedisConfig
from cache.decision import build_rule
from cache.embedder import MicroBatcher
from cache.judge import judge_request, judge_verdict
from cache.policy import CacheControl, Caller
from cache.service import CacheService
from cache.store import CacheStore


def completion(top: list[tuple[str, float]]) -> dict[str, Any]:
    return {"choices": [{"logprobs": {"content": [{"token": top[0][0], "logprob": top[0][1],
                                                   "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]}}]}


def test_verdict_is_log_odds_of_yes_over_no() -> None:
    v = judge_verdict(completion([("Yes", math.log(0.6)), ("No", math.log(0.3)), (" yes", math.log(0.05))]))
    assert v == pytest.approx(math.log(0.65 / 0.3))
    assert judge_verdict(completion([("No", -0.1), ("Yes", -2.5)])) < 0
    assert judge_verdict(completion([("yes", -0.1)])) == math.inf
    assert judge_verdict(completion([("no", -0.1)])) == -math.inf


@pytest.mark.parametrize("doc", [{}, {"choices": []}, {"choices": [{"message": {"content": "yes"}}]},
                                 completion([("Maybe", -0.1), ("The", -1.0)])])
def test_no_verdict_without_yes_or_no_logprobs(doc: dict[str, Any]) -> None:
    assert judge_verdict(doc) is None


def test_request_asks_one_token_at_temperature_zero_with_logprobs() -> None:
    body = judge_request("smollm2", "how do i reset my password", "how can i change my password")
    assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["logprobs"] is True
    text = body["messages"][0]["content"]
    assert "how do i reset my password" in text and "how can i change my password" in text


def chat(q: str) -> dict[str, Any]:
    return {"model": "smollm2", "temperature": 0, "messages": [{"role": "user", "content": q}]}


@pytest.fixture
def make_service(redis_url: str, embedder: Any):
    made: list[CacheService] = []

    def make(judge: Any, **judge_cfg: Any) -> CacheService:
        cfg = CacheConfig.model_validate({"lookup_deadline_ms": 5000, "decision": {"threshold": 0.5,
                                                       "judge": {"enabled": True, "min_score": 0.0, **judge_cfg}},
                                          "l1_max_bytes": 0})
        store = CacheStore(RedisConfig(url=redis_url, index_prefix=f"judge{uuid.uuid4().hex[:8]}"), embedder.dim)
        svc = CacheService(cfg, store, MicroBatcher(embedder), build_rule(cfg.decision), budget_ms=200,
                           retry_after_s=1, judge=judge)
        made.append(svc)
        return svc

    yield make


STORED = "What is the capital of France?"
BORDERLINE = "What is the largest city in France?"  # close in cosine, another question: the verifier says no


async def seeded(svc: CacheService) -> None:
    assert await svc.connect()  # subscribes to purges: a service stores only then
    plan = svc.plan("chat", chat(STORED), Caller("t"), CacheControl(), None)
    await svc._store(plan, {"choices": [{"message": {"role": "assistant", "content": "Paris."},
                                         "finish_reason": "stop"}]}, None)


async def test_judge_is_asked_only_about_borderline_pairs_and_its_yes_makes_a_hit(make_service) -> None:
    asked: list[tuple[str, str, str]] = []

    async def yes(model: str, cached: str, new: str) -> float:
        asked.append((model, cached, new))
        return 2.0

    svc = make_service(yes)
    await seeded(svc)
    plan = svc.plan("chat", chat(BORDERLINE), Caller("t"), CacheControl(), None)
    found = await svc.lookup(plan)
    assert found.hit is not None and found.hit.layer == "semantic"
    assert asked == [("smollm2", "what is the capital of france", "what is the largest city in france")]
    # an exact repeat never reaches the judge
    await svc.lookup(svc.plan("chat", chat(STORED), Caller("t"), CacheControl(), None))
    assert len(asked) == 1


@pytest.mark.parametrize("verdict", ["no", "unsure", "raises", "slow"])
async def test_anything_but_a_timely_yes_is_a_miss(make_service, verdict: str) -> None:
    async def judge(model: str, cached: str, new: str) -> float | None:
        if verdict == "raises":
            raise ConnectionError("upstream down")
        if verdict == "slow":
            await asyncio.sleep(5)
        return {"no": -3.0, "unsure": None}.get(verdict, 3.0)

    svc = make_service(judge, timeout_ms=100)
    await seeded(svc)
    plan = svc.plan("chat", chat(BORDERLINE), Caller("t"), CacheControl(), None)
    found = await asyncio.wait_for(svc.lookup(plan), 3)
    assert found.hit is None


async def test_judge_below_min_score_is_not_asked(make_service) -> None:
    asked: list[str] = []

    async def judge(model: str, cached: str, new: str) -> float:
        asked.append(new)
        return 5.0

    svc = make_service(judge, min_score=0.999)
    await seeded(svc)
    found = await svc.lookup(svc.plan("chat", chat(BORDERLINE), Caller("t"), CacheControl(), None))
    assert found.hit is None and asked == []
