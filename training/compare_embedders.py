"""Embedders side by side on the check part: how well the cosine alone separates duplicates, and what
one query costs to embed.

For each model: ROC AUC of the cosine, the most recall at precision 0.90 / 0.95 (at the part's own share
of duplicates and class-balanced) with the cosine as the only knob and the guards on, and the p50 / p99
of embedding one query (one encode call per query, as a lookup does, after a warm-up).

    python -m training.compare_embedders --models all-MiniLM-L6-v2 cachestack/minilm-l6-qqp /path/to/mpnet \
        --limit 6000 --json /tmp/embedders.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from cache.decision import VerifiedRule
from cache.embedder import Embedder
from cache.evaluation import recall_at_precision, score_pairs
from training.qqp_split import DEFAULT_QQP, read_pairs


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random duplicate scores above a random non-duplicate (ties count half)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tie = scores == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def latency_ms(emb: Embedder, queries: list[str], reps: int) -> tuple[float, float]:
    for q in queries[:20]:
        emb.encode([q])
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        emb.encode([queries[i % len(queries)]])
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qqp", default=DEFAULT_QQP)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--limit", type=int, default=6000, help="first N check pairs")
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads, as serving's embedder.threads")
    ap.add_argument("--json")
    args = ap.parse_args()
    pairs = list(read_pairs(args.qqp, "check"))[: args.limit]
    rule = VerifiedRule(None, guards_enabled=True)
    rows = []
    for name in args.models:
        emb = Embedder(name, threads=args.threads)
        ps = score_pairs(pairs, emb, rule, -1.0)
        p50, p99 = latency_ms(emb, [b for _, b, _ in pairs], args.reps)
        row = {
            "model": name, "pairs": len(pairs), "cosine_auc": round(auc(ps.cosine, ps.label), 4),
            **{f"recall@P{p:.2f}": round(recall_at_precision(ps, -1.0, p), 4) for p in (0.90, 0.95)},
            **{f"recall@P{p:.2f}_balanced": round(recall_at_precision(ps, -1.0, p, 0.5), 4) for p in (0.90, 0.95)},
            "embed_ms_p50": round(p50, 2), "embed_ms_p99": round(p99, 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
