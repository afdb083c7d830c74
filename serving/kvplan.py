"""KV-cache capacity planning for a vLLM engine, from a model's config.json and a GPU size.

Why: ``--max-model-len`` and ``--max-num-seqs`` are guessed too often, and the guess is usually made
with the all-heads formula (2 x layers x attention heads x head_dim x bytes), which overstates the KV
cache of GQA models by num_attention_heads / num_key_value_heads (8x for Llama-3-70B). vLLM stores K
and V only for the KV heads, so the right per-token figure is 2 x layers x KV heads x head_dim x bytes.

Pure functions and dataclasses only: the CLI in serving/commands/kv_plan.py prints what they return.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 1024**3
KIB = 1024

#: bytes per element for model dtypes and vLLM ``--kv-cache-dtype`` values.
DTYPE_BYTES: dict[str, int] = {
    "float32": 4, "float": 4, "fp32": 4,
    "float16": 2, "half": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1, "int8": 1,
}
KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc")

#: vLLM allocates the KV cache in pages of this many tokens; a sequence occupies whole pages.
BLOCK_SIZE = 16
#: vLLM's default --max-num-seqs; suggesting more rarely helps (the scheduler batch is the limit).
DEFAULT_MAX_NUM_SEQS = 256
#: Per-GPU reserve taken from vLLM's share besides weights and KV: the activation peak of a full
#: prefill batch (vLLM profiles it at start), CUDA graphs, sampler and NCCL buffers.
DEFAULT_OVERHEAD_GIB = 1.5


class KVPlanError(ValueError):
    """A config that cannot be planned for; the message says which field is missing or wrong."""


@dataclass(frozen=True)
class ModelShape:
    """The few config.json fields that size the KV cache and the weights."""

    name: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    dtype: str = "bfloat16"
    vocab_size: int = 0
    intermediate_size: int = 0
    num_experts: int = 1
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = None
    quantized: bool = False
    #: Multi-head latent attention (DeepSeek-V2/V3): one latent of this width per layer and token.
    mla_latent_dim: int | None = None


@dataclass(frozen=True)
class KVPlan:
    """What fits on the GPUs, and what to pass to vLLM."""

    shape: ModelShape
    gpu_gib: float
    gpus: int
    gpu_memory_utilization: float
    kv_cache_dtype: str
    kv_dtype_bytes: int
    seq_len: int
    kv_bytes_per_token: int
    naive_kv_bytes_per_token: int
    kv_bytes_per_token_per_gpu: int
    kv_bytes_per_sequence: int
    weights_bytes: int
    weights_source: str
    overhead_bytes_per_gpu: int
    kv_budget_bytes_per_gpu: int
    kv_tokens: int
    max_sequences: int
    suggested_max_model_len: int
    suggested_max_num_seqs: int
    notes: list[str] = field(default_factory=list)

    @property
    def naive_overstatement(self) -> float:
        """How many times the all-heads formula overstates the real per-token KV size."""
        return self.naive_kv_bytes_per_token / self.kv_bytes_per_token


def load_model_config(path: str | Path) -> tuple[dict[str, Any], Path | None]:
    """Read config.json from a file or an HF model folder; also return the folder (for weight sizes)."""
    p = Path(path)
    if p.is_dir():
        cfg_path, folder = p / "config.json", p
    else:
        cfg_path, folder = p, p.parent
    try:
        data = json.loads(cfg_path.read_text())
    except FileNotFoundError as exc:
        raise KVPlanError(f"no config.json at {cfg_path}") from exc
    except json.JSONDecodeError as exc:
        raise KVPlanError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise KVPlanError(f"{cfg_path} must hold a JSON object")
    return data, folder


def _int(cfg: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def shape_from_config(cfg: dict[str, Any], name: str = "") -> ModelShape:
    """Map a transformers config (Llama, Mistral, Qwen, Gemma, Falcon, GPT-NeoX, DeepSeek...) to a shape."""
    text = cfg.get("text_config")
    top = cfg
    if isinstance(text, dict):  # multimodal wrappers keep the language model's shape here
        cfg = {**text, **{k: v for k, v in top.items() if k in ("torch_dtype", "dtype") and k not in text}}
    layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _int(cfg, "num_attention_heads", "n_head", "num_heads")
    hidden = _int(cfg, "hidden_size", "n_embd", "d_model")
    missing = [n for n, v in (("num_hidden_layers", layers), ("num_attention_heads", heads),
                              ("hidden_size", hidden)) if v is None]
    if missing:
        raise KVPlanError(f"config.json lacks {', '.join(missing)}: cannot size the KV cache")
    assert layers and heads and hidden
    kv_heads = _int(cfg, "num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num")
    if kv_heads is None:
        kv_heads = 1 if cfg.get("multi_query") else heads
    if heads % kv_heads:
        raise KVPlanError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    head_dim = _int(cfg, "head_dim") or hidden // heads
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    mla = None
    if _int(cfg, "kv_lora_rank"):
        mla = (_int(cfg, "kv_lora_rank") or 0) + (_int(cfg, "qk_rope_head_dim") or 0)
    experts = _int(cfg, "num_local_experts", "n_routed_experts", "num_experts") or 1
    return ModelShape(
        name=name or str(top.get("_name_or_path") or top.get("model_type") or "model"),
        num_layers=layers, num_attention_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        hidden_size=hidden, dtype=dtype, vocab_size=_int(cfg, "vocab_size") or 0,
        intermediate_size=_int(cfg, "intermediate_size", "ffn_dim", "moe_intermediate_size") or 4 * hidden,
        num_experts=experts, tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=_int(cfg, "max_position_embeddings", "n_positions", "seq_length"),
        quantized="quantization_config" in cfg or "quantization_config" in top,
        mla_latent_dim=mla,
    )


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name; unknown names are an error rather than a silent guess."""
    key = dtype.lower().removeprefix("torch.")
    if key not in DTYPE_BYTES:
        raise KVPlanError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(DTYPE_BYTES))}")
    return DTYPE_BYTES[key]


def kv_dtype_bytes(shape: ModelShape, kv_cache_dtype: str = "auto") -> int:
    """Bytes per KV element: ``auto`` follows the model dtype, as vLLM does."""
    return dtype_bytes(shape.dtype) if kv_cache_dtype == "auto" else dtype_bytes(kv_cache_dtype)


def kv_bytes_per_token(shape: ModelShape, elem_bytes: int, tp: int = 1) -> int:
    """K and V for every layer and every KV head (GQA-aware), on one GPU out of ``tp``.

    With tensor parallelism the KV heads are split across GPUs; when tp exceeds the KV head count,
    each GPU still holds one (replicated) head. MLA models keep one latent vector per layer instead.
    """
    if shape.mla_latent_dim:
        return shape.num_layers * shape.mla_latent_dim * elem_bytes
    heads_per_gpu = max(1, math.ceil(shape.num_kv_heads / tp))
    return 2 * shape.num_layers * heads_per_gpu * shape.head_dim * elem_bytes


def naive_kv_bytes_per_token(shape: ModelShape, elem_bytes: int) -> int:
    """The all-heads formula 2 x layers x attention heads x head_dim x bytes (overstates GQA models)."""
    return 2 * shape.num_layers * shape.num_attention_heads * shape.head_dim * elem_bytes


def estimate_params(shape: ModelShape) -> int:
    """Parameter count of a decoder-only transformer with gated MLP (Llama-style), norms ignored."""
    h, hd = shape.hidden_size, shape.head_dim
    attn = h * shape.num_attention_heads * hd * 2 + h * shape.num_kv_heads * hd * 2
    mlp = 3 * h * shape.intermediate_size * shape.num_experts
    embed = shape.vocab_size * h * (1 if shape.tie_word_embeddings else 2)
    return shape.num_layers * (attn + mlp) + embed


def weights_bytes_in_folder(folder: Path | None) -> int | None:
    """Total size of the safetensors (else .bin) weight files in an HF folder, if there are any."""
    if folder is None or not folder.is_dir():
        return None
    for pattern in ("*.safetensors", "*.bin"):
        files = [f for f in folder.glob(pattern) if f.is_file() and not re.search(r"training_args", f.name)]
        if files:
            return sum(f.stat().st_size for f in files)
    return None


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def plan(
    shape: ModelShape,
    *,
    gpu_gib: float,
    gpus: int = 1,
    gpu_memory_utilization: float = 0.9,
    seq_len: int | None = None,
    kv_cache_dtype: str = "auto",
    weights_bytes: int | None = None,
    weights_source: str = "",
    overhead_gib: float = DEFAULT_OVERHEAD_GIB,
) -> KVPlan:
    """How many sequences of ``seq_len`` tokens fit in the KV cache of ``gpus`` GPUs of ``gpu_gib`` each."""
    if gpu_gib <= 0 or gpus < 1:
        raise KVPlanError("gpu memory and gpu count must be positive")
    if not 0 < gpu_memory_utilization <= 1:
        raise KVPlanError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise KVPlanError(f"kv_cache_dtype {kv_cache_dtype!r} is not one of {', '.join(KV_CACHE_DTYPES)}")
    notes: list[str] = []
    if seq_len is None:
        seq_len = min(shape.max_position_embeddings or 8192, 8192)
    if seq_len < 1:
        raise KVPlanError("seq_len must be positive")
    if shape.max_position_embeddings and seq_len > shape.max_position_embeddings:
        notes.append(f"seq_len {seq_len} exceeds the model's max_position_embeddings "
                     f"{shape.max_position_embeddings}; vLLM will refuse it without rope scaling")
    if weights_bytes is None:
        weights_bytes = estimate_params(shape) * dtype_bytes(shape.dtype)
        weights_source = f"estimated from the config ({estimate_params(shape) / 1e9:.2f} B params x {shape.dtype})"
        if shape.quantized:
            notes.append("the model is quantized: the parameter-count estimate overstates its weights; "
                         "pass the model folder or --weights-gib")
    elem = kv_dtype_bytes(shape, kv_cache_dtype)
    per_token_gpu = kv_bytes_per_token(shape, elem, gpus)
    per_token = kv_bytes_per_token(shape, elem, 1)
    if gpus > shape.num_kv_heads and not shape.mla_latent_dim:
        notes.append(f"tensor parallel {gpus} > {shape.num_kv_heads} KV heads: each GPU keeps a replica of a head")
    overhead = int(overhead_gib * GIB)
    usable = int(gpu_gib * GIB * gpu_memory_utilization)
    budget = usable - weights_bytes // gpus - overhead
    kv_tokens = max(0, budget) // per_token_gpu // BLOCK_SIZE * BLOCK_SIZE
    per_seq_tokens = round_up(seq_len, BLOCK_SIZE)
    max_seqs = kv_tokens // per_seq_tokens
    if budget <= 0:
        notes.append(f"weights ({weights_bytes // gpus / GIB:.1f} GiB per GPU) and the reserve exceed the "
                     f"{usable / GIB:.1f} GiB vLLM may use per GPU: nothing is left for the KV cache")
    if max_seqs == 0:
        notes.append("not even one sequence of this length fits: use more GPUs (tensor parallel), "
                     "fp8 KV (--kv-cache-dtype fp8), a shorter --max-model-len or a larger GPU")
        suggested_len = max(0, min(kv_tokens, seq_len)) // 256 * 256
    else:
        suggested_len = seq_len
    if shape.max_position_embeddings:
        suggested_len = min(suggested_len, shape.max_position_embeddings)
    return KVPlan(
        shape=shape, gpu_gib=gpu_gib, gpus=gpus, gpu_memory_utilization=gpu_memory_utilization,
        kv_cache_dtype=kv_cache_dtype, kv_dtype_bytes=elem, seq_len=seq_len,
        kv_bytes_per_token=per_token, naive_kv_bytes_per_token=naive_kv_bytes_per_token(shape, elem),
        kv_bytes_per_token_per_gpu=per_token_gpu, kv_bytes_per_sequence=per_token * per_seq_tokens,
        weights_bytes=weights_bytes, weights_source=weights_source, overhead_bytes_per_gpu=overhead,
        kv_budget_bytes_per_gpu=max(0, budget), kv_tokens=kv_tokens, max_sequences=max_seqs,
        suggested_max_model_len=suggested_len,
        suggested_max_num_seqs=max(1, min(max_seqs, DEFAULT_MAX_NUM_SEQS)),
        notes=notes,
    )


def dns_label(name: str) -> str:
    """A chart-safe model entry name (DNS label, <= 40 chars) from a model id or path."""
    tail = name.rstrip("/").split("/")[-1].lower()
    label = re.sub(r"[^a-z0-9]+", "-", tail).strip("-")[:40].strip("-")
    return label or "model"


def values_entry(p: KVPlan, model: str, name: str | None = None) -> dict[str, Any]:
    """One entry of the Helm chart's ``models:`` list (helm/cachestack/values.yaml layout)."""
    return {
        "name": name or dns_label(model),
        "model": model,
        "replicas": 1,
        "gpus": p.gpus,
        "tensorParallelSize": p.gpus,
        "maxModelLen": p.suggested_max_model_len,
        "maxNumSeqs": p.suggested_max_num_seqs,
        "gpuMemoryUtilization": p.gpu_memory_utilization,
        "kvCacheDtype": p.kv_cache_dtype,
        "enablePrefixCaching": True,
        "enablePromptTokensDetails": True,
    }


def human_bytes(n: float) -> str:
    """1536 -> '1.50 KiB'; exact KiB/MiB figures print without decimals."""
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", KIB)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.2f} {unit}"
    return f"{int(n)} B"
