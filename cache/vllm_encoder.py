"""Query embeddings from a vLLM embedding deployment (``--runner pooling``, ``/v1/embeddings``).

At scale the embedder belongs on a GPU engine with its own batching, not on the gateway's cores. The
gateway keeps the model folder (the same one it would run in-process): its tokenizer counts tokens,
its sentence-transformers config gives the length and the dimension, and its weights digest names
the vector space when the deployment serves that folder (``same_weights``). Locally vLLM CPU serving
the MiniLM folder gives cosines equal to the ONNX path's to 1e-3 (tests/e2e/test_vllm_embedder.py).

``encode`` is a blocking call, run by the micro-batcher's worker thread like the ONNX encoder, so
concurrent lookups share one request. A deployment that errors is skipped for ``retry_after_s``
(the breaker of cache/breaker.py): a lookup then goes on without the semantic stage, at once,
instead of each one waiting for the same failure. Every failure is :class:`EncoderUnavailable`.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from cache.batching import Unavailable
from cache.breaker import CircuitBreaker, State
from cache.config import RemoteEncoderConfig


class EncoderUnavailable(Unavailable):
    """The embedding deployment failed, was too slow, or is being skipped after failing."""


class VllmEncoder:
    """``encode(texts)`` through the deployment; ``token_counts`` with the model folder's tokenizer."""

    def __init__(self, model_dir: str, served_model: str, cfg: RemoteEncoderConfig) -> None:
        import httpx
        from tokenizers import Tokenizer

        from cache.onnx_encoder import read_model_settings

        root = Path(model_dir)
        _, self.max_length = read_model_settings(root)  # vLLM pools as the folder's config says
        self.dim = int(json.loads((root / "config.json").read_text())["hidden_size"])
        self.counter = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.counter.no_truncation()
        self.counter.no_padding()
        self.served_model = served_model
        self.url = cfg.url.rstrip("/") + "/v1/embeddings"
        headers = {"content-type": "application/json"}
        if cfg.api_key_file:
            headers["authorization"] = f"Bearer {Path(cfg.api_key_file).read_text().strip()}"
        timeout = cfg.timeout_ms / 1000.0
        # One request at a time (the batcher's worker), so a small pool; the timeout bounds every phase.
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout),
                                    limits=httpx.Limits(max_connections=4, max_keepalive_connections=2))
        self._errors = (httpx.HTTPError, ValueError, KeyError, TypeError)
        self._timeouts = (httpx.TimeoutException,)
        self.breaker = CircuitBreaker(retry_after_s=cfg.retry_after_s, trip_after_timeouts=cfg.trip_after_timeouts)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text is, special tokens included, before truncation."""
        return [len(e.ids) for e in self.counter.encode_batch(texts)]

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 rows, one per text, truncated to the model's length like the ONNX path."""
        if self.breaker.state is State.OPEN:
            raise EncoderUnavailable(f"embedding deployment skipped for {self.breaker.remaining_s:.1f}s "
                                     f"after: {self.breaker.last_error}")
        body = {"model": self.served_model, "input": texts, "encoding_format": "base64", "endianness": "little",
                "truncate_prompt_tokens": self.max_length}
        try:
            resp = self._client.post(self.url, content=json.dumps(body))
            if resp.status_code != 200:
                raise ValueError(f"HTTP {resp.status_code}")
            vecs = self._rows(resp.json(), len(texts))
        except self._timeouts:
            if self.breaker.timeout():
                self.breaker.trip("timeouts")
            raise EncoderUnavailable("embedding deployment timed out") from None
        except self._errors as exc:
            self.breaker.trip(f"{type(exc).__name__}: {exc}"[:200])
            raise EncoderUnavailable(f"embedding deployment failed: {type(exc).__name__}: {exc}"[:300]) from None
        self.breaker.check_passed()
        return vecs

    def _rows(self, doc: dict, n: int) -> np.ndarray:
        """The response's rows in input order; ValueError for one that is not ``n`` rows of ``dim``."""
        data = sorted(doc["data"], key=lambda d: d["index"])
        if len(data) != n:
            raise ValueError(f"{len(data)} embeddings for {n} inputs")
        vecs = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
        if vecs.shape[1] != self.dim:
            raise ValueError(f"embeddings of {vecs.shape[1]} dimensions, the model folder says {self.dim}")
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs.astype(np.float32)

    def close(self) -> None:
        self._client.close()
