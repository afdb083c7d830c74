"""Pair loading, the metrics and the exact precision/recall search of cache/evaluation.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cache.decision import RuleSettings, ThresholdRule, VerifiedRule
from cache.evaluation import (
    PairScores,
    PairsFileError,
    best_at_precision,
    load_pairs,
    point,
    recall_at_precision,
    score_pairs,
    summarise,
)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def test_jsonl_csv_tsv_and_gptcache(tmp_path: Path) -> None:
    rows = [{"q1": "how do i reset my password", "q2": "how can i change my password", "dup": 1},
            {"q1": "enable 2fa", "q2": "disable 2fa", "dup": 0}]
    jl = write(tmp_path, "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_pairs(jl, "q1", "q2", "dup") == [(r["q1"], r["q2"], r["dup"]) for r in rows]
    csv_file = write(tmp_path, "p.csv", 'q1,q2,dup\n"a, with comma",b,true\nc,d,0\n')
    assert load_pairs(csv_file, "q1", "q2", "dup") == [("a, with comma", "b", 1), ("c", "d", 0)]
    tsv = write(tmp_path, "p.tsv", "text_a\ttext_b\tlabel\nx\ty\t1.0\n")
    assert load_pairs(tsv) == [("x", "y", 1)]
    gpt = write(tmp_path, "mock.json", json.dumps([{"origin": "o1", "similar": "s1"}, {"origin": "o2", "similar": "s2"}]))
    assert load_pairs(gpt) == [("o1", "s1", 1), ("o2", "s2", 1)]


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("missing.jsonl", '{"text_a": "x", "label": 1}\n', "no column 'text_b'"),
        ("badlabel.jsonl", '{"text_a": "x", "text_b": "y", "label": 2}\n', "must be 0 or 1"),
        ("badlabel.csv", "text_a,text_b,label\nx,y,maybe\n", "must be 0 or 1"),
        ("nolabel.csv", "text_a,text_b\nx,y\n", "no column 'label'"),
        ("empty.jsonl", "", "empty"),
        ("blank.csv", "   \n\n", "empty"),
        ("header-only.csv", "text_a,text_b,label\n", "no pairs"),
        ("broken.jsonl", '{"text_a": "x", "text_b": "y", "label": 1}\n{oops\n', "not valid JSON"),
        ("broken.json", '[{"text_a": "x"', "not valid JSON"),
        ("latin1.csv", b"text_a,text_b,label\n\xe9t\xe9,y,1\n", "not UTF-8"),
        ("notobj.json", "[1, 2]", "expected an object"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path: Path, name: str, content: str | bytes, needle: str) -> None:
    p = write(tmp_path, name, content)
    with pytest.raises(PairsFileError) as info:
        load_pairs(p)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg and name in msg


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(PairsFileError, match="no such file"):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(PairsFileError, match="directory"):
        load_pairs(tmp_path)


class FakeEmbedder:
    """Unit vectors whose pairwise cosines are set per text: text 'x@0.93' embeds at angle acos(0.93)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            c = float(t.split("@")[1]) if "@" in t else 1.0
            out.append([c, np.sqrt(max(0.0, 1 - c * c))])
        return np.array(out, dtype=np.float32)


def test_threshold_metrics_by_hand() -> None:
    # text_a embeds at (1, 0): the cosine is the number after '@' in text_b
    pairs = [("base", "q1@0.99", 1), ("base", "q2@0.95", 1), ("base", "q3@0.92", 0),
             ("base", "q4@0.91", 1), ("base", "q5@0.80", 1), ("base", "q6@0.70", 0)]
    ps = score_pairs(pairs, FakeEmbedder(), ThresholdRule(), 0.5)
    assert np.allclose(ps.cosine, [0.99, 0.95, 0.92, 0.91, 0.80, 0.70], atol=1e-5)
    p = point(ps, 0.90, None)
    assert (p.hits, p.true_hits, p.false_hits) == (4, 3, 1)
    assert p.precision == pytest.approx(0.75) and p.recall == pytest.approx(0.75)
    assert p.false_hit_rate == pytest.approx(0.5)
    # precision 1.0 is reached only above 0.92: recall 2/4
    assert recall_at_precision(ps, 0.5, 0.99) == pytest.approx(0.5)
    best = best_at_precision(ps, 0.8)
    assert best is not None and best.recall == pytest.approx(1.0) and best.precision >= 0.8
    s = summarise(ps, RuleSettings(0.90), "none", False, None)
    js = s.to_json()
    for key in ("precision", "recall", "false_hit_rate", "hits", "pairs", "recall_at_precision_0.95",
                "recall_at_precision_0.99"):
        assert key in js
    assert js["hits"] == 4 and js["pairs"] == 6


def test_exact_search_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    n = 400
    labels = rng.integers(0, 2, n).astype(np.int8)
    score = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).round(2).astype(np.float32)
    cos = np.clip(rng.normal(0.8 + 0.1 * labels, 0.08), 0, 1).astype(np.float32)
    ps = PairScores(cos, labels, np.ones(n, bool), score, ["verified"] * n, 0.5, True)
    floors = [0.5, 0.7, 0.8]
    best = best_at_precision(ps, 0.85, floors)
    brute = 0
    for t in floors:
        for v in np.unique(score):
            p = point(ps, t, float(v))
            if p.hits and p.precision >= 0.85:
                brute = max(brute, p.true_hits)
    assert best is not None and best.true_hits == brute
    assert point(ps, best.threshold, best.verifier_threshold).true_hits == brute


def test_guards_only_rule_drops_near_misses_in_eval() -> None:
    class SameEmbedder:
        def encode(self, texts: list[str]) -> np.ndarray:
            return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(texts), 1))

    pairs = [("enable 2fa", "disable 2fa", 0), ("how do i enable 2fa", "how can i enable 2fa", 1)]
    ps = score_pairs(pairs, SameEmbedder(), VerifiedRule(None, guards_enabled=True), 0.9)
    assert ps.passed.tolist() == [False, True]
    assert ps.reasons[0].startswith("guard")


def test_precision_at_a_base_rate_reweights_the_classes() -> None:
    # 8 positives and 2 negatives: at the file's 80% positives precision is 6/7, but the same rule on
    # balanced traffic (recall 6/8, false-hit rate 1/2) has precision 0.75 / (0.75 + 0.5) = 0.6
    p = point(PairScores(np.ones(10, np.float32), np.array([1] * 8 + [0] * 2, np.int8),
                         np.array([True] * 6 + [False] * 2 + [True, False]), np.ones(10, np.float32),
                         ["verified"] * 10, 0.5, False), 0.5, None)
    assert (p.true_hits, p.false_hits) == (6, 1)
    assert p.precision == pytest.approx(6 / 7) and p.base_rate == pytest.approx(0.8)
    assert p.precision_at(0.8) == pytest.approx(p.precision)
    assert p.precision_balanced == pytest.approx(0.6)


def test_balanced_calibration_is_stricter_where_positives_are_common() -> None:
    # positives outnumber negatives 4:1; natural-mix precision 0.9 is reached at a lower cut than
    # class-balanced precision 0.9, and the balanced cut really holds at base rate 0.5
    rng = np.random.default_rng(11)
    labels = np.array([1] * 800 + [0] * 200, np.int8)
    score = np.clip(rng.normal(0.4 + 0.3 * labels, 0.15), 0, 1).astype(np.float32)
    ps = PairScores(np.ones(1000, np.float32), labels, np.ones(1000, bool), score, ["verified"] * 1000, 0.5, True)
    natural = best_at_precision(ps, 0.9, [0.5])
    balanced = best_at_precision(ps, 0.9, [0.5], base_rate=0.5)
    assert natural is not None and balanced is not None
    assert balanced.verifier_threshold > natural.verifier_threshold
    assert balanced.recall < natural.recall
    assert natural.precision >= 0.9 and natural.precision_balanced < 0.9
    assert point(ps, 0.5, balanced.verifier_threshold).precision_balanced >= 0.9
    js = summarise(ps, RuleSettings(0.5, balanced.verifier_threshold), "x", True, None).to_json()
    assert js["precision_balanced"] >= 0.9 and js["base_rate"] == pytest.approx(0.8)
    assert js["recall_at_precision_0.90_balanced"] == pytest.approx(balanced.recall)
