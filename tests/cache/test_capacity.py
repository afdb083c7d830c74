"""cache/capacity.py against what loadtests/bench_knn.py measured in Valkey + RediSearch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cache.capacity import GIB, plan
from cache.store import encode_answer

RESULTS = Path(__file__).resolve().parents[2] / "loadtests" / "results"
BENCH_ANSWER = len(encode_answer({"choices": [{"message": {"role": "assistant", "content": "x" * 200}}]}))


def test_estimate_matches_the_measured_million() -> None:
    # fitted at 100k (this file's 100k run), checked against the separate 1M run
    (measured,) = json.loads((RESULTS / "knn_1m.json").read_text())
    est = plan(1_000_000, 384, BENCH_ANSWER, query_chars=7, exact_key_chars=7)
    assert est.total_bytes / GIB == pytest.approx(measured["memory_gib"], rel=0.03)


def test_estimate_matches_the_measured_100k_in_both_layouts() -> None:
    (run,) = json.loads((RESULTS / "knn-layouts-100k.json").read_text())
    est = plan(100_000, 384, BENCH_ANSWER, query_chars=6, exact_key_chars=6)
    assert est.total_bytes / GIB == pytest.approx(run["memory_gib"]["partition_layout"], rel=0.03)
    assert est.total_bytes / GIB == pytest.approx(run["memory_gib"]["shared_layout"], rel=0.03)
    assert est.entry_bytes == pytest.approx(run["bytes_per_entry"]["entries_alone"], rel=0.03)


def test_shards_from_memory() -> None:
    one = plan(1_000_000, 384, 1024, shard_gib=16)
    assert one.shards == 1 and one.per_shard_bytes == one.total_bytes
    many = plan(100_000_000, 384, 1024, shard_gib=16, usable_share=0.75)
    assert many.shards == -(-many.total_bytes // int(16 * GIB * 0.75))
    assert many.per_shard_bytes <= 16 * GIB * 0.75
    assert plan(1_000_000, 768, 1024).total_bytes > one.total_bytes + 1_000_000 * 384 * 4 * 2 - 1
    assert plan(1_000_000, 384, 1024, replicas=1).total_with_replicas_bytes == 2 * one.total_bytes


@pytest.mark.parametrize("kw", [{"entries": 0}, {"dim": -1}, {"usable_share": 1.5}, {"answer_bytes": -1}])
def test_bad_input_names_the_field(kw: dict) -> None:
    args = {"entries": 10, "dim": 384, "answer_bytes": 100} | kw
    with pytest.raises(ValueError, match=next(iter(kw))):
        plan(args.pop("entries"), args.pop("dim"), args.pop("answer_bytes"), **args)


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from serving.cli import main

    assert main(["cache-plan", "--entries", "50000000", "--answer-bytes", "2000", "--shard-gib", "26"]) == 0
    out = capsys.readouterr().out
    assert "50,000,000 entries" in out and "shards: " in out and "per shard" in out
    assert main(["cache-plan", "--entries", "0"]) == 2
    assert "entries must be positive" in capsys.readouterr().err
