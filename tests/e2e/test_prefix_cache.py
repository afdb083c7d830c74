"""The prompt (prefix) cache layer through the gateway, against the real vLLM: cached-token accounting
and per-tenant isolation with cache_salt."""

from __future__ import annotations

import hashlib
import re

import httpx
import pytest

pytestmark = pytest.mark.e2e

KEYS = {"a": "sk-prefix-a", "b": "sk-prefix-b"}
# ~700 tokens: several of vLLM's KV blocks, so a shared prefix shows up as cached tokens
SYSTEM = "You are a support assistant for ACME routers. " + " ".join(
    f"Rule {i}: answer questions about model R{i} politely and cite manual section {i % 17}." for i in range(45))


def ask(gw, tenant: str, question: str) -> dict:
    body = {"model": "smollm2", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=120,
                   headers={"authorization": f"Bearer {KEYS[tenant]}", "cache-control": "no-cache, no-store"})
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def test_tenants_do_not_share_prefix_cache_but_each_reuses_its_own(gateway_factory, vllm_url):
    gw = gateway_factory(vllm_url, None, auth={
        "tenants": [{"name": t, "key_sha256": [hashlib.sha256(k.encode()).hexdigest()]} for t, k in KEYS.items()]})
    first_a = ask(gw, "a", "How do I reset an R3?")
    again_a = ask(gw, "a", "How do I update an R7?")  # same system prompt, same tenant
    first_b = ask(gw, "b", "How do I reset an R3?")  # byte-identical prompt, other tenant
    assert first_a["prompt_tokens"] > 500
    assert again_a["prompt_tokens_details"]["cached_tokens"] >= 256  # tenant a reuses its own prefix
    assert first_b["prompt_tokens_details"]["cached_tokens"] == 0  # nothing learned from tenant a
    assert ask(gw, "b", "How do I update an R7?")["prompt_tokens_details"]["cached_tokens"] >= 256
    text = httpx.get(gw.url + "/metrics").text
    cached = re.search(r'cachestack_upstream_cached_prompt_tokens_total\{model="smollm2"\} ([0-9.]+)', text)
    assert cached and float(cached.group(1)) >= 512
