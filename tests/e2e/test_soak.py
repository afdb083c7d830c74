"""The soak's short mode (loadtests/soak.py): 60 s at a fixed rate through a gateway process in front of
the real vLLM and Valkey. No errors, file descriptors and Valkey connections flat, RSS growth after
warm-up within 10 %. The 30-minute run and its numbers are in loadtests/README.md."""

from __future__ import annotations

import pytest

from loadtests.soak import report, run

pytestmark = pytest.mark.e2e


def test_short_soak_has_no_errors_and_no_growth(vllm_url, redis_url):
    # 1 request/s: at 3/s SmolLM2 on vLLM CPU fell behind on a loaded 2-core machine (client timeouts)
    res = run(vllm_url, redis_url, duration_s=60, rate=1, warmup_s=20, max_requests=100, sample_s=5)
    report(res)
    g = res.after_warmup
    assert res.sent == 60 and res.errors == {} and res.ok == res.sent
    assert res.cache_outcomes.get("HIT", 0) > 0 and res.cache_outcomes.get("MISS", 0) > 0
    # the last sample is taken idle, the first after warm-up with requests in flight: no growth allowed
    assert g["fds_end"] <= g["fds_start"] + 2
    assert g["redis_clients_end"] <= g["redis_clients_start"] + 1
    assert g["rss_growth_pct"] <= 10.0
