"""serving/rate_limits.py on the real Valkey: one shared count per tenant and minute, the OpenAI 429
with Retry-After, tokens charged after the answer, and failing open when Valkey is gone."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from cache.breaker import CircuitBreaker
from serving.config import RateLimitConfig
from serving.protocol import OpenAIError
from serving.rate_limits import RateLimiter


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def limiter(url: str, clock: Clock, **cfg: Any) -> RateLimiter:
    return RateLimiter(Redis.from_url(url, socket_connect_timeout=0.5), f"rl{uuid.uuid4().hex[:8]}",
                       RateLimitConfig.model_validate(cfg), timeout_s=0.5,
                       breaker=CircuitBreaker(retry_after_s=30, trip_after_timeouts=1), clock=clock)


async def test_replicas_share_one_request_count_and_refuse_in_openai_shape(redis_url: str) -> None:
    clock = Clock(6_000_000 * 60 + 45.2)  # 14.8 s before the window ends
    a = limiter(redis_url, clock, default={"requests_per_minute": 3}, tenants={"big": {"requests_per_minute": 5}})
    b = RateLimiter(Redis.from_url(redis_url), a.prefix, a.cfg, timeout_s=0.5, breaker=CircuitBreaker(
        retry_after_s=30, trip_after_timeouts=1), clock=clock)  # another replica, same Redis
    try:
        for svc in (a, b, a):
            await svc.admit("small")
        with pytest.raises(OpenAIError) as refused:
            await b.admit("small")
        err = refused.value
        assert err.status == 429 and err.headers == {"retry-after": "15"}
        body = orjson.loads(err.body())["error"]
        assert body["type"] == "rate_limit_error" and body["code"] == "rate_limit_exceeded"
        assert "3 requests per minute" in body["message"]
        for _ in range(5):  # a tenant of its own limits, counted apart
            await b.admit("big")
        with pytest.raises(OpenAIError):
            await a.admit("big")
        clock.t += 15  # the next window
        await a.admit("small")
    finally:
        await a.aclose()
        await b.aclose()


async def test_tokens_are_charged_after_the_answer_and_refuse_the_next_request(redis_url: str) -> None:
    clock = Clock(6_000_001 * 60 + 1.0)
    rl = limiter(redis_url, clock, default={"tokens_per_minute": 100})
    try:
        await rl.admit("t")
        rl.charge("t", 60)
        await asyncio.gather(*rl._tasks)
        await rl.admit("t")  # 60 < 100: admitted
        rl.charge("t", 60)
        await asyncio.gather(*rl._tasks)
        with pytest.raises(OpenAIError) as refused:
            await rl.admit("t")
        assert "100 tokens per minute" in refused.value.message and refused.value.headers["retry-after"] == "59"
    finally:
        await rl.aclose()


async def test_valkey_down_admits_every_request_and_skips_it_after_the_first_failure(own_valkey: Any) -> None:
    clock = Clock(6_000_002 * 60)
    rl = limiter(own_valkey.url, clock, default={"requests_per_minute": 1})
    try:
        await rl.admit("t")
        with pytest.raises(OpenAIError):
            await rl.admit("t")
        own_valkey.stop(grace_s=1)
        for _ in range(5):
            await rl.admit("t")  # fail open: no 429, no error
        assert rl.breaker.trips == 1  # one failed round trip, then Redis is skipped for retry_after_s
    finally:
        await rl.aclose()


def test_limits_for_a_tenant_auth_does_not_know_are_a_config_error() -> None:
    from serving.auth import Authenticator
    from serving.config import AuthConfig, ConfigError

    auth = Authenticator(AuthConfig(tenants=[{"name": "acme", "key_sha256": ["a" * 64]}]))
    auth.check_rate_limits(["acme"])
    with pytest.raises(ConfigError, match="'acme2'"):
        auth.check_rate_limits(["acme2"])
    Authenticator(AuthConfig()).check_rate_limits(["default"])  # the open scope's one tenant
