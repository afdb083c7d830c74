"""Requests and tokens per minute per tenant (API key), counted in Redis so every gateway replica
enforces one shared limit: the limit does not grow with the autoscaler.

Fixed one-minute windows aligned to the clock (every replica agrees on the window from its own clock):
a request is admitted while the tenant's requests in this window are below ``requests_per_minute`` and
its upstream tokens below ``tokens_per_minute``; otherwise 429 with Retry-After until the window ends.
Tokens are charged after a generation from its usage (prompt + completion), so one request can take a
tenant past its token limit; the next is refused. Cache hits and another replica's shared generation
cost no tokens. Fails open: Redis down or slow admits every request (and is skipped for
``redis.retry_after_s`` after a failure), since a dead limiter must not take the API down with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from cache.breaker import CircuitBreaker, State
from serving import metrics
from serving.config import RateLimitConfig, TenantRates
from serving.protocol import OpenAIError

log = logging.getLogger("cachestack")
WINDOW_S = 60

# Both counters of one tenant and window share a hash tag (one Cluster slot).
_ADMIT = """
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) >= 0 and r >= tonumber(ARGV[1]) then return 1 end
if tonumber(ARGV[2]) >= 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2]) then return 2 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 0
"""


class RateLimiter:
    def __init__(self, client: Redis | RedisCluster, prefix: str, cfg: RateLimitConfig, *, timeout_s: float,
                 breaker: CircuitBreaker, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.prefix = prefix
        self.cfg = cfg
        self.timeout_s = timeout_s
        self.breaker = breaker
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def rates(self, tenant: str) -> TenantRates:
        return self.cfg.tenants.get(tenant, self.cfg.default)

    def _keys(self, tenant: str, window: int) -> tuple[str, str]:
        tag = hashlib.sha256(tenant.encode()).hexdigest()[:16]
        return f"{self.prefix}:rate:{{{tag}}}:{window}:requests", f"{self.prefix}:rate:{{{tag}}}:{window}:tokens"

    async def admit(self, tenant: str) -> None:
        """Count one request; raise the OpenAI-shaped 429 when the tenant is over a limit."""
        rates = self.rates(tenant)
        if rates.requests_per_minute is None and rates.tokens_per_minute is None:
            return
        now = self._clock()
        window = int(now // WINDOW_S)
        over = await self._redis(lambda: self.client.eval(
            _ADMIT, 2, *self._keys(tenant, window), _limit(rates.requests_per_minute),
            _limit(rates.tokens_per_minute), WINDOW_S * 2))
        if not over:
            return
        what = "requests" if int(over) == 1 else "tokens"
        limit = rates.requests_per_minute if what == "requests" else rates.tokens_per_minute
        metrics.RATE_LIMITED.labels(what).inc()
        retry_after = max(1, math.ceil((window + 1) * WINDOW_S - now))
        raise OpenAIError(429, f"rate limit reached for this API key: {limit} {what} per minute; "
                          f"retry after {retry_after} s", "rate_limit_error", code="rate_limit_exceeded",
                          headers={"retry-after": str(retry_after)})

    def charge(self, tenant: str, tokens: int) -> None:
        """Add a generation's tokens to the tenant's window, in the background."""
        if tokens <= 0 or self.rates(tenant).tokens_per_minute is None:
            return
        key = self._keys(tenant, int(self._clock() // WINDOW_S))[1]

        async def incr() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.incrby(key, tokens)
                pipe.expire(key, WINDOW_S * 2)
                await pipe.execute()

        task = asyncio.get_running_loop().create_task(self._redis(incr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _redis(self, call: Callable[[], Awaitable[object]]) -> object:
        """One Redis round trip within ``timeout_s``; None (admit) when Redis is skipped or fails."""
        if self.breaker.state is State.OPEN:
            metrics.RATE_LIMIT_SKIPPED.inc()
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            metrics.RATE_LIMIT_SKIPPED.inc()
            if isinstance(exc, TimeoutError) and not self.breaker.timeout():
                return None
            if self.breaker.state is not State.OPEN:
                log.warning("rate limits not enforced for %.1fs: Redis failed (%s)", self.breaker.retry_after_s,
                            type(exc).__name__)
            self.breaker.trip(type(exc).__name__)
            return None
        self.breaker.check_passed()
        return result

    async def aclose(self) -> None:
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.client.aclose()


def _limit(value: int | None) -> int:
    return -1 if value is None else value
