"""The step after a miss's answer was sent: prompt-token metrics, and storing the answer if it is complete."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cache.policy import CachePlan
from cache.service import CacheService, Lookup
from serving import metrics
from serving.responses_events import storable_response


# "length" is the complete answer for that max_tokens, which is part of the key, so it replays
# exactly; "content_filter", "tool_calls", "abort" and the rest are never stored.
STORABLE_FINISH = frozenset({"stop", "length"})


def storable(answer: dict[str, Any]) -> bool:
    """Whether an answer may be stored: every choice finished with "stop" or "length" (a Responses
    answer: serving/responses_events.py decides)."""
    if storable_response(answer):
        return True
    choices = answer.get("choices") or []
    return bool(choices) and all(c.get("finish_reason") in STORABLE_FINISH for c in choices)


@dataclass(frozen=True, slots=True)
class AfterAnswer:
    """Called with a miss's answer once it was sent (a relayed stream's, once assembled)."""

    cache: CacheService | None
    plan: CachePlan | None
    lookup: Lookup  # filled in by the lookup as it goes; the store waits for it to finish
    charge: Callable[[int], None] | None = None  # the tenant's token rate limit (serving/rate_limits.py)

    def __call__(self, answer: dict[str, Any]) -> None:
        usage = answer.get("usage") or {}
        model = str(answer.get("model") or "unknown")
        prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
        metrics.PROMPT_TOKENS.labels(model).inc(prompt)
        if self.charge is not None:
            self.charge(int(prompt) + int(usage.get("completion_tokens") or usage.get("output_tokens") or 0))
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached = details.get("cached_tokens") or 0
        if cached:
            metrics.CACHED_PROMPT_TOKENS.labels(model).inc(cached)
        if self.cache is not None and self.plan is not None and self.plan.store and storable(answer):
            self.cache.store_later(self.plan, answer, self.lookup)
