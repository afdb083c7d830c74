"""Cache hits end to end at the gateway: exact and semantic, p50/p99 at concurrency 1 and 32, hits/s.

The gateway runs as its own process (``cachestack serve``, one worker) with real Valkey + RediSearch and
the real MiniLM embedder; the upstream is the fast fake (only used to seed entries: hits never reach it).
Semantic hits ask a paraphrase (different exact key) of a stored question; every response's X-Cache
header is checked, so a number here is a number of real hits. The L1 LRU serves repeated exact hits, so
the exact numbers are measured twice: L1 on (default) and off (every hit is a Redis GET). Semantic hits
are measured with the speculative upstream call on (default: each hit also starts and cancels an
upstream request, here to the fake on the same 2 cores) and off.

With ``--embedder-url`` (a vLLM embedding deployment of the same MiniLM folder, ``--runner pooling``)
a layer "semantic (vLLM embedder)" runs the cache's embedder there (embedder.backend vllm), in the same
run as the in-process one; both then get the same generous lookup deadline (``--deadline-ms``, and half
of it as the Redis budget), so on a loaded machine a slow embedding or Redis round trip shows as latency
here instead of as a skipped semantic stage.

python loadtests/bench_cache.py [--redis URL] [--n 2000] [--embedder-url URL --embedder-model NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import ExitStack
from typing import Any

import aiohttp

from common import write_json, REPO, closed_loop, fake_upstream, gateway, summary

CITIES = ["France", "Spain", "Italy", "Germany", "Japan", "Brazil", "Canada", "Egypt", "India", "Kenya",
          "Peru", "Norway", "Chile", "Ghana", "Nepal", "Cuba"]
TEMPLATES = [("What is the capital of {c}?", "what's the capital city of {c}"),
             ("What currency does {c} use?", "which currency is used in {c}"),
             ("What languages are spoken in {c}?", "which languages do people speak in {c}")]


def body(question: str) -> dict[str, Any]:
    return {"model": "fake", "temperature": 0, "messages": [{"role": "user", "content": question}]}


async def run(gw: str, n: int, layer: str, levels: tuple[int, ...] = (1, 32)) -> dict[str, Any]:
    pairs = [(a.format(c=c), b.format(c=c)) for c in CITIES for a, b in TEMPLATES]
    results: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        for stored, _ in pairs:  # seed: one miss each, stored after the response
            async with s.post(gw + "/v1/chat/completions", json=body(stored)) as r:
                await r.read()
        await asyncio.sleep(1.0)
        async with s.get(gw + "/metrics") as r:
            stored = [line for line in (await r.text()).splitlines()
                      if line.startswith(("cachestack_cache_stores_total", "cachestack_cache_bypass_total"))]
        print("  seeded:", "; ".join(stored) or "nothing stored")
        ask = [stored if layer.startswith("exact") else para for stored, para in pairs]
        want = "exact" if layer.startswith("exact") else "semantic"

        outcomes: list[bool] = []
        # no-store: a paraphrase that missed must not become an exact entry of its own
        headers = {"cache-control": "no-store"}

        async def call(i: int) -> None:
            async with s.post(gw + "/v1/chat/completions", json=body(ask[i % len(ask)]), headers=headers) as r:
                await r.read()
                outcomes.append(r.headers.get("x-cache") == "HIT" and r.headers.get("x-cache-layer") == want)

        await closed_loop(call, len(ask), 1)  # warm-up, and which questions the rule answers as hits
        accepted = [q for q, hit in zip(ask, outcomes, strict=True) if hit]
        print(f"  {len(accepted)}/{len(ask)} questions answered as {want} hits by the shipped rule")
        results["accepted"] = len(accepted) / len(ask)
        ask = accepted or ask
        for conc in levels:
            outcomes.clear()
            lat, wall = await closed_loop(call, n, conc)
            results[f"c{conc}"] = summary(f"{layer} hit, concurrency {conc}", lat, wall)
            results[f"c{conc}"]["hit_fraction"] = sum(outcomes) / len(outcomes)
            print(f"    {sum(outcomes)}/{len(outcomes)} answered as {want} hits")
        async with s.get(gw + "/metrics") as r:
            skipped = [line for line in (await r.text()).splitlines()
                       if line.startswith("cachestack_cache_bypass_total")]
        print("  lookups skipped:", "; ".join(skipped) or "none")
        results["bypasses"] = skipped
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis", help="a running Redis with search (default: start Valkey)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--json")
    p.add_argument("--only", help="comma-separated layer name prefixes, e.g. semantic")
    p.add_argument("--embedder-url", help="a vLLM embedding deployment of MiniLM: adds the remote-embedder layer")
    p.add_argument("--embedder-model", default="minilm", help="its served model name")
    p.add_argument("--deadline-ms", type=float, default=5000.0,
                   help="cache.lookup_deadline_ms of the semantic layers when --embedder-url is given")
    p.add_argument("--concurrency", default="1,32", help="comma-separated concurrency levels")
    args = p.parse_args()
    levels = tuple(int(c) for c in args.concurrency.split(","))
    from serving.config import LocalStackConfig
    from serving.local.processes import free_port
    from serving.local.stack import start_stack

    results: dict[str, Any] = {}
    with ExitStack() as stack:
        redis = args.redis or stack.enter_context(start_stack(
            LocalStackConfig(data_dir=str(REPO / ".cachestack")), vllm=False, redis_port=free_port())).redis_url
        up = stack.enter_context(fake_upstream())
        print(f"Redis {redis}; fake upstream {up}")
        layers = (("exact (L1)", 64 << 20, True), ("exact (Redis)", 0, True), ("semantic", 64 << 20, True),
                  ("semantic (speculative upstream off)", 64 << 20, False))
        if args.embedder_url:
            layers += (("semantic (vLLM embedder)", 64 << 20, True),)
        for layer, l1, speculate in layers:
            if args.only and not any(layer.startswith(o) for o in args.only.split(",")):
                continue
            cfg: dict[str, Any] = {"upstreams": {"urls": [up]},
                                   "redis": {"url": redis, "index_prefix": f"bench{abs(hash(layer)) % 10_000}"},
                                   "cache": {"l1_max_bytes": l1, "speculative_upstream": speculate}}
            if args.embedder_url and layer.startswith("semantic"):
                cfg["cache"]["lookup_deadline_ms"] = args.deadline_ms
                cfg["redis"]["lookup_budget_ms"] = args.deadline_ms / 2
            if layer == "semantic (vLLM embedder)":
                cfg["embedder"] = {"backend": "vllm", "remote": {
                    "url": args.embedder_url, "model": args.embedder_model, "timeout_ms": args.deadline_ms * 0.9}}
            with gateway(cfg) as gw:
                results[layer] = asyncio.run(run(gw, args.n, layer, levels))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
