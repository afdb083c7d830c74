"""Fit the verifier's logistic layer and pick the shipped default floor and threshold.

Uses only the *calib* bucket of qqp_dev.jsonl (sha256(text_a) % 10 == 6), which the cross-encoder was
not trained on; the check buckets (7-9) are never read here.

    python -m training.calibrate_verifier --dir cache/models/verifier --target 0.91

For every calib pair: normalised texts, MiniLM cosine (cache.embedder), guard veto (cache.guards),
cross-encoder logit (the shipped int8 ONNX). A logistic regression over (logit, cosine) on the pairs
that pass the guards above the lowest floor gives p = sigmoid(bias + w_logit*logit + w_cos*cos). Then
for each cosine floor the verifier threshold with the most recall at precision >= --target is found;
the default is the threshold found at ``--floor`` (0.80).
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
    ap.add_argument("--target", type=float, default=0.91, help="precision to reach on calib (margin over 0.90)")
    ap.add_argument("--min-floor", type=float, default=0.6)
    ap.add_argument("--floor", type=float, default=0.8,
                    help="the shipped cosine floor (a policy: below ~0.8 the verifier is called more often for "
                         "little recall); the verifier threshold is calibrated at this floor")
    args = ap.parse_args()

    root = Path(args.dir)
    meta_path = root / "verifier.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.setdefault("model_file", "model_int8.onnx")
    meta.setdefault("max_length", 64)
    meta.update({"bias": 0.0, "w_logit": 1.0, "w_cos": 0.0})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    rows = [(a, b, y) for a, b, y in read_pairs(args.qqp) if bucket(a) == 6]
    na = [normalise_query(a) for a, _, _ in rows]
    nb = [normalise_query(b) for _, b, _ in rows]
    y = np.array([r[2] for r in rows], dtype=np.int8)
    emb = Embedder()
    texts = sorted(set(na) | set(nb))
    idx = {t: i for i, t in enumerate(texts)}
    vecs = emb.encode(texts)
    cos = np.einsum("ij,ij->i", vecs[[idx[t] for t in na]], vecs[[idx[t] for t in nb]])
    veto = np.array([guard_check(a, b) is not None for a, b in zip(na, nb, strict=True)])
    same = np.array([a == b for a, b in zip(na, nb, strict=True)])
    keep = (cos >= args.min_floor) & ~veto
    ver = CrossEncoderVerifier(root)
    logit = np.full(len(rows), -20.0, dtype=np.float32)
    sel = np.flatnonzero(keep)
    logit[sel] = ver.logits([(na[i], nb[i]) for i in sel])

    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1.0)
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
        p = best_at_precision(ps, args.target, [f])
        if p:
            results.append(p)
            print(f"floor {f:.3f}: verifier_threshold {p.verifier_threshold:.4f} precision {p.precision:.4f} "
                  f"recall {p.recall:.4f}")
    best_recall = max(p.recall for p in results)
    at_floor = [p for p in results if abs(p.threshold - args.floor) < 1e-6]
    chosen = at_floor[0] if at_floor else max(results, key=lambda p: p.recall)
    print(f"best recall on calib {best_recall:.4f}; shipped floor {chosen.threshold}")
    # also with the logit alone, to report what the cosine adds
    meta.update({
        "bias": bias, "w_logit": w_logit, "w_cos": w_cos,
        "default_threshold": round(float(chosen.verifier_threshold), 6),
        "default_floor": round(float(chosen.threshold), 3),
        "calibration": {
            "data": "qqp_dev.jsonl pairs with sha256(text_a) % 10 == 6 (never trained on)",
            "pairs": len(rows), "target_precision": args.target,
            "precision": round(chosen.precision, 4), "recall": round(chosen.recall, 4),
        },
    })
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print("chosen", json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
