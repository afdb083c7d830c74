"""When a speculative miss's request reaches the upstream, and how long the gateway takes after its answer.

A stand-in upstream (aiohttp, in this process) timestamps each request's arrival and answers 50 ms
later; the client timestamps its send and the response. Interleaved, one request at a time, against a
pass-through gateway (cache off) and a cache gateway where every question is a miss with a stored
neighbour (a real exact GET, embedding, KNN and verifier). ``--baseline PATH`` adds another checkout's
cache gateway to the same run. Prints p50 of "client send -> upstream arrival" and of "upstream
answer -> client has the response".

python loadtests/bench_miss_send.py [--n 60] [--baseline PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from common import REPO, gateway, write_json

ANSWER = {"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
DELAY_S = 0.05


def body(question: str) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": question}]}


async def run(redis: str, n: int, baseline: Path | None) -> dict[str, Any]:
    arrivals: dict[str, float] = {}

    async def chat(request: web.Request) -> web.Response:
        question = (await request.json())["messages"][-1]["content"]
        arrivals[question] = time.perf_counter()
        await asyncio.sleep(DELAY_S)
        return web.json_response(ANSWER)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up = f"http://127.0.0.1:{runner.addresses[0][1]}"
    miss = {"namespaces": {"default": {"sampled": "all"}}, "l1_max_bytes": 0}
    configs: dict[str, tuple[dict[str, Any], Path]] = {
        "pass-through": ({"upstreams": {"urls": [up]}, "cache": {"enabled": False}}, REPO),
        "cache miss": ({"upstreams": {"urls": [up]}, "redis": {"url": redis, "index_prefix": "benchsend"},
                        "cache": miss}, REPO)}
    if baseline is not None:
        configs["baseline cache miss"] = ({"upstreams": {"urls": [up]}, "cache": miss,
                                           "redis": {"url": redis, "index_prefix": "benchsendbase"}}, baseline)
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {}
    with ExitStack() as stack:  # started off the loop: the stand-in answers their start-up calls
        gws = {name: await loop.run_in_executor(None, lambda c=c, r=r: stack.enter_context(gateway(c, repo=r)))
               for name, (c, r) in configs.items()}
        async with aiohttp.ClientSession() as s:
            async def post(url: str, question: str) -> None:
                async with s.post(url + "/v1/chat/completions", json=body(question)) as r:
                    await r.read()

            for i in range(n + 10):  # a stored neighbour for every question each cache gateway is asked
                for name, url in gws.items():
                    if name != "pass-through":
                        await post(url, f"What is the capital of country number {i}?")
            await asyncio.sleep(1.0)
            to_upstream: dict[str, list[float]] = {name: [] for name in gws}
            after_answer: dict[str, list[float]] = {name: [] for name in gws}
            for i in range(n):
                for name, url in gws.items():
                    question = f"What is the population of country number {i}? ({name})"
                    sent = time.perf_counter()
                    await post(url, question)
                    done = time.perf_counter()
                    to_upstream[name].append((arrivals[question] - sent) * 1000)
                    after_answer[name].append((done - arrivals[question] - DELAY_S) * 1000)
        for name in gws:
            out[name] = {"to_upstream_p50_ms": statistics.median(to_upstream[name]),
                         "after_answer_p50_ms": statistics.median(after_answer[name]), "n": n}
            print(f"{name:<22} client send -> upstream p50 {out[name]['to_upstream_p50_ms']:6.2f} ms   "
                  f"upstream answer -> response p50 {out[name]['after_answer_p50_ms']:6.2f} ms", flush=True)
    await runner.cleanup()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis", help="a running Redis with search (default: start Valkey)")
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--baseline", type=Path, help="another checkout: its cache gateway joins the run")
    p.add_argument("--json")
    args = p.parse_args()
    from serving.config import LocalStackConfig
    from serving.local.processes import free_port
    from serving.local.stack import start_stack

    with ExitStack() as stack:
        redis = args.redis or stack.enter_context(start_stack(
            LocalStackConfig(data_dir=str(REPO / ".cachestack")), vllm=False, redis_port=free_port())).redis_url
        write_json(args.json, asyncio.run(run(redis, args.n, args.baseline)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
