"""Soak: a fixed request rate against the local stack for a bounded time, watching for leaks.

The gateway runs as its own ``cachestack serve`` process in front of a real vLLM CPU server and
Valkey + RediSearch (started here, or reused with ``--vllm-url`` / ``--redis-url``; loopback only).
Open loop at ``--rate`` requests/s for ``--duration`` seconds (at most ``--max-requests``): repeats
of a fixed set of questions (exact hits), paraphrases of them (semantic hits or misses), and new
questions (misses that reach vLLM), a third of them streamed. Every ``--sample-s`` it records the
gateway's RSS and open file descriptors and Valkey's connected clients; after ``--warmup`` seconds
those are compared with the end of the run. Every non-200, transport error or SSE error event counts
as an error. Prints a summary and writes ``--json``.

    python loadtests/soak.py --duration 1800 --rate 4 --json loadtests/results/soak-30min.json
    python loadtests/soak.py --duration 60 --warmup 20        # the short mode (tests/e2e/test_soak.py)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.common import REPO, fake_upstream, gateway_process, pct, write_json  # noqa: E402

TOPICS = ["France", "Japan", "Brazil", "Canada", "Egypt", "Kenya", "Norway", "Peru", "India", "Spain",
          "Chile", "Italy", "Ghana", "Nepal", "Cuba", "Iran", "Mali", "Laos", "Fiji", "Oman"]
QUESTIONS = [f"What is the capital of {t}?" for t in TOPICS] + [f"Name one famous dish from {t}." for t in TOPICS]
PARAPHRASES = ["Tell me: {q}", "{q} Answer briefly.", "Quick question. {q}"]


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    fds: int
    redis_clients: int
    requests_done: int


@dataclass
class Result:
    duration_s: float
    rate: float
    warmup_s: float
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    cache_outcomes: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    after_warmup: dict[str, float] = field(default_factory=dict)
    upstream_errors: dict[str, float] = field(default_factory=dict)  # the gateway's, by code, at the end


def _loopback(url: str) -> str:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"soak only targets loopback, not {url}")
    return url


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _request(i: int, rng: random.Random, model: str) -> tuple[str, dict[str, Any]]:
    roll = rng.random()
    if roll < 0.55:
        kind, text = "repeat", rng.choice(QUESTIONS)
    elif roll < 0.75:
        kind, text = "paraphrase", rng.choice(PARAPHRASES).format(q=rng.choice(QUESTIONS))
    else:
        kind, text = "new", f"In one sentence, what is {rng.randint(10, 999)} plus {rng.randint(10, 999)}? ({i})"
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 24,
            "temperature": 0, "stream": rng.random() < 1 / 3}
    return kind, body


async def _one(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[str | None, str]:
    """(error kind or None, X-Cache) for one request, reading the whole answer."""
    try:
        async with http.post(url + "/v1/chat/completions", json=body) as r:
            data = await r.read()
            outcome = r.headers.get("x-cache", "-")
            if r.status != 200:
                return f"http_{r.status}", outcome
            if body["stream"]:
                events = [e[6:] for e in data.decode().split("\n\n") if e.startswith("data: ")]
                if not events or events[-1] != "[DONE]":
                    return "stream_unfinished", outcome
                if any("error" in json.loads(e) for e in events[:-1]):
                    return "stream_error_event", outcome
            elif not json.loads(data).get("choices"):
                return "no_choices", outcome
            return None, outcome
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
        return type(exc).__name__, "-"


async def drive(url: str, pid: int, redis_url: str, *, duration_s: float, rate: float, warmup_s: float,
                max_requests: int, sample_s: float, seed: int = 7, max_outstanding: int = 256,
                model: str = "smollm2", progress: bool = False) -> Result:
    """Send ``rate`` requests/s for ``duration_s`` (at most ``max_requests``), sampling as it goes
    (``progress`` prints each sample, so a long run can be watched)."""
    res = Result(duration_s, rate, warmup_s)
    rng = random.Random(seed)
    lat: dict[str, list[float]] = collections.defaultdict(list)
    errors: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    outstanding: set[asyncio.Task[None]] = set()
    r = redis.Redis.from_url(redis_url)
    done = 0
    total = min(max_requests, int(duration_s * rate))

    async def timed(kind: str, body: dict[str, Any]) -> None:
        nonlocal done
        t = time.perf_counter()
        err, outcome = await _one(http, url, body)
        lat[kind].append(time.perf_counter() - t)
        outcomes[outcome] += 1
        done += 1
        if err is None:
            res.ok += 1
        else:
            errors[err] += 1

    async def sampler(started: float) -> None:
        while True:
            clients = int(r.info("clients")["connected_clients"])
            s = Sample(round(time.monotonic() - started, 1), round(_rss_mb(pid), 1), _fds(pid), clients, done)
            res.samples.append(s)
            if progress:
                print(f"  t={s.t_s:7.1f}s done={s.requests_done:<6} ok={res.ok:<6} errors={sum(errors.values())} "
                      f"RSS={s.rss_mb} MB fds={s.fds} redis_clients={s.redis_clients} "
                      f"outstanding={len(outstanding)}", flush=True)
            await asyncio.sleep(sample_s)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=max_outstanding)) as http:
        started = time.monotonic()
        sampling = asyncio.create_task(sampler(started))
        for i in range(total):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(outstanding) >= max_outstanding:
                errors["client_backlog"] += 1  # the stack fell this far behind the fixed rate
                continue
            kind, body = _request(i, rng, model)
            task = asyncio.create_task(timed(kind, body))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
            res.sent += 1
        if outstanding:
            await asyncio.wait(outstanding)
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        async with http.get(url + "/metrics") as m:  # what the client's 5xx were, from the gateway's side
            for line in (await m.text()).splitlines():
                if line.startswith("cachestack_upstream_errors_total{"):
                    labels, value = line.rsplit(" ", 1)
                    res.upstream_errors[labels.split('code="', 1)[1].split('"', 1)[0]] = float(value)
    # The last sample is taken idle with this client's keep-alive connections closed: the gateway keeps
    # idle client connections for server.keep_alive_s (75 s), so they would count as open fds.
    await asyncio.sleep(sample_s)
    res.samples.append(Sample(round(time.monotonic() - started, 1), round(_rss_mb(pid), 1), _fds(pid),
                              int(r.info("clients")["connected_clients"]), done))
    r.close()
    res.errors = dict(errors)
    res.cache_outcomes = dict(outcomes)
    res.latency_ms = {k: {"n": len(v), "p50": round(pct(v, 50) * 1000, 1), "p99": round(pct(v, 99) * 1000, 1)}
                      for k, v in sorted(lat.items())}
    res.after_warmup = _growth(res.samples, warmup_s)
    return res


def _growth(samples: list[Sample], warmup_s: float) -> dict[str, float]:
    """RSS, fds and Redis clients at the end of warm-up against the rest of the run."""
    after = [s for s in samples if s.t_s >= warmup_s] or samples[-1:]
    if not after:
        return {}
    base, last = after[0], after[-1]
    peak = max(s.rss_mb for s in after)
    return {
        "rss_start_mb": base.rss_mb, "rss_end_mb": last.rss_mb, "rss_peak_mb": peak,
        "rss_growth_pct": round(100 * (last.rss_mb - base.rss_mb) / base.rss_mb, 2),
        "rss_peak_growth_pct": round(100 * (peak - base.rss_mb) / base.rss_mb, 2),
        "fds_min": min(s.fds for s in after), "fds_max": max(s.fds for s in after),
        "fds_start": base.fds, "fds_end": last.fds,
        "redis_clients_start": base.redis_clients, "redis_clients_end": last.redis_clients,
        "redis_clients_min": min(s.redis_clients for s in after),
        "redis_clients_max": max(s.redis_clients for s in after),
    }


def gateway_config(vllm_url: str, redis_url: str) -> dict[str, Any]:
    return {"upstreams": {"urls": [vllm_url]},
            "redis": {"url": redis_url, "index_prefix": f"soak{uuid.uuid4().hex[:8]}"}}


@contextlib.contextmanager
def local_stack(vllm_url: str | None, redis_url: str | None) -> Iterator[tuple[str, str]]:
    """The URLs given, or Valkey and one vLLM CPU server started for the run."""
    if vllm_url and redis_url:
        yield _loopback(vllm_url), _loopback(redis_url)
        return
    from serving.config import LocalStackConfig
    from serving.local.processes import free_port
    from serving.local.stack import start_stack

    cfg = LocalStackConfig(data_dir=str(REPO / ".cachestack"))
    with start_stack(cfg, redis=not redis_url, vllm=not vllm_url, vllm_ports=[free_port()],
                     redis_port=free_port(), start_timeout_s=1800) as stack:
        yield vllm_url or stack.vllm_urls[0], redis_url or stack.redis_url


def report(res: Result) -> None:
    g = res.after_warmup
    print(f"soak: {res.sent} requests at {res.rate:g}/s over {res.duration_s:g} s, ok {res.ok}, errors {res.errors or 0}")
    print(f"  cache outcomes {res.cache_outcomes}; gateway's upstream errors {res.upstream_errors or 0}")
    for kind, s in res.latency_ms.items():
        print(f"  {kind:<11} n={s['n']:<6} p50={s['p50']:8.1f} ms  p99={s['p99']:8.1f} ms")
    print(f"  after {res.warmup_s:g} s warm-up: RSS {g['rss_start_mb']} -> {g['rss_end_mb']} MB "
          f"({g['rss_growth_pct']:+.2f} %, peak {g['rss_peak_mb']} MB {g['rss_peak_growth_pct']:+.2f} %), "
          f"fds {g['fds_min']}-{g['fds_max']} (start {g['fds_start']}, end {g['fds_end']}), "
          f"Redis clients {g['redis_clients_min']}-{g['redis_clients_max']} "
          f"(start {g['redis_clients_start']}, end {g['redis_clients_end']})", flush=True)


def run(vllm_url: str | None = None, redis_url: str | None = None, fake_upstream_ms: float | None = None,
        **kw: Any) -> Result:
    """With ``fake_upstream_ms`` the upstream is loadtests/fake_upstream.py answering after that delay
    instead of vLLM (Valkey, the embedder and the gateway stay real)."""
    with contextlib.ExitStack() as stack:
        if fake_upstream_ms is not None:
            vllm_url = stack.enter_context(fake_upstream(fake_upstream_ms))
            kw["model"] = "fake"
        vllm, redis_at = stack.enter_context(local_stack(vllm_url, redis_url))
        url, proc = stack.enter_context(gateway_process(gateway_config(vllm, redis_at), ready_timeout_s=600))
        return asyncio.run(drive(url, proc.pid, redis_at, **kw))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of load")
    p.add_argument("--rate", type=float, default=4.0, help="requests per second (open loop)")
    p.add_argument("--warmup", type=float, default=300.0, help="seconds before RSS and fds are compared")
    p.add_argument("--max-requests", type=int, default=20_000)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--vllm-url")
    p.add_argument("--redis-url")
    p.add_argument("--fake-upstream-ms", type=float,
                   help="use loadtests/fake_upstream.py with this delay instead of vLLM")
    p.add_argument("--json")
    p.add_argument("--quiet", action="store_true", help="no line per sample, only the summary")
    a = p.parse_args()
    res = run(a.vllm_url, a.redis_url, a.fake_upstream_ms, duration_s=a.duration, rate=a.rate, warmup_s=min(a.warmup, a.duration / 2),
              max_requests=a.max_requests, sample_s=a.sample_s, progress=not a.quiet)
    report(res)
    write_json(a.json, asdict(res))


if __name__ == "__main__":
    main()
