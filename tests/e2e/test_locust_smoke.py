"""The locust workloads against the real stack (vLLM CPU, Valkey + RediSearch, MiniLM): a short mixed
run in one process and a short faq run with two local workers (--processes 2); both must finish without one failed
request, and the files of the summary folder must be there and agree with locust's own counts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def locust(host: str, out: Path, *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py"), "--headless",
           "--only-summary", "--host", host, "--summary-dir", str(out), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False)


def locust_requests(out: Path) -> int:
    """Requests in locust's own stats CSV (without the METRIC rows of TTFT and per-token latency)."""
    with open(out / "locust_stats.csv") as fh:
        return sum(int(r["Request Count"]) for r in csv.DictReader(fh) if r["Type"] == "POST")


def test_mixed_smoke_without_errors(gateway_factory, vllm_url, redis_url, tmp_path):
    """The CI smoke: 20 s of load, in-flight requests get 15 s more to finish and count."""
    gw = gateway_factory(vllm_url, redis_url)
    run = locust(gw.url, tmp_path, "--scenario", "mixed", "-u", "4", "-r", "4", "-t", "20s", "--stop-timeout", "15",
                 "--max-tokens", "16", timeout_s=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["failures"] == 0 and doc["errors"] == {} and doc["thresholds"]["passed"]
    assert doc["requests"] > 0 and doc["by_cache"]["MISS"]["count"] > 0
    assert doc["requests"] == locust_requests(tmp_path)
    for name in ("summary.png", "locust_report.html", "locust_failures.csv"):
        assert (tmp_path / name).stat().st_size > 0


def test_faq_with_two_workers_merges_on_the_master(gateway_factory, vllm_url, redis_url, tmp_path):
    gw = gateway_factory(vllm_url, redis_url)
    # a steep Zipf (the top intent is asked ~80% of the time) so that a short run must hit; --stop-timeout:
    # the master asks the workers to stop and waits for their final reports (in-flight requests finish).
    # --max-false-hit-rate 1: this run tests the merge; its ~75 semantic hits cannot measure a 1% false-hit
    # rate (the 5-minute faq run in loadtests/results/ does), so the rate is checked for consistency only
    run = locust(gw.url, tmp_path, "--scenario", "faq", "--processes", "2", "-u", "4", "-r", "4", "-t", "30s",
                 "--stop-timeout", "20", "--zipf-s", "3", "--max-tokens", "16", "--max-false-hit-rate", "1")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((tmp_path / "summary.json").read_text())
    # both workers sent samples, and each one's final report (after its users stopped) reached the master
    assert doc["workers"] == 2 and doc["workers_final_report"] == 2, doc
    assert len(doc["samples_by_worker"]) == 2 and min(doc["samples_by_worker"]) > 0
    assert doc["requests"] == sum(doc["samples_by_worker"]) == locust_requests(tmp_path)
    assert doc["failures"] == 0
    assert doc["by_cache"]["HIT"]["count"] > 0 and doc["hit_rate"] > 0
    attributed = doc["semantic_hits"] - doc["unattributed_semantic_hits"]
    assert doc["false_hits"] <= attributed and doc["false_hit_rate"] == pytest.approx(
        doc["false_hits"] / attributed if attributed else 0.0, abs=1e-4)
    # an exact hit is the same text, so it can never carry another intent's answer
    assert doc["exact_hits_with_another_intents_answer"] == 0
    assert doc["upstream_tokens_avoided"] > 0
    assert sum(g.get("requests", 0) for g in doc["repeats"].values()) == doc["requests"]


def test_a_failing_threshold_fails_the_run(gateway_factory, tmp_path):
    """No Redis and no upstream behind this gateway: every request fails, so the run must exit non-zero."""
    gw = gateway_factory("http://127.0.0.1:9", None)
    # --stop-timeout: on a loaded machine a request may still be in flight at 5 s; it must count
    run = locust(gw.url, tmp_path, "--scenario", "faq", "-u", "2", "-r", "2", "-t", "5s", "--stop-timeout", "20")
    assert run.returncode == 1, run.stdout[-2000:]
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["failures"] > 0 and not doc["thresholds"]["passed"]
    assert all(k.startswith("http_5") for k in doc["errors"])
