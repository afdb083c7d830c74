"""``cachestack eval`` / ``calibrate`` end to end with the real embedder and shipped verifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from serving.cli import main

PAIRS = [
    ("How do I reset my password?", "How can I reset my password?", 1),
    ("What is the capital of France?", "What's the capital city of France?", 1),
    ("How do I lose weight fast?", "What is the fastest way to lose weight?", 1),
    ("Why is the sky blue?", "Why does the sky look blue?", 1),
    ("How can I improve my English speaking skills?", "How do I improve my spoken English?", 1),
    ("How do I enable 2FA on my account?", "How do I disable 2FA on my account?", 0),
    ("Refund for order 1234", "Refund for order 1243", 0),
    ("Convert 100 USD to EUR", "Convert 100 EUR to USD", 0),
    ("What is the capital of Australia?", "What is the capital of Austria?", 0),
    ("Is the store open on Sunday?", "Is the store open on Monday?", 0),
    ("How do I cancel my Netflix subscription?", "How do I cancel my Spotify subscription?", 0),
    ("What is a good laptop for students?", "How do I bake sourdough bread?", 0),
]


@pytest.fixture()
def shipped_cfg(tmp_path: Path) -> Path:
    """A gateway config with the shipped decision defaults (floor + guards + verifier)."""
    from cache.decision import shipped_defaults

    d = shipped_defaults()
    cfg = tmp_path / "shipped.yaml"
    cfg.write_text(yaml.safe_dump({"cache": {"decision": {"threshold": d.threshold, "verifier": "default",
                                                          "guards": True}}}))
    return cfg


@pytest.fixture()
def pairs_file(tmp_path: Path) -> Path:
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps({"q1": a, "q2": b, "dup": y}) + "\n" for a, b, y in PAIRS))
    return p


def test_eval_writes_summary_and_plot(pairs_file: Path, shipped_cfg: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out, png = tmp_path / "s.json", tmp_path / "p.png"
    rc = main(["eval", "--pairs", str(pairs_file), "--a", "q1", "--b", "q2", "--label", "dup",
               "--config", str(shipped_cfg), "--json", str(out), "--plot", str(png)])
    assert rc == 0
    s = json.loads(out.read_text())
    for key in ("precision", "recall", "false_hit_rate", "hits", "pairs", "recall_at_precision_0.95",
                "recall_at_precision_0.99"):
        assert key in s
    assert s["pairs"] == len(PAIRS)
    assert s["verifier"] == "default" and s["verifier_threshold"] is not None
    assert s["false_hits"] == 0 and s["false_hit_rate"] == 0.0  # none of the near-misses is served
    assert s["hits"] >= 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "precision" in printed and "configured settings" in printed


def test_eval_uses_the_gateway_config(pairs_file: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"cache": {"decision": {"verifier": "none", "guards": False, "threshold": 0.5}}}))
    out = tmp_path / "s.json"
    assert main(["eval", "--pairs", str(pairs_file), "--a", "q1", "--b", "q2", "--label", "dup",
                 "--config", str(cfg), "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    # a bare cosine threshold of 0.5 serves near-misses: the config really changed the rule
    assert s["verifier"] == "none" and s["guards"] is False and s["false_hits"] >= 3


def test_gptcache_array_is_all_positive(tmp_path: Path) -> None:
    p = tmp_path / "mock.json"
    p.write_text(json.dumps([{"origin": a, "similar": b} for a, b, y in PAIRS if y == 1]))
    out = tmp_path / "s.json"
    assert main(["eval", "--pairs", str(p), "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["positives"] == s["pairs"] == 5 and s["negatives"] == 0


def test_calibrate_prints_a_namespace_snippet(pairs_file: Path, shipped_cfg: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["calibrate", "--pairs", str(pairs_file), "--a", "q1", "--b", "q2", "--label", "dup", "--config", str(shipped_cfg),
               "--target-precision", "0.95", "--namespace", "default"])
    assert rc == 0
    snippet = yaml.safe_load(capsys.readouterr().out)
    ns = snippet["cache"]["namespaces"]["default"]
    assert -1.0 <= ns["threshold"] <= 1.0 and 0.0 <= ns["verifier_threshold"] <= 1.0
    assert isinstance(ns["confident_gate"], bool)  # the shipped verifier has a confident gate
    from cache.config import NamespaceConfig

    NamespaceConfig(**ns)  # the snippet is valid config as printed


@pytest.mark.parametrize(
    ("name", "content", "extra"),
    [
        ("missing-col.jsonl", '{"text_a": "x", "label": 1}\n', []),
        ("bad-label.csv", "text_a,text_b,label\nx,y,2\n", []),
        ("empty.jsonl", "", []),
        ("binary.csv", b"\xff\xfe\x00garbage\x81", []),
        ("ok.jsonl", '{"text_a": "x", "text_b": "y", "label": 1}\n', ["--label", "nope"]),
    ],
)
def test_bad_files_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                        content: str | bytes, extra: list[str]) -> None:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    for cmd in (["eval"], ["calibrate", "--target-precision", "0.9"]):
        rc = main([*cmd, "--pairs", str(p), *extra])
        err = capsys.readouterr().err
        assert rc == 2
        assert err.startswith("cachestack: ") and err.count("\n") == 1 and "Traceback" not in err


def test_unreadable_and_missing_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--pairs", str(tmp_path / "absent.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["eval", "--pairs", str(tmp_path)]) == 2
    assert "directory" in capsys.readouterr().err


def test_bad_config_and_namespace(pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("cache: {decision: {threshold: 7}}\n")
    assert main(["eval", "--pairs", str(pairs_file), "--config", str(cfg)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["calibrate", "--pairs", str(pairs_file), "--target-precision", "0.9", "--namespace", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
