"""Two gateway configs compared on semantic hits in one paired run: the way to measure a small change on
a noisy shared machine.

Both gateways run at once (``cachestack serve`` each, one worker) on one Valkey + RediSearch and the
real MiniLM and verifier; the fast fake upstream only seeds the entries. Each round sends 100 single
requests alternating A and B (the order flips every request) and then one burst of ``--burst``
requests at concurrency 32 to each (the order flips every round), so a slow minute of the machine hits
both sides alike. Only paraphrases that both configs answer as semantic hits are asked, and every
answer is checked to be a hit. Prints p50/p99 at concurrency 1 and hits/s per round at concurrency 32.

python loadtests/bench_ab.py --a '{}' --b '{"embedder": {"threads": 1}}' [--rounds 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from contextlib import ExitStack
from typing import Any

import aiohttp

from bench_cache import CITIES, TEMPLATES, body
from common import REPO, closed_loop, fake_upstream, gateway, pct, write_json

NO_STORE = {"cache-control": "no-store"}  # a paraphrase must never become an exact entry of its own


async def run(gws: list[str], rounds: int, burst: int) -> dict[str, Any]:
    pairs = [(a.format(c=c), b.format(c=c)) for c in CITIES for a, b in TEMPLATES]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def hit(gw: str, question: str, headers: dict[str, str] | None = None) -> bool:
            async with s.post(gw + "/v1/chat/completions", json=body(question), headers=headers or {}) as r:
                await r.read()
                return r.headers.get("x-cache") == "HIT" and r.headers.get("x-cache-layer") == "semantic"

        for stored, _ in pairs:  # one miss each through A; both gateways share the store
            await hit(gws[0], stored)
        await asyncio.sleep(1.0)
        asked = [p for _, p in pairs if all([await hit(gw, p, NO_STORE) for gw in gws])]
        print(f"{len(asked)}/{len(pairs)} paraphrases answered as semantic hits by both")
        if not asked:
            raise SystemExit("nothing to compare")
        single: list[list[float]] = [[], []]
        per_round: list[list[float]] = [[], []]
        misses = [0, 0]
        for r in range(rounds):
            for i in range(100):
                for g in ((0, 1) if (i + r) % 2 == 0 else (1, 0)):
                    t = time.perf_counter()
                    ok = await hit(gws[g], asked[i % len(asked)], NO_STORE)
                    single[g].append(time.perf_counter() - t)
                    misses[g] += not ok
            for g in ((0, 1) if r % 2 == 0 else (1, 0)):

                async def call(i: int, g: int = g) -> None:
                    misses[g] += not await hit(gws[g], asked[i % len(asked)], NO_STORE)

                _, wall = await closed_loop(call, burst, 32)
                per_round[g].append(burst / wall)
    out: dict[str, Any] = {}
    for g, name in enumerate("AB"):
        out[name] = {"c1_p50_ms": pct(single[g], 50) * 1000, "c1_p99_ms": pct(single[g], 99) * 1000,
                     "c32_hits_per_s": per_round[g], "c32_median_hits_per_s": statistics.median(per_round[g]),
                     "not_semantic_hits": misses[g]}
        o = out[name]
        print(f"{name}: c=1 p50 {o['c1_p50_ms']:.2f} ms, p99 {o['c1_p99_ms']:.2f} ms | c=32 hits/s per round "
              f"{' '.join(f'{x:.0f}' for x in per_round[g])}, median {o['c32_median_hits_per_s']:.0f} | "
              f"answers that were not semantic hits: {misses[g]}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default="{}", help="config overrides of gateway A, as JSON")
    p.add_argument("--b", required=True, help="config overrides of gateway B, as JSON")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--burst", type=int, default=600)
    p.add_argument("--redis", help="a running Redis with search (default: start Valkey)")
    p.add_argument("--json")
    args = p.parse_args()
    from serving.config import LocalStackConfig
    from serving.local.processes import free_port
    from serving.local.stack import start_stack

    with ExitStack() as stack:
        redis = args.redis or stack.enter_context(start_stack(
            LocalStackConfig(data_dir=str(REPO / ".cachestack")), vllm=False, redis_port=free_port())).redis_url
        up = stack.enter_context(fake_upstream())
        gws = []
        for overrides in (json.loads(args.a), json.loads(args.b)):
            cfg: dict[str, Any] = {"upstreams": {"urls": [up]}, "redis": {"url": redis, "index_prefix": "benchab"},
                                   "cache": {"speculative_upstream": False}}
            for section, values in overrides.items():
                cfg[section] = {**cfg.get(section, {}), **values}
            gws.append(stack.enter_context(gateway(cfg)))
        print(f"A: {args.a}\nB: {args.b}")
        results = asyncio.run(run(gws, args.rounds, args.burst))
    write_json(args.json, {"a": json.loads(args.a), "b": json.loads(args.b), **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
