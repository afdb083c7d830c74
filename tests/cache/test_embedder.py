"""cache/embedder.py: the real sentence-transformers model and the micro-batcher in front of it."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache.embedder import MicroBatcher

TEXTS = [
    "How do I reset my password?",
    "What is the capital of France?",
    "enable 2FA on my account",
    "disable 2FA on my account",
    "Write a haiku about autumn",
    "refund for order 1234",
    "¿Dónde está la estación?",
    "x",
]


@pytest.fixture
def counted(embedder: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every batch ``encode`` receives (the real encode still runs)."""
    calls: list[list[str]] = []
    real = type(embedder).encode

    def encode(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        calls.append(list(texts))
        return real(embedder, texts, batch_size)

    monkeypatch.setattr(embedder, "encode", encode)
    return calls


def test_encode_unit_float32_rows(embedder: Any) -> None:
    vecs = embedder.encode(TEXTS)
    assert embedder.dim == 384
    assert vecs.shape == (len(TEXTS), 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(vecs))


def test_encode_is_deterministic_and_distinguishes_texts(embedder: Any) -> None:
    a, b = embedder.encode(TEXTS[:3]), embedder.encode(TEXTS[:3])
    np.testing.assert_allclose(a, b, atol=1e-6)
    sims = a @ a.T
    assert sims[0, 1] < 0.9 and sims[0, 2] < 0.9


def test_paraphrase_closer_than_unrelated(embedder: Any) -> None:
    q, para, other = embedder.encode(["How do I reset my password?", "how can I change my password",
                                      "best pizza in Naples"])
    assert float(q @ para) > float(q @ other) + 0.2


async def test_microbatcher_returns_each_caller_its_own_vector(embedder: Any, counted: list[list[str]]) -> None:
    direct = embedder.encode(TEXTS)
    counted.clear()
    mb = MicroBatcher(embedder, batch_wait_ms=30, max_batch=64)
    out = await asyncio.gather(*(mb.embed(t) for t in TEXTS))
    assert len(counted) < len(TEXTS)
    assert sorted(t for batch in counted for t in batch) == sorted(TEXTS)
    for text, vec, ref in zip(TEXTS, out, direct, strict=True):
        assert vec.shape == (384,) and vec.dtype == np.float32, text
        np.testing.assert_allclose(vec, ref, atol=1e-5, err_msg=text)


async def test_microbatcher_concurrent_calls_share_one_encode(embedder: Any, counted: list[list[str]]) -> None:
    mb = MicroBatcher(embedder, batch_wait_ms=50, max_batch=64)
    out = await asyncio.gather(*(mb.embed(t) for t in TEXTS))
    assert len(counted) == 1 and counted[0] == TEXTS
    assert len({v.tobytes() for v in out}) == len(set(TEXTS))


async def test_microbatcher_respects_max_batch(embedder: Any, counted: list[list[str]]) -> None:
    texts = [f"question number {i}" for i in range(10)]
    mb = MicroBatcher(embedder, batch_wait_ms=20, max_batch=4)
    out = await asyncio.gather(*(mb.embed(t) for t in texts))
    assert all(len(batch) <= 4 for batch in counted)
    assert len(counted) >= 3
    assert sorted(t for batch in counted for t in batch) == sorted(texts)
    ref = embedder.encode(texts)
    for vec, r in zip(out, ref, strict=True):
        np.testing.assert_allclose(vec, r, atol=1e-5)


async def test_microbatcher_sequential_calls_and_zero_wait(embedder: Any, counted: list[list[str]]) -> None:
    mb = MicroBatcher(embedder, batch_wait_ms=0)
    first = await mb.embed(TEXTS[0])
    second = await mb.embed(TEXTS[1])
    assert len(counted) == 2
    ref = embedder.encode(TEXTS[:2])
    np.testing.assert_allclose(first, ref[0], atol=1e-5)
    np.testing.assert_allclose(second, ref[1], atol=1e-5)


async def test_microbatcher_encode_error_reaches_every_waiter(embedder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    boom = RuntimeError("encoder exploded")
    calls = []

    def broken(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        calls.append(list(texts))
        raise boom

    monkeypatch.setattr(embedder, "encode", broken)
    mb = MicroBatcher(embedder, batch_wait_ms=30)
    results = await asyncio.wait_for(
        asyncio.gather(*(mb.embed(t) for t in TEXTS[:5]), return_exceptions=True), 5)
    assert all(r is boom for r in results)
    assert len(calls) == 1
    # the batcher recovers once the encoder does
    monkeypatch.undo()
    vec = await asyncio.wait_for(mb.embed(TEXTS[0]), 10)
    np.testing.assert_allclose(vec, embedder.encode([TEXTS[0]])[0], atol=1e-5)


async def test_microbatcher_cancelled_caller_is_dropped(embedder: Any, counted: list[list[str]]) -> None:
    mb = MicroBatcher(embedder, batch_wait_ms=60)
    keep = [asyncio.ensure_future(mb.embed(t)) for t in TEXTS[:3]]
    gone = asyncio.ensure_future(mb.embed("caller that went away"))
    await asyncio.sleep(0.01)
    gone.cancel()
    out = await asyncio.wait_for(asyncio.gather(*keep), 10)
    assert gone.cancelled()
    assert counted == [TEXTS[:3]]
    ref = embedder.encode(TEXTS[:3])
    for vec, r in zip(out, ref, strict=True):
        np.testing.assert_allclose(vec, r, atol=1e-5)


async def test_microbatcher_encodes_off_the_event_loop(embedder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = type(embedder).encode

    def encode(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        threads.append(threading.get_ident())
        return real(embedder, texts, batch_size)

    monkeypatch.setattr(embedder, "encode", encode)
    mb = MicroBatcher(embedder, batch_wait_ms=1)
    await mb.embed("hello")
    assert threads and threads[0] != threading.get_ident()


@pytest.mark.parametrize("model", ["all-MiniLM-L6-v2", "float16 copy"])
def test_onnx_backend_agrees_with_torch_to_1e5(tmp_path, model, half_model):
    """The onnx backend must give the cosines torch gives, for stock MiniLM and for a model saved with
    float16 weights (as training/export_embedder.py writes one; a float32 graph runs it): a threshold
    tuned on one holds for the other."""
    from cache.embedder import Embedder

    texts = ["What is RAG?", "Can you explain retrieval-augmented generation?", "enable 2FA", "disable 2FA",
             "How do I reset my password?", "what's the capital city of France", "ÉCOLE Straße naïve",
             "a long question " * 120]  # > 256 tokens: truncated the way sentence-transformers does
    model = half_model if model == "float16 copy" else model
    onnx = Embedder(model, backend="onnx", onnx_dir=str(tmp_path))
    torch_ = Embedder(model, backend="torch")
    a, b = onnx.encode(texts), torch_.encode(texts)
    assert a.shape == b.shape == (len(texts), 384)
    assert float(abs(a @ a.T - b @ b.T).max()) < 1e-5
    assert list(tmp_path.glob("*.onnx"))  # exported once, kept for the next start
    assert onnx.identity == torch_.identity  # one vector space, whichever backend runs it


@pytest.fixture(scope="module")
def half_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Stock MiniLM saved with float16 weights: another model of the same dimension."""
    from sentence_transformers import SentenceTransformer

    from cache.embedder import resolve_model_path

    out = tmp_path_factory.mktemp("half") / "minilm-fp16"
    SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu").half().save(str(out))
    return str(out)


def test_each_embedder_has_its_own_vector_space(tmp_path, half_model):
    """Two models of one dimension have different identities, which name the store's indexes and keys
    (tests/cache/test_store.py: a switch never mixes vectors); one model keeps its identity."""
    from cache.embedder import Embedder

    stock = Embedder("all-MiniLM-L6-v2", onnx_dir=str(tmp_path))
    other = Embedder(half_model, onnx_dir=str(tmp_path))
    assert stock.dim == other.dim == 384
    assert stock.identity != other.identity
    assert Embedder("all-MiniLM-L6-v2", onnx_dir=str(tmp_path)).identity == stock.identity


def test_onnx_backend_serves_without_torch(tmp_path):
    """Serving never imports torch (~450 MB of the gateway's memory): a fresh process with no exported
    graph yet exports it in a child process, then embeds with onnxruntime and tokenizers alone, and
    gets the same vectors as the in-process embedder."""
    import subprocess
    import sys

    from cache.embedder import Embedder

    texts = ["What is RAG?", "what's the capital city of France"]
    expected = Embedder(backend="onnx", onnx_dir=str(tmp_path / "here")).encode(texts)
    fresh = tmp_path / "fresh"
    code = ("import sys, json; from cache.embedder import Embedder; "
            f"v = Embedder(onnx_dir={str(fresh)!r}).encode({texts!r}); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'st': 'sentence_transformers' in sys.modules, "
            "'v': v.tolist()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False and got["st"] is False
    assert list(fresh.glob("*.onnx"))  # it did export, in a child process
    assert np.allclose(np.array(got["v"], dtype=np.float32), expected, atol=1e-6)
