"""vLLM metrics: parsing (synthetic and the real server's output), freshness, scraping, re-export."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from serving.config import RoutingConfig, UpstreamConfig
from serving.router import Router
from serving.vllm_metrics import SAMPLES, VllmMetrics, VllmSnapshot, parse_vllm_metrics, snapshot_from_text


# Shaped like vLLM's output: two engines (data parallel), plus names we must ignore.
SYNTHETIC = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.99
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 500.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e+09
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 600.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 150.0
# TYPE vllm:external_prefix_cache_hits_total counter
vllm:external_prefix_cache_hits_total{engine="0",model_name="m"} 77.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 10.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 10.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 2.5
vllm:time_to_first_token_seconds_count{engine="1",model_name="m"} 2.0
vllm:time_to_first_token_seconds_sum{engine="1",model_name="m"} 0.5
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_parse_sums_engines_and_averages_kv_usage() -> None:
    got = parse_vllm_metrics(SYNTHETIC)
    assert got == {
        "running": 3.0,
        "waiting": 4.0,
        "kv_cache_usage": 0.375,
        "prefix_cache_queries": 1500.0,
        "prefix_cache_hits": 750.0,
        "ttft_count": 12.0,
        "ttft_sum": 3.0,
    }
    snap = snapshot_from_text(SYNTHETIC, at=1.0, in_flight=2)
    assert snap.queue == 7.0
    assert snap.prefix_cache_hit_rate == 0.5
    assert snap.in_flight_at_scrape == 2


def test_parse_tolerates_missing_metrics_and_removed_names() -> None:
    old_vllm = '# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name="m"} 0.9\n'
    snap = snapshot_from_text(old_vllm, at=0.0)
    assert snap.kv_cache_usage is None and snap.queue is None and snap.prefix_cache_hit_rate is None
    assert parse_vllm_metrics("") == {}


def test_fresh_snapshots_expire() -> None:
    clock = FakeClock()
    metrics = VllmMetrics(5.0, clock=clock)
    metrics.set_targets(["http://127.0.0.1:1"])
    metrics.put("http://127.0.0.1:1", VllmSnapshot(at=clock.now, running=1))
    assert metrics.fresh("http://127.0.0.1:1") is not None
    clock.now += 10.1
    assert metrics.fresh("http://127.0.0.1:1") is None
    assert metrics.get("http://127.0.0.1:1") is not None
    metrics.put("http://127.0.0.1:2", VllmSnapshot(at=clock.now))  # not a target: ignored
    assert metrics.get("http://127.0.0.1:2") is None
    metrics.set_targets([])
    assert metrics.get("http://127.0.0.1:1") is None  # forgotten with its replica


def test_collector_exports_per_replica() -> None:
    clock = FakeClock()
    metrics = VllmMetrics(5.0, clock=clock)
    a, b = "http://127.0.0.1:9101", "http://127.0.0.1:9102"
    metrics.set_targets([a, b])
    metrics.put(a, snapshot_from_text(SYNTHETIC, at=clock.now))
    registry = CollectorRegistry()
    metrics.register(registry)
    value = registry.get_sample_value
    assert value("cachestack_vllm_prefix_cache_queries_total", {"replica": a}) == 1500.0
    assert value("cachestack_vllm_prefix_cache_hits_total", {"replica": a}) == 750.0
    assert value("cachestack_vllm_kv_cache_usage_ratio", {"replica": a}) == 0.375
    assert value("cachestack_vllm_requests_running", {"replica": a}) == 3.0
    assert value("cachestack_vllm_requests_waiting", {"replica": a}) == 4.0
    assert value("cachestack_vllm_ttft_seconds_sum", {"replica": a}) == 3.0
    assert value("cachestack_vllm_ttft_seconds_count", {"replica": a}) == 12.0
    assert value("cachestack_vllm_scrape_up", {"replica": a}) == 1.0
    assert value("cachestack_vllm_requests_running", {"replica": b}) is None  # never scraped
    clock.now += 60
    assert value("cachestack_vllm_requests_running", {"replica": a}) is None  # stale: not exported


@pytest.fixture
async def fake_vllm(serve_app: Callable[[web.Application], Awaitable[str]]) -> dict[str, object]:
    """A local /metrics endpoint whose body and status the test sets."""
    state: dict[str, object] = {"body": SYNTHETIC, "status": 200, "hits": 0, "delay_s": 0.0}

    async def metrics(_: web.Request) -> web.Response:
        state["hits"] = int(state["hits"]) + 1  # type: ignore[call-overload]
        await asyncio.sleep(float(state["delay_s"]))  # type: ignore[arg-type]
        return web.Response(text=str(state["body"]), status=int(state["status"]))  # type: ignore[call-overload]

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    state["url"] = await serve_app(app)
    return state


async def test_scrape_success_and_failure(fake_vllm: dict[str, object]) -> None:
    url = str(fake_vllm["url"])
    metrics = VllmMetrics(5.0)
    metrics.set_targets([url, "http://127.0.0.1:1"])  # port 1: connection refused
    registry = CollectorRegistry()
    metrics.register(registry)
    try:
        await metrics.scrape_all()
        snap = metrics.fresh(url)
        assert snap is not None and snap.queue == 7.0
        assert registry.get_sample_value("cachestack_vllm_scrape_up", {"replica": url}) == 1.0
        assert registry.get_sample_value("cachestack_vllm_scrape_up", {"replica": "http://127.0.0.1:1"}) == 0.0
        fake_vllm["status"] = 500
        assert await metrics.scrape(url) is None
        assert registry.get_sample_value("cachestack_vllm_scrape_up", {"replica": url}) == 0.0
        assert metrics.get(url) is snap  # the last good one is kept until it goes stale
    finally:
        await metrics.aclose()


async def test_a_hanging_replica_costs_one_timeout(fake_vllm: dict[str, object]) -> None:
    """A /metrics that never answers (a fault vLLM cannot be asked for) is given up after the scrape
    timeout and reported down; the next answer brings it back."""
    url = str(fake_vllm["url"])
    metrics = VllmMetrics(5.0, timeout_s=0.2)
    metrics.set_targets([url])
    registry = CollectorRegistry()
    metrics.register(registry)
    try:
        fake_vllm["delay_s"] = 3.0
        started = time.monotonic()
        assert await metrics.scrape(url) is None
        assert time.monotonic() - started < 1.5
        assert registry.get_sample_value("cachestack_vllm_scrape_up", {"replica": url}) == 0.0
        fake_vllm["delay_s"] = 0.0
        assert await metrics.scrape(url) is not None
        assert registry.get_sample_value("cachestack_vllm_scrape_up", {"replica": url}) == 1.0
    finally:
        await metrics.aclose()


async def test_router_scrapes_in_background_and_balances_on_vllm_queue(fake_vllm: dict[str, object]) -> None:
    busy = str(fake_vllm["url"])
    idle = "http://127.0.0.1:1"  # no /metrics there: its load is its in-flight count
    cfg = UpstreamConfig(urls=[busy, idle], routing=RoutingConfig(policy="least_loaded", metrics_scrape_s=0.05))
    router = Router(cfg)
    await router.start()
    try:
        for _ in range(100):
            if router.vllm_metrics.fresh(busy) is not None:
                break
            await asyncio.sleep(0.01)
        assert router.vllm_metrics.fresh(busy) is not None
        by_url = {r.url: r for r in router.replicas()}
        assert router.load(by_url[busy]) == 7 and router.load(by_url[idle]) == 0
        picks = [router.choose("k") for _ in range(5)]
        assert all(p.url == idle for p in picks)  # 5 in flight on idle < 7 queued on busy
        for p in picks:
            router.release(p, ok=True)
        hits = int(fake_vllm["hits"])  # type: ignore[call-overload]
        await asyncio.sleep(0.2)
        assert int(fake_vllm["hits"]) > hits  # type: ignore[call-overload]  # keeps scraping
    finally:
        await router.aclose()


# -- against the real vLLM CPU server -----------------------------------------------------------


def _vllm_metrics_text(url: str) -> str:
    resp = httpx.get(f"{url}/metrics", timeout=5.0, trust_env=False)
    resp.raise_for_status()
    return resp.text


@pytest.mark.e2e
def test_real_vllm_exports_every_metric_we_read(vllm_url: str) -> None:
    text = _vllm_metrics_text(vllm_url)
    got = parse_vllm_metrics(text)
    assert set(got) == set(SAMPLES.values()), f"missing: {set(SAMPLES.values()) - set(got)}"
    assert 0.0 <= got["kv_cache_usage"] <= 1.0
    assert 0.0 <= got["prefix_cache_hits"] <= got["prefix_cache_queries"]
    assert got["running"] >= 0 and got["waiting"] >= 0
    assert got["ttft_count"] >= 0 and got["ttft_sum"] >= 0
    assert "vllm:gpu_cache_usage_perc" not in text  # the removed name really is gone


@pytest.mark.e2e
async def test_real_vllm_prefix_cache_counters_move(vllm_url: str) -> None:
    """Two requests with the same long prompt: the second's prompt tokens come from the cache, and
    the re-exported counters show it."""
    metrics = VllmMetrics(5.0)
    metrics.set_targets([vllm_url])
    try:
        before = await metrics.scrape(vllm_url)
        assert before is not None and before.prefix_cache_hits is not None
        prompt = "cachestack prefix cache probe. " + " ".join(f"item {i} is {i * 7 % 13}." for i in range(120))
        async with httpx.AsyncClient(base_url=vllm_url, timeout=120.0, trust_env=False) as client:
            models = (await client.get("/v1/models")).json()
            model = models["data"][0]["id"]
            for _ in range(2):
                resp = await client.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 1})
                resp.raise_for_status()
        after = await metrics.scrape(vllm_url)
        assert after is not None
        assert after.prefix_cache_queries > before.prefix_cache_queries  # type: ignore[operator]
        assert after.prefix_cache_hits - before.prefix_cache_hits >= 128  # type: ignore[operator]  # >= one CPU block
        assert after.ttft_count >= before.ttft_count + 2  # type: ignore[operator]
        registry = CollectorRegistry()
        metrics.register(registry)
        assert registry.get_sample_value("cachestack_vllm_prefix_cache_hits_total", {"replica": vllm_url}) == after.prefix_cache_hits
    finally:
        await metrics.aclose()
