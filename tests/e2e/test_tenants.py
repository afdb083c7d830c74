"""Tenant isolation under attack, through the real stack (vLLM, Valkey + RediSearch, MiniLM).

Tenant A caches answers; tenant B tries every way we know to get them: the same question,
paraphrases, other namespaces, Cache-Control, the Age / X-Cache headers, purge filters and the admin
routes without the admin key. Every probe of B's asserts no leak, and each vector has a positive
control (A itself hits, or B hits where it is allowed to), so a probe that could not have hit
proves nothing by missing. B's probes send ``Cache-Control: no-store``: B's own cache stays empty,
so any hit B gets can only be A's entry.
"""

from __future__ import annotations

import hashlib
import logging
import uuid

import httpx
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.e2e

ADMIN = "admin-secret-tenants"
KEYS = {"a": "sk-adv-tenant-a", "b": "sk-adv-tenant-b"}
SECRET = "What is the capital of France?"
PARAPHRASES = ["what's the capital city of France", "What is the capital of France",
               "what is the capital of france?", "Tell me the capital of France.",
               "Which city is the capital of France?", "  WHAT IS THE CAPITAL OF FRANCE  "]
NAMESPACES = {"default": {}, "faq": {"shared": True, "writers": ["a"], "sampled": "all"},
              "a-only": {"readers": ["a"]}, "me": {"per_user": True}}
LEAK_HEADERS = ("age", "x-cache-layer", "x-cache-similarity", "x-cache-store")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def auth(**extra: object) -> dict:
    return {"tenants": [{"name": t, "key_sha256": [sha(k)]} for t, k in KEYS.items()],
            "admin_key_sha256": sha(ADMIN), **extra}


@pytest.fixture
def gw(gateway_factory, vllm_url, redis_url):
    return gateway_factory(vllm_url, redis_url, cache={"namespaces": NAMESPACES}, auth=auth())


def post(gw, question: str, *, tenant: str | None = "a", headers: dict | None = None, stream: bool = False,
         **params) -> httpx.Response:
    params.setdefault("temperature", 0)
    params.setdefault("max_tokens", 24)
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "stream": stream, **params}
    h = {"authorization": f"Bearer {KEYS[tenant]}"} if tenant else {}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=180, headers={**h, **(headers or {})})
    gw.drain()
    return r


def ask(gw, question: str, **kw) -> httpx.Response:
    r = post(gw, question, **kw)
    assert r.status_code == 200, r.text
    return r


def seed(gw, question: str = SECRET, **kw) -> str:
    """A's entry, and A's own hit on it (the positive control every vector relies on)."""
    for _ in range(4):
        first = ask(gw, question, **kw)
        if first.json()["choices"][0]["finish_reason"] == "stop":
            break
    again = ask(gw, question, **kw)
    assert again.headers["x-cache"] == "HIT", "A must hit its own entry, or no probe below means anything"
    return first.json()["choices"][0]["message"]["content"]


def probe(gw, question: str, *, headers: dict | None = None, **kw) -> httpx.Response:
    """B asks, storing nothing of its own."""
    return post(gw, question, tenant="b", headers={"cache-control": "no-store", **(headers or {})}, **kw)


def leaked(r: httpx.Response) -> bool:
    """A response from cache, or one carrying any header that only a cached answer has."""
    return r.headers.get("x-cache") == "HIT" or any(h in r.headers for h in LEAK_HEADERS)


def test_same_question_and_paraphrases_never_reach_another_tenant(gw):
    seed(gw)
    assert ask(gw, PARAPHRASES[0]).headers["x-cache-layer"] == "semantic"  # A's paraphrase hits A's entry
    probes = [probe(gw, q, stream=stream) for q in [SECRET, *PARAPHRASES] for stream in (False, True)]
    assert [r.status_code for r in probes] == [200] * len(probes)
    assert [r.headers["x-cache"] for r in probes] == ["MISS"] * len(probes)
    assert [r for r in probes if leaked(r)] == []


def test_side_channel_headers_of_a_probe_equal_those_of_a_question_nobody_asked(gw):
    """B cannot tell from X-Cache, Age or any other header whether A asked a question."""
    seed(gw)
    asked = probe(gw, SECRET)
    never = probe(gw, f"What is the capital of {uuid.uuid4().hex[:6]}land?")
    vary = {"date", "content-length", "x-request-id"}
    assert {k: v for k, v in asked.headers.items() if k not in vary} == \
        {k: v for k, v in never.headers.items() if k not in vary}
    assert not leaked(asked)


def test_namespaces_b_may_not_use_answer_exactly_like_unknown_ones(gw):
    seed(gw, headers={"x-cache-namespace": "a-only"})
    forbidden = probe(gw, SECRET, headers={"x-cache-namespace": "a-only"})
    unknown = probe(gw, SECRET, headers={"x-cache-namespace": "b-only"})
    assert forbidden.status_code == unknown.status_code == 404
    f, u = forbidden.json()["error"], unknown.json()["error"]
    assert f["message"].replace("a-only", "X") == u["message"].replace("b-only", "X")
    assert (f["type"], f["param"], f["code"]) == (u["type"], u["param"], u["code"]) == (
        "invalid_request_error", "X-Cache-Namespace", "namespace_not_found")
    # namespace spellings that might alias A's scope or the shared one
    for ns in ("A-ONLY", "a-only,default", "tenant:a", "default:1:tenant:a", "shared", "open", "*", "a-only."):
        r = probe(gw, SECRET, headers={"x-cache-namespace": ns})
        assert r.status_code in (200, 404) and not leaked(r), ns
    assert not leaked(probe(gw, SECRET))  # and the default namespace holds only B's own entries


def test_a_reader_of_a_shared_namespace_cannot_overwrite_what_everyone_reads(gw):
    """faq caches sampled answers and only A writes it: B resending with no-cache (a fresh sample
    each time) never replaces A's entry, and B's own questions there are stored for no one. The
    control: A, a writer, doing the same does replace it."""
    faq = {"x-cache-namespace": "faq"}
    sampled = dict(temperature=1.0, max_tokens=300)
    original = seed(gw, headers=faq, **sampled)
    assert ask(gw, SECRET, tenant="b", headers=faq, **sampled).headers["x-cache"] == "HIT"  # B may read
    samples = [ask(gw, SECRET, tenant="b", headers={**faq, "cache-control": "no-cache"}, **sampled)
               for _ in range(4)]
    # B may not write faq: its fresh samples neither look up nor store (BYPASS), so none can replace A's
    assert [r.headers["x-cache"] for r in samples] == ["BYPASS"] * 4
    for tenant in ("a", "b"):
        r = ask(gw, SECRET, tenant=tenant, headers=faq, **sampled)
        assert r.headers["x-cache"] == "HIT" and r.json()["choices"][0]["message"]["content"] == original
    ask(gw, "What is the capital of Spain?", tenant="b", headers=faq)
    assert ask(gw, "What is the capital of Spain?", tenant="a", headers=faq).headers["x-cache"] == "MISS"
    for _ in range(8):  # the control: a writer's fresh sample does replace the entry
        fresh = ask(gw, SECRET, headers={**faq, "cache-control": "no-cache"}, **sampled).json()["choices"][0]
        if fresh["finish_reason"] == "stop" and fresh["message"]["content"] != original:
            break
    else:
        raise AssertionError("eight samples at temperature 1 equalled the stored one: no control")
    gw.gw.cache.l1.clear()
    r = ask(gw, SECRET, tenant="b", headers=faq, **sampled)
    assert r.json()["choices"][0]["message"]["content"] == fresh["message"]["content"]


def test_end_users_behind_one_key_do_not_share_a_per_user_namespace(gw):
    me = {"x-cache-namespace": "me"}
    seed(gw, "What is my account balance?", headers=me, user="alice@example.com")
    probes = [post(gw, q, headers={**me, "cache-control": "no-store"}, user="bob@example.com")
              for q in ("What is my account balance?", "what's my account balance")]
    assert [r.headers["x-cache"] for r in probes] == ["MISS", "MISS"] and not any(leaked(r) for r in probes)
    no_user = post(gw, "What is my account balance?", headers=me)
    assert no_user.headers["x-cache"] == "BYPASS" and not leaked(no_user)
    assert ask(gw, "what's my account balance", headers=me, user="alice@example.com").headers["x-cache"] == "HIT"


def test_purge_filters_and_admin_routes_without_the_admin_key(gw, caplog):
    seed(gw)
    plan_key = gw.gw.cache.plan  # the exact key of A's entry, as a client who guessed it would send it
    from cache.policy import CacheControl, Caller

    body = {"model": MODEL, "temperature": 0, "max_tokens": 24, "stream": False,
            "messages": [{"role": "user", "content": SECRET}]}
    key = plan_key("chat", body, Caller("a"), CacheControl(), None).exact_key
    filters = [{"tenant": "a"}, {"namespace": "default"}, {"model": MODEL}, {"version": "1"}, {"key": key},
               {"similar_to": SECRET, "threshold": 0.5}]
    creds = {"b's key": f"Bearer {KEYS['b']}", "a's key": f"Bearer {KEYS['a']}", "none": None,
             "admin key as basic": f"Basic {ADMIN}", "admin key with a suffix": f"Bearer {ADMIN}x"}
    with caplog.at_level(logging.INFO, logger="cachestack.audit"):
        for who, cred in creds.items():
            h = {"authorization": cred} if cred else {}
            for f in filters:
                r = httpx.post(gw.url + "/admin/cache/purge", json=f, headers=h, timeout=30)
                assert r.status_code == 403 and "purged" not in r.text, (who, f)
                assert r.json()["error"]["type"] == "permission_error"
            stats = httpx.get(gw.url + "/admin/cache/stats", headers=h, timeout=30)
            assert stats.status_code == 403 and "entries" not in stats.text, who
    refused = [r for r in caplog.records if r.name == "cachestack.audit" and "refused" in r.getMessage()]
    assert len(refused) == len(creds) * len(filters)
    gw.gw.cache.l1.clear()  # the entry must still be in Redis, not only in this replica's L1
    assert ask(gw, SECRET).headers["x-cache"] == "HIT"


def test_purges_are_audited_without_prompt_text(gw, caplog):
    seed(gw)
    ask(gw, SECRET, tenant="b")
    admin = {"authorization": f"Bearer {ADMIN}"}
    with caplog.at_level(logging.INFO, logger="cachestack.audit"):
        r = httpx.post(gw.url + "/admin/cache/purge", json={"similar_to": SECRET, "threshold": 0.7, "tenant": "a"},
                       headers=admin, timeout=30)
        assert r.status_code == 200 and r.json()["purged"] == 1
        r = httpx.post(gw.url + "/admin/cache/purge", json={"tenant": "b"}, headers=admin, timeout=30)
        assert r.json()["purged"] == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "cachestack.audit"]
    assert len(lines) == 2 and all("purge by admin" in line for line in lines)
    assert '"tenant":"a"' in lines[0] and '"similar_to":"<30 chars>"' in lines[0] and "1 entries" in lines[0]
    assert '"tenant":"b"' in lines[1] and "1 entries" in lines[1]
    assert not any("France" in line or "capital" in line for line in lines)
    assert ask(gw, SECRET).headers["x-cache"] == "MISS"


def test_open_mode_entries_are_unreachable_once_tenants_are_configured(gateway_factory, vllm_url, redis_url):
    """The same Redis and index prefix: what the gateway cached before it had tenants stays there,
    and no tenant (whatever its name) reads it."""
    prefix = f"open{uuid.uuid4().hex[:8]}"
    cache = {"namespaces": {"default": {}, "faq": {"shared": True, "writers": ["*"]}}}
    before = gateway_factory(vllm_url, redis_url, cache=cache, redis={"index_prefix": prefix})
    for ns in ("default", "faq"):
        seed(before, headers={"x-cache-namespace": ns}, tenant=None)
    keys = {**KEYS, "open": "sk-open"}  # a tenant named like the open scope
    after = gateway_factory(vllm_url, redis_url, cache=cache, redis={"index_prefix": prefix}, auth=auth(
        tenants=[{"name": t, "key_sha256": [sha(k)]} for t, k in keys.items()]))
    for tenant, key in keys.items():
        for ns in ("default", "faq"):
            for q in (SECRET, PARAPHRASES[0]):
                r = httpx.post(after.url + "/v1/chat/completions", timeout=60, headers={
                    "authorization": f"Bearer {key}", "x-cache-namespace": ns, "cache-control": "no-store"},
                    json={"model": MODEL, "temperature": 0, "max_tokens": 24,
                          "messages": [{"role": "user", "content": q}]})
                assert r.status_code == 200 and not leaked(r), (tenant, ns, q)
    assert ask(before, SECRET, tenant=None).headers["x-cache"] == "HIT"  # the entry is there


def test_colliding_tenant_config_refuses_to_start(vllm_url, redis_url):
    from serving.app import create_app
    from serving.config import ConfigError
    from tests.conftest import gateway_settings

    same_key = {"tenants": [{"name": "a", "key_sha256": [sha("k")]}, {"name": "b", "key_sha256": [sha("k")]}]}
    with pytest.raises(ConfigError, match="'a' and 'b'"):
        create_app(gateway_settings(vllm_url, redis_url, auth=same_key))
    typo = {"namespaces": {"default": {}, "faq": {"shared": True, "writers": ["aa"]}}}
    with pytest.raises(ConfigError, match="'aa'"):
        create_app(gateway_settings(vllm_url, redis_url, cache=typo, auth=auth()))
