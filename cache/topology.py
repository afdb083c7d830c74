"""Where the store's commands go: one Redis, or the nodes of a Redis Cluster.

Data commands (HSET, HMGET, EVAL, ...) name their keys, so redis-py's cluster client routes them by
slot. The search commands (FT.*) name no key, and an engine without a search coordinator (RediSearch
2.x, valkey-search without ``use-coordinator``) indexes only the keys of the node it runs on. So a
search goes to the node that owns the slot of the keys it is about, over a plain client of that
node; with every key of a partition under one hash tag that is one node per lookup.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
import redis.cluster
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.driver_info import DriverInfo

from cache.config import RedisConfig


def client_for(cfg: RedisConfig, **kwargs: Any) -> Redis | RedisCluster:
    """A client of the configured deployment for keyed commands (a cluster client with ``cluster``):
    what the gateway's other Redis users (single-flight, rate limits) connect with."""
    if cfg.cluster:
        return RedisCluster.from_url(cfg.url, password=cfg.password(), **kwargs)
    return Redis.from_url(cfg.url, password=cfg.password(), **kwargs)


class Topology:
    """The clients of one deployment: ``data`` for keyed commands, ``search_client`` for FT.*."""

    def __init__(self, cfg: RedisConfig, client: Redis | RedisCluster | None = None) -> None:
        self.cfg = cfg
        self.cluster = cfg.cluster
        password = cfg.password()
        self._password = password
        # Lookups are held to their budget by the service (asyncio.timeout), so the sockets may wait
        # longer: with a connect timeout of one lookup budget, a burst on a saturated loop failed
        # the confirming PING too, and the cache switched off while Redis was fine.
        timeouts = {"socket_connect_timeout": cfg.store_timeout_ms / 1000.0,
                    "socket_timeout": cfg.store_timeout_ms / 1000.0}
        self._timeouts = timeouts
        self._nodes: dict[str, Redis] = {}
        self._initialised = False
        self.data: Any
        if client is not None:
            self.data = client
        elif self.cluster:
            # redis-py's cluster client keeps max_connections per node and raises (not waits) past them
            self.data = RedisCluster.from_url(
                cfg.url, password=password, max_connections=cfg.max_connections, decode_responses=False,
                health_check_interval=0, driver_info=DriverInfo(), **timeouts)
        else:
            self.data = self._pool(cfg.url, cfg.max_connections)
        # The breaker's check runs in a thread on a blocking client of its own, so its verdict
        # depends on Redis and the socket timeout, never on how busy the event loop is.
        self._probe: Any
        if self.cluster:
            self._probe = redis.cluster.RedisCluster.from_url(
                cfg.url, password=password, max_connections=2, driver_info=DriverInfo(), **timeouts)
        else:
            self._probe = redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(
                cfg.url, password=password, max_connections=2, timeout=cfg.store_timeout_ms / 1000.0,
                driver_info=DriverInfo(), **timeouts))

    def _pool(self, url: str, max_connections: int) -> Redis:
        # At most max_connections sockets: a caller beyond them waits for a free one (within its own
        # budget, so a full pool reads as a timeout, never as an error that trips the breaker).
        return Redis.from_pool(BlockingConnectionPool.from_url(
            url, password=self._password, max_connections=max_connections,
            timeout=self.cfg.store_timeout_ms / 1000.0, decode_responses=False, health_check_interval=0,
            retry_on_timeout=False,
            # One DriverInfo for the whole pool: without it redis-py reads its own package metadata
            # for every new connection (~2 ms of CPU each), and a burst of 32 lookups on a cold pool
            # overran the lookup budget on that alone (loadtests/README.md).
            driver_info=DriverInfo(), **self._timeouts))

    async def _ready(self) -> None:
        if not self._initialised:
            await self.data.initialize()
            self._initialised = True

    def _node_client(self, host: str, port: int) -> Redis:
        name = f"{host}:{port}"
        client = self._nodes.get(name)
        if client is None:
            scheme = "rediss" if self.cfg.url.startswith("rediss://") else "redis"
            client = self._nodes[name] = self._pool(f"{scheme}://{host}:{port}/0", self.cfg.max_connections)
        return client

    async def search_client(self, key: str) -> Redis:
        """A client of the node that holds ``key``'s slot (the one client without a cluster)."""
        if not self.cluster:
            return self.data
        await self._ready()
        node = self.data.get_node_from_key(key)
        return self._node_client(node.host, node.port)

    async def search_clients(self) -> list[Redis]:
        """One client per primary: what a search over every partition must ask."""
        if not self.cluster:
            return [self.data]
        await self._ready()
        return [self._node_client(n.host, n.port) for n in self.data.get_primaries()]

    async def unlink(self, keys: Iterable[str]) -> int:
        """UNLINK keys that may lie in different slots (the cluster client splits them by slot)."""
        keys = list(keys)
        return int(await self.data.unlink(*keys)) if keys else 0

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        """GET of keys in any slots, in order."""
        if not keys:
            return []
        if self.cluster:
            return list(await self.data.mget_nonatomic(keys))
        return list(await self.data.mget(keys))

    def probe(self) -> None:
        """PING and FT._LIST on every primary, blocking (run it in a thread)."""
        if not self.cluster:
            self._probe.ping()
            self._probe.execute_command("FT._LIST")
            return
        primaries = self._probe.get_primaries()
        self._probe.execute_command("PING", target_nodes=primaries)
        self._probe.execute_command("FT._LIST", target_nodes=primaries)

    async def used_memory(self) -> list[int]:
        """used_memory of each primary (one number without a cluster)."""
        return [int((await c.info("memory"))["used_memory"]) for c in await self.search_clients()]

    async def aclose(self) -> None:
        for client in self._nodes.values():
            await client.aclose()
        await self.data.aclose()
        self._probe.close()
