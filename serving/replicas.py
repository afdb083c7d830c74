"""Replica discovery: the configured URL list, or a DNS name resolved to every address it has.

In Kubernetes the vLLM pods sit behind a headless Service whose name resolves to one A/AAAA record
per ready pod; resolving it again every ``dns_refresh_s`` follows scale-ups, restarts and rollouts
without a gateway restart. A failed or empty resolution keeps the last known set: a DNS hiccup
must not take every replica away.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

from cache.tasks import stop_task
from serving.config import UpstreamConfig

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_S = 5.0
"""A resolver slower than this counts as failed (the known set is kept)."""

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> IP addresses``; injectable so tests need no DNS server."""


async def resolve_ips(host: str, port: int) -> list[str]:
    """All addresses of ``host`` (A and AAAA), sorted, via the event loop's getaddrinfo."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)})


def ip_url(ip: str, port: int, scheme: str = "http") -> str:
    """``http://IP:port``, with IPv6 in brackets and a zone id escaped as URLs require."""
    if ":" in ip:
        return f"{scheme}://[{ip.replace('%', '%25')}]:{port}"
    return f"{scheme}://{ip}:{port}"


class ReplicaDiscovery:
    """Feeds the replica URL set to ``on_change`` at start and whenever it changes."""

    def __init__(
        self,
        cfg: UpstreamConfig,
        on_change: Callable[[Sequence[str]], None],
        *,
        resolver: Resolver | None = None,
    ) -> None:
        self.cfg = cfg
        self._on_change = on_change
        self._resolve = resolver or resolve_ips
        self._task: asyncio.Task[None] | None = None
        self.urls: list[str] = [] if cfg.dns_name else list(cfg.urls)
        self.last_error: str | None = None

    async def start(self) -> None:
        """Resolve once (so the first request has replicas), then refresh in the background."""
        if not self.cfg.dns_name:
            self._on_change(self.urls)
            return
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="cachestack-dns-refresh")

    async def aclose(self) -> None:
        """Stop refreshing."""
        await stop_task(self._task)
        self._task = None

    async def refresh(self) -> bool:
        """Resolve ``dns_name`` now; True when the URL set changed."""
        name = self.cfg.dns_name
        if not name:
            return False
        try:
            ips = await asyncio.wait_for(self._resolve(name, self.cfg.dns_port), RESOLVE_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:  # socket.gaierror is an OSError
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("resolving %s failed (%s); keeping %d known replicas", name, self.last_error, len(self.urls))
            return False
        if not ips:
            self.last_error = "no addresses"
            log.warning("%s resolved to no addresses; keeping %d known replicas", name, len(self.urls))
            return False
        self.last_error = None
        urls = [ip_url(ip, self.cfg.dns_port) for ip in sorted(ips)]
        if urls == self.urls:
            return False
        self.urls = urls
        self._on_change(urls)
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.dns_refresh_s)
            try:
                await self.refresh()
            except Exception:  # never let the refresher die silently
                log.exception("replica discovery refresh failed")
