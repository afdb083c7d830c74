"""Prometheus collectors of the caching layers: what an SRE needs to see hit rate and its cost."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256)

REQUESTS = Counter("cachestack_cache_requests_total", "Cache results by layer and namespace",
                   ["result", "layer", "namespace"])
STAGE_SECONDS = Histogram("cachestack_cache_stage_seconds", "Time per cache stage",
                          ["stage"], buckets=STAGE_BUCKETS)
LOOKUP_SECONDS = Histogram("cachestack_cache_lookup_seconds", "Whole lookup time, by outcome",
                           ["result"], buckets=STAGE_BUCKETS)
SIMILARITY = Histogram("cachestack_cache_similarity", "Best cosine similarity of every semantic lookup",
                       ["namespace"], buckets=tuple(round(0.5 + 0.025 * i, 3) for i in range(21)))
BYPASSES = Counter("cachestack_cache_bypass_total", "Lookups or stores skipped, by reason", ["reason"])
STORES = Counter("cachestack_cache_stores_total", "Answers written to the cache, by namespace and outcome",
                 ["namespace", "outcome"])
TOKENS_SAVED = Counter("cachestack_cache_tokens_saved_total", "Tokens not generated thanks to hits",
                       ["kind", "model"])
MONEY_SAVED = Counter("cachestack_cache_money_saved_total", "Estimated money saved from configured prices",
                      ["model"])
REDIS_UP = Gauge("cachestack_cache_redis_up", "1 while the cache store answers, 0 while it is skipped")
SHADOW = Counter("cachestack_cache_shadow_total", "Shadow checks of hits against a fresh answer",
                 ["namespace", "agree"])
SHADOW_FALSE_HIT_RATE = Gauge("cachestack_cache_shadow_false_hit_rate",
                              "Estimated live false-hit rate from shadow checks", ["namespace"])
BATCH_SIZE = Histogram("cachestack_cache_batch_size", "Items per run of a batched CPU stage (embed, verify)",
                       ["stage"], buckets=(1, 2, 4, 8, 16, 32, 64))
JUDGE = Counter("cachestack_cache_judge_total", "LLM judge verdicts on borderline pairs",
                ["verdict"])  # yes, no, unsure, error
STORE_TRIPS = Counter("cachestack_cache_store_trips_total",
                      "Times the store's breaker opened (every lookup skips the store for retry_after_s), by "
                      "cause: a Redis error, or a failed check after consecutive timeouts", ["cause"])
ADAPTIVE = Counter("cachestack_cache_adaptive_total",
                   "Learned-threshold decisions on candidates past the guards (static: not learned yet)",
                   ["decision"])  # serve, explore, static
VERDICTS = Counter("cachestack_cache_verdicts_total", "Verdicts the learned thresholds learn from",
                   ["source", "correct"])  # source: answers (a miss or shadowed hit compared), judge
BACKGROUND_JUDGE = Counter("cachestack_cache_background_judge_total",
                           "Background judge runs on misses just below the threshold",
                           ["outcome"])  # yes (aliased), no, unsure, error, dropped
