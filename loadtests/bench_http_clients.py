"""Which async HTTP client the gateway uses for vLLM: httpx vs aiohttp, at concurrency 32.

Both clients post the same small chat request to the fast fake upstream (its own process) over a
keep-alive pool of 32 connections; we report requests/s, latency p50/p99 and the client process's CPU
time per request (what the gateway's one worker would spend on the client alone).

python loadtests/bench_http_clients.py [--n 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import aiohttp
import httpx

from common import write_json, closed_loop, fake_upstream, summary

BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def with_aiohttp(url: str, n: int) -> tuple[list[float], float]:
    conn = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def call(_: int) -> None:
            async with s.post(url, json=BODY) as r:
                await r.read()
        await closed_loop(call, 1000, 32)
        return await closed_loop(call, n, 32)


async def with_httpx(url: str, n: int) -> tuple[list[float], float]:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as c:
        async def call(_: int) -> None:
            r = await c.post(url, json=BODY)
            r.read()
        await closed_loop(call, 1000, 32)
        return await closed_loop(call, n, 32)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--json")
    args = p.parse_args()
    results: dict[str, Any] = {}
    with fake_upstream() as up:
        url = up + "/v1/chat/completions"
        for round_ in range(2):  # two alternating rounds: the machine's noise hits both
            for name, fn in (("aiohttp", with_aiohttp), ("httpx", with_httpx)):
                cpu = time.process_time()
                lat, wall = asyncio.run(fn(url, args.n))
                cpu_us = (time.process_time() - cpu) / (args.n + 1000) * 1e6
                out = summary(f"{name} round {round_ + 1}", lat, wall)
                out["client_cpu_us_per_request"] = cpu_us
                print(f"{'':44} client CPU {cpu_us:.0f} us/request")
                results[f"{name}-{round_ + 1}"] = out
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
