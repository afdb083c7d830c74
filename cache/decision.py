"""The semantic hit rule: may a stored answer to ``candidate.query`` answer ``query``?

Everything that decides a semantic hit lives behind :class:`DecisionRule`, so that the serving path
and ``cachestack eval`` run exactly the same rule. The rule is synchronous CPU work; the service
runs it off the event loop. It takes a batch so that eval scores thousands of pairs in one call and
serving scores the top-k candidates of one lookup in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored entry returned by KNN: its id, the normalised query it answered, cosine to ours."""

    entry_id: str
    query: str
    similarity: float


@dataclass(frozen=True, slots=True)
class Decision:
    hit: bool
    candidate: Candidate | None
    score: float
    reason: str


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """Per-namespace knobs; None means the rule's own default."""

    threshold: float
    verifier_threshold: float | None = None


class DecisionRule(Protocol):
    def decide(
        self, items: Sequence[tuple[str, Sequence[Candidate]]], settings: RuleSettings
    ) -> list[Decision]:
        """One decision per (query, candidates best-first) item."""
        ...


class ThresholdRule:
    """Cosine threshold alone: the baseline the decision-quality work must beat."""

    def decide(
        self, items: Sequence[tuple[str, Sequence[Candidate]]], settings: RuleSettings
    ) -> list[Decision]:
        out: list[Decision] = []
        for _query, candidates in items:
            best = max(candidates, key=lambda c: c.similarity, default=None)
            if best is None:
                out.append(Decision(False, None, 0.0, "no candidate"))
            elif best.similarity >= settings.threshold:
                out.append(Decision(True, best, best.similarity, "cosine"))
            else:
                out.append(Decision(False, best, best.similarity, "below threshold"))
        return out
