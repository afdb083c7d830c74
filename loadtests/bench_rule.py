"""The decision rule's cost per semantic lookup, two decision configs compared in one paired run.

Every distinct first question of a labelled pairs file is "cached"; every second question is a
lookup whose top-k candidates come from exact KNN over the real MiniLM embeddings, as the store
returns them. Both rules (the real verifier) decide the same lookups one at a time, alternating which
goes first, so a slow moment of the shared machine costs both alike. Prints per-lookup p50 / p99
for each, the paired difference, and the verifier pairs scored per lookup.

python loadtests/bench_rule.py --pairs PAIRS.jsonl --a '{}' --b '{"confident_gate": false}' [--limit 3000]
(each config may name another verifier directory: '{"verifier": "/path/to/verifier"}'; each rule runs
at its verifier's calibrated defaults)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from common import REPO

sys.path.insert(0, str(REPO))

from cache.decision import Candidate, RuleSettings, build_rule  # noqa: E402
from cache.embedder import Embedder  # noqa: E402
from cache.evaluation import load_pairs  # noqa: E402
from cache.keys import normalise_query  # noqa: E402


def counted(rule: Any) -> list[int]:
    """Wraps the rule's verifier so each call's pair count is recorded."""
    calls: list[int] = []
    real = rule.verifier.scores

    def scores(pairs, cosines):  # type: ignore[no-untyped-def]
        calls.append(len(pairs))
        return real(pairs, cosines)

    rule.verifier.scores = scores
    return calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", required=True, help="labelled pairs (cachestack eval's formats)")
    p.add_argument("--a", default="{}", help="decision config of rule A, as JSON")
    p.add_argument("--b", required=True, help="decision config of rule B, as JSON")
    p.add_argument("--limit", type=int, default=3000, help="pairs read (the cache holds their first questions)")
    p.add_argument("--lookups", type=int, default=600)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    rows = [(normalise_query(a), normalise_query(b)) for a, b, _ in load_pairs(args.pairs)[: args.limit]]
    cached = sorted({a for a, _ in rows})
    asked = [b for _, b in rows][: args.lookups]
    emb = Embedder()
    sims = emb.encode(asked) @ emb.encode(cached).T
    top = np.argsort(-sims, axis=1)[:, : args.k]
    items = [(q, [Candidate(str(j), cached[j], float(sims[i, j])) for j in top[i]]) for i, q in enumerate(asked)]
    rules = {name: build_rule({"verifier": "default", **json.loads(cfg)}) for name, cfg in (("A", args.a), ("B", args.b))}
    calls = {name: counted(rule) for name, rule in rules.items()}
    settings = {name: RuleSettings(rule.default_floor, rule.default_verifier_threshold)  # each its own defaults
                for name, rule in rules.items()}
    ms: dict[str, list[float]] = {"A": [], "B": []}
    hits = {"A": 0, "B": 0}
    for i, item in enumerate(items):
        for name in (("A", "B") if i % 2 == 0 else ("B", "A")):
            t = time.perf_counter()
            [d] = rules[name].decide([item], settings[name])
            ms[name].append(1000 * (time.perf_counter() - t))
            hits[name] += int(d.hit)
    diff = [b - a for a, b in zip(ms["A"], ms["B"], strict=True)]
    out: dict[str, Any] = {"lookups": len(items), "k": args.k, "a": args.a, "b": args.b}
    for name in ("A", "B"):
        v = sorted(ms[name])
        out[name] = {"p50_ms": round(statistics.median(v), 3), "p99_ms": round(v[int(0.99 * (len(v) - 1))], 3),
                     "mean_ms": round(statistics.fmean(v), 3), "hits": hits[name],
                     "verifier_pairs_per_lookup": round(sum(calls[name]) / len(items), 3)}
        print(f"{name} {getattr(args, name.lower())}: p50 {out[name]['p50_ms']:.2f} ms, p99 {out[name]['p99_ms']:.2f} ms, "
              f"mean {out[name]['mean_ms']:.2f} ms, {out[name]['verifier_pairs_per_lookup']:.2f} verifier pairs "
              f"per lookup, {hits[name]} hits of {len(items)}")
    out["b_minus_a_ms"] = {"p50": round(statistics.median(diff), 3), "mean": round(statistics.fmean(diff), 3)}
    print(f"B - A per lookup (paired): p50 {out['b_minus_a_ms']['p50']:+.2f} ms, mean {out['b_minus_a_ms']['mean']:+.2f} ms")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
