"""Replay labelled pairs as a stream of lookups: learned thresholds (cache/adaptive.py) vs the static rule.

Each pair is one lookup: ``text_a`` is the cached question, ``text_b`` is asked, the label says whether
text_a's answer fits. Both go through the serving rule once (embedder, cosine floor, guards, verifier;
cache.evaluation.score_pairs), and the scores are kept under /tmp, keyed by the data, the verifier and
the embedder, so a second run costs no model time. Then, in a shuffled order (several seeds):

- static: a hit when the verifier probability reaches the shipped threshold (today's rule);
- learned: ``ThresholdLearner.decide`` with the namespace's bound ``--delta``. Until the namespace has
  verdicts the static rule decides; a miss whose candidate passed the floor and the guards yields a
  verdict (in serving: its fresh answer compared with the cached one; here: the label), and a served
  hit yields one with probability ``--shadow-rate`` (shadow mode).

A pair below the floor or stopped by a guard is a miss for both. Reported per stream: hits / lookups,
false hits / lookups (what ``max_false_hit_rate`` bounds), precision, and the learned rule's hit rate
by quarter of the stream (it climbs as verdicts arrive).

    python -m training.adaptive_replay [--qqp FILE] [--gptcache FILE] [--pairs FILE ...] [--seeds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache.adaptive import ThresholdLearner, Verdict
from cache.decision import build_rule, shipped_defaults
from cache.evaluation import PairScores, load_pairs, score_pairs
from training.qqp_split import DEFAULT_QQP, read_pairs

DEFAULT_GPTCACHE = str(Path(DEFAULT_QQP).with_name("gptcache_mock_pairs.json"))


@dataclass(frozen=True, slots=True)
class Stream:
    """One replayable stream: per lookup its entry (the cached text), label, and the rule's view."""

    name: str
    entry: np.ndarray  # int id of text_a
    label: np.ndarray
    candidate: np.ndarray  # passed the floor and the guards (the policy is consulted)
    same: np.ndarray  # the normalised texts are equal: always a hit
    score: np.ndarray


def scored(name: str, pairs: list[tuple[str, str, int]]) -> Stream:
    """The rule's scores for ``pairs``, computed once per (data, verifier, embedder) and kept in /tmp."""
    from cache.verifier import CrossEncoderVerifier

    meta = CrossEncoderVerifier.read_meta(None)
    h = hashlib.sha256(repr((pairs, meta)).encode()).hexdigest()[:16]
    path = Path(f"/tmp/cachestack-adaptive-{name}-{h}.npz")
    if not path.exists():
        from cache.embedder import Embedder

        ps: PairScores = score_pairs(pairs, Embedder(), build_rule({"verifier": "default", "guards": True}),
                                     shipped_defaults().threshold)
        np.savez(path, passed=ps.passed, score=ps.score,
                 same=np.array([r == "same query" for r in ps.reasons]), label=ps.label)
    z = np.load(path)
    ids: dict[str, int] = {}
    entry = np.array([ids.setdefault(a, len(ids)) for a, _, _ in pairs])
    same = z["same"]
    return Stream(name, entry, z["label"].astype(bool), z["passed"] & ~same, same, z["score"])


@dataclass
class Outcome:
    hits: int = 0
    false_hits: int = 0
    lookups: int = 0

    def line(self) -> str:
        p = (self.hits - self.false_hits) / max(1, self.hits)
        return (f"hit rate {self.hits / self.lookups:.3f}  false hits/lookup {self.false_hits / self.lookups:.4f}  "
                f"precision {p:.3f}")


def replay(s: Stream, order: np.ndarray, vthr: float, delta: float, shadow_rate: float,
           seed: int) -> tuple[Outcome, Outcome, list[float]]:
    """(static, learned, learned hit rate per quarter of the stream) for one order of the lookups."""
    rng = random.Random(seed)
    learner = ThresholdLearner(rng=rng)
    entry_verdicts: dict[int, list[Verdict]] = {}
    static, learned = Outcome(), Outcome()
    quarter_hits = [0, 0, 0, 0]
    n = len(order)
    for k, i in enumerate(order):
        static.lookups += 1
        learned.lookups += 1
        y = bool(s.label[i])
        if s.same[i]:
            for o in (static, learned):
                o.hits += 1
                o.false_hits += not y
            quarter_hits[4 * k // n] += 1
            continue
        if not s.candidate[i]:
            continue
        score = float(s.score[i])
        if score >= vthr:
            static.hits += 1
            static.false_hits += not y
        mine = entry_verdicts.setdefault(int(s.entry[i]), [])
        serve = learner.decide("ns", score, mine, delta=delta)
        if serve is None:
            serve = score >= vthr
        if serve:
            learned.hits += 1
            learned.false_hits += not y
            quarter_hits[4 * k // n] += 1
        if not serve or rng.random() < shadow_rate:  # a miss's fresh answer, or a shadowed hit
            v = Verdict(score, y)
            learner.record("ns", v)
            mine.append(v)
            del mine[:-32]
    quarters = [h / max(1, len(range(q * n // 4, (q + 1) * n // 4))) for q, h in enumerate(quarter_hits)]
    return static, learned, quarters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qqp", default=DEFAULT_QQP, help="qqp_dev.jsonl: its check part is replayed")
    ap.add_argument("--gptcache", default=DEFAULT_GPTCACHE, help="GPTCache mock pairs (all label 1)")
    ap.add_argument("--pairs", nargs="*", default=[], help="more labelled pair files (cachestack eval's formats)")
    ap.add_argument("--delta", type=float, default=0.02, help="max_false_hit_rate")
    ap.add_argument("--shadow-rate", type=float, default=0.0)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()

    vthr = float(shipped_defaults().verifier_threshold or 0.5)
    streams: list[Stream] = []
    check = list(read_pairs(args.qqp, "check"))
    streams.append(scored("qqp-check", check))
    gpt = load_pairs(args.gptcache)
    streams.append(scored("gptcache", gpt))
    # A stream with more paraphrases than QQP's 31%: GPTCache's positives with as many QQP check
    # negatives, the mix where a threshold calibrated at 31% is too strict.
    negatives = [p for p in check if p[2] == 0][: len(gpt)]
    streams.append(scored("gptcache+qqp-neg", gpt + negatives))
    for f in args.pairs:
        streams.append(scored(Path(f).stem, load_pairs(f)))

    print(f"delta (max false hits per lookup) {args.delta}, shadow rate {args.shadow_rate}, "
          f"static verifier threshold {vthr:.4f}, {args.seeds} orders per stream")
    for s in streams:
        print(f"\n{s.name}: {len(s.label)} lookups, {s.label.mean():.2f} labelled same, "
              f"{int(s.candidate.sum())} with a candidate past the floor and the guards")
        rows = []
        for seed in range(args.seeds):
            order = np.random.default_rng(seed).permutation(len(s.label))
            rows.append(replay(s, order, vthr, args.delta, args.shadow_rate, seed))
        st = rows[0][0]
        print(f"  static   {st.line()}")
        for seed, (_, le, quarters) in enumerate(rows):
            print(f"  learned  {le.line()}  (order {seed}; hit rate by quarter "
                  f"{' '.join(f'{q:.3f}' for q in quarters)})")
        worst = max(le.false_hits / le.lookups for _, le, _ in rows)
        mean_hits = np.mean([le.hits / le.lookups for _, le, _ in rows])
        print(f"  => learned: mean hit rate {mean_hits:.3f} vs static {st.hits / st.lookups:.3f}; "
              f"worst false hits/lookup {worst:.4f} vs bound {args.delta}")


if __name__ == "__main__":
    main()
