"""The semantic cache end to end: real vLLM, real Valkey + RediSearch, real MiniLM, official client."""

from __future__ import annotations

import hashlib
import time

import httpx
import openai
import pytest

from cache.policy import CacheControl, Caller
from tests.conftest import ALIAS, MODEL

pytestmark = pytest.mark.e2e

ADMIN = "admin-secret"
KEYS = {"a": "sk-tenant-a", "b": "sk-tenant-b"}
FRANCE = "What is the capital of France?"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def namespaces(**extra: dict) -> dict:
    # faq: every tenant writes (gateways without tenants use it too); tests/e2e/test_tenants.py has the ACLs
    return {"namespaces": {"default": {}, "faq": {"shared": True, "writers": ["*"], "ttl_s": 604800},
                           "sampled-exact": {"sampled": "exact"}, "sampled-all": {"sampled": "all"},
                           "short": {"ttl_s": 3}, "v2": {"version": "2"}, **extra}}


@pytest.fixture
def gw(gateway_factory, vllm_url, redis_url):
    return gateway_factory(vllm_url, redis_url, cache=namespaces(), auth={
        "tenants": [{"name": t, "key_sha256": [sha(k)]} for t, k in KEYS.items()],
        "admin_key_sha256": sha(ADMIN)})


def ask(gw, question: str, *, tenant: str = "a", history: list | None = None, headers: dict | None = None,
        stream: bool = False, model: str = MODEL, **params) -> httpx.Response:
    params.setdefault("temperature", 0)
    params.setdefault("max_tokens", 24)
    body = {"model": model, "messages": [*(history or []), {"role": "user", "content": question}],
            "stream": stream, **params}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60,
                   headers={"authorization": f"Bearer {KEYS[tenant]}", **(headers or {})})
    assert r.status_code == 200, r.text
    gw.drain()  # the store runs after the response: wait for it so the next call can hit
    return r


def oai(gw, tenant: str = "a") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[tenant], max_retries=0)


def admin(gw, path: str, body: dict | None = None) -> dict:
    h = {"authorization": f"Bearer {ADMIN}"}
    r = httpx.post(gw.url + path, json=body, headers=h) if body is not None else httpx.get(gw.url + path, headers=h)
    assert r.status_code == 200, r.text
    return r.json()


def test_exact_hit_replays_the_answer_with_fresh_id(gw):
    first = ask(gw, FRANCE)
    second = ask(gw, FRANCE)
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT" and second.headers["x-cache-layer"] == "exact"
    assert int(second.headers["age"]) >= 0 and "x-cache-similarity" not in second.headers
    a, b = first.json(), second.json()
    assert b["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"]
    assert b["id"] != a["id"] and b["usage"] == a["usage"]


def test_paraphrase_hits_semantically(gw):
    ask(gw, FRANCE)
    r = ask(gw, "what's the capital city of France")
    assert r.headers["x-cache"] == "HIT" and r.headers["x-cache-layer"] == "semantic"
    assert 0.8 < float(r.headers["x-cache-similarity"]) < 1.0


def test_acronym_paraphrase_does_not_hit(gw):
    """MiniLM does not know that RAG is retrieval-augmented generation (cosine ~0.09): no hit,
    which is the safe outcome; a model that knew the acronym could make this a hit."""
    ask(gw, "What is RAG?")
    assert ask(gw, "Can you explain retrieval-augmented generation?").headers["x-cache"] == "MISS"


def test_negation_is_not_a_hit(gw):
    ask(gw, "How do I enable 2FA on my account?")
    assert ask(gw, "How do I disable 2FA on my account?").headers["x-cache"] == "MISS"


def test_different_history_does_not_hit(gw):
    h1 = [{"role": "user", "content": "Let's talk about Germany."}, {"role": "assistant", "content": "Sure."}]
    h2 = [{"role": "user", "content": "Let's talk about Spain."}, {"role": "assistant", "content": "Sure."}]
    ask(gw, "What is its capital?", history=h1)
    assert ask(gw, "What is its capital?", history=h2).headers["x-cache"] == "MISS"
    assert ask(gw, "What is its capital?", history=h1).headers["x-cache"] == "HIT"


def test_other_tenant_never_gets_the_answer(gw):
    ask(gw, FRANCE, tenant="a")
    assert ask(gw, FRANCE, tenant="b").headers["x-cache"] == "MISS"
    assert ask(gw, "what's the capital city of France", tenant="b").headers["x-cache"] == "HIT"  # b's own


def test_shared_namespace_hits_across_tenants(gw):
    ask(gw, FRANCE, tenant="a", headers={"x-cache-namespace": "faq"})
    r = ask(gw, FRANCE, tenant="b", headers={"x-cache-namespace": "faq"})
    assert r.headers["x-cache"] == "HIT"


def test_unknown_namespace_is_404(gw):
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEYS['a']}",
                                                             "x-cache-namespace": "nope"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "X-Cache-Namespace"
    assert r.json()["error"]["code"] == "namespace_not_found"


def test_temperature_policy(gw):
    # absent temperature means OpenAI's 1.0: a sample was asked for, the default namespace bypasses
    r1 = ask(gw, FRANCE, temperature=None)
    r2 = ask(gw, FRANCE, temperature=None)
    assert r1.headers["x-cache"] == r2.headers["x-cache"] == "BYPASS"
    warm = dict(temperature=0.3, max_tokens=300)  # an answer that stops or reaches max_tokens is stored
    ex = {"x-cache-namespace": "sampled-exact"}
    ask(gw, FRANCE, headers=ex, **warm)
    assert ask(gw, FRANCE, headers=ex, **warm).headers["x-cache-layer"] == "exact"
    assert ask(gw, "what's the capital city of France", headers=ex, **warm).headers["x-cache"] == "MISS"
    al = {"x-cache-namespace": "sampled-all"}
    ask(gw, FRANCE, headers=al, **warm)
    assert ask(gw, "what's the capital city of France", headers=al, **warm).headers["x-cache"] == "HIT", \
        gw.cache_counters()


def test_streaming_miss_is_stored_and_streaming_hit_reads_like_a_live_stream(gw):
    c = oai(gw)
    msgs = [{"role": "user", "content": "What is the capital of Italy?"}]
    live = list(c.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=60, stream=True))
    gw.drain()
    raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, temperature=0, max_tokens=60,
                                                      stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-cache"] == "HIT"
    replayed = list(raw.parse())
    text = lambda chunks: "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)  # noqa: E731
    assert text(replayed) == text(live) and text(live)
    assert replayed[0].choices[0].delta.role == "assistant"
    assert sum(1 for ch in replayed if ch.choices and ch.choices[0].delta.content) > 1  # not one lump
    assert [ch.choices[0].finish_reason for ch in replayed if ch.choices][-1] == "stop"
    assert replayed[-1].usage is not None and replayed[-1].usage.completion_tokens > 0
    plain = c.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, temperature=0, max_tokens=60)
    assert plain.headers["x-cache"] == "HIT" and plain.parse().choices[0].message.content == text(live)


def test_length_answer_is_stored_and_replayed_for_its_max_tokens(gw):
    """finish_reason "length" is the whole answer for that max_tokens (part of the key): stored, replayed."""
    c = oai(gw)
    q = [{"role": "user", "content": "Write a long poem about the sea."}]
    first = c.chat.completions.with_raw_response.create(model=MODEL, messages=q, max_tokens=24, temperature=0)
    gw.drain()
    second = c.chat.completions.with_raw_response.create(model=MODEL, messages=q, max_tokens=24, temperature=0)
    a, b = first.parse(), second.parse()
    assert a.choices[0].finish_reason == "length"
    assert first.headers["x-cache"] == "MISS" and second.headers["x-cache"] == "HIT"
    assert b.choices[0].finish_reason == "length" and b.choices[0].message.content == a.choices[0].message.content
    # another max_tokens is another answer: not served from this entry
    other = c.chat.completions.with_raw_response.create(model=MODEL, messages=q, max_tokens=25, temperature=0)
    assert other.headers["x-cache"] == "MISS"
    # a streamed request replays the stored "length" answer as a stream
    chunks = list(c.chat.completions.create(model=MODEL, messages=q, max_tokens=24, temperature=0, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == a.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["length"]


def test_logprobs_request_is_never_answered_from_an_entry_without_logprobs(gw):
    c = oai(gw)
    q = [{"role": "user", "content": "Name a colour."}]
    plain = c.chat.completions.with_raw_response.create(model=MODEL, messages=q, max_tokens=8, temperature=0)
    gw.drain()
    assert c.chat.completions.with_raw_response.create(model=MODEL, messages=q, max_tokens=8,
                                                       temperature=0).headers["x-cache"] == "HIT"
    assert plain.parse().choices[0].logprobs is None
    for extra in ({"logprobs": True}, {"logprobs": True, "top_logprobs": 2}):
        r = c.chat.completions.with_raw_response.create(model=MODEL, messages=q, max_tokens=8, temperature=0, **extra)
        assert r.headers["x-cache"] == "MISS"
        lp = r.parse().choices[0].logprobs
        assert lp is not None and lp.content
        gw.drain()
        again = c.chat.completions.with_raw_response.create(model=MODEL, messages=q, max_tokens=8, temperature=0,
                                                            **extra)
        assert again.headers["x-cache"] == "HIT"  # its own entry, stored with its logprobs
        assert again.parse().choices[0].logprobs.model_dump() == lp.model_dump()
    prompt = "The colour of the sky is"
    c.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    gw.drain()
    r = c.completions.with_raw_response.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    assert r.headers["x-cache"] == "MISS" and r.parse().choices[0].logprobs.tokens


def test_cache_control(gw):
    ask(gw, FRANCE, headers={"cache-control": "no-store"})
    assert ask(gw, FRANCE).headers["x-cache"] == "MISS"  # nothing was stored
    assert ask(gw, FRANCE, headers={"cache-control": "no-cache"}).headers["x-cache"] == "MISS"  # stored, not read
    assert ask(gw, FRANCE).headers["x-cache"] == "HIT"
    time.sleep(1.2)
    assert ask(gw, FRANCE, headers={"cache-control": "max-age=1"}).headers["x-cache"] == "MISS"
    assert ask(gw, FRANCE, headers={"cache-control": "max-age=60"}).headers["x-cache"] == "HIT"


def test_ttl_expiry(gw):
    h = {"x-cache-namespace": "short"}
    ask(gw, FRANCE, headers=h)
    assert ask(gw, FRANCE, headers=h).headers["x-cache"] == "HIT"
    gw.gw.cache.l1.clear()
    time.sleep(3.1)  # a 3 s TTL: 1 s was flaky while a loaded machine took over a second between store and ask
    assert ask(gw, FRANCE, headers=h).headers["x-cache"] == "MISS"


def test_version_bump_and_model_change_miss(gw, gateway_factory, vllm_url, redis_url):
    ask(gw, FRANCE)
    assert ask(gw, FRANCE, model=ALIAS).headers["x-cache"] == "MISS"  # another model
    cfg = namespaces(default={"version": "2"})
    bumped = gateway_factory(vllm_url, redis_url, cache=cfg, redis={**gw.gw.cfg.redis.model_dump()}, auth={
        "tenants": [{"name": t, "key_sha256": [sha(k)]} for t, k in KEYS.items()]})
    assert ask(bumped, FRANCE).headers["x-cache"] == "MISS"


@pytest.mark.parametrize("purge", [
    {"namespace": "default"}, {"tenant": "a"}, {"model": MODEL}, {"version": "1"},
    {"similar_to": "capital city of France", "threshold": 0.7}, "key"])
def test_purge_by_each_filter(gw, purge):
    ask(gw, FRANCE)
    ask(gw, FRANCE, tenant="b")
    if purge == "key":
        purge = {"key": gw.gw.cache.plan("chat", {"model": MODEL, "temperature": 0, "max_tokens": 24,
                                                   "messages": [{"role": "user", "content": FRANCE}]},
                                         Caller("a"), CacheControl(), None).exact_key}
    n = admin(gw, "/admin/cache/purge", purge)["purged"]
    assert n == (1 if "key" in purge or "tenant" in purge else 2)
    assert ask(gw, FRANCE).headers["x-cache"] == "MISS"


def test_purge_needs_a_filter_and_admin_key(gw):
    r = httpx.post(gw.url + "/admin/cache/purge", json={}, headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 400
    r = httpx.post(gw.url + "/admin/cache/purge", json={"bogus": 1}, headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "bogus"
    r = httpx.post(gw.url + "/admin/cache/purge", json={"tenant": "a"}, headers={"authorization": "Bearer x"})
    assert r.status_code == 403
    assert admin(gw, "/admin/cache/stats")["store"] == "ok"


def test_metrics_count_hits_similarity_and_savings(gw):
    ask(gw, FRANCE)
    ask(gw, FRANCE)
    ask(gw, "what's the capital city of France")
    text = httpx.get(gw.url + "/metrics").text
    assert 'cachestack_cache_requests_total{layer="exact",namespace="default",result="HIT"}' in text
    assert 'cachestack_cache_requests_total{layer="semantic",namespace="default",result="HIT"}' in text
    assert "cachestack_cache_similarity_bucket" in text
    assert 'cachestack_cache_tokens_saved_total{kind="completion",model="smollm2"}' in text
    assert 'cachestack_cache_stage_seconds_bucket{le="0.001",stage="embed"}' in text


def test_redis_stopped_and_restarted_under_the_gateway(gateway_factory, vllm_url, own_valkey):
    """Fail open: with Redis gone every request is still answered (MISS, from vLLM) within the budget,
    /ready says degraded; when Redis is back (empty) the cache recreates its index and hits again.
    (tests/e2e/test_faults.py does the same under load.)"""
    gw = gateway_factory(vllm_url, own_valkey.url, redis={"lookup_budget_ms": 200, "retry_after_s": 0.5},
                         cache=namespaces())
    h = {"authorization": f"Bearer {KEYS['a']}"}
    body = {"model": MODEL, "temperature": 0, "max_tokens": 24, "messages": [{"role": "user", "content": FRANCE}]}
    post = lambda: httpx.post(gw.url + "/v1/chat/completions", json=body, headers=h, timeout=60)  # noqa: E731
    post()
    gw.drain()
    assert post().headers["x-cache"] == "HIT"
    gw.gw.cache.l1.clear()

    own_valkey.stop(grace_s=0.1)
    for _ in range(3):
        r = post()
        assert r.status_code == 200 and r.headers["x-cache"] == "MISS"
        assert "paris" in r.json()["choices"][0]["message"]["content"].lower()
    gw.drain()
    ready = httpx.get(gw.url + "/ready").json()
    assert ready["status"] == "ready" and ready["cache"] == "degraded"
    assert "cachestack_cache_redis_up 0.0" in httpx.get(gw.url + "/metrics").text

    own_valkey.start()
    time.sleep(0.6)  # retry_after_s
    deadline = time.monotonic() + 10  # the purge watch resubscribes by itself (stores wait for it)
    while not gw.gw.cache.watch.live() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert post().headers["x-cache"] == "MISS"  # the new Redis is empty
    gw.drain()
    assert post().headers["x-cache"] == "HIT"
    assert httpx.get(gw.url + "/ready").json()["cache"] == "ok"


def test_hanging_redis_is_skipped(gateway_factory, vllm_url):
    """A Redis that accepts connections and never answers (a fault a real Redis cannot be asked for):
    its check gives up within its timeout, the answer comes from vLLM, and requests skip the store
    (no per-request wait) while /ready says degraded."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        gw = gateway_factory(vllm_url, url, redis={"lookup_budget_ms": 100, "store_timeout_ms": 300,
                                                   "retry_after_s": 30}, cache=namespaces())
        h = {"authorization": f"Bearer {KEYS['a']}"}
        body = {"model": MODEL, "temperature": 0, "max_tokens": 24,
                "messages": [{"role": "user", "content": "What is the capital of Peru?"}]}
        direct = httpx.post(vllm_url + "/v1/chat/completions", json=body, timeout=60)
        started = time.perf_counter()
        r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=h, timeout=60)
        took = time.perf_counter() - started
        assert r.status_code == 200 and r.headers["x-cache"] == "MISS"
        assert r.json()["choices"][0]["message"] == direct.json()["choices"][0]["message"]
        assert took < 5.0  # vLLM time plus at most one budget, not a socket timeout
        bypassed = httpx.get(gw.url + "/metrics").text
        assert 'cachestack_cache_bypass_total{reason="store_down"}' in bypassed or "lookup_error" in bypassed
        assert httpx.get(gw.url + "/ready").json()["cache"] == "degraded"
    finally:
        silent.close()


def test_shadow_mode_rechecks_semantic_hits_against_vllm(gateway_factory, vllm_url, redis_url):
    """Every semantic hit (shadow_rate 1.0) is re-asked upstream after it was answered, and the two
    answers compared. SmolLM2-135M itself answers this paraphrase badly, so the check may well say
    "disagree": the test asserts the mechanism (one check per semantic hit, the rate gauge consistent
    with the counts), not the small model's quality."""
    import re

    gw = gateway_factory(vllm_url, redis_url, cache=namespaces(default={"shadow_rate": 1.0}), auth={
        "tenants": [{"name": t, "key_sha256": [sha(k)]} for t, k in KEYS.items()]})

    def counts() -> dict[str, float]:
        text = httpx.get(gw.url + "/metrics").text
        found = re.findall(r'cachestack_cache_shadow_total\{agree="(true|false)",namespace="default"\} ([0-9.]+)', text)
        rate = re.search(r'cachestack_cache_shadow_false_hit_rate\{namespace="default"\} ([0-9.]+)', text)
        return {**{k: float(v) for k, v in found}, "rate": float(rate.group(1)) if rate else -1.0}

    before = counts()
    ask(gw, FRANCE)
    assert ask(gw, "what's the capital city of France").headers["x-cache-layer"] == "semantic"
    gw.drain()  # the shadow call runs after the hit was answered
    fleet = gw.call(gw.gw.cache.counts.flush())  # the estimate is the fleet's: set from Redis totals
    after = counts()
    checks = lambda c: c.get("true", 0.0) + c.get("false", 0.0)  # noqa: E731
    assert checks(after) == checks(before) + 1
    shadowed = fleet.get("shadow:default:agree", 0) + fleet.get("shadow:default:disagree", 0)
    assert shadowed == 1
    assert after["rate"] == pytest.approx(fleet.get("shadow:default:disagree", 0) / shadowed)
    assert ask(gw, FRANCE).headers["x-cache-layer"] == "exact"  # exact hits are not shadowed
    gw.drain()
    assert checks(counts()) == checks(after)


def test_identical_concurrent_misses_share_one_generation_and_one_store(gw, vllm_url):
    import re
    from concurrent.futures import ThreadPoolExecutor

    def stored() -> float:
        m = re.search(r'cachestack_cache_stores_total\{namespace="default",outcome="stored"\} ([0-9.]+)',
                      httpx.get(gw.url + "/metrics").text)
        return float(m.group(1)) if m else 0.0

    def generated() -> float:
        text = httpx.get(vllm_url + "/metrics").text
        return sum(float(v) for v in re.findall(r'^vllm:request_success_total\{[^}]*\} ([0-9.]+)$', text, re.M))

    before_store, before_gen = stored(), generated()
    body = {"model": MODEL, "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": FRANCE}]}
    post = lambda _: httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60,  # noqa: E731
                                headers={"authorization": f"Bearer {KEYS['a']}"})
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, range(4)))
    gw.drain()
    texts = {r.json()["choices"][0]["message"]["content"] for r in answers}
    assert len(texts) == 1 and all(r.status_code == 200 for r in answers)
    misses = sum(1 for r in answers if r.headers["x-cache"] == "MISS")
    generations = generated() - before_gen
    assert 1 <= generations <= misses
    assert stored() - before_store == generations  # one store per generation, not per waiting client


def test_concurrent_semantic_lookups_share_verifier_runs(gw):
    """The verifier is batched across requests: 12 concurrent paraphrases need fewer than 12 runs."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    def verify_runs() -> tuple[float, float]:
        text = httpx.get(gw.url + "/metrics").text
        count = re.search(r'^cachestack_cache_batch_size_count\{stage="verify"\} ([0-9.]+)$', text, re.M)
        total = re.search(r'^cachestack_cache_batch_size_sum\{stage="verify"\} ([0-9.]+)$', text, re.M)
        return (float(count.group(1)) if count else 0.0), (float(total.group(1)) if total else 0.0)

    ask(gw, FRANCE)
    runs0, items0 = verify_runs()
    body = {"model": MODEL, "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": "what's the capital city of France"}]}
    post = lambda _: httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60,  # noqa: E731
                                headers={"authorization": f"Bearer {KEYS['a']}"})
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, range(12)))
    assert [r.headers["x-cache-layer"] for r in answers] == ["semantic"] * 12
    runs, items = verify_runs()
    assert items - items0 == 12
    assert runs - runs0 < 12


def _generated(vllm_url: str) -> float:
    import re

    text = httpx.get(vllm_url + "/metrics").text
    return sum(float(v) for v in re.findall(r'^vllm:request_success_total\{[^}]*\} ([0-9.]+)$', text, re.M))


def test_semantic_hit_cancels_its_speculative_upstream_call(gw, vllm_url):
    """The upstream call starts with the semantic stage (so a miss waits for no lookup); a hit cancels
    it: vLLM never completes that request, and the replica is left healthy with nothing in flight."""
    import re

    def routed() -> float:
        m = re.search(r"^cachestack_route_requests_total\{[^}]*\} ([0-9.]+)$", httpx.get(gw.url + "/metrics").text, re.M)
        return float(m.group(1)) if m else 0.0

    ask(gw, FRANCE, max_tokens=64)
    before, sent = _generated(vllm_url), routed()
    r = ask(gw, "what's the capital city of France", max_tokens=64)
    assert r.headers["x-cache-layer"] == "semantic"
    assert routed() - sent == 1  # the speculative call went out...
    time.sleep(1.5)  # longer than vLLM takes to answer this question here
    assert _generated(vllm_url) == before  # ...and was aborted, never completed
    text = httpx.get(gw.url + "/metrics").text
    assert re.search(r"^cachestack_route_replica_healthy\{[^}]*\} 1\.0$", text, re.M)
    assert re.search(r"^cachestack_route_in_flight\{[^}]*\} 0\.0$", text, re.M)


def test_miss_with_speculative_upstream_is_answered_and_stored_once(gw, vllm_url):
    before = _generated(vllm_url)
    first = ask(gw, "What is the capital of Italy?", stream=True)
    assert first.headers["x-cache"] == "MISS" and "data: [DONE]" in first.text
    assert "\"finish_reason\":\"stop\"" in first.text.replace(" ", "")
    again = ask(gw, "What is the capital of Italy?")
    assert again.headers["x-cache"] == "HIT"
    assert _generated(vllm_url) - before == 1


def test_speculation_can_be_switched_off(gateway_factory, vllm_url, redis_url):
    import re

    gw = gateway_factory(vllm_url, redis_url, cache={"speculative_upstream": False})
    body = {"model": MODEL, "temperature": 0, "max_tokens": 24, "messages": [{"role": "user", "content": FRANCE}]}
    httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60)
    gw.drain()
    body["messages"][0]["content"] = "what's the capital city of France"
    metrics = httpx.get(gw.url + "/metrics").text
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.headers["x-cache-layer"] == "semantic"
    routed = lambda text: re.search(r"^cachestack_route_requests_total\{[^}]*\} ([0-9.]+)$", text, re.M).group(1)  # noqa: E731
    assert routed(httpx.get(gw.url + "/metrics").text) == routed(metrics)  # no upstream call for a hit


def test_llm_judge_asks_the_served_model_about_borderline_pairs(gateway_factory, vllm_url, redis_url):
    """With the judge on, a pair the verifier rejects is put to the real model; whatever it answers,
    the client gets a 200 and the verdict is counted (never an error: the request shape is vLLM's)."""
    import re

    def verdicts() -> dict[str, float]:  # the registry is per process: compare before and after
        text = httpx.get(gw.url + "/metrics").text
        found = dict(re.findall(r'^cachestack_cache_judge_total\{verdict="(\w+)"\} ([0-9.]+)$', text, re.M))
        return {v: float(found.get(v, 0)) for v in ("yes", "no", "unsure", "error")}

    gw = gateway_factory(vllm_url, redis_url, cache={"lookup_deadline_ms": 60000, "decision": {"threshold": 0.5, "judge": {
        "enabled": True, "min_score": 0.0, "timeout_ms": 30000}}})  # a shared CPU runs vLLM here
    body = {"model": MODEL, "temperature": 0, "max_tokens": 24, "messages": [{"role": "user", "content": FRANCE}]}
    assert httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
    gw.drain()
    before = verdicts()
    body["messages"][0]["content"] = "What is the largest city in France?"
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    after = verdicts()
    assert sum(after[v] - before[v] for v in ("yes", "no", "unsure")) == 1
    assert after["error"] == before["error"]


def test_a_burst_on_a_cold_connection_pool_keeps_the_cache_on(gateway_factory, vllm_url, redis_url):
    """64 concurrent exact lookups (L1 off, so each one is a Redis GET) on a fresh gateway open 64
    connections at once. That used to overrun the lookup budget (redis-py read its package metadata
    for each connection) and switch the cache off for everyone; now the store stays in use, and a
    timeout would only have cost its own request."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    import uuid

    prefix = f"burst{uuid.uuid4().hex[:8]}"
    warm = gateway_factory(vllm_url, redis_url, cache=namespaces(), redis={"index_prefix": prefix})
    ask(warm, FRANCE)  # the entry, written through another gateway
    # the production budget (the session's gateways get a generous one against CPU contention)
    gw = gateway_factory(vllm_url, redis_url, cache={**namespaces(), "l1_max_bytes": 0},
                         redis={"index_prefix": prefix, "lookup_budget_ms": 50})
    body = {"model": MODEL, "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": FRANCE}]}
    post = lambda _: httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60,  # noqa: E731
                                headers={"cache-control": "no-store"})

    def store_down() -> float:  # the registry is the process's: other tests' gateways count here too
        m = re.search(r'^cachestack_cache_bypass_total\{reason="store_down"\} ([0-9.]+)$',
                      httpx.get(gw.url + "/metrics").text, re.M)
        return float(m.group(1)) if m else 0.0

    before = store_down()
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(post, range(64)))
    assert all(r.status_code == 200 for r in answers)
    assert store_down() == before
    assert httpx.get(gw.url + "/ready").json()["cache"] != "degraded"
    # Lookups that overran the budget while 64 client threads shared this process went upstream one by
    # one; the rest hit, and the next request hits: the cache stayed on for everyone.
    assert any(r.headers["x-cache"] == "HIT" for r in answers)
    assert post(0).headers["x-cache"] == "HIT"
