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

With ``--also`` other labelled sets' tuning halves must keep the target precision too, and the
defaults maximise the mean recall over all sets; ``--confident`` also searches the verifier's
confident gate (cache/decision.py: a pair whose cross-encoder probability alone reaches
``confident_threshold`` is served from a cosine of ``confident_floor`` up, below the floor):

    python -m training.calibrate_verifier --target 0.92 --base-rate 0.5 --top-level --confident \
        --also support=tests/data/support_pairs.jsonl llm-style=FILE

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
from cache.evaluation import PairScores, best_at_precision, load_pairs, point
from cache.guards import check as guard_check
from cache.keys import normalise_query
from cache.verifier import CrossEncoderVerifier
from training.qqp_split import DEFAULT_QQP, bucket, read_pairs


def features(rows: list[tuple[str, str, int]], emb: Embedder, ver: CrossEncoderVerifier, min_floor: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pair, as serving sees it: cosine, guard veto, same normalised text, kept for the verifier
    (above ``min_floor``, not vetoed, readable whole), cross-encoder logit, label."""
    na = [normalise_query(a) for a, _, _ in rows]
    nb = [normalise_query(b) for _, b, _ in rows]
    y = np.array([r[2] for r in rows], dtype=np.int8)
    texts = sorted(set(na) | set(nb))
    idx = {t: i for i, t in enumerate(texts)}
    vecs = emb.encode(texts)
    cos = np.einsum("ij,ij->i", vecs[[idx[t] for t in na]], vecs[[idx[t] for t in nb]])
    veto = np.array([guard_check(a, b) is not None for a, b in zip(na, nb, strict=True)])
    same = np.array([a == b for a, b in zip(na, nb, strict=True)])
    keep = (cos >= min_floor) & ~veto
    logit = np.full(len(rows), -20.0, dtype=np.float32)
    sel = np.flatnonzero(keep)
    logit[sel] = ver.logits([(na[i], nb[i]) for i in sel])
    keep &= ~np.isnan(logit)  # too long to read whole: never a hit
    return cos, veto, same, keep, np.nan_to_num(logit, nan=-20.0), y


def tune_half(rows: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The tuning half of another labelled set: sha256(text_a) % 2 == 0 (the other half is reported)."""
    return [r for r in rows if int(hashlib.sha256(r[0].encode("utf-8")).hexdigest(), 16) % 2 == 0]


#: cosine floors and cross-encoder logits the confident gate is searched over (--confident)
CONFIDENT_FLOORS = (0.5, 0.55, 0.6, 0.65, 0.7)
CONFIDENT_LOGITS = tuple(np.round(np.arange(1.0, 8.001, 0.25), 2))

Sets = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def joint_choice(sets: Sets, floors: list[float], target: float, base_rate: float, confident: bool = False
                 ) -> tuple[float, float, float | None, float | None, dict[str, tuple[float, float]]] | None:
    """(floor, verifier threshold, confident threshold, confident floor, per set (precision at
    base_rate, recall)) with the most mean recall over the sets such that every set that has
    non-duplicates keeps precision >= target at base_rate. Without ``confident`` the gate stays off
    (None, None); with it, every gate of CONFIDENT_FLOORS x CONFIDENT_LOGITS is tried too (a pair is
    served when the cross-encoder's own sigmoid(logit) reaches the threshold, from that cosine up).

    ``sets`` maps a name to (cosine, passed, probability, label, cross-encoder probability) arrays."""
    best = None
    grid = np.round(np.arange(0.30, 0.951, 0.005 if confident else 0.0025), 4)
    gates: list[tuple[float | None, float | None]] = [(None, None)]
    if confident:
        gates += [(float(1 / (1 + np.exp(-t))), lf) for lf in CONFIDENT_FLOORS for t in CONFIDENT_LOGITS]
    for ct, cf in gates:
        sure = {name: (passed & (own >= ct) & (cos >= cf)) if ct is not None and cf is not None
                else np.zeros(len(cos), dtype=bool) for name, (cos, passed, _p, _y, own) in sets.items()}
        for f in floors:
            for v in grid:
                per: dict[str, tuple[float, float]] = {}
                for name, (cos, passed, prob, label, _own) in sets.items():
                    hit = sure[name] | (passed & (cos >= f) & (prob >= v))
                    pos, neg = int(label.sum()), int((label == 0).sum())
                    r = float((hit & (label == 1)).sum()) / max(1, pos)
                    fhr = float((hit & (label == 0)).sum()) / neg if neg else 0.0
                    p = base_rate * r / (base_rate * r + (1 - base_rate) * fhr) if r + fhr > 0 else 1.0
                    per[name] = (p, r)
                if any(p < target for name, (p, _) in per.items() if int((sets[name][3] == 0).sum())):
                    continue
                mean_r = float(np.mean([r for _, r in per.values()]))
                if best is None or mean_r > best[0] + 1e-9 or (abs(mean_r - best[0]) <= 1e-9 and f > best[1]):
                    best = (mean_r, f, float(v), ct, cf, per)
    return None if best is None else (best[1], best[2], best[3], best[4], best[5])


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
    ap.add_argument("--also", nargs="*", default=[], metavar="NAME=FILE",
                    help="other labelled sets (cachestack eval's formats) whose tuning half (sha256(text_a) % 2 "
                         "== 0) must keep the target precision too; the defaults then maximise the mean recall")
    ap.add_argument("--confident", action="store_true",
                    help="with --also: search the confident gate too (cache/decision.py) and write it")
    args = ap.parse_args()

    root = Path(args.dir)
    meta_path = root / "verifier.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.setdefault("model_file", "model_int8.onnx")
    meta.setdefault("max_length", 64)

    rows = [(a, b, y) for a, b, y in read_pairs(args.qqp) if bucket(a) == 6]
    emb = Embedder(args.embedder)
    ver = CrossEncoderVerifier(root, embedder=args.embedder)
    cos, veto, same, keep, logit, y = features(rows, emb, ver, args.min_floor)
    sel = np.flatnonzero(keep)

    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1.0, class_weight="balanced")
    lr.fit(np.c_[logit[sel], cos[sel]], y[sel])
    bias, (w_logit, w_cos) = float(lr.intercept_[0]), map(float, lr.coef_[0])
    prob = 1 / (1 + np.exp(-(bias + w_logit * logit + w_cos * cos)))
    own = 1 / (1 + np.exp(-logit))  # the cross-encoder's own probability (the confident gate's)
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
    floor, vthr = float(chosen.threshold), float(chosen.verifier_threshold)
    joint: dict[str, object] = {}
    gate: dict[str, float] = {}
    if args.also:
        sets: Sets = {"qqp-calib": (cos, passed, prob, y, own)}
        for spec in args.also:
            name, _, path = spec.partition("=")
            extra = tune_half(load_pairs(path))
            c, _v, sm, k, lg, yy = features(extra, emb, ver, args.min_floor)
            pr = np.where(sm, 1.0, 1 / (1 + np.exp(-(bias + w_logit * lg + w_cos * c))))
            sets[name] = (c, k | sm, pr, yy, 1 / (1 + np.exp(-lg)))
        picked = joint_choice(sets, floors, args.target, args.base_rate, confident=args.confident)
        if picked is None:
            raise SystemExit("no floor and threshold keep the target precision on every set")
        floor, vthr, ct, cf, per = picked
        if ct is not None and cf is not None:
            gate = {"confident_threshold": math.floor(ct * 1e6) / 1e6, "confident_floor": cf}
            sure = passed & (own >= gate["confident_threshold"]) & (cos >= cf) & ~same
            ps.reasons = ["confident" if c else r for c, r in zip(sure, reasons, strict=True)]
        joint = {name: {"precision_at_base_rate": round(p, 4), "recall": round(r, 4)} for name, (p, r) in per.items()}
        print(f"joint choice over {list(sets)}: floor {floor}, verifier_threshold {vthr}, gate {gate}: {joint}")
        chosen = point(ps, floor, vthr)
    fitted = {
        "bias": bias, "w_logit": w_logit, "w_cos": w_cos,
        "default_threshold": math.floor(vthr * 1e6) / 1e6,
        "default_floor": round(floor, 3),
        "confident_threshold": gate.get("confident_threshold"), "confident_floor": gate.get("confident_floor"),
        "calibration": {
            "data": "qqp_dev.jsonl pairs with sha256(text_a) % 10 == 6 (never trained on)",
            "pairs": len(rows), "target_precision": args.target, "base_rate": args.base_rate,
            "calib_base_rate": round(chosen.base_rate, 4),
            f"precision_at_base_rate_{args.base_rate}": round(chosen.precision_at(args.base_rate), 4),
            "precision_natural": round(chosen.precision, 4), "recall": round(chosen.recall, 4),
            "false_hit_rate": round(chosen.false_hit_rate, 4),
            "logits": "one pair per onnxruntime run, exactly as serving (cache/verifier.py)",
            **({"joint": {"sets": args.also, "tuning_halves": joint,
                          "rule": "the most mean recall with every set's precision >= target at base_rate"}}
               if joint else {}),
        },
    }
    meta.setdefault("calibrations", {})[args.embedder] = fitted
    if args.top_level:
        meta.update({k: v for k, v in fitted.items()})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print("chosen", json.dumps(fitted, indent=2))


if __name__ == "__main__":
    main()
