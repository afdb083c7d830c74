"""What each lexical guard costs and catches on a labelled pairs file.

For every guard of cache/guards.py alone: the share of label-1 pairs it vetoes (the recall it costs)
and the share of label-0 pairs it vetoes (the near-misses it catches), over all pairs of the file,
or only over pairs whose MiniLM cosine reaches ``--floor`` (the pairs the guards actually see).

python -m training.guard_report --pairs tests/data/support_pairs.jsonl [--part check] [--floor 0.8]
python -m training.guard_report --pairs /tmp/qqp_tune.jsonl
"""

from __future__ import annotations

import argparse

import numpy as np

from cache import guards
from cache.evaluation import load_pairs
from cache.keys import normalise_query


def report(pairs: list[tuple[str, str, int]], floor: float | None = None) -> dict[str, dict[str, float]]:
    rows = [(normalise_query(a), normalise_query(b), y) for a, b, y in pairs]
    if floor is not None:
        from cache.embedder import Embedder

        texts = sorted({t for a, b, _ in rows for t in (a, b)})
        vecs = dict(zip(texts, Embedder().encode(texts), strict=True))
        rows = [r for r in rows if float(np.dot(vecs[r[0]], vecs[r[1]])) >= floor]
    pos = sum(y for _, _, y in rows)
    neg = len(rows) - pos
    out: dict[str, dict[str, float]] = {}
    for name in [*guards.GUARDS, "all"]:
        enabled = None if name == "all" else frozenset({name})
        vetoed = [y for a, b, y in rows if guards.check(a, b, enabled) is not None]
        out[name] = {"pairs": len(rows), "positives_vetoed": sum(vetoed), "positives": pos,
                     "negatives_vetoed": len(vetoed) - sum(vetoed), "negatives": neg,
                     "recall_cost": sum(vetoed) / pos if pos else 0.0,
                     "catch_rate": (len(vetoed) - sum(vetoed)) / neg if neg else 0.0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--part", choices=["tune", "check"], help="only this half of the support set")
    ap.add_argument("--floor", type=float, help="only pairs with cosine >= this")
    args = ap.parse_args()
    pairs = load_pairs(args.pairs)
    if args.part:
        from training.support_pairs import part_of

        pairs = [p for p in pairs if part_of(p[0]) == args.part]
    print(f"{'guard':<11} {'pos vetoed':>14} {'recall cost':>11} {'neg vetoed':>14} {'catch':>7}")
    for name, r in report(pairs, args.floor).items():
        print(f"{name:<11} {r['positives_vetoed']:>6}/{r['positives']:<7} {r['recall_cost']:>11.4f} "
              f"{r['negatives_vetoed']:>6}/{r['negatives']:<7} {r['catch_rate']:>7.4f}")


if __name__ == "__main__":
    main()
