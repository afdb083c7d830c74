"""Labelled pairs from a faq pool, as the cache meets them, for ``cachestack eval --pairs``.

Positives: every two paraphrases of one intent. Negatives: each paraphrase against its ``--k``
nearest paraphrases of *other* intents by the embedder's cosine (the neighbours a lookup finds),
whatever their family. So the offline precision of the rule on these pairs is the precision of its
semantic hits on a faq run, before popularity weights them.

python -m loadtests.pool_pairs --pool loadtests/data/faq_holdout.jsonl --out /tmp/holdout_pairs.jsonl
.venv/bin/cachestack eval --pairs /tmp/holdout_pairs.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np

from cache.embedder import Embedder
from cache.keys import normalise_query
from loadtests.workload.pool import DEFAULT_POOL, Pool, load_pool


def pool_pairs(pool: Pool, embedder: Embedder, k: int = 3) -> list[dict[str, str | int]]:
    texts = [(p, it.id) for it in pool.intents for p in it.paraphrases]
    vecs = embedder.encode([normalise_query(t) for t, _ in texts])
    sims = vecs @ vecs.T
    out: list[dict[str, str | int]] = []
    for it in pool.intents:
        for a, b in itertools.combinations(it.paraphrases, 2):
            out.append({"text_a": a, "text_b": b, "label": 1})
    for i, (text, owner) in enumerate(texts):
        others = [j for j in np.argsort(-sims[i]) if texts[j][1] != owner][:k]
        out.extend({"text_a": texts[j][0], "text_b": text, "label": 0} for j in others)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default=str(DEFAULT_POOL))
    ap.add_argument("--out", required=True)
    ap.add_argument("--k", type=int, default=3, help="nearest other-intent paraphrases per question")
    ap.add_argument("--embedder", default=None, help="embedder folder or name (default: the shipped one)")
    args = ap.parse_args()
    pairs = pool_pairs(load_pool(args.pool), Embedder(args.embedder) if args.embedder else Embedder(), args.k)
    with open(args.out, "w", encoding="utf-8") as fh:
        for row in pairs:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(pairs)} pairs ({sum(int(r['label']) for r in pairs)} positive) to {args.out}")


if __name__ == "__main__":
    main()
