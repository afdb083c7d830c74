"""The locust workload's pieces without a stack: pool, Zipf, run seeds, false-hit attribution, summary."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from cache.config import CacheConfig
from cache.policy import Caller, make_plan
from loadtests.workload.pool import DEFAULT_POOL, ZipfSampler, load_pairs, load_pool
from loadtests.workload.samples import Collector, Sample, answer_signature, cache_layer
from loadtests.workload.scenarios import SCENARIOS, Settings, Workload, run_seed
from loadtests.workload.summary import check, false_hits, halves, repeats, summarise


def test_shipped_pool_has_300_labelled_intents_with_paraphrases_and_near_misses():
    pool = load_pool()
    assert len(pool.intents) >= 300
    assert all(len(i.paraphrases) >= 4 for i in pool.intents)
    assert all(i.near_misses and all(n in pool.by_id for n in i.near_misses) for i in pool.intents)
    assert set(Counter(i.change for i in pool.intents)) == {"entity", "number", "direction"}


def test_a_question_in_two_intents_is_refused(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"id": "a", "paraphrases": ["Do you ship to Peru?"]}) + "\n"
                    + json.dumps({"id": "b", "paraphrases": ["do you ship to peru"]}) + "\n")
    with pytest.raises(ValueError, match="belongs to both"):
        load_pool(path)
    path.write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match=":1: not an intent"):
        load_pool(path)


def test_pairs_become_intents_and_near_misses(tmp_path):
    rows = [{"text_a": "How do I learn Python?", "text_b": "What is the best way to learn Python?", "label": 1},
            {"text_a": "What is the best way to learn Python?", "text_b": "How can I learn Python fast?", "label": 1},
            {"text_a": "How do I learn Java?", "text_b": "What is the best way to learn Java?", "label": 1},
            {"text_a": "How do I learn Python?", "text_b": "How do I learn Java?", "label": 0},
            {"text_a": "Is tea healthy?", "text_b": "Is coffee healthy?", "label": 0}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pool = load_pairs(path)
    sizes = sorted(len(i.paraphrases) for i in pool.intents)
    assert sizes == [2, 3]  # lone questions (tea, coffee) are left out
    python = next(i for i in pool.intents if len(i.paraphrases) == 3)
    java = next(i for i in pool.intents if len(i.paraphrases) == 2)
    assert python.near_misses == (java.id,) and java.near_misses == (python.id,)


def test_zipf_popularity():
    pool = load_pool()
    sampler = ZipfSampler(pool, s=1.0)
    rng = random.Random(7)
    draws = Counter(sampler.draw(rng).id for _ in range(20000))
    top, tenth = sampler.ranked[0].id, sampler.ranked[9].id
    assert draws[top] / 20000 == pytest.approx(sampler.probability(1), rel=0.1)
    assert 7 < draws[top] / draws[tenth] < 14  # 1/1 vs 1/10
    assert ZipfSampler(pool).ranked == sampler.ranked  # every worker ranks alike


def test_run_seed_makes_a_cold_fingerprint_at_temperature_zero():
    """Cold reruns rely on the gateway hashing ``seed`` into the context fingerprint."""
    cfg = CacheConfig()
    body = {"model": "smollm2", "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]}
    a = make_plan(cfg, "chat", {**body, "seed": run_seed("run-a")}, Caller("t"))
    b = make_plan(cfg, "chat", {**body, "seed": run_seed("run-b")}, Caller("t"))
    again = make_plan(cfg, "chat", {**body, "seed": run_seed("run-a")}, Caller("t"))
    assert a.fingerprint != b.fingerprint and a.exact_key != b.exact_key
    assert a.fingerprint == again.fingerprint and a.lookup and a.semantic


def test_mixed_workload_sends_every_kind_and_cache_control():
    pool = load_pool()
    w = Workload("mixed", Settings(seed=5), ZipfSampler(pool), random.Random(3))
    kinds = Counter(w.next_kind() for _ in range(2000))
    assert set(kinds) == set(SCENARIOS["mixed"])
    faqs = [w.faq() for _ in range(2000)]
    controls = Counter(r.control for r in faqs)
    assert 50 < controls["no-cache"] < 150 and 50 < controls["no-store"] < 150 and controls["sampled"] > 20
    assert all(r.headers.get("cache-control") == r.control for r in faqs if r.control in ("no-cache", "no-store"))
    assert all(r.body["seed"] == 5 and r.intent for r in faqs if not r.control)
    assert w.completion().path == "/v1/completions"
    assert len(w.shared_prefix().body["messages"][0]["content"]) > 4000  # the >= 1,000-token shared prefix


def test_cache_layer_reads_the_split_when_the_gateway_sends_it():
    assert cache_layer({"x-cache-layer": "exact"}) == "exact"
    assert cache_layer({"x-cache-layer": "exact", "x-cache-store": "l1"}) == "l1"
    assert cache_layer({"x-cache-layer": "exact", "x-cache-store": "redis"}) == "redis_exact"
    assert cache_layer({"x-cache-layer": "semantic"}) == "semantic"


def _s(cache, layer, intent, answer, ms=10.0, t=0.0, error="", tokens=(10, 5), **kw):
    return Sample(t, "faq", cache, layer, ms, error, intent, answer, "stop", tokens[0], tokens[1], **kw)


def test_false_hit_attribution():
    a1, a2, b1 = (answer_signature(x, {"prompt_tokens": n}) for x, n in (("A", 10), ("A'", 12), ("B", 10)))
    samples = [
        _s("MISS", "", "a", a1), _s("MISS", "", "a", a2), _s("MISS", "", "b", b1),
        _s("HIT", "semantic", "a", a2),  # the answer of a's other paraphrase: correct
        _s("HIT", "semantic", "b", a1),  # a's answer for b: a false hit
        _s("HIT", "semantic", "b", a1),
        _s("HIT", "semantic", "c", "never-seen"),  # stored before the run: unattributed
        _s("HIT", "exact", "a", a1),
        _s("HIT", "semantic", "a", a1, error="http_502"),  # failed requests do not count
    ]
    fh = false_hits(samples, {"b": ["a"]})
    assert fh["semantic_hits"] == 4 and fh["false_hits"] == 2 and fh["correct_semantic_hits"] == 1
    assert fh["unattributed_semantic_hits"] == 1 and fh["false_hit_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert fh["false_hit_pairs"] == [{"asked": "b", "answered_from": "a", "count": 2, "near_miss": True}]
    assert fh["exact_hits_with_another_intents_answer"] == 0


def test_summary_fields_and_thresholds():
    samples = [_s("MISS", "", "a", "x", ms=1000, t=0, tokens=(30, 10)),
               _s("HIT", "exact", "a", "x", ms=2, t=1, tokens=(30, 10)),
               _s("HIT", "semantic", "a", "x", ms=12, t=2, tokens=(30, 10)),
               _s("BYPASS", "", "", "y", ms=900, t=3, tokens=(30, 10)),
               _s("", "", "a", "", ms=5, t=4, error="http_503", tokens=(0, 0)),
               Sample(5, "chat_stream", "MISS", "", 800, "", "", "z", "stop", 20, 8, 16, ttft_ms=150.0, tpot_ms=20.0)]
    doc = summarise(samples, duration_s=10.0)
    assert doc["requests"] == 6 and doc["failures"] == 1 and doc["rps"] == 0.6
    assert doc["by_cache"]["HIT"]["count"] == 2 and doc["by_cache"]["MISS"]["p50_ms"] == 800
    assert doc["hit_rate"] == 0.4 and doc["hit_rate_by_layer"]["semantic"] == 0.2
    assert doc["hit_rate_by_layer"]["l1"] is None and doc["hit_rate_by_layer"]["exact"] == 0.2
    assert doc["upstream_tokens_avoided"] == 80 and doc["upstream_tokens_avoided_fraction"] == round(80 / 188, 4)
    assert doc["prefix_cache"] == {"prompt_tokens": 80, "cached_tokens": 16, "cached_fraction": 0.2}
    assert doc["ttft_ms"]["p50"] == 150.0 and doc["errors"] == {"http_503": 1}
    assert check(doc) == ["1 failed requests (allowed 0): {'http_503': 1}"]
    assert check(doc, max_failures=1) == []
    assert any("false-hit rate" in p for p in check({**doc, "failures": 0, "false_hit_rate": 0.05}))


def test_repeats_say_what_the_cache_could_hold_when_each_request_started():
    samples = [
        _s("MISS", "", "a", "x", t=0.0, ms=1000, paraphrase=0),  # back at t=1
        _s("MISS", "", "a", "x", t=0.5, ms=900, paraphrase=0),  # asked while the first was in flight: cold
        _s("HIT", "l1", "a", "x", t=2.0, paraphrase=0),
        _s("HIT", "semantic", "a", "x", t=3.0, paraphrase=1),
        _s("MISS", "", "a", "y", t=4.0, ms=500, paraphrase=2),
        _s("MISS", "", "b", "z", t=0.0, ms=100, paraphrase=0, control="no-store"),  # not stored
        _s("MISS", "", "b", "z", t=1.0, ms=100, paraphrase=0),
        _s("", "", "b", "", t=5.0, error="http_502", paraphrase=0),  # failed: left out
    ]
    assert repeats(samples) == {
        "new_intent": {"requests": 4, "MISS": 4},
        "same_question": {"requests": 1, "l1": 1},
        "other_paraphrase": {"requests": 2, "semantic": 1, "MISS": 1},
    }
    h = halves(samples)
    assert h["first"] == {"requests": 4, "misses": 4, "hit_rate": 0.0, "upstream_tokens_avoided_fraction": 0.0}
    assert h["second"]["hit_rate"] == 0.6667 and h["second"]["upstream_tokens_avoided_fraction"] == 0.6667


def test_collector_ships_only_new_samples():
    c, master = Collector(), Collector()
    c.add(_s("MISS", "", "a", "x"))
    master.merge(c.drain())
    c.add(_s("HIT", "semantic", "a", "x"))
    master.merge(c.drain())
    assert master.merge(c.drain()) is None and [s.cache for s in master.samples] == ["MISS", "HIT"]


def test_default_pool_file_is_in_the_repo():
    assert DEFAULT_POOL.is_file() and DEFAULT_POOL.parent.name == "data"
