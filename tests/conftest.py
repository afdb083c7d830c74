"""Shared fixtures: the real local stack, started once per test session.

Set CACHESTACK_TEST_VLLM_URL / CACHESTACK_TEST_REDIS_URL to reuse servers you already run (the
model must be served as ``smollm2`` and ``smollm2-b``); otherwise the session starts Valkey + RediSearch and one vLLM
CPU server as children and stops them at the end.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """An e2e test whose assertion fails is run once more, on a fresh gateway (every gateway gets a
    fresh index prefix): on CI's two shared cores a real vLLM generating next to the embedder and
    the verifier can push one lookup past a deadline. A second failure fails the run, and pytest's
    summary lists every rerun (``-ra``), so a flake is seen, not hidden."""
    for item in items:
        if item.get_closest_marker("e2e") is not None and item.get_closest_marker("flaky") is None:
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=["AssertionError"]))
MODEL = "smollm2"
ALIAS = "smollm2-b"  # the same weights under a second name: a "model change" for the cache


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("CACHESTACK_TEST_REDIS_URL")
    if url:
        yield url
        return
    from serving.config import LocalStackConfig
    from serving.local.processes import free_port
    from serving.local.stack import start_stack

    with start_stack(LocalStackConfig(data_dir=str(REPO / ".cachestack")), vllm=False,
                     redis_port=free_port()) as stack:
        yield stack.redis_url


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Valkey + RediSearch cluster of three primaries (real processes), for the session."""
    from serving.local.processes import form_cluster, free_port, valkey_child, wait_redis

    log_dir = tmp_path_factory.mktemp("valkey-cluster")
    ports = [free_port() for _ in range(3)]
    children = [valkey_child(port, log_dir, cluster=True) for port in ports]
    try:
        for child, port in zip(children, ports, strict=True):
            child.start()
            wait_redis(child, port)
        form_cluster(ports)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for child in children:
            child.stop()


@pytest.fixture(scope="session")
def vllm_url() -> Iterator[str]:
    url = os.environ.get("CACHESTACK_TEST_VLLM_URL")
    if url:
        yield url.rstrip("/")
        return
    from serving.config import LocalStackConfig
    from serving.local.processes import free_port
    from serving.local.stack import start_stack

    cfg = LocalStackConfig(data_dir=str(REPO / ".cachestack"), kv_cache_gib=1)
    with start_stack(cfg, redis=False, vllm_ports=[free_port()], aliases=[ALIAS]) as stack:
        yield stack.vllm_urls[0]


EMBED_MODEL = "minilm"  # the served name of the session's vLLM embedding deployment


@pytest.fixture(scope="session")
def vllm_embedding_url() -> Iterator[str]:
    """vLLM CPU serving the MiniLM folder as an embedding model (``--runner pooling``, ~1 GB), as a GPU
    embedding deployment would: started for the session, stopped at its end.
    CACHESTACK_TEST_VLLM_EMBED_URL reuses one already running (served as ``minilm``)."""
    url = os.environ.get("CACHESTACK_TEST_VLLM_EMBED_URL")
    if url:
        yield url.rstrip("/")
        return
    import sys

    from cache.embedder import resolve_model_path
    from serving.local.processes import Child, free_port, wait_http

    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
            resolve_model_path("all-MiniLM-L6-v2"), "--served-model-name", EMBED_MODEL, "--runner", "pooling",
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
            "--max-model-len", "256"]  # the model's own limit (sentence_bert_config.json)
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    child = Child(f"vllm-embed:{port}", argv, REPO / ".cachestack" / "logs" / f"vllm-embed-{port}.log", env)
    child.start()
    try:
        wait_http(child, f"http://127.0.0.1:{port}/v1/models", timeout_s=900, progress=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()


class OwnValkey:
    """A Valkey + RediSearch of one test's own, to stop and start again (the session's is shared)."""

    def __init__(self, log_dir: Path) -> None:
        from serving.local.processes import free_port

        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log_dir = log_dir
        self._child: Any = None
        self.start()

    def start(self) -> None:
        """Start it (empty: nothing is saved) and wait until it answers."""
        from serving.local.processes import valkey_child, wait_redis

        self._child = valkey_child(self.port, self._log_dir)
        self._child.start()
        wait_redis(self._child, self.port)

    def stop(self, grace_s: float = 10.0) -> None:
        self._child.stop(grace_s=grace_s)


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[OwnValkey]:
    valkey = OwnValkey(tmp_path)
    yield valkey
    valkey.stop()


@pytest.fixture(scope="session")
def embedder() -> Any:
    from cache.embedder import Embedder

    return Embedder()


class RunningGateway:
    """A gateway served by uvicorn in its own thread and event loop, as in production."""

    def __init__(self, url: str, app: Any, server: Any) -> None:
        self.url = url
        self.app = app
        self.server = server
        self._counters_at_start = self._cache_samples()  # the registry is the process's, shared by gateways

    @property
    def gw(self) -> Any:
        return self.app.state.gw

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the gateway's own loop (e.g. drain background stores)."""
        return asyncio.run_coroutine_threadsafe(coro, self.server.loop).result(30)

    def drain(self) -> None:
        if self.gw.cache is not None:
            self.call(self.gw.cache.drain())

    _KEEP = ("cachestack_cache_stores_total", "cachestack_cache_bypass_total", "cachestack_cache_requests_total",
             "cachestack_cache_background_judge_total", "cachestack_cache_store_trips_total",
             "cachestack_cache_judge_total", "cachestack_cache_lookup_seconds_sum",
             "cachestack_cache_lookup_seconds_count", "cachestack_cache_stage_seconds_sum",
             "cachestack_cache_stage_seconds_count")

    @classmethod
    def _cache_samples(cls) -> dict[str, float]:
        from prometheus_client import REGISTRY

        return {f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
                for metric in REGISTRY.collect() for s in metric.samples if s.name.startswith(cls._KEEP)}

    def cache_counters(self) -> str:
        """What the cache counted since this gateway started (stores, bypasses, lookups and the
        seconds its stages took): an assertion's message, so a hit that did not happen says which
        step skipped it (a busy stage, a deadline, a store)."""
        before = self._counters_at_start
        return "\n".join(f"{name} +{value - before.get(name, 0.0):.3f}"
                         for name, value in self._cache_samples().items() if value != before.get(name, 0.0))


@contextmanager
def run_gateway(settings: Any, embedder: Any = None) -> Iterator[RunningGateway]:
    import uvicorn

    from serving.app import create_app
    from serving.local.processes import free_port

    port = free_port()
    app = create_app(settings, embedder=embedder)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", http="httptools",
                            log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    server.loop = None  # type: ignore[attr-defined]

    def serve() -> None:
        loop = asyncio.new_event_loop()
        server.loop = loop  # type: ignore[attr-defined]
        loop.run_until_complete(server.serve())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.05)
    try:
        yield RunningGateway(f"http://127.0.0.1:{port}", app, server)
    finally:
        server.should_exit = True
        thread.join(30)


def gateway_settings(vllm_url: str | None, redis_url: str | None, /, **sections: Any) -> Any:
    """Settings for a test gateway: upstream and Redis from the session, a fresh index prefix."""
    import uuid

    from serving.config import load_config

    base: dict[str, Any] = {
        "upstreams": {"urls": [vllm_url or "http://127.0.0.1:9"]},
        # Generous budgets: these machines are shared and a 50 ms budget would turn CPU contention
        # into flaky bypasses; the budget itself is tested with its own small value.
        "redis": {"url": redis_url or "redis://127.0.0.1:9/0", "index_prefix": f"t{uuid.uuid4().hex[:10]}",
                  "lookup_budget_ms": 2000, "store_timeout_ms": 5000},
        # and a whole lookup (embedding, KNN, verifier) may take 20 s instead of 250 ms: CI's two cores
        # also run vLLM, whose speculative generation starts while the lookup embeds and verifies
        "cache": {"lookup_deadline_ms": 20000},
    }
    if redis_url is None:
        base["cache"] = {"enabled": False}
    for name, value in sections.items():
        base[name] = {**base.get(name, {}), **value}
    return load_config(None, **base)


@pytest.fixture
def gateway_factory(embedder: Any) -> Iterator[Any]:
    """``make(vllm_url, redis_url, **config sections)`` -> RunningGateway; all stopped at test end."""
    stack: list[Any] = []

    def make(vllm: str | None, redis: str | None, /, **sections: Any) -> RunningGateway:
        cm = run_gateway(gateway_settings(vllm, redis, **sections), embedder)
        running = cm.__enter__()
        stack.append(cm)
        return running

    yield make
    for cm in reversed(stack):
        cm.__exit__(None, None, None)
