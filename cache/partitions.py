"""The registry of a store's partitions: which exist, what they hold, when each was last written.

A partition is the entries of one (tenant scope, namespace, model, version). The registry lets the
store retire partitions without scanning the keyspace: those of a namespace whose version was bumped
(or which left the config), those an admin purges by model, version or namespace, and the least
recently written ones when the number of indexes reaches ``redis.max_indexes``. Two small keys under
one hash tag (one slot in a cluster); the scope is kept as its digest, never as a tenant or user name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

LAYOUT_FIELDS = ("namespace", "model", "version")  # kept in clear: config names, no client data
TOUCH_EVERY_S = 60.0  # a partition's last-write time is refreshed at most this often per process


@dataclass(frozen=True, slots=True)
class Partition:
    pid: str
    namespace: str
    model: str
    version: str
    scope_digest: str
    last_write: float

    def matches(self, tags: dict[str, str]) -> bool:
        """Whether every given partition-level tag (namespace, model, version) equals this one's."""
        return all(getattr(self, name) == value for name, value in tags.items())


class PartitionRegistry:
    def __init__(self, redis: object, index_prefix: str, space: str) -> None:
        self.redis = redis
        self.info_key = f"{index_prefix}:{{parts{space}}}:info"
        self.used_key = f"{index_prefix}:{{parts{space}}}:used"
        self._touched: dict[str, float] = {}

    async def register(self, pid: str, tags: dict[str, str], scope_digest: str) -> bool:
        """Record a partition; True when it was not registered before."""
        now = time.time()
        info = orjson.dumps({**{name: tags[name] for name in LAYOUT_FIELDS}, "scope": scope_digest})
        async with self.redis.pipeline(transaction=True) as pipe:  # type: ignore[attr-defined]
            pipe.hset(self.info_key, pid, info)
            pipe.zadd(self.used_key, {pid: now})
            added, _ = await pipe.execute()
        self._touched[pid] = now
        return bool(added)

    async def touch(self, pid: str) -> bool:
        """Note a write (at most once per TOUCH_EVERY_S); False when the partition is no longer
        registered (another replica retired it), so the caller re-creates its index."""
        now = time.time()
        if now - self._touched.get(pid, 0.0) < TOUCH_EVERY_S:
            return True
        self._touched[pid] = now
        return bool(await self.redis.zadd(self.used_key, {pid: now}, xx=True, ch=True))  # type: ignore[attr-defined]

    async def all(self) -> list[Partition]:
        raw = await self.redis.hgetall(self.info_key)  # type: ignore[attr-defined]
        used = dict(await self.redis.zrange(self.used_key, 0, -1, withscores=True))  # type: ignore[attr-defined]
        out = []
        for pid_b, blob in raw.items():
            pid = pid_b.decode() if isinstance(pid_b, bytes) else str(pid_b)
            info = orjson.loads(blob)
            out.append(Partition(pid, info["namespace"], info["model"], info["version"], info["scope"],
                                 float(used.get(pid_b, used.get(pid, 0.0)))))
        return sorted(out, key=lambda p: p.last_write)

    async def remove(self, pids: list[str]) -> None:
        if not pids:
            return
        async with self.redis.pipeline(transaction=True) as pipe:  # type: ignore[attr-defined]
            pipe.hdel(self.info_key, *pids)
            pipe.zrem(self.used_key, *pids)
            await pipe.execute()
        for pid in pids:
            self._touched.pop(pid, None)

    def forget(self) -> None:
        self._touched.clear()
