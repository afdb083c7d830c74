"""Prometheus collectors of the HTTP surface (cache collectors live in cache/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
                   1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)

REQUESTS = Counter("cachestack_requests_total", "Requests answered, by route, model and HTTP status",
                   ["route", "model", "status"])
REQUEST_SECONDS = Histogram("cachestack_request_seconds",
                            "Time to the response headers (streams: to the first byte), by route and cache result",
                            ["route", "cache"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("cachestack_in_flight_requests", "Requests being handled now")
UPSTREAM_ERRORS = Counter("cachestack_upstream_errors_total", "Upstream failures by kind", ["code"])
UPSTREAM_STALE_RESENDS = Counter(
    "cachestack_upstream_stale_connection_resends_total",
    "Requests sent again on a new connection after vLLM closed the reused idle one before answering")
UPSTREAM_RETRIES = Counter("cachestack_upstream_retries_total",
                           "Requests sent to another replica after the first could not be reached")
FLIGHTS = Counter("cachestack_flights_total",
                  "Single-flight across replicas: leader, takeover (led after a leader failed), followed "
                  "(answered by another replica's generation), relayed (a stream follower relaying the "
                  "leader's chunks as they come), broke_off (such a relay ended by an error event), alone "
                  "(Redis trouble), gave_up (waited too long), published, aborted", ["event"])
RATE_LIMITED = Counter("cachestack_rate_limited_total", "Requests refused with 429 by the per-tenant rate "
                       "limits, by the limit reached", ["limit"])  # requests, tokens
RATE_LIMIT_SKIPPED = Counter("cachestack_rate_limit_skipped_total",
                             "Rate limit checks not made (Redis down or slow): the request was admitted")
PROMPT_TOKENS = Counter("cachestack_upstream_prompt_tokens_total", "Prompt tokens sent to vLLM", ["model"])
CACHED_PROMPT_TOKENS = Counter("cachestack_upstream_cached_prompt_tokens_total",
                               "Prompt tokens vLLM served from its prefix cache (usage.prompt_tokens_details)",
                               ["model"])


class _LiveApp(Collector):
    """Exports the routing and vLLM collectors of the running gateway app.

    Registered once per process; an app attaches its collectors at start and detaches them at stop,
    so a process that builds several apps (tests) never registers a metric name twice.
    """

    def __init__(self) -> None:
        self._stack: list[list[Collector]] = []

    def attach(self, collectors: list[Collector]) -> None:
        self._stack.append(collectors)

    def detach(self, collectors: list[Collector]) -> None:
        self._stack = [c for c in self._stack if c is not collectors]

    def collect(self) -> Iterator[Metric]:
        if self._stack:
            for collector in self._stack[-1]:
                yield from collector.collect()


LIVE_APP = _LiveApp()
REGISTRY.register(LIVE_APP)
