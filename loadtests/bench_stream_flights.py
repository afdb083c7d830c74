"""Single-flight of identical streams across gateway replicas: a follower's time to first token against
the leader's, and the Redis commands one shared streamed answer costs.

Starts ``--pods`` gateway processes (``cachestack serve``) on one Valkey + RediSearch, in front of the
real vLLM. Each round sends one new question as ``--pods`` concurrent identical streams, one per pod:
one leads (vLLM's id), the others follow (the gateway's ``-cache-`` id). Times are the client's, from
the round's start to the first content event and to the stream's end. The flight's Redis commands
(XADD, XREAD, PEXPIRE, EVAL/EVALSHA, GET) are Valkey's own counts (INFO commandstats) over all rounds;
the cache's lookups and stores use none of XADD/XREAD/PEXPIRE.

python loadtests/bench_stream_flights.py --vllm http://127.0.0.1:18000 [--redis URL] [--rounds 20]
    [--pods 3] [--max-tokens 64] [--batch-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from typing import Any

import httpx
import orjson
from common import REPO, gateway, write_json

COMMANDS = ("xadd", "xread", "pexpire", "eval", "evalsha", "get")


async def one_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], started: float) -> dict[str, Any]:
    out: dict[str, Any] = {"first": None, "events": 0, "id": None, "text": ""}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            obj = orjson.loads(line[6:])
            out["events"] += 1
            out["id"] = obj.get("id")
            for choice in obj.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    out["first"] = out["first"] or time.monotonic() - started
                    out["text"] += piece
    out["end"] = time.monotonic() - started
    return out


async def commandstats(redis_url: str) -> dict[str, int]:
    from redis.asyncio import Redis

    r = Redis.from_url(redis_url)
    try:
        stats = await r.info("commandstats")
    finally:
        await r.aclose()
    return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in COMMANDS}


async def bench(urls: list[str], redis_url: str, rounds: int, max_tokens: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=300) as client:
        # one warm-up round per pod: model, embedder and connections loaded before anything is timed
        await asyncio.gather(*(one_stream(client, u, body(f"warm-up {i}", max_tokens), time.monotonic())
                               for i, u in enumerate(urls)))
        before = await commandstats(redis_url)
        for _ in range(rounds):
            b = body(f"Describe a quiet harbour at dawn. ({uuid.uuid4().hex[:8]})", max_tokens)
            started = time.monotonic()
            rs = await asyncio.gather(*(one_stream(client, u, b, started) for u in urls))
            leaders = [r for r in rs if "-cache-" not in (r["id"] or "")]
            if len(leaders) != 1 or len({r["text"] for r in rs}) != 1:
                print(f"round skipped: {len(leaders)} leaders, {len({r['text'] for r in rs})} texts", flush=True)
                continue
            (lead,) = leaders
            for r in rs:
                if r is not lead:
                    rows.append({"leader_ttft": lead["first"], "follower_ttft": r["first"],
                                 "leader_end": lead["end"], "follower_end": r["end"], "events": lead["events"]})
        after = await commandstats(redis_url)
    shared = len(rows) // max(1, len(urls) - 1)
    ops = {c: (after[c] - before[c]) / max(1, shared) for c in COMMANDS}

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows) * 1000

    gap = statistics.median(r["follower_ttft"] - r["leader_ttft"] for r in rows) * 1000
    print(f"{shared} shared streams, {len(rows)} followers, {statistics.median(r['events'] for r in rows):.0f} "
          f"events per stream (median)")
    print(f"leader TTFT    p50 {med('leader_ttft'):8.1f} ms   leader end   p50 {med('leader_end'):8.1f} ms")
    print(f"follower TTFT  p50 {med('follower_ttft'):8.1f} ms   follower end p50 {med('follower_end'):8.1f} ms")
    print(f"follower TTFT - leader TTFT p50 {gap:.1f} ms, max "
          f"{max(r['follower_ttft'] - r['leader_ttft'] for r in rows) * 1000:.1f} ms")
    print("Redis commands per shared stream (all pods): " + ", ".join(f"{c} {v:.1f}" for c, v in ops.items()))
    return {"rows": rows, "ops_per_stream": ops, "follower_minus_leader_ttft_p50_ms": gap}


def body(question: str, max_tokens: int) -> dict[str, Any]:
    return {"model": "smollm2", "temperature": 0, "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": question}]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vllm", required=True)
    p.add_argument("--redis")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-ms", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args()
    from serving.config import LocalStackConfig
    from serving.local.processes import free_port
    from serving.local.stack import start_stack

    with ExitStack() as stack:
        redis = args.redis or stack.enter_context(start_stack(
            LocalStackConfig(data_dir=str(REPO / ".cachestack")), vllm=False, redis_port=free_port())).redis_url
        cfg = {"upstreams": {"urls": [args.vllm]},
               "redis": {"url": redis, "index_prefix": f"sfb{uuid.uuid4().hex[:6]}", "lookup_budget_ms": 2000},
               "cache": {"lookup_deadline_ms": 20000, "replicas": {"flight_batch_ms": args.batch_ms}}}
        urls = [stack.enter_context(gateway(cfg)) for _ in range(args.pods)]
        print(f"{args.pods} gateway processes on Valkey {redis}, vLLM {args.vllm}, batch {args.batch_ms} ms")
        results = asyncio.run(bench(urls, redis, args.rounds, args.max_tokens))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
