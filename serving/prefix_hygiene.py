"""Spot prompts whose start keeps changing because of dynamic content, which defeats prefix caching.

vLLM reuses KV blocks only for an identical token prefix. A system prompt that opens with
"Current time: 2025-01-05T10:32:07Z" or a request id changes at every request, so nothing after it
is ever reused, and prefix-aware routing scatters the requests too. This module watches the first
``head_chars`` characters of prompts per namespace: when the same template (the head with dates,
times, ids and long numbers masked) keeps coming back with different values, it names the pattern
once, logs a warning without any prompt text, and counts the affected requests in
``cachestack_prefix_unstable_total{namespace,pattern}``. The fix is in the client: keep dynamic
content at the end of the prompt (see docs/prefix-caching.md).

Memory: per namespace, ``window`` x 2 small tuples of 64-bit hashes; at most :data:`MAX_NAMESPACES` namespaces.
No prompt text is stored.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from prometheus_client import Counter

log = logging.getLogger(__name__)

MAX_NAMESPACES = 256
"""Namespaces tracked at once; the least recently seen is forgotten beyond this."""

_MONTH = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
# Alternatives in priority order: at one position the first that matches wins, so a full ISO
# timestamp is a "timestamp" rather than a "date" followed by a time.
_PATTERNS: list[tuple[str, str]] = [
    ("timestamp", r"\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"),
    ("timestamp", r"\b\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s?[AaPp]\.?[Mm]\.?)?(?![\d:])"),
    ("timestamp", r"\b1[4-9]\d{8}(?:\d{3})?(?:\.\d+)?\b"),  # Unix epoch seconds or milliseconds
    ("uuid", r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
    ("date", r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}[/.]\d{1,2}[/.]\d{2,4}\b"),
    ("date", rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b|\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\.?,?\s+\d{{4}}\b"),
    ("date", r"\b(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day\b"),
    ("request_id", r"\b[A-Za-z]{2,16}[-_](?=[A-Za-z0-9]*\d)[A-Za-z0-9]{8,}\b"),
    ("request_id", r"\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{16,}\b"),
    ("long_number", r"\b\d{5,}(?:\.\d+)?\b"),
]
_GROUPS = [f"p{i}" for i in range(len(_PATTERNS))]
_NAMES = {g: name for g, (name, _) in zip(_GROUPS, _PATTERNS)}
# Every pattern starts a word: testing only word starts first makes the scan ~2.5x cheaper.
_DYNAMIC = re.compile(
    r"(?=[0-9A-Za-z])(?<![0-9A-Za-z])(?:" + "|".join(f"(?P<{g}>{rx})" for g, (_, rx) in zip(_GROUPS, _PATTERNS)) + ")"
)

PATTERN_NAMES: tuple[str, ...] = tuple(dict.fromkeys(name for name, _ in _PATTERNS))

PREFIX_UNSTABLE = Counter(
    "cachestack_prefix_unstable",
    "Requests whose prompt start changed only by dynamic content (timestamp, date, id, number), "
    "which defeats prefix caching; by namespace and the earliest such pattern",
    ["namespace", "pattern"],
)


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


@dataclass
class _Namespace:
    # (template hash, ((pattern, hash of that pattern's values), ...)) of recent heads with dynamic content
    recent: deque[tuple[int, tuple[tuple[str, int], ...]]]
    # hashes of recent heads as they came: a head seen again changed nothing and skips the scan
    raw: deque[int]
    warned: set[str] = field(default_factory=set)


class PrefixHygiene:
    """Watches prompt heads per namespace; see the module docstring."""

    def __init__(self, window: int = 64, head_chars: int = 256, *, min_distinct: int = 3,
                 counter: Counter | None = None) -> None:
        """``min_distinct``: how many different values of one pattern, in heads that are otherwise
        identical within the last ``window`` observations, count as "keeps changing"."""
        if window < 2 or head_chars < 1 or min_distinct < 2:
            raise ValueError("need window >= 2, head_chars >= 1, min_distinct >= 2")
        self.window = window
        self.head_chars = head_chars
        self.min_distinct = min_distinct
        self._counter = counter if counter is not None else PREFIX_UNSTABLE
        self._spaces: OrderedDict[str, _Namespace] = OrderedDict()

    def observe(self, namespace: str, prompt_head: str) -> str | None:
        """Record one prompt start; return a pattern name the first time it is found unstable here.

        Later requests with the same instability return None but still count in
        ``cachestack_prefix_unstable_total``.
        """
        head = prompt_head[: self.head_chars]
        space = self._spaces.get(namespace)
        if space is None:
            space = self._spaces[namespace] = _Namespace(deque(maxlen=self.window), deque(maxlen=self.window))
            if len(self._spaces) > MAX_NAMESPACES:
                self._spaces.popitem(last=False)
        else:
            self._spaces.move_to_end(namespace)
        raw = _h(head)
        if raw in space.raw:
            return None
        space.raw.append(raw)

        values: dict[str, list[str]] = {}
        first_at: dict[str, int] = {}

        def mask(m: re.Match[str]) -> str:
            name = _NAMES[m.lastgroup or ""]
            values.setdefault(name, []).append(m.group())
            first_at.setdefault(name, m.start())
            return f"\x00{name}\x00"

        template = _DYNAMIC.sub(mask, head)
        if not values:
            return None
        key = _h(template)
        current = tuple((name, _h("\x00".join(vals))) for name, vals in sorted(values.items()))

        distinct: dict[str, set[int]] = {name: {vh} for name, vh in current}
        for t, seen in space.recent:
            if t == key:
                for name, vh in seen:
                    distinct[name].add(vh)
        space.recent.append((key, current))

        unstable = [name for name, hashes in distinct.items() if len(hashes) >= self.min_distinct]
        if not unstable:
            return None
        earliest = min(unstable, key=first_at.__getitem__)
        self._counter.labels(namespace=namespace, pattern=earliest).inc()
        if earliest in space.warned:
            return None
        space.warned.add(earliest)
        log.warning(
            "prefix caching defeated in namespace %r: the prompt start keeps changing (%s at character %d); "
            "move dynamic content to the end of the prompt, see docs/prefix-caching.md",
            namespace, earliest, first_at[earliest],
        )
        return earliest
