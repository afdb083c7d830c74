"""The table in docs/decision-quality.md: every rule variant on the check part (buckets 7-9).

Embeds the check part once (same embedder and normalisation as serving) and runs each variant through
cache.evaluation, as ``cachestack eval`` does.

    python -m training.check_report [--embedder NAME] [--part check] [--json /tmp/check-report.json]

Precision is given at the part's own share of duplicates (31%) and class-balanced (50%); "recall at
P" is the most recall at that precision moving only the verifier threshold (balanced: at 50%).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from cache.decision import RuleSettings, ThresholdRule, VerifiedRule, build_rule, shipped_defaults
from cache.embedder import Embedder
from cache.evaluation import best_at_precision, point, recall_at_precision, score_pairs
from training.qqp_split import DEFAULT_QQP, read_pairs


class MemoEmbedder:
    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.memo: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in texts if t not in self.memo]
        if todo:
            for t, v in zip(todo, self.inner.encode(todo), strict=True):
                self.memo[t] = v
        return np.stack([self.memo[t] for t in texts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qqp", default=DEFAULT_QQP)
    ap.add_argument("--part", default="check")
    ap.add_argument("--json")
    ap.add_argument("--embedder", default="all-MiniLM-L6-v2")
    ap.add_argument("--verifier", default=None, help="verifier directory (default: the shipped one)")
    ap.add_argument("--rules", nargs="+", choices=["baseline", "no-guards", "shipped"],
                    default=["baseline", "no-guards", "shipped"])
    args = ap.parse_args()
    pairs = list(read_pairs(args.qqp, args.part))
    emb = MemoEmbedder(Embedder(args.embedder))
    shipped = build_rule({"verifier": args.verifier or "default", "guards": True}, embedder=args.embedder)
    d = RuleSettings(shipped.default_floor, shipped.default_verifier_threshold)
    rows = []

    def report(name: str, rule: object, settings: RuleSettings, floor: float) -> None:
        ps = score_pairs(pairs, emb, rule, floor)
        vthr = settings.verifier_threshold if ps.uses_verifier else None
        op = point(ps, settings.threshold, vthr)
        floor_or_cut = settings.threshold if ps.uses_verifier else floor
        bal = {p: recall_at_precision(ps, floor_or_cut, p, 0.5) for p in (0.9, 0.95)}
        if ps.uses_verifier:
            rat = {p: recall_at_precision(ps, settings.threshold, p) for p in (0.9, 0.95, 0.99)}
            free = {p: (best_at_precision(ps, p, [round(f, 3) for f in np.arange(floor, 0.951, 0.025)]) or None)
                    for p in (0.9, 0.95, 0.99)}
        else:
            rat = {p: recall_at_precision(ps, floor, p) for p in (0.9, 0.95, 0.99)}
            free = {p: best_at_precision(ps, p) for p in (0.9, 0.95, 0.99)}
        row = {
            "rule": name, "threshold": settings.threshold, "verifier_threshold": vthr,
            "precision": round(op.precision, 4), "precision_balanced": round(op.precision_balanced, 4),
            "recall": round(op.recall, 4),
            "false_hit_rate": round(op.false_hit_rate, 4), "hits": op.hits,
            **{f"recall@P{p:.2f}": round(r, 4) for p, r in rat.items()},
            **{f"recall@P{p:.2f}_any_floor": round(b.recall, 4) if b else 0.0 for p, b in free.items()},
            **{f"recall@P{p:.2f}_balanced": round(r, 4) for p, r in bal.items()},
            "ms_per_pair": round(1000 * ps.seconds / len(pairs), 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    if "baseline" in args.rules:
        report("cosine threshold 0.93 (baseline)", ThresholdRule(), RuleSettings(0.93), 0.5)
        report("cosine + guards", VerifiedRule(None, guards_enabled=True), RuleSettings(0.93), 0.5)
    if "no-guards" in args.rules:
        no_guards = VerifiedRule(shipped.verifier, guards_enabled=False)
        report("cross-encoder + cosine, no guards", no_guards, d, d.threshold)
    if "shipped" in args.rules:
        report("shipped: floor + guards + cross-encoder", shipped, d, d.threshold)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
