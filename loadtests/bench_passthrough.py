"""Gateway added latency on the pass-through path, and pass-through requests/s.

A. Real vLLM (CPU, SmolLM2): the same request direct and through the gateway, interleaved in one run
   so both see the same machine state. Non-streaming latency and streaming time to first byte, at
   concurrency 1 and 32. Gateway with the cache off (pure pass-through) and on (a miss: exact GET,
   embed, KNN, decision before the upstream call).
B. Fast fake upstream: requests/s at concurrency 32, direct vs through the gateway (one worker).
C. A fake upstream that always takes 50 ms: what a cache miss adds at concurrency 1 and 32, with the
   speculative upstream call (default) and with the lookup first, against direct and pass-through;
   and how often each cache gateway's store breaker tripped during the run.

python loadtests/bench_passthrough.py [--vllm URL] [--n 200]
Without --vllm a vLLM CPU server is started (about 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from contextlib import ExitStack
from typing import Any

import aiohttp

from common import write_json, REPO, closed_loop, fake_upstream, gateway, summary


async def timed_post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], stream: bool) -> float:
    """Seconds to the whole response (non-streaming) or to the first body bytes (streaming)."""
    loop = asyncio.get_running_loop()
    t = loop.time()
    async with session.post(url, json=body) as r:
        if stream:
            await r.content.readany()
            first = loop.time() - t
            await r.read()
            return first
        await r.read()
        assert r.status == 200, r.status
        return loop.time() - t


async def paired(targets: dict[str, str], body_for: Any, n: int, concurrency: int, stream: bool) -> dict[str, list[float]]:
    """Each worker alternates between the targets, so every target runs under the same load."""
    lat: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    counter = itertools.count()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def worker() -> None:
            while (i := next(counter)) < n * len(names):
                name = names[i % len(names)]
                lat[name].append(await timed_post(session, targets[name] + "/v1/chat/completions",
                                                  body_for(i // len(names)), stream))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat


def report(title: str, lat: dict[str, list[float]]) -> dict[str, Any]:
    print(f"\n{title}")
    out = {name: summary(f"  {name}", values) for name, values in lat.items()}
    base = out["direct"]["p50_ms"]
    for name in lat:
        if name != "direct":
            d50 = out[name]["p50_ms"] - base
            d99 = out[name]["p99_ms"] - out["direct"]["p99_ms"]
            print(f"  added by {name:<20} p50 {d50:+8.3f} ms   p99 {d99:+8.3f} ms")
    return out


async def part_a(vllm: str, n: int) -> dict[str, Any]:
    body = lambda i, stream=False: {  # noqa: E731
        "model": "smollm2", "temperature": 0, "max_tokens": 16, "ignore_eos": True, "stream": stream,
        "messages": [{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}]}
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        plain = stack.enter_context(gateway({"upstreams": {"urls": [vllm]}, "cache": {"enabled": False}}))
        cached = stack.enter_context(gateway({
            "upstreams": {"urls": [vllm]}, "redis": {"url": REDIS_URL, "index_prefix": "benchpt"},
            "cache": {"namespaces": {"default": {"sampled": "all"}}}}))
        targets = {"direct": vllm, "gateway (pass-through)": plain, "gateway (cache miss)": cached}
        await paired(targets, body, 3, 1, False)  # warm up connections, prefix cache, embedder
        for conc in (1, 32):
            count = n if conc == 1 else n * 2
            results[f"json_c{conc}"] = report(f"non-streaming, concurrency {conc}",
                                              await paired(targets, lambda i, c=conc: body(i + 10_000 * c), count,
                                                           conc, False))
            results[f"ttfb_c{conc}"] = report(f"streaming time to first byte, concurrency {conc}",
                                              await paired(targets, lambda i, c=conc: body(i + 20_000 * c, True),
                                                           count, conc, True))
    return results


async def part_b(n: int) -> dict[str, Any]:
    """The gateway's own cost, without vLLM's variance: the same fast upstream direct and through it."""
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        up = stack.enter_context(fake_upstream())
        gws = {"gateway (pass-through)": stack.enter_context(gateway({"upstreams": {"urls": [up]},
                                                                      "cache": {"enabled": False}})),
               "gateway (cache miss)": stack.enter_context(gateway({
                   "upstreams": {"urls": [up]}, "redis": {"url": REDIS_URL, "index_prefix": "benchfast"},
                   "cache": {"namespaces": {"default": {"sampled": "all"}}, "l1_max_bytes": 0}}))}
        targets = {"direct": up, **gws}
        body = lambda i: {"model": "fake", "max_tokens": 8, "store": False,  # noqa: E731
                          "messages": [{"role": "user", "content": f"unique question {i} about item {i * 7}"}]}
        await paired(targets, body, 50, 1, False)  # warm-up
        results["c1"] = report("fast upstream, concurrency 1 (the gateway's own added latency)",
                               await paired(targets, lambda i: body(i + 1000), 1000, 1, False))
        print("\nfast upstream, concurrency 32 (requests/s, one gateway worker)")
        for name, url in (("direct", up), ("gateway (pass-through)", gws["gateway (pass-through)"])):
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
                async def call(i: int, url: str = url) -> None:
                    async with s.post(url + "/v1/chat/completions", json=body(i)) as r:
                        await r.read()
                await closed_loop(call, 500, 32)  # warm-up
                lat, wall = await closed_loop(call, n, 32)
            results[f"c32 {name}"] = summary(f"  {name}", lat, wall)
    return results


async def part_c(n: int, delay_ms: float) -> dict[str, Any]:
    """What a cache miss adds, against an upstream that always takes ``delay_ms`` (no vLLM variance):
    the speculative upstream call (default) hides the lookup behind the upstream's own time."""
    with ExitStack() as stack:
        up = stack.enter_context(fake_upstream(delay_ms))
        miss = {"namespaces": {"default": {"sampled": "all"}}, "l1_max_bytes": 0}
        targets = {"direct": up,
                   "gateway (pass-through)": stack.enter_context(gateway({
                       "upstreams": {"urls": [up]}, "cache": {"enabled": False}})),
                   "gateway (cache miss, speculative)": stack.enter_context(gateway({
                       "upstreams": {"urls": [up]}, "redis": {"url": REDIS_URL, "index_prefix": "benchspec"},
                       "cache": miss})),
                   "gateway (cache miss, lookup first)": stack.enter_context(gateway({
                       "upstreams": {"urls": [up]}, "redis": {"url": REDIS_URL, "index_prefix": "benchseq"},
                       "cache": {**miss, "speculative_upstream": False}}))}
        # a stored neighbour (same context, cosine near the floor) for every question, so each miss runs a
        # real KNN and, where the neighbour is above the floor, the verifier
        seed = lambda i: {"model": "fake", "messages": [  # noqa: E731
            {"role": "user", "content": f"What is the capital of country number {i}?"}]}
        ask = lambda i: {"model": "fake", "messages": [  # noqa: E731
            {"role": "user", "content": f"What is the population of country number {i}?"}]}
        await paired({k: v for k, v in targets.items() if "cache miss" in k}, seed, 2 * n + 40, 8, False)
        await asyncio.sleep(1.0)
        await paired(targets, ask, 20, 1, False)  # warm-up
        out = {"c1": report(f"upstream that takes {delay_ms:.0f} ms, concurrency 1 (what a miss adds)",
                            await paired(targets, lambda i: ask(i + 20), n, 1, False)),
               "c32": report(f"upstream that takes {delay_ms:.0f} ms, concurrency 32 (what a miss adds under load)",
                             await paired(targets, lambda i: ask(i + 20 + n), n, 32, False))}
        async with aiohttp.ClientSession() as s:
            for name in ("gateway (cache miss, speculative)", "gateway (cache miss, lookup first)"):
                async with s.get(targets[name] + "/metrics") as r:
                    lines = [ln for ln in (await r.text()).splitlines()
                             if ln.startswith(("cachestack_cache_requests_total", "cachestack_cache_store_trips_total",
                                               "cachestack_cache_bypass_total", "cachestack_cache_redis_up"))]
                out[f"metrics {name}"] = lines
                trips = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines
                            if ln.startswith("cachestack_cache_store_trips_total"))
                print(f"  {name}: store trips {trips:g}; " + "; ".join(lines))
        return out


REDIS_URL = ""


def main() -> int:
    global REDIS_URL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vllm", help="a running vLLM serving 'smollm2' (default: start one)")
    p.add_argument("--redis", help="a running Redis with search (default: start Valkey)")
    p.add_argument("--n", type=int, default=200, help="requests per target at concurrency 1")
    p.add_argument("--rps-n", type=int, default=20000, help="requests for the requests/s part")
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--parts", default="vllm,fast,miss",
                   help="vllm, fast, miss (an upstream with a fixed 50 ms: what a cache miss adds), comma-separated")
    args = p.parse_args()
    from serving.config import LocalStackConfig
    from serving.local.processes import free_port
    from serving.local.stack import start_stack

    with ExitStack() as stack:
        parts = set(args.parts.split(","))
        need_vllm, need_redis = not args.vllm and "vllm" in parts, not args.redis
        local = None
        if need_vllm or need_redis:
            local = stack.enter_context(start_stack(
                LocalStackConfig(data_dir=str(REPO / ".cachestack")), vllm=need_vllm, redis=need_redis,
                vllm_ports=[free_port()], redis_port=free_port()))
        vllm = args.vllm or (local.vllm_urls[0] if need_vllm else "")
        REDIS_URL = args.redis or local.redis_url
        print(f"vLLM {vllm}; Redis {REDIS_URL}; python {sys.version.split()[0]}")
        results = {}
        if "vllm" in parts:
            results["vllm"] = asyncio.run(part_a(vllm, args.n))
        if "fast" in parts:
            results["fast_upstream"] = asyncio.run(part_b(args.rps_n))
        if "miss" in parts:
            results["miss_50ms_upstream"] = asyncio.run(part_c(args.n, 50.0))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
