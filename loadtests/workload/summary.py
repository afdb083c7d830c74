"""summary.json from the merged samples: what each cache layer answered, how fast, how many upstream
tokens it avoided, and how many semantic hits served another intent's answer (false hits).

False hits. The client knows which intent it asked; the gateway does not say which entry answered. But
a stored entry is the answer of one earlier miss, and a hit replays that answer unchanged, text and
usage alike. So every miss records (intent, answer signature); a semantic hit whose signature was
recorded for the same intent is correct; one recorded only for other intents is a false hit; one never
recorded is "unattributed" (its entry was stored before the run, with ``--warm``, or its miss was cut
off at the end). When the same signature was recorded for several intents (two near misses that got
the very same text with the same prompt length) the hit is counted correct and "ambiguous": the
client got the text a fresh answer would have given. The comparison runs over the samples of every
worker at the end, so an entry stored through one worker and hit through another is attributed too.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from loadtests.workload.samples import Sample

OUTCOMES = ("HIT", "MISS", "BYPASS")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _latency(values: list[float]) -> dict[str, float | None]:
    return {"p50": _r(percentile(values, 50)), "p95": _r(percentile(values, 95)), "p99": _r(percentile(values, 99))}


def false_hits(samples: Iterable[Sample], near_misses: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any]:
    """Attribute every semantic hit of a labelled request to the intent whose miss produced its answer."""
    origins: dict[str, set[str]] = defaultdict(set)
    hits: list[Sample] = []
    exact_wrong = 0
    labelled = [s for s in samples if s.intent and not s.error]
    for s in labelled:
        if s.cache in ("MISS", "BYPASS") and s.answer:
            origins[s.answer].add(s.intent)
    pairs: Counter[tuple[str, str]] = Counter()
    correct = ambiguous = unattributed = wrong = 0
    for s in labelled:
        if s.cache != "HIT":
            continue
        found = origins.get(s.answer, set())
        if s.layer != "semantic":
            exact_wrong += bool(found) and s.intent not in found
            continue
        hits.append(s)
        if not found:
            unattributed += 1
        elif s.intent in found:
            correct += 1
            ambiguous += len(found) > 1
        else:
            wrong += 1
            pairs[(s.intent, min(found))] += 1
    near = {k: set(v) for k, v in (near_misses or {}).items()}
    attributed = correct + wrong
    return {
        "semantic_hits": len(hits),
        "false_hits": wrong,
        "false_hit_rate": _r(wrong / attributed, 4) if attributed else 0.0,
        "correct_semantic_hits": correct,
        "ambiguous_semantic_hits": ambiguous,
        "unattributed_semantic_hits": unattributed,
        "exact_hits_with_another_intents_answer": exact_wrong,
        "false_hit_pairs": [
            {"asked": asked, "answered_from": origin, "count": n, "near_miss": origin in near.get(asked, ())}
            for (asked, origin), n in pairs.most_common(20)
        ],
    }


def _outcome(s: Sample) -> str:
    return s.layer if s.cache == "HIT" else s.cache


def repeats(samples: Iterable[Sample]) -> dict[str, dict[str, int]]:
    """Labelled requests by what the cache could already hold when each started, and what it answered.

    ``new_intent``: no miss of that intent (same kind of request) had come back yet, so only a cold
    miss (or a hit on another intent's entry) was possible; ``same_question``: that very paraphrase had
    come back as a miss, so an exact hit was due; ``other_paraphrase``: another paraphrase of the intent
    had, which only a semantic hit can answer: its semantic / MISS counts are the decision rule's recall
    on this workload. Answers sent with no-store or sampled are not stored, so they do not count as held.
    """
    labelled = sorted((s for s in samples if s.intent and not s.error), key=lambda s: s.t)
    stored = sorted((s.t + s.ms / 1000, s.kind, s.intent, s.paraphrase) for s in labelled
                    if s.cache == "MISS" and s.control not in ("no-store", "sampled"))
    held_intents: set[tuple[str, str]] = set()
    held_questions: set[tuple[str, str, int]] = set()
    out: dict[str, Counter[str]] = {"new_intent": Counter(), "same_question": Counter(), "other_paraphrase": Counter()}
    i = 0
    for s in labelled:
        while i < len(stored) and stored[i][0] <= s.t:
            _, kind, intent, k = stored[i]
            held_intents.add((kind, intent))
            held_questions.add((kind, intent, k))
            i += 1
        if (s.kind, s.intent, s.paraphrase) in held_questions:
            group = "same_question"
        elif (s.kind, s.intent) in held_intents:
            group = "other_paraphrase"
        else:
            group = "new_intent"
        out[group][_outcome(s)] += 1
        out[group]["requests"] += 1
    return {k: dict(v.most_common()) for k, v in out.items()}


def halves(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Hit rate and tokens avoided in the first and the second half of the run (by start time): how
    much of the run the cold cache took."""
    ok = sorted((s for s in samples if not s.error), key=lambda s: s.t)
    if not ok:
        return {}
    mid = (ok[0].t + ok[-1].t) / 2
    out = {}
    for name, part in (("first", [s for s in ok if s.t < mid]), ("second", [s for s in ok if s.t >= mid])):
        tokens = sum(s.prompt_tokens + s.completion_tokens for s in part)
        avoided = sum(s.prompt_tokens + s.completion_tokens for s in part if s.cache == "HIT")
        out[name] = {"requests": len(part), "misses": sum(s.cache == "MISS" for s in part),
                     "hit_rate": round(sum(s.cache == "HIT" for s in part) / len(part), 4) if part else 0.0,
                     "upstream_tokens_avoided_fraction": round(avoided / tokens, 4) if tokens else 0.0}
    return out


def summarise(samples: list[Sample], *, duration_s: float | None = None,
              near_misses: Mapping[str, Iterable[str]] | None = None, meta: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """The summary.json document (see loadtests/README.md for every field)."""
    ok = [s for s in samples if not s.error]
    failed = [s for s in samples if s.error]
    if duration_s is None:
        duration_s = (max(s.t + s.ms / 1000 for s in samples) - min(s.t for s in samples)) if samples else 0.0
    by_cache: dict[str, dict[str, Any]] = {}
    for outcome in OUTCOMES:
        ms = [s.ms for s in ok if s.cache == outcome]
        by_cache[outcome] = {"count": len(ms), "p50_ms": _r(percentile(ms, 50)), "p99_ms": _r(percentile(ms, 99))}
    hits = [s for s in ok if s.cache == "HIT"]
    n_ok = len(ok)
    layers = Counter(s.layer for s in hits)
    split = layers["l1"] + layers["redis_exact"] > 0 or layers["exact"] == 0
    exact = layers["l1"] + layers["redis_exact"] + layers["exact"]

    def rate(n: int) -> float:
        return round(n / n_ok, 4) if n_ok else 0.0

    avoided = sum(s.prompt_tokens + s.completion_tokens for s in hits)
    total = sum(s.prompt_tokens + s.completion_tokens for s in ok)
    upstream = [s for s in ok if s.cache != "HIT"]
    prompt_up = sum(s.prompt_tokens for s in upstream)
    cached_up = sum(s.cached_tokens for s in upstream)
    streams = [s for s in ok if s.ttft_ms is not None]
    ttft_by: dict[str, dict[str, float | None]] = {}
    for outcome in OUTCOMES:
        v = [s.ttft_ms for s in streams if s.cache == outcome and s.ttft_ms is not None]
        if v:
            ttft_by[outcome] = {"count": len(v), "p50": _r(percentile(v, 50)), "p99": _r(percentile(v, 99))}
    ttft = [s.ttft_ms for s in streams if s.ttft_ms is not None]
    tpot = [s.tpot_ms for s in streams if s.tpot_ms is not None]
    hit_p50, miss_p50 = by_cache["HIT"]["p50_ms"], by_cache["MISS"]["p50_ms"]
    kinds = Counter(s.kind for s in samples)
    doc: dict[str, Any] = {
        **(meta or {}),
        "requests": len(samples),
        "failures": len(failed),
        "duration_s": round(duration_s, 1),
        "rps": round(len(samples) / duration_s, 2) if duration_s else 0.0,
        "latency_ms": _latency([s.ms for s in ok]),
        "by_cache": by_cache,
        "hit_rate": rate(len(hits)),
        "hit_rate_by_layer": {
            "l1": rate(layers["l1"]) if split else None,
            "redis_exact": rate(layers["redis_exact"]) if split else None,
            "exact": rate(exact),
            "semantic": rate(layers["semantic"]),
        },
        "hit_p50_speedup": round(miss_p50 / hit_p50, 1) if hit_p50 and miss_p50 else None,
        **false_hits(samples, near_misses),
        "upstream_tokens_avoided": avoided,
        "upstream_tokens_total": total,
        "upstream_tokens_avoided_fraction": round(avoided / total, 4) if total else 0.0,
        "prefix_cache": {"prompt_tokens": prompt_up, "cached_tokens": cached_up,
                         "cached_fraction": round(cached_up / prompt_up, 4) if prompt_up else 0.0},
        "ttft_ms": {"count": len(ttft), "p50": _r(percentile(ttft, 50)), "p99": _r(percentile(ttft, 99)),
                    "by_cache": ttft_by},
        "latency_per_token_ms": {"p50": _r(percentile(tpot, 50), 3), "p99": _r(percentile(tpot, 99), 3)},
        "errors": dict(Counter(s.error for s in failed).most_common()),
        "by_kind": {k: {"requests": n, "hit_rate": round(sum(1 for s in hits if s.kind == k) / n, 4)}
                    for k, n in sorted(kinds.items())},
        "controls": dict(Counter(s.control for s in samples if s.control)),
        "repeats": repeats(samples),
        "halves": halves(samples),
    }
    return doc


def check(doc: Mapping[str, Any], *, max_failures: int = 0, max_false_hit_rate: float = 0.01) -> list[str]:
    """Threshold violations (empty: the run passes)."""
    problems = []
    if doc["requests"] == 0:
        problems.append("no requests completed")
    if doc["failures"] > max_failures:
        problems.append(f"{doc['failures']} failed requests (allowed {max_failures}): {doc['errors']}")
    if doc["false_hit_rate"] > max_false_hit_rate:
        problems.append(f"false-hit rate {doc['false_hit_rate']:.4f} above {max_false_hit_rate}")
    return problems


def timeline(samples: list[Sample], buckets: int = 60) -> dict[str, list[float | None]]:
    """Per time bucket: hit rate and p50 latency of hits and misses (for the plot and the summary)."""
    ok = sorted((s for s in samples if not s.error), key=lambda s: s.t)
    if not ok:
        return {"t_s": [], "hit_rate": [], "hit_p50_ms": [], "miss_p50_ms": [], "requests": []}
    t0 = ok[0].t
    span = max(ok[-1].t - t0, 1e-9)
    width = max(span / buckets, 1.0)
    groups: dict[int, list[Sample]] = defaultdict(list)
    for s in ok:
        groups[int((s.t - t0) / width)].append(s)
    out: dict[str, list[float | None]] = {"t_s": [], "hit_rate": [], "hit_p50_ms": [], "miss_p50_ms": [], "requests": []}
    for i in sorted(groups):
        g = groups[i]
        out["t_s"].append(round((i + 0.5) * width, 1))
        out["requests"].append(len(g))
        out["hit_rate"].append(round(sum(s.cache == "HIT" for s in g) / len(g), 4))
        out["hit_p50_ms"].append(_r(percentile([s.ms for s in g if s.cache == "HIT"], 50)))
        out["miss_p50_ms"].append(_r(percentile([s.ms for s in g if s.cache != "HIT"], 50)))
    return out
