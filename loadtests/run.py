"""One command: a short locust run against the local stack (started if it is not running), then the summary.

    .venv/bin/python -m loadtests.run                       # mixed, 16 users, 120 s, http://127.0.0.1:8080
    .venv/bin/python -m loadtests.run --scenario faq -t 300s -u 16 --processes 2

Options it does not know go to locust unchanged (any locustfile option: --rate, --warm, --pool ...).
When nothing answers on --host's /ready and the host is this machine, ``cachestack up`` is started
on that port (with --config if given) and stopped at the end. Exit code: locust's, so a failed
threshold fails the command.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse

from loadtests.workload.report import format_summary

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def ready(host: str) -> bool:
    try:
        with urllib.request.urlopen(host.rstrip("/") + "/ready", timeout=3) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def start_stack(host: str, config: str | None, log: Path, timeout_s: float) -> subprocess.Popen[bytes]:
    url = urlparse(host)
    if url.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"loadtests.run: {host} does not answer and is not local: start it yourself")
    argv = [sys.executable, "-m", "serving.cli", "up", "--port", str(url.port or 80)]
    if config:
        argv += ["--config", config]
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"loadtests.run: starting the local stack (cachestack up, log {log}) ...", file=sys.stderr, flush=True)
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})
    deadline = time.monotonic() + timeout_s
    while not ready(host):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_stack(proc)
            raise SystemExit(f"loadtests.run: the stack did not become ready; see {log}")
        time.sleep(2)
    return proc


def stop_stack(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a user stops ``cachestack up``: it stops vLLM and Valkey itself."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="mixed")
    p.add_argument("-t", "--run-time", default="120s")
    p.add_argument("-u", "--users", type=int, default=16)
    p.add_argument("--host", default="http://127.0.0.1:8080")
    p.add_argument("--config", help="config for cachestack up when the stack has to be started")
    p.add_argument("--summary-dir", help="default loadtests/out/<run id>/")
    p.add_argument("--stack-timeout", type=float, default=900.0, help="seconds to wait for a started stack")
    args, extra = p.parse_known_args(argv)
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    out = Path(args.summary_dir) if args.summary_dir else REPO / "loadtests" / "out" / run_id
    stack = None if ready(args.host) else start_stack(args.host, args.config, out / "stack.log", args.stack_timeout)
    try:
        cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py"), "--headless",
               "--only-summary", "--scenario", args.scenario, "-u", str(args.users), "-r", str(args.users),
               "-t", args.run_time, "--host", args.host, "--run-id", run_id, "--summary-dir", str(out), *extra]
        code = subprocess.run(cmd, cwd=REPO, check=False).returncode
    finally:
        if stack is not None:
            stop_stack(stack)
    summary = out / "summary.json"
    if summary.is_file():
        print(format_summary(json.loads(summary.read_text())))
        print(f"files: {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
