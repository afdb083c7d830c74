"""Readiness: /ready is 200 while the gateway can answer anything (an upstream or the cache store
answers), 503 only when neither does; anonymous callers see no upstream URLs, the admin key does."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import pytest

from serving.local.processes import free_port

pytestmark = pytest.mark.e2e

ADMIN = "admin-secret-for-ready"
AUTH = {"admin_key_sha256": hashlib.sha256(ADMIN.encode()).hexdigest()}
Q = {"model": "smollm2", "temperature": 0, "max_tokens": 12,
     "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_no_upstream_but_the_store_answers_is_ready_and_serves_hits(gateway_factory, vllm_url, redis_url):
    """The vLLM rollout case: a gateway whose upstreams are all gone stays in the Service and still
    answers exact hits from the store another gateway filled."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    filler = gateway_factory(vllm_url, redis_url, redis={"index_prefix": prefix})
    assert httpx.post(filler.url + "/v1/chat/completions", json=Q, timeout=60).status_code == 200
    filler.drain()

    dead = dead_url()
    gw = gateway_factory(dead, redis_url, redis={"index_prefix": prefix}, auth=AUTH)
    r = httpx.get(gw.url + "/ready")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "cache": "ok", "upstreams": {"up": 0, "down": 1}}
    assert "127.0.0.1" not in r.text
    hit = httpx.post(gw.url + "/v1/chat/completions", json=Q, timeout=60)
    assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT"
    other = {**Q, "messages": [{"role": "user", "content": "Write a haiku about autumn leaves."}]}
    miss = httpx.post(gw.url + "/v1/chat/completions", json=other, timeout=60)
    assert miss.status_code == 502 and miss.json()["error"]["code"] == "upstream_unreachable"


def test_neither_upstream_nor_store_is_503(gateway_factory):
    gw = gateway_factory(dead_url(), f"redis://127.0.0.1:{free_port()}/0", auth=AUTH,
                         redis={"lookup_budget_ms": 100, "store_timeout_ms": 300})
    r = httpx.get(gw.url + "/ready")
    assert r.status_code == 503
    assert r.json()["status"] == "not ready" and r.json()["cache"] == "degraded"
    assert "127.0.0.1" not in r.text


def test_cache_disabled_and_no_upstream_is_503_and_only_the_admin_sees_urls(gateway_factory):
    dead = dead_url()
    gw = gateway_factory(dead, None, auth=AUTH)
    anonymous = httpx.get(gw.url + "/ready")
    assert anonymous.status_code == 503
    assert anonymous.json() == {"status": "not ready", "cache": "disabled", "upstreams": {"up": 0, "down": 1}}
    wrong = httpx.get(gw.url + "/ready", headers={"authorization": "Bearer not-the-admin-key"})
    assert dead not in wrong.text
    admin = httpx.get(gw.url + "/ready", headers={"authorization": f"Bearer {ADMIN}"})
    assert admin.status_code == 503
    assert admin.json()["down"] == [dead] and admin.json()["upstreams"] == {dead: "down"}
    assert [r["url"] for r in admin.json()["replicas"]] == [dead]


def test_upstream_up_is_ready_and_health_is_liveness_only(gateway_factory, vllm_url):
    gw = gateway_factory(vllm_url, None)
    r = httpx.get(gw.url + "/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "cache": "disabled", "upstreams": {"up": 1, "down": 0}}
    assert httpx.get(gw.url + "/health").json() == {"status": "ok"}
