"""The optional LLM judge: ask the served model whether two questions want the same answer.

Only for borderline pairs (the verifier rejected them, but with a probability of at least
``judge.min_score``). The question and the reading of the answer live here, with no HTTP: the gateway
sends :func:`judge_request` upstream, ``training/judge_experiment.py`` sends the same request to
measure it. The verdict is log P(yes) - log P(no) of the first answer token (from ``top_logprobs``),
so a model that hedges between the two counts as unsure instead of being read from its greedy text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

PROMPT = ("Do these two questions ask for the same thing, so that one answer fits both?\n"
          "Question 1: {a}\nQuestion 2: {b}\nAnswer with yes or no.")
_YES = {"yes", "y"}
_NO = {"no", "n"}


def judge_request(model: str, cached: str, asked: str) -> dict[str, Any]:
    """The chat request that asks ``model`` for a verdict on (cached query, new query)."""
    return {"model": model, "temperature": 0, "max_tokens": 1, "logprobs": True, "top_logprobs": 20,
            "messages": [{"role": "user", "content": PROMPT.format(a=cached, b=asked)}]}


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def judge_verdict(response: Mapping[str, Any]) -> float | None:
    """log P(yes) - log P(no) from a chat completion to :func:`judge_request`; None when the answer
    carries neither word among its top tokens (or is not a chat completion with logprobs)."""
    try:
        top = response["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        yes = [float(c["logprob"]) for c in top if str(c["token"]).strip().lower() in _YES]
        no = [float(c["logprob"]) for c in top if str(c["token"]).strip().lower() in _NO]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if not yes and not no:
        return None
    if not no:
        return math.inf
    if not yes:
        return -math.inf
    return _logsumexp(yes) - _logsumexp(no)
