"""Replica choice for upstream calls.

Interface used by serving/upstream.py: ``choose(affinity)`` returns a :class:`Replica` and counts it
in flight; ``release(replica, ok)`` must follow every ``choose``. ``affinity`` is the text whose
prefix should keep landing on the same replica (see :func:`affinity_text`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serving.config import UpstreamConfig


class NoReplica(RuntimeError):
    """Every replica is ejected or none is configured."""


@dataclass(eq=False)
class Replica:
    url: str
    in_flight: int = 0


def affinity_text(body: Mapping[str, Any]) -> str:
    """The prompt as vLLM will see it, start first: system prompt, then the conversation."""
    if "messages" in body and isinstance(body["messages"], list):
        parts = []
        for m in body["messages"]:
            if isinstance(m, Mapping):
                content = m.get("content")
                parts.append(f"{m.get('role')}:{content if isinstance(content, str) else content!r}")
        return "\n".join(parts)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else repr(prompt)


class Router:
    """Round-robin for now; prefix-aware and least-loaded come with the prefix-cache work."""

    def __init__(self, cfg: UpstreamConfig) -> None:
        self.cfg = cfg
        self._replicas = [Replica(u) for u in cfg.urls]
        self._rr = itertools.cycle(range(len(self._replicas))) if self._replicas else None

    async def start(self) -> None:
        """Begin background work (DNS refresh, health, metrics scraping)."""

    async def aclose(self) -> None:
        """Stop background work."""

    def replicas(self) -> list[Replica]:
        return list(self._replicas)

    def choose(self, affinity: str) -> Replica:
        if self._rr is None:
            raise NoReplica("no upstream replica configured")
        replica = self._replicas[next(self._rr)]
        replica.in_flight += 1
        return replica

    def release(self, replica: Replica, ok: bool) -> None:
        replica.in_flight -= 1
