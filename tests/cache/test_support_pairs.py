"""The guards on the support-desk near-misses (tests/data/support_pairs.jsonl, check half): the real
embedder and the real rule through cache/evaluation.py, as ``cachestack eval`` runs them.

The shipped verifier at its calibrated threshold serves almost none of these pairs, so its precision
says nothing; the guards are measured with the cosine alone as the score (the rule with
``verifier: none``), where every near-miss that reaches the cosine floor is theirs to stop.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cache.decision import ThresholdRule, VerifiedRule
from cache.embedder import Embedder
from cache.evaluation import load_pairs, point, score_pairs
from training.support_pairs import part_of

PAIRS = Path(__file__).resolve().parent.parent / "data" / "support_pairs.jsonl"
FLOOR = 0.80  # the shipped cosine floor (cache.decision.threshold)
MIN_PRECISION = 0.85  # measured 0.95 on the check half (docs/guards.md); cosine alone: 0.56


@pytest.fixture(scope="module")
def check_half() -> list[tuple[str, str, int]]:
    pairs = [p for p in load_pairs(PAIRS) if part_of(p[0]) == "check"]
    assert len(pairs) >= 250 and 0.4 < sum(y for *_, y in pairs) / len(pairs) < 0.6
    return pairs


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_the_set_is_ours_and_labelled_by_kind() -> None:
    rows = load_pairs(PAIRS)
    assert len(rows) >= 500

    kinds = {json.loads(line)["kind"] for line in PAIRS.read_text().splitlines()}
    assert kinds == {"paraphrase", "entity", "direction", "time", "number", "negation", "identifier"}


def test_guards_keep_precision_on_the_support_check_half(check_half, embedder) -> None:  # noqa: ANN001
    guarded = point(score_pairs(check_half, embedder, VerifiedRule(None, guards_enabled=True), FLOOR), FLOOR, None)
    assert guarded.hits >= 40, guarded  # not a precision bought by serving nothing
    assert guarded.precision >= MIN_PRECISION, guarded
    bare = point(score_pairs(check_half, embedder, ThresholdRule(), FLOOR), FLOOR, None)
    assert bare.precision < MIN_PRECISION, bare  # without the guards the floor fails


INTENT_PAIRS = PAIRS.with_name("support_intent_pairs.jsonl")


def test_the_other_intent_set_is_what_its_generator_writes() -> None:
    """tests/data/support_intent_pairs.jsonl: a different intent about the same thing (label 0) and a
    paraphrase (label 1), reproducible from training/support_pairs.py."""
    from training.support_pairs import build_intents

    rows = [json.loads(line) for line in INTENT_PAIRS.read_text().splitlines()]
    assert rows == build_intents()
    assert {r["kind"] for r in rows} == {"intent", "paraphrase"}
    assert 0.4 < sum(r["label"] for r in rows) / len(rows) < 0.6
    assert all(r["text_a"] != r["text_b"] for r in rows)


def test_the_shipped_rule_keeps_precision_on_other_intents(embedder) -> None:  # noqa: ANN001
    """The check half of the other-intent set at the shipped defaults (gate included): the calibration
    saw only the tune half."""
    from cache.decision import build_rule, shipped_defaults

    pairs = [p for p in load_pairs(INTENT_PAIRS) if part_of(p[0]) == "check"]
    settings = shipped_defaults()
    rule = build_rule()
    scored = score_pairs(pairs, embedder, rule, min(settings.threshold, rule.confident[1] if rule.confident else 1.0))
    got = point(scored, settings.threshold, settings.verifier_threshold)
    assert got.hits >= 20, got
    assert got.precision >= MIN_PRECISION, got
