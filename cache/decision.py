"""The semantic hit rule: may a stored answer to ``candidate.query`` answer ``query``?

Everything that decides a semantic hit lives behind :class:`DecisionRule`, so that the serving path
and ``cachestack eval`` run exactly the same rule. The rule is synchronous CPU work; the service
runs it off the event loop. It takes a batch so that eval scores thousands of pairs in one call and
serving scores the top-k candidates of one lookup in one call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cache.guards import check as guard_check
from cache.verifier import CrossEncoderVerifier


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
    confident: bool = True  # the verifier's confident gate, where its calibration has one


#: The cosine threshold without a verifier when none is configured (docs/decision-quality.md).
COSINE_ONLY_THRESHOLD = 0.93


class DecisionRule(Protocol):
    #: the cosine floor used when the config sets none (calibrated with the verifier, per embedder)
    default_floor: float

    def decide(
        self, items: Sequence[tuple[str, Sequence[Candidate]]], settings: RuleSettings
    ) -> list[Decision]:
        """One decision per (query, candidates best-first) item."""
        ...


class ThresholdRule:
    """Cosine threshold alone: the baseline the decision-quality work must beat."""

    default_floor = COSINE_ONLY_THRESHOLD

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


def _field(cfg: Any, name: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


class VerifiedRule:
    """Cosine floor, then guards, then the cross-encoder verifier over the surviving candidates.

    For every item: candidates at or above ``settings.threshold`` (the cosine floor) are kept, each is
    checked by the lexical guards (numbers, negation, opposite words, direction, time), and the
    verifier scores the survivors in batches: first every item's nearest survivor, then the other
    survivors of the items that one did not settle. A candidate is served when its verifier
    probability is at least ``settings.verifier_threshold`` (None: the shipped model's calibrated
    default), or, with the confident gate (``settings.confident``, where the verifier's calibration has
    one), when the cross-encoder alone is sure (its own sigmoid(logit)
    at least ``confident_threshold``) from a cosine of ``confident_floor`` up, even below the floor:
    the calibrated probability leans on the cosine, and heavy rewordings (support-desk requests) have
    low cosines that no single floor serves without letting QQP-style near-misses through. Of the
    candidates served, the one with the highest probability wins. An exact match of the normalised
    queries is always a hit. A pair too long for the verifier to read whole is a miss ("too long to
    verify"), never a truncated read. Without a verifier (``verifier=None``) the score is the cosine
    and the guards still apply.
    """

    def __init__(
        self,
        verifier: CrossEncoderVerifier | None,
        *,
        guards_enabled: bool = True,
        default_verifier_threshold: float | None = None,
    ) -> None:
        self.verifier = verifier
        self.guards_enabled = guards_enabled
        self.default_floor = verifier.meta.default_floor if verifier is not None else COSINE_ONLY_THRESHOLD
        if default_verifier_threshold is None and verifier is not None:
            default_verifier_threshold = verifier.meta.default_threshold
        self.default_verifier_threshold = default_verifier_threshold if default_verifier_threshold is not None else 0.5
        meta = verifier.meta if verifier is not None else None
        self.confident: tuple[float, float] | None = None  # (cross-encoder probability, cosine floor)
        if meta is not None and meta.confident_threshold is not None and meta.confident_floor is not None:
            self.confident = (meta.confident_threshold, meta.confident_floor)

    def decide(
        self, items: Sequence[tuple[str, Sequence[Candidate]]], settings: RuleSettings
    ) -> list[Decision]:
        vthr = settings.verifier_threshold
        if vthr is None:
            vthr = self.default_verifier_threshold
        gate = self.confident if settings.confident else None
        out: list[Decision | None] = [None] * len(items)
        pending: list[tuple[int, Candidate]] = []  # (item index, candidate) for the verifier
        vetoed: dict[int, tuple[Candidate, str]] = {}
        for i, (query, candidates) in enumerate(items):
            ranked = sorted(candidates, key=lambda c: c.similarity, reverse=True)
            if not ranked:
                out[i] = Decision(False, None, 0.0, "no candidate")
                continue
            exact = next((c for c in ranked if c.query == query), None)
            if exact is not None:
                out[i] = Decision(True, exact, 1.0, "same query")
                continue
            low = min(settings.threshold, gate[1]) if gate else settings.threshold
            above = [c for c in ranked if c.similarity >= low]
            if not above:
                out[i] = Decision(False, ranked[0], ranked[0].similarity, "below threshold")
                continue
            for c in above:
                reason = guard_check(c.query, query) if self.guards_enabled else None
                if reason is None:
                    pending.append((i, c))
                elif i not in vetoed:
                    vetoed[i] = (c, reason)
        best: dict[int, Decision] = {}
        too_long: dict[int, Candidate] = {}  # the verifier could not read the pair whole
        if self.verifier is None:
            for i, c in pending:
                if c.similarity >= settings.threshold and (i not in best or c.similarity > best[i].score):
                    best[i] = Decision(True, c, c.similarity, "cosine + guards")
        else:
            # Round 1 scores each item's nearest surviving candidate; only items it does not settle
            # have their other candidates scored (round 2). A hit then costs one verifier pair, not k.
            first: dict[int, Candidate] = {}
            for i, c in pending:
                first.setdefault(i, c)
            self._score(list(first.items()), items, settings.threshold, vthr, gate, best, too_long)
            unsettled = {i for i in first if i not in best or not best[i].hit}
            self._score([(i, c) for i, c in pending if i in unsettled and c is not first[i]], items,
                        settings.threshold, vthr, gate, best, too_long)
        for i in range(len(items)):
            if out[i] is not None:
                continue
            if i in best:
                out[i] = best[i]
            elif i in too_long:
                out[i] = Decision(False, too_long[i], 0.0, "too long to verify")
            elif i in vetoed:
                c, reason = vetoed[i]
                out[i] = Decision(False, c, 0.0, f"guard: {reason}")
            else:  # only candidates below the floor, kept for a confident gate that did not open
                c = max(items[i][1], key=lambda c: c.similarity)
                out[i] = Decision(False, c, c.similarity, "below threshold")
        return [d for d in out if d is not None]

    def _score(self, pairs: Sequence[tuple[int, Candidate]], items: Sequence[tuple[str, Sequence[Candidate]]],
               floor: float, vthr: float, gate: tuple[float, float] | None, best: dict[int, Decision],
               too_long: dict[int, Candidate]) -> None:
        """Verifier scores for (item index, candidate) pairs in one batch; keeps each item's best
        decision (a hit over a rejection, then the higher probability). A pair the verifier cannot
        read whole (NaN) is never a hit: it goes to ``too_long``."""
        if not pairs or self.verifier is None:
            return
        probs, own = self.verifier.scores([(c.query, items[i][0]) for i, c in pairs], [c.similarity for _, c in pairs])
        for (i, c), p, q in zip(pairs, probs, own, strict=True):
            if math.isnan(p):
                too_long.setdefault(i, c)
                continue
            if gate is not None and q >= gate[0] and c.similarity >= gate[1]:
                d = Decision(True, c, float(p), "confident")
            elif c.similarity >= floor:
                d = Decision(p >= vthr, c, float(p), "verified" if p >= vthr else "verifier rejected")
            else:
                continue  # below the floor and not confident: not a candidate
            held = best.get(i)
            if held is None or (d.hit, d.score) > (held.hit, held.score):
                best[i] = d


def decide_each(rule: DecisionRule,
                items: Sequence[tuple[str, Sequence[Candidate], RuleSettings]]) -> list[Decision]:
    """Decisions for items that may carry different settings (concurrent lookups of several
    namespaces): one ``decide`` call per distinct settings, so the verifier still scores in batches."""
    groups: dict[RuleSettings, list[int]] = {}
    for i, (_, _, settings) in enumerate(items):
        groups.setdefault(settings, []).append(i)
    out: list[Decision | None] = [None] * len(items)
    for settings, idx in groups.items():
        for i, d in zip(idx, rule.decide([(items[i][0], items[i][1]) for i in idx], settings), strict=True):
            out[i] = d
    return [d for d in out if d is not None]


def build_rule(cfg: Any = None, *, embedder: str | None = None) -> VerifiedRule | ThresholdRule:
    """The rule the service runs, from cache-level decision settings.

    ``cfg`` is anything with the fields of the gateway's decision config (an object or a mapping):
    ``verifier`` ('none' | 'default' | a directory holding verifier.json), ``guards`` (bool) and
    ``verifier_threshold`` (None: the model's calibrated default). ``threshold``, ``confident_gate``
    and ``top_k`` are read by the caller and arrive through :class:`RuleSettings` and the candidate list. ``embedder`` (the
    config's ``embedder.model``) picks the verifier calibration fitted on that embedder's cosines.
    """
    verifier_name = str(_field(cfg, "verifier", "default") or "none")
    guards_enabled = bool(_field(cfg, "guards", True))
    vthr = _field(cfg, "verifier_threshold", None)
    threads = int(_field(cfg, "verifier_threads", 1) or 1)
    if verifier_name == "none":
        return VerifiedRule(None, guards_enabled=guards_enabled) if guards_enabled else ThresholdRule()
    path = None if verifier_name == "default" else verifier_name
    return VerifiedRule(CrossEncoderVerifier(path, threads=threads, embedder=embedder), guards_enabled=guards_enabled,
                        default_verifier_threshold=vthr)


def shipped_defaults(embedder: str | None = None) -> RuleSettings:
    """The cosine floor and verifier threshold the shipped verifier was calibrated for with ``embedder``
    (None: the shipped default embedder)."""
    from cache.config import EmbedderConfig

    meta = CrossEncoderVerifier.read_meta(None, embedder or EmbedderConfig().model)
    return RuleSettings(threshold=meta.default_floor, verifier_threshold=meta.default_threshold)


def resolve_settings(rule: DecisionRule, threshold: float | None, verifier_threshold: float | None,
                     confident: bool = True) -> RuleSettings:
    """Configured values, or the rule's calibrated defaults where the config leaves them None."""
    return RuleSettings(threshold=threshold if threshold is not None else rule.default_floor,
                        verifier_threshold=verifier_threshold, confident=confident)
