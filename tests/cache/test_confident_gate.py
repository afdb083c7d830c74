"""The verifier's confident gate: a pair the cross-encoder alone is sure of is served below the floor.

The gate's settings come with the verifier (verifier.json); here they are set around the measured
score of one pair, so the tests hold for any shipped model: just below it the pair is served, just
above it (or with the gate off) it is not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cache.decision import Candidate, RuleSettings, VerifiedRule, build_rule
from cache.embedder import Embedder
from cache.evaluation import hits_at, point, score_pairs
from cache.keys import normalise_query
from cache.verifier import DEFAULT_VERIFIER_DIR, CrossEncoderVerifier

CACHED = normalise_query("Cancel my HBO Max subscription for me please")
ASKED = normalise_query("Steps to unsubscribe from HBO Max")
VETOED = normalise_query("Cancel my HBO Max subscription for 3 months please")  # a number only one side has


def _verifier_dir(tmp_path: Path, threshold: float | None, floor: float | None) -> Path:
    d = tmp_path / "verifier"
    shutil.copytree(DEFAULT_VERIFIER_DIR, d)
    meta = json.loads((d / "verifier.json").read_text())
    for layer in (meta, *meta.get("calibrations", {}).values()):
        layer["confident_threshold"], layer["confident_floor"] = threshold, floor
    (d / "verifier.json").write_text(json.dumps(meta))
    return d


@pytest.fixture(scope="module")
def pair() -> tuple[float, float]:
    """(cosine, cross-encoder probability) of the test pair, as the rule computes them."""
    emb = Embedder("all-MiniLM-L6-v2")
    a, b = emb.encode([CACHED, ASKED])
    cos = float(np.dot(a, b))
    _, own = CrossEncoderVerifier(None, embedder="all-MiniLM-L6-v2").scores([(CACHED, ASKED)], [cos])
    return cos, float(own[0])


def _rule(tmp_path: Path, threshold: float | None, floor: float | None) -> VerifiedRule:
    rule = build_rule({"verifier": str(_verifier_dir(tmp_path, threshold, floor))},
                      embedder="all-MiniLM-L6-v2")
    assert isinstance(rule, VerifiedRule)
    return rule


def test_a_sure_pair_below_the_floor_is_served_and_a_less_sure_one_is_not(tmp_path: Path, pair) -> None:
    cos, own = pair
    floor = RuleSettings(threshold=min(0.99, cos + 0.05), verifier_threshold=0.99)  # the usual path cannot serve it
    cand = [Candidate("e", CACHED, cos)]
    [d] = _rule(tmp_path / "a", own - 1e-4, cos - 0.05).decide([(ASKED, cand)], floor)
    assert d.hit and d.reason == "confident" and d.candidate == cand[0]
    [d] = _rule(tmp_path / "b", min(1.0, own + 1e-4), cos - 0.05).decide([(ASKED, cand)], floor)
    assert not d.hit
    off = RuleSettings(threshold=floor.threshold, verifier_threshold=0.99, confident=False)  # a namespace's switch
    [d] = _rule(tmp_path / "c", own - 1e-4, cos - 0.05).decide([(ASKED, cand)], off)
    assert not d.hit and d.reason == "below threshold"
    [d] = _rule(tmp_path / "d", own - 1e-4, cos + 0.01).decide([(ASKED, cand)], floor)  # below the gate's floor
    assert not d.hit and d.reason == "below threshold"


def test_guards_still_veto_a_pair_the_cross_encoder_likes(tmp_path: Path, pair) -> None:
    cos, _ = pair
    rule = _rule(tmp_path, 0.0, -1.0)  # the gate opens for anything the guards let through
    [d] = rule.decide([(VETOED, [Candidate("e", CACHED, cos)])], RuleSettings(threshold=0.99, verifier_threshold=0.99))
    assert not d.hit and d.reason.startswith("guard")


def test_without_a_gate_in_the_calibration_nothing_changes(tmp_path: Path, pair) -> None:
    cos, _ = pair
    rule = _rule(tmp_path, None, None)
    assert rule.confident is None
    [d] = rule.decide([(ASKED, [Candidate("e", CACHED, cos)])], RuleSettings(threshold=min(0.99, cos + 0.05)))
    assert not d.hit and d.reason == "below threshold"


def test_eval_counts_confident_hits_at_every_floor_and_verifier_threshold(tmp_path: Path, pair) -> None:
    """cachestack eval sweeps the floor and the verifier threshold; a confident hit is a hit at all of them."""
    cos, own = pair
    rule = _rule(tmp_path, own - 1e-4, cos - 0.05)
    pairs = [(CACHED, ASKED, 1), ("What is the capital of France?", "How do I bake bread?", 0)]
    ps = score_pairs(pairs, Embedder("all-MiniLM-L6-v2"), rule, 0.5)
    assert ps.reasons[0] == "confident"
    for floor in (0.5, 0.8, 0.95):
        for vthr in (0.0, 0.5, 0.99):
            assert hits_at(ps, floor, vthr)[0]
    p = point(ps, 0.95, 0.99)
    assert p.true_hits == 1 and p.false_hits == 0
    off = score_pairs(pairs, Embedder("all-MiniLM-L6-v2"), rule, 0.5, confident=False)
    assert off.reasons[0] != "confident" and not hits_at(off, 0.95, 0.99)[0]


def test_the_gate_off_view_of_scored_pairs_is_the_gate_off_rule() -> None:
    """cachestack calibrate scores once and reads the gate-off rule from the same scores: on real
    pairs (the support check half and the other-intent pairs) both give the same hits everywhere."""
    from cache.evaluation import load_pairs, without_gate

    data = Path(__file__).resolve().parent.parent / "data"
    pairs = load_pairs(data / "support_pairs.jsonl")[:150] + load_pairs(data / "support_intent_pairs.jsonl")[:100]
    rule, emb = build_rule(), Embedder()
    gated = score_pairs(pairs, emb, rule, 0.5, confident=True)
    assert "confident" in gated.reasons  # the gate serves some of these, so the view has work to do
    view, off = without_gate(gated), score_pairs(pairs, emb, rule, 0.5, confident=False)
    for floor in (0.5, 0.7, 0.85):
        for vthr in (0.3, 0.6, 0.9):
            assert (hits_at(view, floor, vthr) == hits_at(off, floor, vthr)).all(), (floor, vthr)
    assert not (hits_at(gated, 0.85, 0.9) == hits_at(off, 0.85, 0.9)).all()
