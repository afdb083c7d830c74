"""The gateway with its cache store on a 3-node Valkey Cluster (real processes): exact and semantic hits,
an admin purge, and the purge watch, through HTTP against the real vLLM."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.e2e

ADMIN = "admin-secret"


@pytest.fixture
def gw(gateway_factory, vllm_url, redis_cluster_url):
    return gateway_factory(vllm_url, redis_cluster_url, redis={"cluster": True},
                           auth={"admin_key_sha256": hashlib.sha256(ADMIN.encode()).hexdigest()})


def flights(event: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("cachestack_flights_total", {"event": event}) or 0.0


def ask(gw, question: str) -> httpx.Response:
    body = {"model": MODEL, "temperature": 0, "max_tokens": 24, "messages": [{"role": "user", "content": question}]}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    gw.drain()
    return r


def test_hits_and_purge_on_a_cluster(gw):
    assert httpx.get(gw.url + "/ready").json()["cache"] == "ok"
    alone, leader = flights("alone"), flights("leader")
    first = ask(gw, "What is the capital of France?")
    assert first.headers["x-cache"] == "MISS"
    again = ask(gw, "What is the capital of France?")
    assert again.headers["x-cache"] == "HIT" and again.headers["x-cache-layer"] == "exact"
    near = ask(gw, "what's the capital city of France")
    assert near.headers["x-cache"] == "HIT" and near.headers["x-cache-layer"] == "semantic", dict(near.headers)
    assert near.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    store = gw.gw.cache.store
    assert store.topology.cluster and gw.call(store.count()) == 1
    r = httpx.post(gw.url + "/admin/cache/purge", json={"namespace": "default"},
                   headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and r.json()["purged"] == 1, r.text
    assert ask(gw, "What is the capital of France?").headers["x-cache"] == "MISS"  # L1 cleared too
    # the misses took their single-flight lease in the cluster; none fell back to leading alone
    assert flights("leader") >= leader + 2 and flights("alone") == alone
