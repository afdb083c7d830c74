"""The pair verifier: a small cross-encoder that reads the cached query and the new query together.

The shipped model (``cache/models/verifier``) is all-MiniLM-L6-v2 fine-tuned as a one-logit
cross-encoder on the tuning part of QQP-style pairs plus synthetic near-misses (training/), exported to
ONNX and quantised to int8. It runs on onnxruntime with the ``tokenizers`` tokenizer: no torch at run
time, about 1-3 ms per pair on one CPU thread.

Its output is turned into a probability by a logistic layer over (cross-encoder logit, cosine) fitted
on the calibration bucket (never on the check part); the cross-encoder's own sigmoid(logit) is
returned too, for the rule's confident gate. ``verifier.json`` holds that layer, the
length the model was trained at and the default floor and verifier threshold that meet the shipped
target. The cosine is the embedder's, so the layer is fitted per embedder: ``calibrations`` maps an
embedder name (the config's ``embedder.model``) to its own layer and defaults; the top-level values
serve any other.

A pair is always read whole: two questions that share a long start and differ at their end must not
be judged on the start alone. A pair longer than ``max_pair_tokens`` (the model's position limit)
is not scored at all (NaN): the rule answers it as a miss, never from a truncated read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_VERIFIER_DIR = Path(__file__).parent / "models" / "verifier"


@dataclass(frozen=True, slots=True)
class VerifierMeta:
    model_file: str = "model_int8.onnx"
    max_length: int = 64  # tokens a training pair was cut to; serving reads pairs whole (max_pair_tokens)
    # The longest pair scored, [CLS] and [SEP]s included: BERT-style position embeddings stop at 512.
    # Reading a pair whole is never slower than needed: one pair per run, so no padding.
    # (loadtests/bench_verifier_length.py: the logit AUC on QQP pairs past 64 tokens is 0.944 read at
    # 64 and 0.950 read whole)
    max_pair_tokens: int = 512
    # p = sigmoid(bias + w_logit * logit + w_cos * cosine)
    bias: float = 0.0
    w_logit: float = 1.0
    w_cos: float = 0.0
    default_threshold: float = 0.5
    default_floor: float = 0.75
    # The cross-encoder's own sigmoid(logit) at which a pair is served on the verifier's word alone,
    # from a cosine of confident_floor up (cache/decision.py); None: no such gate.
    confident_threshold: float | None = None
    confident_floor: float | None = None


class VerifierError(RuntimeError):
    """The verifier cannot be loaded (missing files or runtime)."""


class CrossEncoderVerifier:
    """Scores (cached query, new query, cosine) triples; returns probabilities that they ask the same."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, threads: int = 1,
                 embedder: str | None = None) -> None:
        root = Path(path) if path else DEFAULT_VERIFIER_DIR
        self.meta = self.read_meta(root, embedder)
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise VerifierError(f"the verifier needs onnxruntime and tokenizers: {exc}") from exc
        model_file = root / self.meta.model_file
        if not model_file.is_file():
            raise VerifierError(f"verifier model {model_file} is missing")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see cache/onnx_encoder.py
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.path = root

    @staticmethod
    def read_meta(path: str | os.PathLike[str] | None, embedder: str | None = None) -> VerifierMeta:
        """The verifier's settings, with the calibration fitted for ``embedder`` when there is one."""
        root = Path(path) if path else DEFAULT_VERIFIER_DIR
        meta_file = root / "verifier.json"
        if not meta_file.is_file():
            raise VerifierError(f"verifier directory {root} has no verifier.json")
        raw = json.loads(meta_file.read_text())
        fitted = raw.get("calibrations", {}).get(embedder or "", {})
        merged = {**raw, **fitted}
        return VerifierMeta(**{k: v for k, v in merged.items() if k in VerifierMeta.__slots__})

    def logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Raw cross-encoder logits for (cached, new) pairs, one onnxruntime run per pair.

        Why not one run per batch: int8 dynamic quantization scales activations over the whole run,
        padding included, so a pair's logit would depend on its batch mates (measured: 0.087 for the
        same pair alone and in a batch of 4) and a borderline pair could hit or miss by the company it
        keeps. One pair per run makes serving, eval and calibration agree exactly; it costs ~1.8 ms
        per pair against ~1.2 ms in batches of 32 here.

        A pair longer than ``max_pair_tokens`` gets NaN: it cannot be read whole.
        """
        out = np.zeros(len(pairs), dtype=np.float32)
        for i, enc in enumerate(self.tokenizer.encode_batch([(a, b) for a, b in pairs])):
            if len(enc.ids) > self.meta.max_pair_tokens:
                out[i] = np.nan
                continue
            feed = {
                "input_ids": np.array([enc.ids], dtype=np.int64),
                "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
            }
            (res,) = self.session.run(None, {k: v for k, v in feed.items() if k in self.input_names})
            out[i] = float(np.asarray(res).reshape(-1)[0])
        return out

    def probabilities(self, pairs: Sequence[tuple[str, str]], cosines: Sequence[float]) -> np.ndarray:
        """Calibrated probability that each pair asks the same thing; NaN for a pair too long to read."""
        return self.scores(pairs, cosines)[0]

    def scores(self, pairs: Sequence[tuple[str, str]], cosines: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated probability over logit and cosine, the cross-encoder's own sigmoid(logit)) per
        pair; NaN for a pair too long to read."""
        if not pairs:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
        z = self.logits(pairs)
        m = self.meta
        x = m.bias + m.w_logit * z + m.w_cos * np.asarray(cosines, dtype=np.float32)
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32), (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
