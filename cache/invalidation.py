"""Purges reach every gateway replica: a purge generation in Redis and a pub/sub channel.

A purge on any replica INCRs the generation and PUBLISHes the new value. Every replica keeps one
subscribed connection; a message, or a (re)connect after which messages may have been missed,
clears this process's L1. The watcher PINGs through that connection every ``heartbeat_ms`` and the L1
answers only while the last word from Redis is younger than ``max_silence_ms``: a replica cut off
from Redis stops serving its L1 within that bound instead of serving purged answers. An L1 hit costs
one clock read and a comparison (loadtests/bench_l1_check.py; docs/replicas.md has the numbers and
why this beats a generation GET per hit).

A store carries the generation its request saw before the answer was generated; Redis refuses the
write when a purge came in between (cache/store.py ``put``), so a background store that lands after a
purge cannot write the entry back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cache.tasks import stop_task

log = logging.getLogger("cachestack.cache")


class PurgeWatch:
    """This replica's view of purges: the last generation it heard of, and whether it still hears."""

    def __init__(self, client: Redis, commands: Any, *, generation_key: str, channel: str,
                 on_purge: Callable[[], None], heartbeat_s: float, max_silence_s: float) -> None:
        """``client``: a plain client of one node, for the subscription (a cluster broadcasts PUBLISH
        to every node); ``commands``: the store's client, which routes the generation key's slot."""
        self.client = client
        self.commands = commands
        self.generation_key = generation_key
        self.channel = channel
        self._on_purge = on_purge
        self.heartbeat_s = heartbeat_s
        self.max_silence_s = max_silence_s
        self.generation: int | None = None  # None while not subscribed: stores are skipped
        self._heard = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        # how long without a pong before reconnecting: generous, since a busy event loop delays pongs
        # (the L1 is already off after max_silence_s; a reconnect also stops stores until it is back)
        self.patience_s = max(max_silence_s * 10, 5.0)

    def live(self) -> bool:
        """May the L1 answer? Only while Redis was heard within ``max_silence_s``."""
        return time.monotonic() - self._heard < self.max_silence_s

    async def start(self, wait_s: float) -> bool:
        """Start listening; wait up to ``wait_s`` for the first subscription (False: not yet)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="cachestack-purge-watch")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._subscribed.wait()
        return self._subscribed.is_set()

    async def announce(self) -> int:
        """A purge starts: bump the generation (stores begun before are refused from now on) and tell
        every replica. Raises redis errors: a purge that cannot be announced must not claim success."""
        generation = int(await self.commands.incr(self.generation_key))
        await self.commands.publish(self.channel, str(generation))
        self._heard_of(generation)
        return generation

    def _heard_of(self, generation: int) -> None:
        if self.generation is None or generation > self.generation:
            self.generation = generation
        self._on_purge()

    async def _listen(self) -> None:
        backoff = self.heartbeat_s
        while True:
            try:
                await self._session()
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("purge subscription lost (%s); L1 off until it is back", type(exc).__name__)
            self.generation = None
            self._heard = float("-inf")
            self._subscribed.clear()
            await asyncio.sleep(backoff)
            # at most max_silence_s between tries: stores wait for the subscription, so a Redis that is
            # back gets its stores (and the L1) back within about that long
            backoff = min(backoff * 2, max(self.max_silence_s, self.heartbeat_s))

    async def _session(self) -> None:
        pubsub = self.client.pubsub()
        try:
            async with asyncio.timeout(self.patience_s):
                await pubsub.subscribe(self.channel)
                # read after subscribing: a purge in between is seen either here or as a message
                current = int(await self.commands.get(self.generation_key) or 0)
            self.generation = current
            self._on_purge()  # purges may have been missed while not subscribed
            self._heard = time.monotonic()
            self._subscribed.set()
            next_ping = time.monotonic()
            while True:
                now = time.monotonic()
                if now - self._heard > self.patience_s:
                    raise TimeoutError("no pong from Redis")
                if now >= next_ping:
                    await pubsub.ping()
                    next_ping = now + self.heartbeat_s
                message = await pubsub.get_message(timeout=max(0.0, next_ping - time.monotonic()))
                if message is None:
                    continue
                self._heard = time.monotonic()
                if message.get("type") == "message":
                    with contextlib.suppress(ValueError, TypeError):
                        self._heard_of(int(message["data"]))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def aclose(self) -> None:
        await stop_task(self._task)
        self._task = None
        await self.client.aclose()
