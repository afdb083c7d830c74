"""Shared pieces of the benchmarks: child processes (gateway, fake upstream), a closed-loop load driver,
percentiles. Every benchmark prints what it ran and medians with p99."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from serving.local.processes import free_port  # noqa: E402


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(name: str, lat_s: list[float], wall_s: float | None = None) -> dict[str, float]:
    out = {"n": len(lat_s), "p50_ms": pct(lat_s, 50) * 1000, "p99_ms": pct(lat_s, 99) * 1000,
           "mean_ms": statistics.fmean(lat_s) * 1000 if lat_s else float("nan")}
    if wall_s:
        out["rps"] = len(lat_s) / wall_s
    line = f"{name:<44} n={out['n']:<6} p50={out['p50_ms']:8.3f} ms  p99={out['p99_ms']:8.3f} ms"
    if wall_s:
        line += f"  {out['rps']:8.1f} req/s"
    print(line, flush=True)
    return out


async def closed_loop(call: Callable[[int], Awaitable[Any]], total: int, concurrency: int) -> tuple[list[float], float]:
    """``concurrency`` workers each issue requests back to back until ``total`` are done."""
    lat: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            await call(i)
            lat.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, time.perf_counter() - started


def write_json(path: str | None, results: Any) -> None:
    """``--json PATH``: keep the numbers next to the printed table."""
    if path:
        with open(path, "w") as fh:
            json.dump(results, fh, indent=2)


def wait_url(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def child(argv: list[str], ready_url: str, env: dict[str, str] | None = None,
          ready_timeout_s: float = 120.0) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.NamedTemporaryFile(prefix="cachestack-bench-", suffix=".log", delete=False)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            cwd=REPO)
    try:
        wait_url(ready_url, ready_timeout_s)
        yield proc
    except BaseException:
        print(Path(log.name).read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def fake_upstream(delay_ms: float = 0.0) -> Iterator[str]:
    port = free_port()
    with child([sys.executable, str(REPO / "loadtests" / "fake_upstream.py"), str(port), str(delay_ms)],
               f"http://127.0.0.1:{port}/v1/models"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def gateway_process(config: dict[str, Any], ready_timeout_s: float = 120.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``cachestack serve`` as its own process (one worker, uvloop, httptools), as deployed: URL and process."""
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "port": port}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(config, fh)
    argv = [sys.executable, "-m", "serving.cli", "serve", "--config", fh.name]
    with child(argv, f"http://127.0.0.1:{port}/health", {"HF_HUB_OFFLINE": "1"}, ready_timeout_s) as proc:
        wait_url(f"http://127.0.0.1:{port}/ready", ready_timeout_s)
        yield f"http://127.0.0.1:{port}", proc


@contextmanager
def gateway(config: dict[str, Any]) -> Iterator[str]:
    """The gateway's URL; see :func:`gateway_process`."""
    with gateway_process(config) as (url, _):
        yield url
