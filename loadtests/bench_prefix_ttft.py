"""Time to first token with automatic prefix caching on and off, direct and through the gateway.

Workload: one ~2,000-token system prompt shared by every request, a different short question each
time, streamed, max_tokens 8. Two vLLM CPU servers (APC on; APC off), each measured direct and through
a gateway (cache bypassed so every request reaches vLLM), interleaved. The issue's target: the on/off
TTFT ratio through the gateway within 10% of the direct ratio (measured by hand here: 0.10).

python loadtests/bench_prefix_ttft.py [--n 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import ExitStack
from typing import Any

import aiohttp

from common import write_json, REPO, gateway, pct

SYSTEM = "You are the support assistant of a large network-equipment vendor. " + " ".join(
    f"Policy {i}: for device family F{i} explain the reset procedure, the warranty terms in clause {i % 23}, "
    f"and escalate firmware faults to tier {i % 3 + 1}." for i in range(60))


async def ttft(session: aiohttp.ClientSession, url: str, i: int) -> float:
    body = {"model": "smollm2", "stream": True, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"Question {i}: how do I reset device F{i}?"}]}
    loop = asyncio.get_running_loop()
    t = loop.time()
    async with session.post(url + "/v1/chat/completions", json=body,
                            headers={"cache-control": "no-cache, no-store"}) as r:
        async for line in r.content:
            if line.startswith(b"data: ") and b'"content":"' in line and b'"content":""' not in line:
                first = loop.time() - t
                await r.read()
                return first
    raise RuntimeError("no content in the stream")


async def run(targets: dict[str, str], n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in targets}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        for url in targets.values():  # warm: the shared prefix enters the APC-on cache
            await ttft(s, url, -1)
        for i in range(n):
            for name, url in targets.items():
                out[name].append(await ttft(s, url, i))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args()
    from serving.config import LocalStackConfig
    from serving.local.processes import free_port
    from serving.local.stack import start_stack

    base = LocalStackConfig(data_dir=str(REPO / ".cachestack"))
    with ExitStack() as stack:
        on = stack.enter_context(start_stack(base, redis=False, vllm_ports=[free_port()])).vllm_urls[0]
        off_cfg = base.model_copy(update={"vllm_args": [*base.vllm_args, "--no-enable-prefix-caching"]})
        off = stack.enter_context(start_stack(off_cfg, redis=False, vllm_ports=[free_port()])).vllm_urls[0]
        gw_on = stack.enter_context(gateway({"upstreams": {"urls": [on]}, "cache": {"enabled": False}}))
        gw_off = stack.enter_context(gateway({"upstreams": {"urls": [off]}, "cache": {"enabled": False}}))
        targets = {"direct APC on": on, "direct APC off": off, "gateway APC on": gw_on, "gateway APC off": gw_off}
        lat = asyncio.run(run(targets, args.n))
    res: dict[str, Any] = {}
    for name, values in lat.items():
        res[name] = {"p50_ms": pct(values, 50) * 1000, "p99_ms": pct(values, 99) * 1000}
        print(f"{name:<18} TTFT p50 {res[name]['p50_ms']:8.1f} ms   p99 {res[name]['p99_ms']:8.1f} ms")
    direct = res["direct APC on"]["p50_ms"] / res["direct APC off"]["p50_ms"]
    via = res["gateway APC on"]["p50_ms"] / res["gateway APC off"]["p50_ms"]
    res["ratio_direct"], res["ratio_gateway"] = direct, via
    print(f"on/off TTFT p50 ratio: direct {direct:.3f}, through the gateway {via:.3f} "
          f"({(via / direct - 1) * 100:+.1f}% of the direct ratio)")
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
