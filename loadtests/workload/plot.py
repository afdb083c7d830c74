"""The run's PNG: latency of hits and misses over time, and the hit rate over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.workload.samples import Sample
from loadtests.workload.summary import timeline


def plot(samples: list[Sample], path: str | Path, title: str, doc: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [s for s in samples if not s.error]
    t0 = min((s.t for s in ok), default=0.0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    styles = {"MISS": ("tab:red", "miss"), "BYPASS": ("tab:gray", "bypass"), "HIT": ("tab:green", "hit")}
    for outcome, (color, label) in styles.items():
        pts = [(s.t - t0, s.ms) for s in ok if s.cache == outcome]
        if pts:
            xs, ys = zip(*pts)
            p50 = doc["by_cache"][outcome]["p50_ms"]
            top.scatter(xs, ys, s=4, alpha=0.35, color=color, label=f"{label} (n={len(pts)}, p50 {p50} ms)")
    top.set_yscale("log")
    top.set_ylabel("latency (ms, log)")
    top.legend(loc="upper right", markerscale=3, fontsize=8)
    top.grid(True, which="both", alpha=0.2)
    line = timeline(samples)
    bottom.plot(line["t_s"], line["hit_rate"], color="tab:green", label="hit rate per interval")
    running, hits = [], 0
    ordered = sorted(ok, key=lambda s: s.t)
    for n, s in enumerate(ordered, 1):
        hits += s.cache == "HIT"
        running.append(hits / n)
    if ordered:
        bottom.plot([s.t - t0 for s in ordered], running, color="black", linestyle="--", label="cumulative hit rate")
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("hit rate")
    bottom.set_xlabel("seconds since start")
    bottom.legend(loc="lower right", fontsize=8)
    bottom.grid(True, alpha=0.2)
    fh = doc.get("false_hit_rate")
    fig.suptitle(f"{title}\nhit rate {doc['hit_rate']:.1%}, tokens avoided "
                 f"{doc['upstream_tokens_avoided_fraction']:.1%}, false-hit rate {fh:.2%}, "
                 f"{doc['rps']} req/s, {doc['failures']} failures", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
