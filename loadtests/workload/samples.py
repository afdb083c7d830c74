"""One record per generation request, kept by every locust process and merged on the master.

Locust's own stats hold latencies per request name; the summary needs more per request (cache outcome,
layer, the intent asked, which answer came back, token usage, TTFT), so each process keeps these
records and a worker ships its new ones to the master with every stats report (``report_to_master``),
where ``worker_report`` merges them. Samples are plain tuples on the wire.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple


class Sample(NamedTuple):
    t: float  # start, seconds since the epoch
    kind: str  # faq | shared_prefix | chat_stream | completion
    cache: str  # HIT | MISS | BYPASS; "" when the response carried no X-Cache (an error)
    layer: str  # l1 | redis_exact | exact (the gateway did not say which) | semantic; "" unless a hit
    ms: float  # whole request, to the last byte of a stream
    error: str = ""  # error type; "" when the request succeeded
    intent: str = ""  # the intent asked (faq, completion); "" for scenarios without intents
    answer: str = ""  # signature of the answer that came back (see answer_signature)
    finish: str = ""  # finish_reason of the first choice
    prompt_tokens: int = 0  # usage of the answer (for a hit: the stored usage of the original miss)
    completion_tokens: int = 0
    cached_tokens: int = 0  # usage.prompt_tokens_details.cached_tokens (vLLM's prefix cache)
    ttft_ms: float | None = None  # streams: time to the first content chunk
    tpot_ms: float | None = None  # streams: mean time between content chunks after the first
    control: str = ""  # the Cache-Control sent, or "sampled" for a temperature > 0 request
    paraphrase: int = -1  # index of the paraphrase asked within its intent (-1: no intent)


def answer_signature(text: str, usage: dict[str, Any] | None) -> str:
    """What identifies the answer of one stored entry: its text and its usage, which a hit replays
    unchanged. The prompt token count tells apart answers of equal text given to different questions."""
    usage = usage or {}
    raw = f"{text}\x00{usage.get('prompt_tokens', 0)}\x00{usage.get('completion_tokens', 0)}"
    return hashlib.blake2b(raw.encode(), digest_size=10).hexdigest()


def cache_layer(headers: Any) -> str:
    """The hit's layer from the response headers: ``X-Cache-Layer`` (exact | semantic, or already split
    as l1 | redis) and, when the gateway sends it, ``X-Cache-Store`` (l1 | redis) splitting exact hits."""
    layer = (headers.get("x-cache-layer") or "").strip().lower()
    store = (headers.get("x-cache-store") or "").strip().lower()
    if layer == "exact" and store:
        layer = store
    return {"l1": "l1", "redis": "redis_exact", "redis_exact": "redis_exact"}.get(layer, layer)


class Collector:
    """This process's samples; ``drain`` hands the unsent ones to a worker's stats report."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self._sent = 0

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    def drain(self) -> list[tuple[Any, ...]]:
        new = self.samples[self._sent:]
        self._sent = len(self.samples)
        return [tuple(s) for s in new]

    def merge(self, rows: list[Any]) -> None:
        self.samples.extend(Sample(*row) for row in rows)

    def reset(self) -> None:
        self.samples.clear()
        self._sent = 0
