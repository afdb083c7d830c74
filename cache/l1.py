"""In-process exact LRU of hot entries, bounded by the memory they really take.

Entries live at most ``max_age_s`` here (and never past their Redis TTL). Purges on any replica clear
it through cache/invalidation.py; ``epoch`` counts the clears, so a fill that read Redis before a purge
cannot put the purged answer back after the clear.

An entry holds the decoded answer (a hit costs no decode) and is counted at its measured size: the
dict, every object inside it, the key and the LRU's own bookkeeping (``entry_size``). Counting the
compressed blob instead undercounted ~8x: a 1.4 KB answer compresses to ~210 bytes and takes ~1.7 KB
as a dict. Measuring costs a walk over the answer's objects once per insert (tens of objects).
"""

from __future__ import annotations

import sys
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


# the OrderedDict's hash-table slot and linked-list node per key: ~66 bytes measured with tracemalloc
# (CPython 3.11), rounded up for the table's growth steps
_SLOT_BYTES = 96


def deep_size(obj: Any) -> int:
    """Bytes taken by an object and everything it holds (each object counted once): dicts, lists,
    tuples and slotted records are walked; a numpy array counts its own buffer."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(type(item), "__slots__"):
            stack.extend(getattr(item, name) for name in type(item).__slots__ if hasattr(item, name))
    return total


def entry_size(key: str, answer: dict[str, Any]) -> int:
    """What one entry costs this process: the answer, the key, the entry record, the LRU slot."""
    return deep_size(answer) + sys.getsizeof(key) + L1Entry.__basicsize__ + _SLOT_BYTES


class L1Cache:
    def __init__(self, max_bytes: int, max_age_s: float) -> None:
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.bytes = 0
        self.epoch = 0
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

    def put(self, key: str, answer: dict[str, Any], created: float, ttl_s: float, epoch: int | None = None) -> None:
        """Keep ``answer``; with ``epoch`` (read before the answer was fetched) only if no clear came since."""
        if self.max_bytes == 0 or (epoch is not None and epoch != self.epoch):
            return
        size = entry_size(key, answer)
        if size > self.max_bytes // 4:
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
        self.epoch += 1

    def __len__(self) -> int:
        return len(self._items)
