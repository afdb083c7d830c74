"""Fit the verifier's logistic layer and pick the shipped default floor and threshold.

Uses only the *calib* bucket of qqp_dev.jsonl (sha256(text_a) % 10 == 6), which the cross-encoder was
not trained on; the check buckets (7-9) are never read here.

    python -m training.calibrate_verifier --embedder all-MiniLM-L6-v2 --target 0.92 --base-rate 0.5

For every calib pair: normalised texts, the embedder's cosine (cache.embedder), guard veto
(cache.guards), cross-encoder logit (the shipped int8 ONNX). A class-balanced logistic regression over
(logit, cosine) on the pairs that pass the guards above the lowest floor gives
p = sigmoid(bias + w_logit*logit + w_cos*cos). Then for each cosine floor the verifier threshold with
the most recall at precision >= --target *at --base-rate* is found, and the floor with the most recall
is the default (ties within 0.005 recall go to the higher floor: fewer verifier calls).

Why a base rate: precision on a file holds only at that file's share of positives. calib has 31%
duplicates; traffic where paraphrases are common (FAQ, support) has far more, and a threshold chosen
for 31% is stricter than it needs to be there, while the class-balanced value (0.5) is what a
balanced test set measures. The result goes to ``calibrations[<embedder>]`` in verifier.json (and to
the top level with ``--top-level``, the values used for embedders that have no calibration).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from cache.embedder import Embedder
from cache.evaluation import PairScores, best_at_precision
from cache.guards import check as guard_check
from cache.keys import normalise_query
from cache.verifier import CrossEncoderVerifier
from training.qqp_split import DEFAULT_QQP, read_pairs


def bucket(text_a: str) -> int:
    return int(hashlib.sha256(text_a.encode("utf-8")).hexdigest(), 16) % 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qqp", default=DEFAULT_QQP)
    ap.add_argument("--dir", default=str(Path(__file__).resolve().parent.parent / "cache" / "models" / "verifier"))
    ap.add_argument("--embedder", default="all-MiniLM-L6-v2", help="the embedder whose cosines are calibrated")
    ap.add_argument("--target", type=float, default=0.92, help="precision to reach on calib (margin over 0.90)")
    ap.add_argument("--base-rate", type=float, default=0.5,
                    help="share of duplicates at which --target must hold (0.5: class-balanced)")
    ap.add_argument("--min-floor", type=float, default=0.5)
    ap.add_argument("--top-level", action="store_true", help="also write the top-level (fallback) values")
    args = ap.parse_args()

    root = Path(args.dir)
    meta_path = root / "verifier.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.setdefault("model_file", "model_int8.onnx")
    meta.setdefault("max_length", 64)

    rows = [(a, b, y) for a, b, y in read_pairs(args.qqp) if bucket(a) == 6]
    na = [normalise_query(a) for a, _, _ in rows]
    nb = [normalise_query(b) for _, b, _ in rows]
    y = np.array([r[2] for r in rows], dtype=np.int8)
    emb = Embedder(args.embedder)
    texts = sorted(set(na) | set(nb))
    idx = {t: i for i, t in enumerate(texts)}
    vecs = emb.encode(texts)
    cos = np.einsum("ij,ij->i", vecs[[idx[t] for t in na]], vecs[[idx[t] for t in nb]])
    veto = np.array([guard_check(a, b) is not None for a, b in zip(na, nb, strict=True)])
    same = np.array([a == b for a, b in zip(na, nb, strict=True)])
    keep = (cos >= args.min_floor) & ~veto
    ver = CrossEncoderVerifier(root, embedder=args.embedder)
    logit = np.full(len(rows), -20.0, dtype=np.float32)
    sel = np.flatnonzero(keep)
    logit[sel] = ver.logits([(na[i], nb[i]) for i in sel])

    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1.0, class_weight="balanced")
    lr.fit(np.c_[logit[sel], cos[sel]], y[sel])
    bias, (w_logit, w_cos) = float(lr.intercept_[0]), map(float, lr.coef_[0])
    prob = 1 / (1 + np.exp(-(bias + w_logit * logit + w_cos * cos)))
    reasons = ["same query" if s else ("verified" if k else "guard") for s, k in zip(same, keep, strict=True)]
    passed = keep | same
    prob = np.where(same, 1.0, prob)
    ps = PairScores(cos.astype(np.float32), y, passed, prob.astype(np.float32), reasons, args.min_floor, True)
    floors = [round(f, 3) for f in np.arange(args.min_floor, 0.951, 0.025)]
    results = []
    for f in floors:
        p = best_at_precision(ps, args.target, [f], base_rate=args.base_rate)
        if p:
            results.append(p)
            print(f"floor {f:.3f}: verifier_threshold {p.verifier_threshold:.4f} precision at base rate "
                  f"{args.base_rate}: {p.precision_at(args.base_rate):.4f} (natural {p.precision:.4f}) "
                  f"recall {p.recall:.4f}")
    best_recall = max(p.recall for p in results)
    chosen = max((p for p in results if p.recall >= best_recall - 0.005), key=lambda p: p.threshold)
    print(f"best recall on calib {best_recall:.4f}; chosen floor {chosen.threshold}, recall {chosen.recall:.4f}")
    fitted = {
        "bias": bias, "w_logit": w_logit, "w_cos": w_cos,
        "default_threshold": math.floor(float(chosen.verifier_threshold) * 1e6) / 1e6,
        "default_floor": round(float(chosen.threshold), 3),
        "calibration": {
            "data": "qqp_dev.jsonl pairs with sha256(text_a) % 10 == 6 (never trained on)",
            "pairs": len(rows), "target_precision": args.target, "base_rate": args.base_rate,
            "calib_base_rate": round(chosen.base_rate, 4),
            f"precision_at_base_rate_{args.base_rate}": round(chosen.precision_at(args.base_rate), 4),
            "precision_natural": round(chosen.precision, 4), "recall": round(chosen.recall, 4),
            "false_hit_rate": round(chosen.false_hit_rate, 4),
            "logits": "one pair per onnxruntime run, exactly as serving (cache/verifier.py)",
        },
    }
    meta.setdefault("calibrations", {})[args.embedder] = fitted
    if args.top_level:
        meta.update({k: v for k, v in fitted.items()})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print("chosen", json.dumps(fitted, indent=2))


if __name__ == "__main__":
    main()
