"""Replica discovery: static URLs, DNS resolution (offline via localhost), refresh, ring updates."""

from __future__ import annotations

import asyncio
import socket

from serving.config import RoutingConfig, UpstreamConfig
from serving.replicas import ReplicaDiscovery, ip_url, resolve_ips
from serving.router import Router
from serving.vllm_metrics import VllmMetrics, VllmSnapshot


class NoScrape(VllmMetrics):
    """Keeps the target list but sends nothing: these tests talk to no replica."""

    def __init__(self) -> None:
        super().__init__(5.0)
        self.scraped: list[str] = []

    async def scrape(self, url: str) -> VllmSnapshot | None:
        self.scraped.append(url)
        return None


class FakeDns:
    """A resolver whose answers the test changes; counts calls."""

    def __init__(self, *ips: str) -> None:
        self.ips = list(ips)
        self.calls = 0
        self.error: Exception | None = None

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return list(self.ips)


def dns_cfg(name: str = "vllm-headless", port: int = 8000, refresh_s: float = 10.0) -> UpstreamConfig:
    return UpstreamConfig(dns_name=name, dns_port=port, dns_refresh_s=refresh_s, routing=RoutingConfig())


async def test_resolve_localhost_offline() -> None:
    ips = await resolve_ips("localhost", 8000)
    assert "127.0.0.1" in ips
    assert ips == sorted(set(ips))


def test_ip_url_formats_ipv4_and_ipv6() -> None:
    assert ip_url("10.1.2.3", 8000) == "http://10.1.2.3:8000"
    assert ip_url("fd00::5", 8000) == "http://[fd00::5]:8000"
    assert ip_url("fe80::1%eth0", 80) == "http://[fe80::1%25eth0]:80"


async def test_router_resolves_dns_name_at_start() -> None:
    router = Router(dns_cfg("localhost", 8123), metrics=NoScrape())
    assert router.replicas() == []  # nothing before start(): the name is not resolved yet
    try:
        await router.start()
        urls = [r.url for r in router.replicas()]
        assert "http://127.0.0.1:8123" in urls
        assert all(u.endswith(":8123") for u in urls)
        assert router.choose("k").url in urls
    finally:
        await router.aclose()


async def test_static_urls_need_no_start() -> None:
    seen: list[list[str]] = []
    cfg = UpstreamConfig(urls=["http://127.0.0.1:9001", "http://127.0.0.1:9002/"])
    disco = ReplicaDiscovery(cfg, lambda urls: seen.append(list(urls)))
    await disco.start()
    assert seen == [["http://127.0.0.1:9001", "http://127.0.0.1:9002"]]
    assert await disco.refresh() is False


async def test_refresh_updates_the_ring_when_the_set_changes() -> None:
    dns = FakeDns("10.0.0.2", "10.0.0.1")
    router = Router(dns_cfg(), resolver=dns)
    await router.discovery.refresh()
    assert [r.url for r in router.replicas()] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    keys = [f"prefix {i}" for i in range(3000)]
    before = {k: router.owner(k).url for k in keys}  # type: ignore[union-attr]
    kept = router.replicas()[0]
    kept.in_flight = 1

    dns.ips = ["10.0.0.1", "10.0.0.2"]  # same set, other order: no change
    assert await router.discovery.refresh() is False

    dns.ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # scale-up
    assert await router.discovery.refresh() is True
    assert len(router.replicas()) == 3 and router.replicas()[0] is kept
    after = {k: router.owner(k).url for k in keys}  # type: ignore[union-attr]
    moved = [k for k in keys if before[k] != after[k]]
    assert 0.15 < len(moved) / len(keys) < 0.5  # ideal 1/3
    assert {after[k] for k in moved} == {"http://10.0.0.3:8000"}

    dns.ips = ["10.0.0.3"]  # pods 1 and 2 replaced
    assert await router.discovery.refresh() is True
    assert all(router.owner(k).url == "http://10.0.0.3:8000" for k in keys[:50])  # type: ignore[union-attr]


async def test_failed_or_empty_resolution_keeps_the_known_set() -> None:
    dns = FakeDns("10.0.0.1")
    router = Router(dns_cfg(), resolver=dns)
    await router.discovery.refresh()
    dns.error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert await router.discovery.refresh() is False
    assert [r.url for r in router.replicas()] == ["http://10.0.0.1:8000"]
    assert router.discovery.last_error is not None
    dns.error = None
    dns.ips = []
    assert await router.discovery.refresh() is False
    assert [r.url for r in router.replicas()] == ["http://10.0.0.1:8000"]


async def test_background_refresh_follows_changes() -> None:
    dns = FakeDns("10.0.0.1")
    router = Router(dns_cfg(refresh_s=0.02), resolver=dns, metrics=NoScrape())
    await router.start()
    try:
        assert [r.url for r in router.replicas()] == ["http://10.0.0.1:8000"]
        dns.ips = ["10.0.0.1", "10.0.0.7"]
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(router.replicas()) == 2:
                break
        assert [r.url for r in router.replicas()] == ["http://10.0.0.1:8000", "http://10.0.0.7:8000"]
        # the metrics scraper follows the set too
        assert router.vllm_metrics._targets == ["http://10.0.0.1:8000", "http://10.0.0.7:8000"]
    finally:
        await router.aclose()
    calls = dns.calls
    await asyncio.sleep(0.06)
    assert dns.calls == calls  # stopped
