"""`cachestack up`, the README's first command, as a user runs it: the whole stack from one process,
answering through the gateway, and Ctrl-C leaves no child process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serving.local.processes import free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    kids = {int(p) for p in out.split()}
    for kid in list(kids):
        kids |= _children(kid)
    return kids


def test_up_serves_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    cfg = tmp_path / "up.yaml"
    cfg.write_text(yaml.safe_dump({"local": {"vllm_port": free_port(), "redis_port": free_port(),
                                             "data_dir": str(REPO / ".cachestack")}}))
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "up", "--config", str(cfg), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "cachestack up did not become ready"
            time.sleep(1)
        body = {"model": "smollm2", "temperature": 0, "max_tokens": 20,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        first = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
        assert "paris" in first.json()["choices"][0]["message"]["content"].lower()
        time.sleep(0.5)
        second = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
        assert second.headers["x-cache"] == "HIT"
        kids = _children(proc.pid)
        assert len(kids) >= 2  # vLLM (with its engine processes) and Valkey
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    time.sleep(1)
    alive = [pid for pid in kids if Path(f"/proc/{pid}").exists()]
    assert alive == [], f"orphans left: {alive}"
