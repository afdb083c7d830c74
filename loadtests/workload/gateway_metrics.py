"""What the gateway itself counted during the run: its cache counters read from ``--host``/metrics
at the start and at the end, as differences. The client sees a MISS; only the gateway knows whether
the semantic stage ran and said no or never finished (its lookup deadline passed, its queue was
full, Redis timed out), which is what tells a decision rule's recall from a starved CPU.

Behind a load balancer this reads one replica: the numbers are that replica's share of the run.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

# counter families kept, by the label that tells their series apart
KEPT = {
    "cachestack_cache_bypass": "reason",  # lookups given up: deadline, queue_full, lookup_error, ...
    "cachestack_cache_stores": "outcome",
    "cachestack_cache_stage_seconds": "stage",  # _count: how many lookups got through each stage
    "cachestack_cache_requests": ("layer", "result"),
}


def scrape(host: str, timeout_s: float = 10.0) -> dict[str, dict[str, float]] | None:
    """``{family: {series: value}}`` of the kept counters; None if the gateway's /metrics does not answer."""
    try:
        with urllib.request.urlopen(host.rstrip("/") + "/metrics", timeout=timeout_s) as r:
            text = r.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError, ValueError):
        return None
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        label = KEPT.get(family.name)
        if label is None:
            continue
        for s in family.samples:
            if s.name not in (family.name + "_total", family.name + "_count"):
                continue
            keys = label if isinstance(label, tuple) else (label,)
            series = "/".join(s.labels.get(k, "") for k in keys)
            out[family.name][series] = out[family.name].get(series, 0.0) + s.value
    return dict(out)


def delta(before: dict[str, dict[str, float]] | None, after: dict[str, dict[str, float]] | None
          ) -> dict[str, dict[str, int]] | None:
    """``after - before`` per series (series that did not move are left out)."""
    if before is None or after is None:
        return None
    out: dict[str, dict[str, int]] = {}
    for family, series in after.items():
        moved = {k: round(v - before.get(family, {}).get(k, 0.0)) for k, v in series.items()}
        out[family.removeprefix("cachestack_cache_")] = {k: v for k, v in sorted(moved.items()) if v}
    return out
