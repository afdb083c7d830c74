"""The remote encoder's failure handling and config, without a deployment (tests/e2e/test_vllm_embedder.py
has the real vLLM one): refused connections are real; a hanging server is a silent socket."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from cache.batching import Unavailable
from cache.config import EmbedderConfig, RemoteEncoderConfig
from cache.embedder import Embedder, MicroBatcher
from cache.vllm_encoder import EncoderUnavailable
from serving.config import ConfigError, load_config
from tests.silent_server import Silent

REFUSED = "http://127.0.0.1:9"


def test_a_refused_deployment_is_skipped_after_one_failure():
    e = Embedder(backend="vllm", remote=RemoteEncoderConfig(url=REFUSED, retry_after_s=0.3))
    with pytest.raises(EncoderUnavailable, match="failed"):
        e.encode(["x"])
    with pytest.raises(EncoderUnavailable, match="skipped"):  # no second connection attempt meanwhile
        e.encode(["x"])
    time.sleep(0.35)
    with pytest.raises(EncoderUnavailable, match="failed"):  # retried after retry_after_s
        e.encode(["x"])
    assert e._remote.breaker.trips == 2


def test_a_hanging_deployment_times_out_and_trips_after_three():
    silent = Silent()
    try:
        e = Embedder(backend="vllm", remote=RemoteEncoderConfig(url=silent.url, timeout_ms=50, trip_after_timeouts=3))
        for _ in range(3):
            started = time.perf_counter()
            with pytest.raises(EncoderUnavailable, match="timed out"):
                e.encode(["x"])
            assert time.perf_counter() - started < 5  # bounded by the timeout, not the silence
        with pytest.raises(EncoderUnavailable, match="skipped"):
            e.encode(["x"])
    finally:
        silent.close()


def test_the_batcher_hands_every_waiter_the_failure_as_unavailable():
    batcher = MicroBatcher(Embedder(backend="vllm", remote=RemoteEncoderConfig(url=REFUSED)))

    async def run() -> list[BaseException | object]:
        return await asyncio.gather(*(batcher.embed(f"q{i}") for i in range(5)), return_exceptions=True)

    out = asyncio.run(run())
    assert all(isinstance(x, Unavailable) for x in out)


def test_the_folder_gives_identity_tokens_and_size_without_a_call(embedder):
    e = Embedder(backend="vllm", remote=RemoteEncoderConfig(url=REFUSED))
    assert (e.identity, e.dim, e.max_tokens) == (embedder.identity, embedder.dim, embedder.max_tokens)
    assert e.token_counts(["How do I reset my password?"]) == embedder.token_counts(["How do I reset my password?"])
    other = Embedder(backend="vllm", remote=RemoteEncoderConfig(url=REFUSED, same_weights=False))
    assert other.identity != embedder.identity


def test_config_needs_the_deployment_and_a_timeout_inside_the_deadline():
    with pytest.raises(ValidationError, match="embedder.remote"):
        EmbedderConfig(backend="vllm")
    with pytest.raises(ValidationError, match="http"):
        RemoteEncoderConfig(url="ftp://x")
    with pytest.raises(ConfigError, match="timeout_ms"):
        load_config(None, embedder={"backend": "vllm", "remote": {"url": REFUSED, "timeout_ms": 250}})
    ok = load_config(None, embedder={"backend": "vllm", "remote": {"url": REFUSED, "timeout_ms": 200}})
    assert ok.embedder.remote is not None and ok.embedder.remote.timeout_ms == 200
