"""Top-k candidates vs top-1 on the check part, as a cache would see them.

Every distinct text_a of the check part is "cached"; every text_b is asked. KNN (exact, over MiniLM
embeddings) returns the k nearest cached queries; the rule decides on them. A hit is counted correct
only when the served entry is the labelled partner with label 1 (or the same normalised text); a hit
on any other cached question counts as wrong (QQP does not say whether it would have been right, so
this is a pessimistic count). Also reports the rule's added latency per lookup (p50, one thread).

    python -m training.topk_experiment [--k 1 3 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cache.decision import Candidate, build_rule, shipped_defaults
from cache.embedder import Embedder
from cache.keys import normalise_query
from training.qqp_split import DEFAULT_QQP, read_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qqp", default=DEFAULT_QQP)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--latency-lookups", type=int, default=300)
    ap.add_argument("--limit", type=int, help="only the first N check pairs (a smaller cache)")
    args = ap.parse_args()
    rows = [(normalise_query(a), normalise_query(b), y) for a, b, y in read_pairs(args.qqp, "check")]
    if args.limit:
        rows = rows[: args.limit]
    cached = sorted({a for a, _, _ in rows})
    pos = {(a, b) for a, b, y in rows if y == 1}
    asked = [(b, a, y) for a, b, y in rows]
    emb = Embedder()
    cv = emb.encode(cached)
    qv = emb.encode([b for b, _, _ in asked])
    sims = qv @ cv.T
    rule = build_rule({"verifier": "default", "guards": True})
    settings = shipped_defaults()
    n_pos = sum(1 for *_, y in asked if y == 1)
    kmax = max(args.k)
    top = np.argsort(-sims, axis=1)[:, :kmax]
    for k in args.k:
        items = []
        for i, (b, _a, _y) in enumerate(asked):
            items.append((b, [Candidate(str(j), cached[j], float(sims[i, j])) for j in top[i, :k]]))
        decisions = rule.decide(items, settings)
        good = bad = 0
        for (b, a, _y), d in zip(asked, decisions, strict=True):
            if not d.hit:
                continue
            served = d.candidate.query
            if served == b or (served == a and (a, b) in pos) or (served, b) in pos:
                good += 1
            else:
                bad += 1
        hits = good + bad
        print(f"top-{k}: hits {hits}, correct {good} ({good / n_pos:.4f} of {n_pos} labelled positives), "
              f"wrong or unknown {bad}, precision >= {good / max(1, hits):.4f}")
    # latency of the rule alone for one lookup with top-3 candidates (serving's default)
    lat = []
    for i in range(min(args.latency_lookups, len(asked))):
        b = asked[i][0]
        item = (b, [Candidate(str(j), cached[j], float(sims[i, j])) for j in top[i, :3]])
        t = time.perf_counter()
        rule.decide([item], settings)
        lat.append(1000 * (time.perf_counter() - t))
    lat_arr = np.array(lat)
    scored = sum(1 for i in range(len(lat)) if sims[i, top[i, 0]] >= settings.threshold)
    print(f"rule per lookup (top-3): p50 {np.median(lat_arr):.2f} ms, p90 {np.percentile(lat_arr, 90):.2f} ms, "
          f"p99 {np.percentile(lat_arr, 99):.2f} ms; {scored}/{len(lat)} lookups had a candidate above the floor")
    above = lat_arr[[sims[i, top[i, 0]] >= settings.threshold for i in range(len(lat))]]
    if len(above):
        print(f"  lookups with a candidate above the floor: p50 {np.median(above):.2f} ms")


if __name__ == "__main__":
    main()
