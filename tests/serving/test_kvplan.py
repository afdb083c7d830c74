"""kv-plan: GQA-aware KV sizing against known numbers, the fit arithmetic, the CLI and the chart entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from serving.cli import main
from serving.kvplan import (
    BLOCK_SIZE, GIB, KIB, KVPlanError, dns_label, estimate_params, kv_bytes_per_token, load_model_config,
    naive_kv_bytes_per_token, plan, shape_from_config, values_entry, weights_bytes_in_folder,
)

LLAMA3_70B = {
    "_name_or_path": "meta-llama/Meta-Llama-3-70B-Instruct", "model_type": "llama",
    "hidden_size": 8192, "intermediate_size": 28672, "max_position_embeddings": 8192,
    "num_attention_heads": 64, "num_hidden_layers": 80, "num_key_value_heads": 8,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 128256,
}
LLAMA3_8B = {**LLAMA3_70B, "_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct", "hidden_size": 4096,
             "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32}


def test_llama3_70b_kv_per_token_is_320_kib_and_naive_is_8x() -> None:
    shape = shape_from_config(LLAMA3_70B)
    assert shape.head_dim == 128
    assert kv_bytes_per_token(shape, 2) == 320 * KIB
    assert naive_kv_bytes_per_token(shape, 2) == 8 * 320 * KIB
    p = plan(shape, gpu_gib=80, gpus=4)
    assert p.kv_bytes_per_token == 320 * KIB and p.naive_overstatement == 8.0
    assert p.kv_bytes_per_sequence == 8192 * 320 * KIB  # 2.5 GiB for a full 8k sequence


def test_kv_dtype_and_tensor_parallel_split() -> None:
    shape = shape_from_config(LLAMA3_70B)
    assert plan(shape, gpu_gib=80, gpus=4, kv_cache_dtype="fp8").kv_bytes_per_token == 160 * KIB
    assert kv_bytes_per_token(shape, 2, tp=4) == 80 * KIB       # 2 KV heads per GPU
    assert kv_bytes_per_token(shape, 2, tp=16) == 40 * KIB      # 8 heads over 16 GPUs: one replica each
    fp32 = shape_from_config({**LLAMA3_8B, "torch_dtype": "float32"})
    assert kv_bytes_per_token(fp32, 4) == 2 * 32 * 8 * 128 * 4


def test_head_dim_explicit_wins_and_mha_default() -> None:
    gemma = shape_from_config({"num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
                               "hidden_size": 2048, "head_dim": 256})
    assert gemma.head_dim == 256 and kv_bytes_per_token(gemma, 2) == 2 * 2 * 4 * 256 * 2
    mha = shape_from_config({"num_hidden_layers": 12, "num_attention_heads": 12, "hidden_size": 768})
    assert mha.num_kv_heads == 12 and kv_bytes_per_token(mha, 2) == naive_kv_bytes_per_token(mha, 2)
    mqa = shape_from_config({"n_layer": 4, "n_head": 8, "n_embd": 512, "multi_query": True})
    assert mqa.num_kv_heads == 1


def test_multimodal_text_config_and_mla() -> None:
    wrapped = shape_from_config({"torch_dtype": "bfloat16", "text_config": LLAMA3_8B | {"torch_dtype": None}})
    assert wrapped.num_layers == 32 and kv_bytes_per_token(wrapped, 2) == 128 * KIB
    ds = shape_from_config({"num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
                            "hidden_size": 7168, "kv_lora_rank": 512, "qk_rope_head_dim": 64})
    assert kv_bytes_per_token(ds, 2) == 61 * 576 * 2


def test_bad_configs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(KVPlanError, match="num_hidden_layers"):
        shape_from_config({"num_attention_heads": 8, "hidden_size": 512})
    with pytest.raises(KVPlanError, match="multiple"):
        shape_from_config({"num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 3,
                           "hidden_size": 512})
    with pytest.raises(KVPlanError, match="no config.json"):
        load_model_config(tmp_path)
    with pytest.raises(KVPlanError, match="gpu_memory_utilization"):
        plan(shape_from_config(LLAMA3_8B), gpu_gib=80, gpu_memory_utilization=1.5)
    with pytest.raises(KVPlanError, match="unknown dtype"):
        plan(shape_from_config({**LLAMA3_8B, "torch_dtype": "int3"}), gpu_gib=80)


def test_param_estimate_matches_known_sizes() -> None:
    assert 70.0e9 < estimate_params(shape_from_config(LLAMA3_70B)) < 71.0e9   # 70.6 B
    assert 7.9e9 < estimate_params(shape_from_config(LLAMA3_8B)) < 8.1e9      # 8.03 B


def test_fit_arithmetic_by_hand() -> None:
    shape = shape_from_config(LLAMA3_8B)  # 128 KiB per token in bf16
    p = plan(shape, gpu_gib=80, gpu_memory_utilization=0.9, seq_len=8192, weights_bytes=16 * GIB,
             overhead_gib=2)
    budget = int(80 * 0.9 * GIB) - 16 * GIB - 2 * GIB  # 54 GiB
    assert p.kv_budget_bytes_per_gpu == budget
    assert p.kv_tokens == budget // (128 * KIB) // BLOCK_SIZE * BLOCK_SIZE == 442_368
    assert p.max_sequences == 442_368 // 8192 == 54
    assert p.suggested_max_num_seqs == 54 and p.suggested_max_model_len == 8192
    more = plan(shape, gpu_gib=80, seq_len=8192, weights_bytes=16 * GIB, overhead_gib=2, kv_cache_dtype="fp8")
    assert more.max_sequences == 108
    short = plan(shape, gpu_gib=80, seq_len=100, weights_bytes=16 * GIB, overhead_gib=2)
    assert short.kv_bytes_per_sequence == 112 * 128 * KIB  # rounded up to whole 16-token blocks
    assert short.suggested_max_num_seqs == 256  # capped at vLLM's default


def test_too_big_says_so() -> None:
    p = plan(shape_from_config(LLAMA3_70B), gpu_gib=80)
    assert p.max_sequences == 0 and p.kv_tokens == 0 and p.suggested_max_model_len == 0
    assert any("nothing is left for the KV cache" in n for n in p.notes)


def test_weights_from_folder_and_quantized_note(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA3_8B, "quantization_config": {"bits": 4}}))
    assert weights_bytes_in_folder(tmp_path) is None
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 3000)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 1000)
    assert weights_bytes_in_folder(tmp_path) == 4000
    cfg, folder = load_model_config(tmp_path / "config.json")
    assert folder == tmp_path and cfg["num_hidden_layers"] == 32
    est = plan(shape_from_config(cfg), gpu_gib=24)
    assert any("quantized" in n for n in est.notes)


def test_cli_prints_both_formulas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_70B))
    rc = main(["kv-plan", str(tmp_path), "--gpu-gib", "80", "--gpus", "4"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "320 KiB" in out and "2.50 MiB" in out and "overstates 8.0x" in out
    assert "--max-model-len 8192" in out and "--tensor-parallel-size 4" in out
    assert "reserve:" in out and "assumed" in out
    rc = main(["kv-plan", str(tmp_path / "config.json"), "--gpu-gib", "80"])
    assert rc == 1 and "does not fit" in capsys.readouterr().out


def test_cli_values_snippet_renders_in_the_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1024)
    rc = main(["kv-plan", str(tmp_path), "--gpu-gib", "24", "--values", "--kv-cache-dtype", "fp8",
               "--model-id", "meta-llama/Meta-Llama-3-8B-Instruct"])
    assert rc == 0
    values = yaml.safe_load(capsys.readouterr().out)
    (entry,) = values["models"]
    assert entry["name"] == "meta-llama-3-8b-instruct" and entry["kvCacheDtype"] == "fp8"
    assert entry["enablePrefixCaching"] is True and entry["maxModelLen"] == 8192

    import helm_python as helm  # the entry must be valid for helm/cachestack as it is

    chart_dir = Path(__file__).resolve().parents[2] / "helm" / "cachestack"
    with helm.Chart.load(str(chart_dir)) as chart:
        chart.validate_schema(chart.merge_values(values))
        rendered = chart.render(values, name="cs", namespace="llm")
    text = rendered["cachestack/templates/vllm.yaml"]
    assert "cs-cachestack-vllm-meta-llama-3-8b-instruct" in text
    assert f'- "{entry["maxNumSeqs"]}"' in text and "- fp8" in text


def test_values_entry_and_dns_label() -> None:
    p = plan(shape_from_config(LLAMA3_8B), gpu_gib=80, gpus=2)
    entry = values_entry(p, "Org/Some_Model.v2")
    assert entry["name"] == "some-model-v2" and entry["gpus"] == entry["tensorParallelSize"] == 2
    assert dns_label("///") == "model"
