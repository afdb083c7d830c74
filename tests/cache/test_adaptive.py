"""Learned thresholds (cache/adaptive.py): the sigmoid fit, the serving probability's bound, the
bounded learner, and a replayed stream on which the bound holds while hits rise above a static rule."""

from __future__ import annotations

import random

import numpy as np
import pytest

from cache.adaptive import ThresholdLearner, Verdict, budget_cut, fit_sigmoid, lower_bound, pack, unpack
from training.adaptive_replay import Stream, replay


def sigmoid_verdicts(n: int, t: float, gamma: float, seed: int) -> list[Verdict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = rng.random()
        out.append(Verdict(s, rng.random() < 1 / (1 + np.exp(-gamma * (s - t)))))
    return out


def test_fit_recovers_a_known_sigmoid() -> None:
    fit = fit_sigmoid(sigmoid_verdicts(3000, t=0.6, gamma=20, seed=1))
    assert fit is not None
    assert abs(fit.t - 0.6) < 0.02
    assert 14 < fit.gamma < 28
    assert fit.var_t < 0.02**2


def test_separated_or_few_verdicts_give_a_finite_fit_with_a_wide_bound() -> None:
    few = fit_sigmoid([Verdict(0.9, True)] * 3 + [Verdict(0.5, False)] * 3)
    many = fit_sigmoid([Verdict(0.9, True)] * 300 + [Verdict(0.5, False)] * 300)
    assert few is not None and many is not None
    assert 0.5 < few.t < 0.9 and np.isfinite(few.gamma)
    assert few.var_t > many.var_t
    # a candidate between the two: six verdicts vouch for far less than six hundred
    assert lower_bound(few, 0.85) < lower_bound(many, 0.85) - 0.2
    assert fit_sigmoid([]) is None


def test_lower_bound_stays_under_the_true_curve() -> None:
    fit = fit_sigmoid(sigmoid_verdicts(2000, t=0.7, gamma=15, seed=2))
    assert fit is not None
    s = np.linspace(0, 1, 101)
    true = 1 / (1 + np.exp(-15 * (s - 0.7)))
    alpha = lower_bound(fit, s)
    assert np.all(alpha <= true + 1e-9)
    assert alpha[-1] > 0.9  # and is not vacuous where the evidence is good


def test_right_verdicts_alone_tighten_the_bound_through_their_band() -> None:
    """With only right verdicts t is not pinned down; their band still vouches for a high chance."""
    rng = random.Random(7)
    right = [Verdict(0.5 + 0.4 * rng.random(), True) for _ in range(400)]
    fit = fit_sigmoid(right)
    assert fit is not None
    assert lower_bound(fit, 0.85) < 0.9  # the sigmoid's bound alone
    assert lower_bound(fit, 0.85, right) > 0.92  # ~90 right verdicts within 0.1 below it (Wilson, 99%)
    assert lower_bound(fit, 0.3, right) == lower_bound(fit, 0.3)  # no verdicts in that band
    mixed = right + [Verdict(0.8, False)] * 30
    assert lower_bound(fit, 0.85, mixed) < lower_bound(fit, 0.85, right)


@pytest.mark.parametrize("delta", [0.005, 0.02, 0.1])
def test_budget_cut_spends_at_most_delta_per_lookup(delta: float) -> None:
    fit = fit_sigmoid(sigmoid_verdicts(2000, t=0.7, gamma=15, seed=2))
    assert fit is not None
    scores = np.random.default_rng(3).random(1000)
    cut = budget_cut(fit, list(scores), delta)
    wrong = 1 - lower_bound(fit, scores)
    served = wrong <= cut
    assert served.any() and 0 < cut <= 0.5
    assert wrong[served].sum() / len(scores) <= delta  # the expected false hits per lookup
    # and it is the largest such cut: one more lookup (the next least likely wrong) would overspend
    nxt = np.sort(wrong[~served])[:1]
    assert len(nxt) == 0 or (wrong[served].sum() + nxt[0]) / len(scores) > delta or nxt[0] > 0.5
    assert budget_cut(fit, [], delta) == 0.0


def test_pack_round_trip_and_damaged_records() -> None:
    blob = pack(Verdict(0.8477, True)) + pack(Verdict(0.1, False)) + b"x1z9q" + b"12"
    got = unpack(blob)
    assert [v.correct for v in got] == [True, False]
    assert abs(got[0].score - 0.8477) < 1e-3 and abs(got[1].score - 0.1) < 1e-3
    cos = unpack(pack(Verdict(-0.5, True), cosine=True), cosine=True)
    assert abs(cos[0].score + 0.5) < 1e-3
    assert unpack(None) == [] and unpack(b"") == []


def test_learner_waits_for_verdicts_prefers_the_entry_and_stays_bounded() -> None:
    learner = ThresholdLearner(min_verdicts=6, window=50, max_scopes=3, rng=random.Random(0))
    assert learner.decide("a", 0.9, delta=0.02) is None  # nothing learned: the static rule decides
    for v in sigmoid_verdicts(50, t=0.3, gamma=30, seed=3):
        learner.record("a", v)
    assert learner.wrong_chance("a", 0.9) < 0.05
    # this entry's own verdicts say 0.9 is wrong for it: they win over the neighbourhood's
    own = [Verdict(0.9, False), Verdict(0.92, False), Verdict(0.95, False), Verdict(0.97, True),
           Verdict(0.98, True), Verdict(0.99, True)]
    assert learner.wrong_chance("a", 0.9, own) > 0.5
    assert not any(learner.decide("a", 0.9, own, delta=0.02) for _ in range(50))
    for v in range(200):
        learner.record("a", Verdict(v / 200, True))
    assert len(learner.verdicts("a")) == 50  # the window
    for scope in "bcd":
        learner.record(scope, Verdict(0.5, True))
    assert learner.verdicts("a") == []  # least recently used scope out: at most max_scopes kept
    learner.replace("b", [Verdict(0.2, False)] * 10)
    assert learner.wrong_chance("b", 0.9) > 0.5


def synthetic_stream(n: int, positives: float, seed: int) -> Stream:
    """Lookups whose verifier-like score is the true P(correct) at a 31% base rate (like the shipped
    verifier's calibration set), drawn at base rate ``positives``: a static threshold tuned at 31%
    is too strict for this namespace."""
    rng = np.random.default_rng(seed)
    label = rng.random(n) < positives
    # scores: right candidates mostly high, wrong ones mostly low, overlapping in the middle
    score = np.where(label, rng.beta(5, 2, n), rng.beta(2, 4, n)).astype(np.float32)
    return Stream("synthetic", entry=np.arange(n) % (n // 3), label=label, candidate=np.ones(n, dtype=bool),
                  same=np.zeros(n, dtype=bool), score=score)


@pytest.mark.parametrize("positives", [0.3, 0.7])
def test_replayed_stream_keeps_the_bound_and_climbs_above_the_static_rule(positives: float) -> None:
    delta = 0.02
    s = synthetic_stream(6000, positives, seed=4)
    static, learned, quarters = replay(s, np.random.default_rng(5).permutation(6000), vthr=0.85, delta=delta,
                                       shadow_rate=0.0, seed=6)
    assert learned.false_hits / learned.lookups <= delta
    assert learned.hits > 1.2 * static.hits
    assert quarters[-1] > 1.2 * static.hits / static.lookups  # and stays there, not a lucky start
    # the static rule was stricter than the bound needed: what it left on the table is what was learned
    assert static.false_hits / static.lookups < delta
