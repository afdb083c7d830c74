"""vLLM's own metrics, scraped from each replica and re-exported per replica.

Why: the prefix-cache hit rate and KV-cache usage only exist inside vLLM, and a Prometheus that
scrapes the gateway alone should still see them next to the gateway's cache metrics. The router
also uses ``num_requests_running + num_requests_waiting`` as load, which counts the requests other
gateway replicas sent too.

Only the current metric names are read (``vllm:kv_cache_usage_perc``,
``vllm:prefix_cache_queries_total`` / ``vllm:prefix_cache_hits_total``); the ``vllm:gpu_*`` names
were removed from vLLM and would silently read as absent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from cache.tasks import stop_task

log = logging.getLogger(__name__)

# vLLM sample name -> VllmSnapshot field. Every value is summed over engines / models, except
# KV-cache usage, which is a fraction per engine and is averaged.
SAMPLES: dict[str, str] = {
    "vllm:prefix_cache_queries_total": "prefix_cache_queries",
    "vllm:prefix_cache_hits_total": "prefix_cache_hits",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:time_to_first_token_seconds_sum": "ttft_sum",
    "vllm:time_to_first_token_seconds_count": "ttft_count",
}
_AVERAGED = {"kv_cache_usage"}
WARN_EVERY_S = 60.0
"""At most one scrape-failure warning per replica in this many seconds."""


@dataclass(frozen=True)
class VllmSnapshot:
    """One scrape of one replica; a field is None when the replica did not export it."""

    at: float  # clock() when scraped
    prefix_cache_queries: float | None = None  # tokens looked up in the prefix cache (counter)
    prefix_cache_hits: float | None = None  # of those, tokens found (counter)
    kv_cache_usage: float | None = None  # 0..1
    running: float | None = None
    waiting: float | None = None
    ttft_sum: float | None = None
    ttft_count: float | None = None
    in_flight_at_scrape: int = 0  # the router's in-flight count when this was taken

    @property
    def queue(self) -> float | None:
        """Requests vLLM is running or holding: the load the router balances."""
        if self.running is None and self.waiting is None:
            return None
        return (self.running or 0.0) + (self.waiting or 0.0)

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        """Lifetime fraction of prompt tokens served from the prefix cache."""
        if not self.prefix_cache_queries or self.prefix_cache_hits is None:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries


def _wanted_lines(text: str) -> Iterator[str]:
    """Sample lines of the metrics we keep. The rest (~400 lines, mostly histogram buckets) is
    dropped before parsing, which makes a scrape ~10x cheaper; comments go too, so samples parse
    as untyped, which keeps their names and values."""
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        end = len(line)
        for sep in ("{", " "):
            i = line.find(sep)
            if i != -1:
                end = min(end, i)
        if line[:end] in SAMPLES:
            yield line


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """``{snapshot field: value}`` from a vLLM /metrics body, summed over engines (KV usage averaged)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families("\n".join(_wanted_lines(text)) + "\n"):
        for sample in family.samples:
            field = SAMPLES.get(sample.name)
            if field is None or math.isnan(sample.value):
                continue
            sums[field] = sums.get(field, 0.0) + sample.value
            counts[field] = counts.get(field, 0) + 1
    for field in _AVERAGED & sums.keys():
        sums[field] /= counts[field]
    return sums


def snapshot_from_text(text: str, at: float, in_flight: int = 0) -> VllmSnapshot:
    """Parse a /metrics body into a :class:`VllmSnapshot`."""
    return VllmSnapshot(at=at, in_flight_at_scrape=in_flight, **parse_vllm_metrics(text))


class VllmMetrics(Collector):
    """Scrapes every replica's /metrics each ``interval_s``; a Prometheus collector of the results.

    Register with :meth:`register`. Exported per replica (label ``replica`` = its URL):
    ``cachestack_vllm_prefix_cache_queries_total``, ``cachestack_vllm_prefix_cache_hits_total``,
    ``cachestack_vllm_kv_cache_usage_ratio``, ``cachestack_vllm_requests_running``,
    ``cachestack_vllm_requests_waiting``, ``cachestack_vllm_ttft_seconds_sum`` / ``_count``, and
    ``cachestack_vllm_scrape_up``.
    """

    def __init__(
        self,
        interval_s: float,
        *,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float | None = None,
        client: aiohttp.ClientSession | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.max_age_s = 2.0 * interval_s  # older snapshots are not used for routing nor exported
        self.timeout_s = timeout_s if timeout_s is not None else max(0.5, min(0.8 * interval_s, 3.0))
        self.in_flight_of: Callable[[str], int] = lambda url: 0
        self._headers = dict(headers or {})
        self._clock = clock
        self._client = client
        self._own_client = client is None
        self._targets: list[str] = []
        self._snapshots: dict[str, VllmSnapshot] = {}
        self._up: dict[str, bool] = {}
        self._warned_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def set_targets(self, urls: Sequence[str]) -> None:
        """The replicas to scrape; data of replicas no longer listed is dropped."""
        self._targets = list(urls)
        keep = set(self._targets)
        for store in (self._snapshots, self._up, self._warned_at):
            for url in list(store):
                if url not in keep:
                    del store[url]

    def get(self, url: str) -> VllmSnapshot | None:
        """The latest snapshot of ``url``, however old."""
        return self._snapshots.get(url)

    def fresh(self, url: str) -> VllmSnapshot | None:
        """The latest snapshot of ``url`` if younger than ``max_age_s``."""
        snap = self._snapshots.get(url)
        if snap is None or self._clock() - snap.at > self.max_age_s:
            return None
        return snap

    def put(self, url: str, snap: VllmSnapshot) -> None:
        """Record a snapshot (the scraper's path; also lets tests and callers feed one)."""
        if url in self._targets:
            self._snapshots[url] = snap
            self._up[url] = True

    async def scrape(self, url: str) -> VllmSnapshot | None:
        """Read one replica's /metrics now; None (and scrape_up 0) on any failure."""
        if self._client is None:
            self._client = self._new_client()
        try:
            async with self._client.get(f"{url}/metrics", headers=self._headers,
                                        timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                resp.raise_for_status()
                text = await resp.text()
            snap = snapshot_from_text(text, self._clock(), self.in_flight_of(url))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            now = self._clock()
            if now - self._warned_at.get(url, -math.inf) >= WARN_EVERY_S:  # a slow replica must not flood the log
                self._warned_at[url] = now
                log.warning("scraping %s/metrics failed: %s", url, type(exc).__name__)
            if url in self._targets:
                self._up[url] = False
            return None
        self.put(url, snap)
        return snap

    async def scrape_all(self) -> None:
        """Scrape every target concurrently."""
        await asyncio.gather(*(self.scrape(u) for u in list(self._targets)))

    def _new_client(self) -> aiohttp.ClientSession:
        # aiohttp like the upstream client (serving/upstream.py); its trust_env defaults to False, so
        # replica traffic stays in-cluster, never through an HTTP(S)_PROXY
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))

    async def start(self) -> None:
        """Start scraping in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="cachestack-vllm-metrics")

    async def aclose(self) -> None:
        """Stop scraping and close the HTTP client if it is ours."""
        await stop_task(self._task)
        self._task = None
        if self._own_client and self._client is not None:
            await self._client.close()
            self._client = None

    async def _loop(self) -> None:
        while True:
            started = self._clock()
            try:
                await self.scrape_all()
            except Exception:  # never let the scraper die silently
                log.exception("vLLM metrics scrape failed")
            await asyncio.sleep(max(0.0, self.interval_s - (self._clock() - started)))

    # -- Prometheus collector -------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """Per-replica families from the fresh snapshots (all families, possibly empty)."""
        queries = CounterMetricFamily(
            "cachestack_vllm_prefix_cache_queries", "Prompt tokens vLLM looked up in its prefix cache",
            labels=["replica"],
        )
        hits = CounterMetricFamily(
            "cachestack_vllm_prefix_cache_hits", "Prompt tokens vLLM found in its prefix cache", labels=["replica"]
        )
        usage = GaugeMetricFamily("cachestack_vllm_kv_cache_usage_ratio", "KV-cache usage, 0..1", labels=["replica"])
        running = GaugeMetricFamily("cachestack_vllm_requests_running", "Requests vLLM is running", labels=["replica"])
        waiting = GaugeMetricFamily("cachestack_vllm_requests_waiting", "Requests waiting in vLLM", labels=["replica"])
        ttft = SummaryMetricFamily(
            "cachestack_vllm_ttft_seconds", "vLLM's time to first token (sum and count)", labels=["replica"]
        )
        up = GaugeMetricFamily("cachestack_vllm_scrape_up", "1 if the last /metrics scrape worked", labels=["replica"])
        for url in self._targets:
            if url in self._up:
                up.add_metric([url], 1.0 if self._up[url] else 0.0)
            snap = self.fresh(url)
            if snap is None:
                continue
            for family, value in (
                (queries, snap.prefix_cache_queries),
                (hits, snap.prefix_cache_hits),
                (usage, snap.kv_cache_usage),
                (running, snap.running),
                (waiting, snap.waiting),
            ):
                if value is not None:
                    family.add_metric([url], value)
            if snap.ttft_count is not None and snap.ttft_sum is not None:
                ttft.add_metric([url], count_value=snap.ttft_count, sum_value=snap.ttft_sum)
        return [queries, hits, usage, running, waiting, ttft, up]

    def register(self, registry: CollectorRegistry) -> None:
        """Export these metrics on ``registry`` (e.g. prometheus_client.REGISTRY)."""
        registry.register(self)


__all__ = ["SAMPLES", "VllmMetrics", "VllmSnapshot", "parse_vllm_metrics", "snapshot_from_text"]
