"""In-process exact LRU of hot entries, bounded in bytes.

Entries live at most ``max_age_s`` here (and never past their Redis TTL), because a purge on one
gateway replica cannot reach another replica's memory any faster than that.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class L1Entry:
    answer: dict[str, Any]
    created: float
    expires: float
    size: int


class L1Cache:
    def __init__(self, max_bytes: int, max_age_s: float) -> None:
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.bytes = 0
        self._items: OrderedDict[str, L1Entry] = OrderedDict()

    def get(self, key: str) -> L1Entry | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires <= time.time():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item

    def put(self, key: str, answer: dict[str, Any], created: float, ttl_s: float, size: int) -> None:
        if size > self.max_bytes // 4 or self.max_bytes == 0:
            return  # one huge answer must not flush the whole LRU
        if key in self._items:
            self._drop(key)
        expires = min(created + ttl_s, time.time() + self.max_age_s)
        self._items[key] = L1Entry(answer, created, expires, size)
        self.bytes += size
        while self.bytes > self.max_bytes and self._items:
            self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.bytes -= item.size

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)
