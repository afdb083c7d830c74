"""Identical in-flight misses share one upstream call (a burst of the same question costs one generation)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class SingleFlight:
    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[object]] = {}

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` unless one with the same key is running; then wait for its result (or error)."""
        pending = self._calls.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)  # type: ignore[return-value]
            except asyncio.CancelledError:
                if pending.cancelled():  # the leader's client went away, not ours: call ourselves
                    return await call()
                raise
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._calls[key] = fut
        try:
            result = await call()
        except BaseException as exc:
            if isinstance(exc, Exception):
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: there may be no follower
            else:
                fut.cancel()
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            self._calls.pop(key, None)

    def __len__(self) -> int:
        return len(self._calls)
