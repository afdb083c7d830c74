"""An LLM judge for borderline pairs, measured on the check part with the served model (SmolLM2 here).

The shipped rule scores every check pair (cosine floor, guards, verifier probability). Pairs that pass
the floor and the guards but score in the band [--band-lo, default verifier threshold) are "borderline":
the rule alone does not serve them. For each, the served model is asked one short question at
temperature 0 (cache/judge.py, the request the gateway sends when ``decision.judge`` is on); its
verdict is log P(yes) - log P(no) of the first token. Nothing is tuned: the band and the cut (0: yes more likely than no) are fixed in advance.

Reports the judge alone on the band (AUC, precision/recall of "yes") and the whole rule on the check
part with and without the judge rescuing borderline pairs, plus the judge's latency per call.

    python -m training.judge_experiment --vllm http://127.0.0.1:8000 [--limit 6000]
    (without --vllm a local vLLM CPU server with SmolLM2 is started, about 30 s)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from contextlib import ExitStack
from typing import Any

import aiohttp
import numpy as np

from cache.decision import build_rule, shipped_defaults
from cache.embedder import Embedder
from cache.evaluation import score_pairs
from cache.judge import judge_request, judge_verdict
from training.qqp_split import DEFAULT_QQP, read_pairs


async def judge(session: aiohttp.ClientSession, url: str, model: str, a: str, b: str) -> tuple[float, float]:
    """(verdict, seconds) for one pair: the gateway's own judge request and reading (cache/judge.py)."""
    t = time.perf_counter()
    async with session.post(url + "/v1/chat/completions", json=judge_request(model, a, b)) as r:
        doc: dict[str, Any] = await r.json()
    verdict = judge_verdict(doc)
    return (0.0 if verdict is None else max(-50.0, min(50.0, verdict))), time.perf_counter() - t


async def judge_all(url: str, model: str, pairs: list[tuple[str, str]], concurrency: int) -> tuple[np.ndarray, list[float]]:
    out = np.zeros(len(pairs), dtype=np.float32)
    times: list[float] = []
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        async def one(i: int) -> None:
            async with sem:
                out[i], took = await judge(s, url, model, *pairs[i])
                times.append(took)
        await asyncio.gather(*(one(i) for i in range(len(pairs))))
    return out, times


def pr(hit: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    tp = int((hit & (y == 1)).sum())
    return (tp / max(1, int(hit.sum()))), tp / max(1, int((y == 1).sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qqp", default=DEFAULT_QQP)
    ap.add_argument("--vllm", help="a running vLLM; default: start SmolLM2 on the CPU")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--band-lo", type=float, default=0.5)
    ap.add_argument("--limit", type=int, help="only the first N check pairs")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    rows = list(read_pairs(args.qqp, "check"))
    if args.limit:
        rows = rows[: args.limit]
    defaults = shipped_defaults()
    vthr = float(defaults.verifier_threshold or 0.5)
    ps = score_pairs(rows, Embedder(), build_rule({"verifier": "default", "guards": True}), defaults.threshold)
    y = ps.label
    base = ps.passed & (ps.score >= vthr)
    band = ps.passed & (ps.score >= args.band_lo) & (ps.score < vthr)
    idx = np.flatnonzero(band)
    print(f"{len(rows)} check pairs; rule alone: precision {pr(base, y)[0]:.3f} recall {pr(base, y)[1]:.3f}; "
          f"{len(idx)} borderline pairs (verifier probability {args.band_lo} to {vthr:.4f})")

    from cache.keys import normalise_query

    with ExitStack() as stack:
        url = args.vllm
        if url is None:
            from serving.config import LocalStackConfig
            from serving.local.processes import free_port
            from serving.local.stack import start_stack

            url = stack.enter_context(start_stack(LocalStackConfig(data_dir=".cachestack"), redis=False,
                                                  vllm_ports=[free_port()])).vllm_urls[0]
        pairs = [(normalise_query(rows[i][0]), normalise_query(rows[i][1])) for i in idx]
        verdict, times = asyncio.run(judge_all(url, args.model, pairs, args.concurrency))

    from sklearn.metrics import roc_auc_score

    yb = y[idx]
    yes = verdict > 0
    print(f"judge on the band: AUC {roc_auc_score(yb, verdict):.3f}; says yes to {yes.mean():.2f} of pairs; "
          f"precision of yes {pr(yes, yb)[0]:.3f} (band's share of label 1: {yb.mean():.3f}), "
          f"recall within the band {pr(yes, yb)[1]:.3f}")
    rescued = base.copy()
    rescued[idx[yes]] = True
    p, r = pr(rescued, y)
    print(f"rule + judge rescuing borderline pairs: precision {p:.3f} recall {r:.3f} "
          f"(hits {int(rescued.sum())} vs {int(base.sum())})")
    lat = np.array(times) * 1000
    print(f"judge latency per call at concurrency {args.concurrency}: p50 {np.median(lat):.0f} ms, "
          f"p99 {np.percentile(lat, 99):.0f} ms")


if __name__ == "__main__":
    main()
