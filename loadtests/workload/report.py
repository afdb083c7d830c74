"""The files a run leaves in its summary folder: summary.json, summary.png, locust's CSVs and HTML."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from locust import stats as locust_stats
from locust.html import get_html_report

from loadtests.workload.plot import plot
from loadtests.workload.pool import Pool
from loadtests.workload.samples import Sample
from loadtests.workload.summary import check, summarise, timeline

REPO = Path(__file__).resolve().parents[2]


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False,
                              capture_output=True,
                              text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _locust_files(environment: Any, out: Path) -> None:
    writer = locust_stats.StatsCSV(environment, locust_stats.PERCENTILES_TO_REPORT)
    for name, fill in (("stats", writer.requests_csv), ("failures", writer.failures_csv),
                       ("exceptions", writer.exceptions_csv)):
        with open(out / f"locust_{name}.csv", "w", newline="") as fh:
            fill(csv.writer(fh))
    (out / "locust_report.html").write_text(get_html_report(environment, show_download_link=False), encoding="utf-8")


def write_report(environment: Any, samples: list[Sample], out: Path, opts: Any, pool: Pool | None,
                 duration_s: float | None, extra_meta: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Summarise, check the thresholds, write every file; returns the summary and its violations.
    ``extra_meta``: how many workers' samples were merged (``MasterMerger.meta``), the gateway's counters."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "run_id": opts.run_id, "scenario": opts.scenario, "host": environment.host, "users": opts.total_users,
        "open_loop_rate": opts.rate or None, "cold": not opts.warm, "cache_seed": opts.cache_seed,
        "pool": (opts.pairs or opts.pool) if pool is not None else None,
        "intents": len(pool.intents) if pool is not None else None,
        "ended_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadtest_commit": _commit(),
        **extra_meta,
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],  # a shared machine: how busy it was
    }
    near = {i.id: i.near_misses for i in pool.intents} if pool is not None else None
    doc = summarise(samples, duration_s=duration_s, near_misses=near, meta=meta)
    problems = check(doc, max_failures=opts.max_failures, max_false_hit_rate=opts.max_false_hit_rate)
    doc["thresholds"] = {"max_failures": opts.max_failures, "max_false_hit_rate": opts.max_false_hit_rate,
                         "passed": not problems, "violations": problems}
    doc["timeline"] = timeline(samples)
    (out / "summary.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    _locust_files(environment, out)
    if samples:
        plot(samples, out / "summary.png", f"cachestack locust: {opts.scenario}, {opts.total_users} users, "
             f"run {opts.run_id}", doc)
    return doc, problems


def format_summary(doc: dict[str, Any]) -> str:
    """The summary in a few lines, printed at the end of a run."""
    c = doc["by_cache"]
    lines = [
        (f"run {doc['run_id']}: {doc['scenario']}, {doc['users']} users, {doc['duration_s']} s, "
        f"{doc['requests']} requests ({doc['rps']} req/s), {doc['failures']} failed {doc['errors'] or ''}"),
        f"latency p50 / p95 / p99: {doc['latency_ms']['p50']} / {doc['latency_ms']['p95']} / {doc['latency_ms']['p99']} ms",
        *(f"  {k:<6} {c[k]['count']:>6}  p50 {c[k]['p50_ms']} ms  p99 {c[k]['p99_ms']} ms" for k in c),
        (f"hit rate {doc['hit_rate']:.1%} by layer {doc['hit_rate_by_layer']}; hit p50 {doc['hit_p50_speedup']}x "
        f"below miss p50"),
        (f"semantic hits {doc['semantic_hits']}, false hits {doc['false_hits']} (rate {doc['false_hit_rate']:.2%}), "
        f"unattributed {doc['unattributed_semantic_hits']}"),
        (f"upstream tokens avoided {doc['upstream_tokens_avoided']} of {doc['upstream_tokens_total']} "
        f"({doc['upstream_tokens_avoided_fraction']:.1%}); prefix-cached prompt tokens "
        f"{doc['prefix_cache']['cached_fraction']:.1%}"),
        (f"streams: TTFT p50 / p99 {doc['ttft_ms']['p50']} / {doc['ttft_ms']['p99']} ms, "
        f"per token p50 {doc['latency_per_token_ms']['p50']} ms"),
        "thresholds: " + ("passed" if doc["thresholds"]["passed"] else "FAILED: " + "; ".join(doc["thresholds"]["violations"])),
    ]
    return "\n".join(lines)
