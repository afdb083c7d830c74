"""Offline evaluation and calibration of the decision rule on labelled query pairs.

Each pair is treated as if ``text_a`` had been cached and ``text_b`` asked: both go through
``normalise_query``, both are embedded by the serving embedder, the cosine is their dot product, and
the rule decides on ``(text_b, [Candidate(text_a, cosine)])`` with the serving settings. A hit on a
pair labelled 1 is a true hit, a hit on a pair labelled 0 a false hit.

- precision       true hits / hits
- recall          true hits / pairs labelled 1
- false_hit_rate  false hits / pairs labelled 0 (how often a question that needs another answer is
                  served a wrong one)
- precision at a base rate: the precision the same rule would have on traffic where a share
  ``base_rate`` of lookups has a true duplicate cached, pi*TPR / (pi*TPR + (1-pi)*FPR). Precision
  measured on one file holds only at that file's own share of positives; ``precision_balanced`` is
  the class-balanced value (pi = 0.5), which does not hinge on how a file was sampled.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cache.decision import Candidate, RuleSettings
from cache.keys import normalise_query


class PairsFileError(ValueError):
    """A pairs file that cannot be used; the message is one line naming the file and the problem."""


_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


def _label(value: Any, where: str, column: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return 1 if value.strip().lower() in _TRUE else 0
    raise PairsFileError(f"{where}: label column {column!r} must be 0 or 1, got {value!r}")


def _text(row: dict[str, Any], column: str, where: str) -> str:
    if column not in row:
        cols = ", ".join(repr(c) for c in list(row)[:8])
        raise PairsFileError(f"{where}: no column {column!r} (columns: {cols})")
    value = row[column]
    if not isinstance(value, str):
        raise PairsFileError(f"{where}: column {column!r} must be text, got {type(value).__name__}")
    return value


def _rows_from_objects(objs: Sequence[Any], path: str, a: str, b: str, label: str,
                       line_numbers: Sequence[int] | None = None) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    for i, obj in enumerate(objs):
        where = f"{path}:{line_numbers[i] if line_numbers else i + 1}"
        if not isinstance(obj, dict):
            raise PairsFileError(f"{where}: expected an object with columns, got {type(obj).__name__}")
        if a not in obj and b not in obj and "origin" in obj and "similar" in obj:
            # GPTCache's mock pairs: every similar question should hit its origin
            out.append((_text(obj, "origin", where), _text(obj, "similar", where), 1))
            continue
        ta, tb = _text(obj, a, where), _text(obj, b, where)
        if label not in obj:
            raise PairsFileError(f"{where}: no label column {label!r}")
        out.append((ta, tb, _label(obj[label], where, label)))
    return out


def load_pairs(path: str | Path, a: str = "text_a", b: str = "text_b", label: str = "label") -> list[tuple[str, str, int]]:
    """(text_a, text_b, label) from JSONL, a JSON array (GPTCache ``{"origin","similar"}`` too) or CSV/TSV."""
    name = str(path)
    try:
        raw = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PairsFileError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise PairsFileError(f"{name}: is a directory, not a pairs file") from None
    except UnicodeDecodeError as exc:
        raise PairsFileError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise PairsFileError(f"{name}: cannot read ({exc.strerror or exc})") from None
    stripped = raw.lstrip()
    if not stripped:
        raise PairsFileError(f"{name}: the file is empty")
    suffix = Path(name).suffix.lower()
    rows: list[tuple[str, str, int]]
    if stripped[0] in "[{" and suffix not in {".csv", ".tsv"}:
        if stripped[0] == "[":
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise PairsFileError(f"{name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
            rows = _rows_from_objects(data, name, a, b, label)
        else:
            objs, lines = [], []
            for n, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    objs.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise PairsFileError(f"{name}:{n}: not valid JSON ({exc.msg})") from None
                lines.append(n)
            rows = _rows_from_objects(objs, name, a, b, label, lines)
    else:
        delimiter = "\t" if suffix == ".tsv" else ","
        try:
            reader = csv.DictReader(raw.splitlines(), delimiter=delimiter)
            fields = reader.fieldnames or []
            for col in (a, b, label):
                if col not in fields:
                    cols = ", ".join(repr(c) for c in fields[:8])
                    raise PairsFileError(f"{name}: no column {col!r} in the header (columns: {cols})")
            rows = []
            for n, rec in enumerate(reader, 2):
                where = f"{name}:{n}"
                if rec.get(a) is None or rec.get(b) is None or rec.get(label) is None:
                    raise PairsFileError(f"{where}: row has fewer fields than the header")
                rows.append((rec[a], rec[b], _label(rec[label], where, label)))
        except csv.Error as exc:
            raise PairsFileError(f"{name}: not valid CSV ({exc})") from None
    if not rows:
        raise PairsFileError(f"{name}: the file holds no pairs")
    return rows


@dataclass
class PairScores:
    """Per pair: cosine, label, whether the rule let it through at ``floor`` with verifier threshold 0,
    the rule's score (verifier probability, or the cosine without a verifier) and the reason."""

    cosine: np.ndarray
    label: np.ndarray
    passed: np.ndarray
    score: np.ndarray
    reasons: list[str]
    floor: float
    uses_verifier: bool
    seconds: float = 0.0


def score_pairs(pairs: Sequence[tuple[str, str, int]], embedder: Any, rule: Any, floor: float,
                batch: int = 2048, confident: bool = True) -> PairScores:
    """Run the rule on every pair at cosine floor ``floor`` and verifier threshold 0 (``confident``:
    with the verifier's confident gate)."""
    import time

    na = [normalise_query(a) for a, _, _ in pairs]
    nb = [normalise_query(b) for _, b, _ in pairs]
    texts = sorted(set(na) | set(nb))
    index = {t: i for i, t in enumerate(texts)}
    vecs = embedder.encode(texts)
    ia = np.fromiter((index[t] for t in na), dtype=np.int64, count=len(na))
    ib = np.fromiter((index[t] for t in nb), dtype=np.int64, count=len(nb))
    cos = np.einsum("ij,ij->i", vecs[ia], vecs[ib]).astype(np.float32)
    labels = np.array([y for _, _, y in pairs], dtype=np.int8)
    settings = RuleSettings(threshold=floor, verifier_threshold=0.0, confident=confident)
    passed = np.zeros(len(pairs), dtype=bool)
    score = np.zeros(len(pairs), dtype=np.float32)
    reasons: list[str] = []
    t0 = time.perf_counter()
    for start in range(0, len(pairs), batch):
        items = [(nb[i], [Candidate(str(i), na[i], float(cos[i]))])
                 for i in range(start, min(len(pairs), start + batch))]
        for j, d in enumerate(rule.decide(items, settings)):
            passed[start + j] = d.hit
            score[start + j] = d.score
            reasons.append(d.reason)
    uses_verifier = getattr(rule, "verifier", None) is not None
    return PairScores(cos, labels, passed, score, reasons, floor, uses_verifier, time.perf_counter() - t0)


def hits_at(ps: PairScores, threshold: float, verifier_threshold: float | None) -> np.ndarray:
    """Which pairs the rule serves at these settings (``threshold`` must be >= the scored floor)."""
    if threshold < ps.floor - 1e-9:
        raise ValueError(f"threshold {threshold} is below the floor {ps.floor} the pairs were scored at")
    hit = ps.passed & (ps.cosine >= threshold)
    if ps.uses_verifier:
        hit &= ps.score >= (verifier_threshold if verifier_threshold is not None else 0.0)
    return hit | always_hits(ps)


#: reasons the rule serves whatever the floor and verifier threshold: an exact match, and the
#: verifier's confident gate (cache/decision.py), whose own settings come with the verifier
ALWAYS = ("same query", "confident")


def always_hits(ps: PairScores) -> np.ndarray:
    return ps.passed & np.array([r in ALWAYS for r in ps.reasons], dtype=bool)


def without_gate(ps: PairScores) -> PairScores:
    """The same pairs as the rule decides them with the confident gate off: a pair the gate served
    is left to the floor and the verifier threshold, with the probability it was scored at. Saves
    scoring every pair twice (one pair per onnxruntime run is most of calibrate's time)."""
    reasons = ["verified" if r == "confident" else r for r in ps.reasons]
    return PairScores(ps.cosine, ps.label, ps.passed, ps.score, reasons, ps.floor, ps.uses_verifier, ps.seconds)


@dataclass
class Point:
    threshold: float
    verifier_threshold: float | None
    hits: int
    true_hits: int
    false_hits: int
    positives: int
    negatives: int

    @property
    def precision(self) -> float:
        return self.true_hits / self.hits if self.hits else 1.0

    @property
    def recall(self) -> float:
        return self.true_hits / self.positives if self.positives else 0.0

    @property
    def false_hit_rate(self) -> float:
        return self.false_hits / self.negatives if self.negatives else 0.0

    @property
    def base_rate(self) -> float:
        """The share of pairs labelled 1: the base rate at which ``precision`` holds."""
        total = self.positives + self.negatives
        return self.positives / total if total else 0.0

    def precision_at(self, base_rate: float) -> float:
        """Precision on traffic with this share of true duplicates (same recall and false-hit rate)."""
        tp = base_rate * self.recall
        fp = (1.0 - base_rate) * self.false_hit_rate
        return tp / (tp + fp) if tp + fp > 0 else 1.0

    @property
    def precision_balanced(self) -> float:
        return self.precision_at(0.5)


def point(ps: PairScores, threshold: float, verifier_threshold: float | None) -> Point:
    hit = hits_at(ps, threshold, verifier_threshold)
    pos = int(ps.label.sum())
    tp = int((hit & (ps.label == 1)).sum())
    n = int(hit.sum())
    return Point(threshold, verifier_threshold, n, tp, n - tp, pos, len(ps.label) - pos)


def knob_grid(ps: PairScores) -> np.ndarray:
    """The values the table sweeps: verifier thresholds with a verifier, cosine thresholds without."""
    if ps.uses_verifier:
        return np.round(np.arange(0.0, 1.0001, 0.01), 4)
    return np.round(np.arange(max(ps.floor, 0.5), 1.0001, 0.005), 4)


def sweep(ps: PairScores, threshold: float) -> list[Point]:
    """Points over the knob: the verifier threshold at cosine floor ``threshold`` (or the cosine)."""
    if ps.uses_verifier:
        return [point(ps, threshold, float(v)) for v in knob_grid(ps)]
    return [point(ps, float(t), None) for t in knob_grid(ps) if t >= threshold - 1e-9]


def best_at_precision(ps: PairScores, target: float, floors: Sequence[float] | None = None,
                      base_rate: float | None = None) -> Point | None:
    """The settings with the most recall whose precision is at least ``target`` (exact, not a grid).

    ``base_rate`` None means precision at the file's own share of positives; a value (0.5: class-
    balanced) reweights the classes so the precision holds at that share instead. With a verifier
    every cosine floor in ``floors`` is tried with every verifier threshold that changes the outcome;
    without, the cosine threshold alone is swept (guards stay on).
    """
    pos = int(ps.label.sum())
    neg = len(ps.label) - pos
    weights = _class_weights(pos, neg, base_rate)
    exact = always_hits(ps)
    best: Point | None = None
    if ps.uses_verifier:
        floor_list = floors if floors is not None else [ps.floor]
        for t in floor_list:
            if t < ps.floor - 1e-9:
                continue
            base = ps.passed & (ps.cosine >= t) & ~exact
            cand = _best_cut(ps.score[base], ps.label[base], int((exact & (ps.label == 1)).sum()),
                             int((exact & (ps.label == 0)).sum()), target, weights)
            if cand and (best is None or (cand[1], -cand[3]) > (best.true_hits, -best.false_hits)):
                v, tp, n, fp = cand
                best = Point(float(t), v, n, tp, fp, pos, neg)
    else:
        base = ps.passed & ~exact
        cand = _best_cut(ps.cosine[base], ps.label[base], int((exact & (ps.label == 1)).sum()),
                         int((exact & (ps.label == 0)).sum()), target, weights)
        if cand:
            v, tp, n, fp = cand
            best = Point(max(v, ps.floor), None, n, tp, fp, pos, neg)
    return best


def _class_weights(pos: int, neg: int, base_rate: float | None) -> tuple[float, float]:
    """Weights of a true and a false hit so that weighted precision is precision at ``base_rate``."""
    if base_rate is None or pos == 0 or neg == 0:
        return 1.0, 1.0
    if not 0.0 < base_rate < 1.0:
        raise ValueError(f"base_rate must be in (0, 1), got {base_rate}")
    return base_rate / pos, (1.0 - base_rate) / neg


def _best_cut(scores: np.ndarray, labels: np.ndarray, tp0: int, fp0: int, target: float,
              weights: tuple[float, float] = (1.0, 1.0)) -> tuple[float, int, int, int] | None:
    """(cut, true hits, hits, false hits) for the lowest cut ``score >= cut`` keeping the (class-weighted)
    precision >= target."""
    if len(scores) == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    y = labels[order].astype(np.int64)
    tp = np.cumsum(y) + tp0
    n = np.arange(1, len(s) + 1) + tp0 + fp0
    w_pos, w_neg = weights
    wtp = w_pos * tp
    precision = wtp / (wtp + w_neg * (n - tp))
    # only cut between distinct scores: everything tied with the cut is served too
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    ok = (precision >= target - 1e-12) & last_of_tie
    if not ok.any():
        return None
    idx = int(np.flatnonzero(ok)[np.argmax(tp[ok])])
    return float(s[idx]), int(tp[idx]), int(n[idx]), int(n[idx] - tp[idx])


def recall_at_precision(ps: PairScores, threshold: float, target: float, base_rate: float | None = None) -> float:
    """The most recall at precision >= target (at ``base_rate``, None: the file's own), moving only the
    knob at cosine floor ``threshold``."""
    floors = [threshold] if ps.uses_verifier else None
    if not ps.uses_verifier:
        sub = PairScores(ps.cosine, ps.label, ps.passed & (ps.cosine >= threshold), ps.score, ps.reasons,
                         ps.floor, False)
        best = best_at_precision(sub, target, base_rate=base_rate)
    else:
        best = best_at_precision(ps, target, floors, base_rate=base_rate)
    return best.recall if best else 0.0


@dataclass
class Summary:
    pairs: int
    positives: int
    negatives: int
    threshold: float
    verifier_threshold: float | None
    verifier: str
    guards: bool
    op: Point
    table: list[Point] = field(default_factory=list)
    recall_at: dict[str, float] = field(default_factory=dict)
    rule_ms_per_pair: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pairs": self.pairs,
            "positives": self.positives,
            "negatives": self.negatives,
            "threshold": self.threshold,
            "verifier_threshold": self.verifier_threshold,
            "verifier": self.verifier,
            "guards": self.guards,
            "hits": self.op.hits,
            "true_hits": self.op.true_hits,
            "false_hits": self.op.false_hits,
            "base_rate": round(self.op.base_rate, 6),
            "precision": round(self.op.precision, 6),
            "precision_balanced": round(self.op.precision_balanced, 6),
            "recall": round(self.op.recall, 6),
            "false_hit_rate": round(self.op.false_hit_rate, 6),
            "rule_ms_per_pair": round(self.rule_ms_per_pair, 4),
        }
        for key, value in self.recall_at.items():
            out[f"recall_at_precision_{key}"] = round(value, 6)
        out["table"] = [
            {"threshold": p.threshold, "verifier_threshold": p.verifier_threshold, "precision": round(p.precision, 6),
             "precision_balanced": round(p.precision_balanced, 6), "recall": round(p.recall, 6), "hits": p.hits,
             "false_hits": p.false_hits}
            for p in self.table
        ]
        return out


def summarise(ps: PairScores, settings: RuleSettings, verifier_name: str, guards: bool,
              default_verifier_threshold: float | None) -> Summary:
    vthr = settings.verifier_threshold
    if vthr is None and ps.uses_verifier:
        vthr = default_verifier_threshold
    op = point(ps, settings.threshold, vthr)
    recall_at = {f"{p:.2f}": recall_at_precision(ps, settings.threshold, p) for p in (0.9, 0.95, 0.99)}
    recall_at |= {f"{p:.2f}_balanced": recall_at_precision(ps, settings.threshold, p, 0.5) for p in (0.9, 0.95)}
    n = len(ps.label)
    return Summary(n, int(ps.label.sum()), n - int(ps.label.sum()), settings.threshold,
                   vthr if ps.uses_verifier else None, verifier_name, guards, op,
                   sweep(ps, settings.threshold), recall_at, 1000.0 * ps.seconds / max(1, n))


def format_table(summary: Summary, every: int = 5) -> str:
    """The precision/recall table printed by ``cachestack eval``."""
    knob = "verifier_thr" if summary.verifier_threshold is not None else "cos_thr"
    lines = [f"{knob:>12} {'precision':>9} {'balanced':>8} {'recall':>7} {'hits':>7} {'false':>6}"]
    for i, p in enumerate(summary.table):
        if i % every and not _near_op(summary, p):
            continue
        value = p.verifier_threshold if p.verifier_threshold is not None else p.threshold
        lines.append(f"{value:>12.3f} {p.precision:>9.4f} {p.precision_balanced:>8.4f} {p.recall:>7.4f} {p.hits:>7d} "
                     f"{p.false_hits:>6d}")
    op = summary.op
    lines.append(
        f"at the configured settings (threshold {summary.threshold}, verifier_threshold "
        f"{summary.verifier_threshold}, verifier {summary.verifier}, guards {'on' if summary.guards else 'off'}): "
        f"precision {op.precision:.4f} (at this file's {op.base_rate:.0%} positives; class-balanced "
        f"{op.precision_balanced:.4f}), recall {op.recall:.4f}, false-hit rate {op.false_hit_rate:.4f}, "
        f"{op.hits} hits ({op.false_hits} false) on {summary.pairs} pairs"
    )
    lines.append("recall at precision " + ", ".join(f"{k}: {v:.4f}" for k, v in summary.recall_at.items()))
    return "\n".join(lines)


def _near_op(summary: Summary, p: Point) -> bool:
    if summary.verifier_threshold is not None and p.verifier_threshold is not None:
        return math.isclose(p.verifier_threshold, round(summary.verifier_threshold, 2), abs_tol=1e-6)
    return math.isclose(p.threshold, summary.threshold, abs_tol=1e-6)


def plot(summary: Summary, out: str | Path) -> None:
    """Precision and recall against the swept knob, the configured operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uses_v = summary.verifier_threshold is not None
    xs = [p.verifier_threshold if uses_v else p.threshold for p in summary.table]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(xs, [p.precision for p in summary.table], label="precision", color="tab:blue")
    ax.plot(xs, [p.recall for p in summary.table], label="recall", color="tab:orange")
    x0 = summary.verifier_threshold if uses_v else summary.threshold
    ax.axvline(x0, color="grey", linestyle=":", linewidth=1)
    ax.plot([x0], [summary.op.precision], "o", color="tab:blue")
    ax.plot([x0], [summary.op.recall], "o", color="tab:orange")
    ax.annotate(f"P {summary.op.precision:.3f} / R {summary.op.recall:.3f}", (x0, summary.op.precision),
                textcoords="offset points", xytext=(6, -14), fontsize=8)
    ax.set_xlabel("verifier threshold (cosine floor %.3f)" % summary.threshold if uses_v else "cosine threshold")
    ax.set_ylabel("precision / recall")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"{summary.pairs} pairs, verifier {summary.verifier}, guards {'on' if summary.guards else 'off'}")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
