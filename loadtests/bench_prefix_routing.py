"""Prefix-aware routing vs round-robin on two real vLLM CPU replicas.

Starts two vLLM CPU servers as child processes (ports 8201/8202, each pinned to its own core, a KV
cache too small for one replica to hold every system prompt), then runs the same kind of workload
once per routing policy through :class:`serving.router.Router`, as the gateway does on a cache
miss: many concurrent multi-turn conversations (every turn resends the growing history). Half of
them use one of a few distinct long system prompts (~1,700 tokens each); the other half have a
short system prompt and bring their own long document (~1,200 tokens) in the first user turn.
Both policies see the same conversations, with the replicas' prefix caches reset in between.
It prints, per policy:

- prefix-cache hit rate from the replicas' own counters (delta of ``vllm:prefix_cache_hits_total``
  over ``vllm:prefix_cache_queries_total``), and the prefix_aware / round_robin ratio (target >= 1.8);
- TTFT p50 (streaming: time to the first content chunk), and the ratio (target <= 0.6);
- the load split (target: neither replica above 60% of the requests).

Not a test: run it by hand, on an otherwise idle machine, e.g.
``.venv/bin/python loadtests/bench_prefix_routing.py --model /tmp/cs/smollm2``. It takes a few
minutes and kills its children at the end, on Ctrl-C and on errors. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serving.config import RoutingConfig, UpstreamConfig  # noqa: E402
from serving.router import Router, affinity_text  # noqa: E402
from serving.vllm_metrics import VllmMetrics, VllmSnapshot  # noqa: E402

HOST = "127.0.0.1"
SERVED = "smollm2"
WORDS = (
    "account address agent answer application approve balance billing budget cancel card case change charge "
    "check claim client code confirm contract cost credit customer data date deadline delivery detail device "
    "discount document email error estimate account export feature fee file form guarantee help history "
    "identity incident install invoice issue item key language level license limit list login manager message "
    "method migration model monitor network notice number offer order owner package partner password payment "
    "period permission plan policy price priority problem product profile project purchase quality question "
    "quota rate receipt record refund region release renewal report request reset response return review risk "
    "role rule schedule security server service session setting shipment signature size software status "
    "storage subscription summary support system tax team term ticket tier token tool tracking transfer "
    "update upgrade usage user value vendor version warranty window workflow always never only first then "
    "before after carefully politely briefly clearly exactly must should may cannot will within under over"
).split()


# -- child processes ------------------------------------------------------------------------------


@dataclass
class Child:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def start_replica(args: argparse.Namespace, port: int, core: str, log_dir: Path) -> Child:
    """One vLLM CPU server in its own session (so the whole process group can be killed)."""
    log = log_dir / f"vllm-{port}.log"
    env = {
        **os.environ,
        "VLLM_CPU_OMP_THREADS_BIND": core,  # one core each: like two machines, not two fighting processes
        "VLLM_SERVER_DEV_MODE": "1",  # for POST /reset_prefix_cache between policies
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # integer GiB only; the size is set in bytes below
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", args.model, "--served-model-name", SERVED,
        "--host", HOST, "--port", str(port),
        "--enforce-eager", "--enable-prefix-caching", "--enable-prompt-tokens-details",
        "--max-model-len", "4096", "--dtype", "float32",
        "--kv-cache-memory-bytes", str(int(args.kv_cache_gib * 2**30)),
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Child(port, proc, log)


def stop_children(children: list[Child]) -> None:
    """SIGTERM each child's process group, then SIGKILL what is left after 20 s."""
    for c in children:
        if c.proc.poll() is None:
            try:
                os.killpg(c.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 20
    for c in children:
        try:
            c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(c.proc.pid, signal.SIGKILL)  # also engine-core children left behind
        except ProcessLookupError:
            pass
        c.proc.wait()


def wait_ready(children: list[Child], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(children)
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while pending:
            for c in list(pending):
                if c.proc.poll() is not None:
                    tail = c.log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"vLLM on port {c.port} exited with {c.proc.returncode}:\n{tail}")
                try:
                    if client.get(f"{c.url}/v1/models").status_code == 200:
                        pending.remove(c)
                        print(f"  replica {c.url} ready", flush=True)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"vLLM not ready after {timeout_s:.0f} s; logs in {children[0].log.parent}")
            if pending:
                time.sleep(1.0)


# -- workload -------------------------------------------------------------------------------------


def sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


async def count_tokens(client: httpx.AsyncClient, url: str, text: str) -> int:
    resp = await client.post(f"{url}/tokenize", json={"model": SERVED, "prompt": text, "add_special_tokens": False})
    resp.raise_for_status()
    return int(resp.json()["count"])


async def sized_text(client: httpx.AsyncClient, url: str, head: str, rng: random.Random, tokens: int) -> str:
    """``head`` and numbered random sentences, trimmed to about ``tokens`` tokens."""
    body = [f"{j + 1}. {sentence(rng, rng.randint(10, 20))}" for j in range(tokens // 10)]
    text = head + "\n".join(body)
    n = await count_tokens(client, url, text)
    while n > tokens and len(body) > 1:
        body = body[: max(1, min(len(body) - 1, int(len(body) * tokens / n)))]
        text = head + "\n".join(body)
        n = await count_tokens(client, url, text)
    return text


@dataclass
class Workload:
    systems: list[str]  # long shared system prompts
    documents: dict[int, str]  # conversation index -> its own long document (odd conversations)


async def make_workload(args: argparse.Namespace, url: str) -> Workload:
    """The same conversations for every policy, so only the routing differs."""
    async with httpx.AsyncClient(timeout=60.0, trust_env=False) as client:
        systems = []
        for i in range(args.system_prompts):
            rng = random.Random(f"{args.seed}-system-{i}")
            head = f"You are support assistant number {i} of company {rng.randrange(10**6)}. Rules:\n"
            systems.append(await sized_text(client, url, head, rng, args.system_tokens))
        documents = {}
        for j in range(1, args.conversations, 2):
            rng = random.Random(f"{args.seed}-doc-{j}")
            head = f"Please read my document number {rng.randrange(10**6)} and answer questions about it.\n"
            documents[j] = await sized_text(client, url, head, rng, args.doc_tokens)
    return Workload(systems, documents)


@dataclass
class Turn:
    ttft_s: float
    replica: str
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class PolicyResult:
    policy: str
    turns: list[Turn] = field(default_factory=list)
    errors: int = 0
    hits: float = 0.0
    queries: float = 0.0
    wall_s: float = 0.0
    spilled: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def ttft_p50(self) -> float:
        return statistics.median(t.ttft_s for t in self.turns) if self.turns else float("nan")

    @property
    def ttft_p90(self) -> float:
        if len(self.turns) < 2:
            return float("nan")
        return statistics.quantiles([t.ttft_s for t in self.turns], n=10)[-1]

    def split(self, urls: list[str]) -> dict[str, float]:
        n = len(self.turns) or 1
        return {u: sum(1 for t in self.turns if t.replica == u) / n for u in urls}


async def stream_turn(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, str, dict[str, Any]]:
    """POST a streaming chat completion; (TTFT to the first content chunk, text, usage)."""
    started = time.perf_counter()
    ttft: float | None = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    text.append(content)
    if ttft is None:  # nothing but an empty answer: count the whole call
        ttft = time.perf_counter() - started
    return ttft, "".join(text), usage


async def scrape_totals(metrics: VllmMetrics, urls: list[str]) -> tuple[float, float]:
    """Summed prefix-cache hits and queries of every replica (retried: a busy CPU server is slow)."""
    hits = queries = 0.0
    for u in urls:
        snap: VllmSnapshot | None = None
        for _ in range(5):
            snap = await metrics.scrape(u)
            if snap is not None and snap.prefix_cache_hits is not None and snap.prefix_cache_queries is not None:
                break
            await asyncio.sleep(1.0)
        if snap is None or snap.prefix_cache_hits is None or snap.prefix_cache_queries is None:
            raise RuntimeError(f"could not read vllm:prefix_cache_* from {u}")
        hits += snap.prefix_cache_hits
        queries += snap.prefix_cache_queries
    return hits, queries


async def reset_caches(client: httpx.AsyncClient, urls: list[str]) -> None:
    """Empty every replica's prefix cache, so no policy inherits the previous one's blocks."""
    for u in urls:
        for _ in range(20):
            resp = await client.post(f"{u}/reset_prefix_cache")
            if resp.status_code == 200 and resp.json().get("success") is not False:
                break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError(f"could not reset the prefix cache of {u} (HTTP {resp.status_code})")


async def run_policy(args: argparse.Namespace, policy: str, urls: list[str], work: Workload) -> PolicyResult:
    result = PolicyResult(policy)
    cfg = UpstreamConfig(urls=urls, routing=RoutingConfig(policy=policy, metrics_scrape_s=2.0,
                                                          load_factor=args.load_factor))
    router = Router(cfg)
    timeout = httpx.Timeout(600.0, connect=10.0)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        await reset_caches(client, urls)
        conversations: asyncio.Queue[int] = asyncio.Queue()
        for j in range(args.conversations):
            conversations.put_nowait(j)
        probe = VllmMetrics(1.0, timeout_s=30.0)
        probe.set_targets(urls)
        hits0, queries0 = await scrape_totals(probe, urls)
        await router.start()
        started = time.perf_counter()

        async def converse(j: int) -> None:
            rng = random.Random(f"{args.seed}-conv-{j}")
            if j in work.documents:
                messages: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
            else:
                messages = [{"role": "system", "content": work.systems[(j // 2) % len(work.systems)]}]
            for turn in range(args.turns):
                question = f"Conversation {j}, question {turn}: " + sentence(rng, rng.randint(20, 35))
                if turn == 0 and j in work.documents:
                    question = work.documents[j] + "\n\n" + question
                messages.append({"role": "user", "content": question})
                body = {"model": SERVED, "messages": messages, "max_tokens": args.max_tokens, "temperature": 0,
                        "stream": True, "stream_options": {"include_usage": True}}
                replica = router.choose(affinity_text(body))
                ok = False
                try:
                    ttft, answer, usage = await stream_turn(client, replica.url, body)
                    ok = True
                except (httpx.HTTPError, RuntimeError) as exc:
                    result.errors += 1
                    print(f"  {policy}: conversation {j} turn {turn} failed: {exc}", flush=True)
                    return
                finally:
                    router.release(replica, ok)
                details = usage.get("prompt_tokens_details") or {}
                result.turns.append(Turn(ttft, replica.url, int(usage.get("prompt_tokens") or 0),
                                         int(details.get("cached_tokens") or 0)))
                messages.append({"role": "assistant", "content": answer})

        async def worker() -> None:
            while True:
                try:
                    j = conversations.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await converse(j)

        try:
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        finally:
            result.wall_s = time.perf_counter() - started
            result.spilled = sum(r.spilled for r in router.replicas())
            await router.aclose()
        await asyncio.sleep(0.5)  # let the engines publish their last counters
        hits1, queries1 = await scrape_totals(probe, urls)
        await probe.aclose()
    result.hits, result.queries = hits1 - hits0, queries1 - queries0
    return result


async def warm_up(urls: list[str]) -> None:
    """One short request per replica: the first call of a fresh engine is slow, and must not count."""
    async with httpx.AsyncClient(timeout=300.0, trust_env=False) as client:
        for u in urls:
            body = {"model": SERVED, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2, "stream": True}
            await stream_turn(client, u, body)


def report(results: dict[str, PolicyResult], urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    print()
    print(f"workload: {args.conversations} conversations x {args.turns} turns, concurrency {args.concurrency}; "
          f"half on {args.system_prompts} system prompts of ~{args.system_tokens} tokens, half with their own "
          f"~{args.doc_tokens}-token document; max_tokens {args.max_tokens}; KV cache {args.kv_cache_gib:g} GiB "
          f"per replica; load_factor {args.load_factor}")
    print(f"{'policy':<14}{'requests':>9}{'errors':>7}{'hit rate':>10}{'cached/prompt':>15}{'TTFT p50':>10}"
          f"{'TTFT p90':>10}{'wall s':>8}{'spilled':>8}  split")
    out: dict[str, Any] = {"policies": {}}
    for name, r in results.items():
        prompt = sum(t.prompt_tokens for t in r.turns) or 1
        cached = sum(t.cached_tokens for t in r.turns)
        split = r.split(urls)
        split_txt = " / ".join(f"{v:.0%}" for v in split.values())
        print(f"{name:<14}{len(r.turns):>9}{r.errors:>7}{r.hit_rate:>10.3f}{cached / prompt:>15.3f}"
              f"{r.ttft_p50:>10.3f}{r.ttft_p90:>10.3f}{r.wall_s:>8.1f}{r.spilled:>8}  {split_txt}")
        out["policies"][name] = {
            "requests": len(r.turns), "errors": r.errors, "hit_rate": r.hit_rate, "client_cached_ratio": cached / prompt,
            "ttft_p50_s": r.ttft_p50, "ttft_p90_s": r.ttft_p90, "wall_s": r.wall_s, "split": split, "spilled": r.spilled,
        }
    pa, rr = results.get("prefix_aware"), results.get("round_robin")
    if pa and rr:
        hit_ratio = pa.hit_rate / rr.hit_rate if rr.hit_rate else float("inf")
        ttft_ratio = pa.ttft_p50 / rr.ttft_p50
        worst = max(pa.split(urls).values())
        print()
        print(f"hit rate ratio prefix_aware/round_robin: {hit_ratio:.2f}  (target >= 1.8: {'PASS' if hit_ratio >= 1.8 else 'FAIL'})")
        print(f"TTFT p50 ratio prefix_aware/round_robin: {ttft_ratio:.2f}  (target <= 0.6: {'PASS' if ttft_ratio <= 0.6 else 'FAIL'})")
        print(f"busiest replica under prefix_aware: {worst:.0%} of requests  (target <= 60%: {'PASS' if worst <= 0.6 else 'FAIL'})")
        out.update(hit_rate_ratio=hit_ratio, ttft_p50_ratio=ttft_ratio, prefix_aware_max_share=worst)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="/tmp/cs/smollm2", help="local model folder")
    p.add_argument("--ports", type=int, nargs=2, default=[8201, 8202])
    p.add_argument("--cores", nargs=2, default=["0", "1"], help="VLLM_CPU_OMP_THREADS_BIND per replica")
    p.add_argument("--kv-cache-gib", type=float, default=0.35,
                   help="KV cache per replica (GiB): holds about half of the hot prefixes")
    p.add_argument("--system-prompts", type=int, default=4)
    p.add_argument("--system-tokens", type=int, default=1700)
    p.add_argument("--doc-tokens", type=int, default=1200)
    p.add_argument("--conversations", type=int, default=16)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--load-factor", type=float, default=1.25)
    p.add_argument("--policies", nargs="+", default=["round_robin", "prefix_aware"],
                   choices=["round_robin", "least_loaded", "prefix_aware"])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.model).is_dir():
        print(f"model folder {args.model} not found (--model)", file=sys.stderr)
        return 2

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-prefix-routing-"))
    children: list[Child] = []
    try:
        print(f"starting 2 vLLM CPU replicas (logs in {log_dir}) ...", flush=True)
        for port, core in zip(args.ports, args.cores):
            children.append(start_replica(args, port, core, log_dir))
        wait_ready(children, args.startup_timeout)
        urls = [c.url for c in children]
        asyncio.run(warm_up(urls))
        work = asyncio.run(make_workload(args, urls[0]))
        results: dict[str, PolicyResult] = {}
        for policy in args.policies:
            print(f"running {policy} ...", flush=True)
            results[policy] = asyncio.run(run_policy(args, policy, urls, work))
            r = results[policy]
            print(f"  {len(r.turns)} requests in {r.wall_s:.1f} s, hit rate {r.hit_rate:.3f}, "
                  f"TTFT p50 {r.ttft_p50:.3f} s", flush=True)
        out = report(results, urls, args)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
        return 0
    finally:
        print("stopping replicas ...", flush=True)
        stop_children(children)


if __name__ == "__main__":
    sys.exit(main())
