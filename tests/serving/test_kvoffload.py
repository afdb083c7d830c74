"""kv-plan's offload tier: size = reused working set in KV bytes, capped by the node; the chart entry fits the node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from serving.cli import main
from serving.kvoffload import offload_values, plan_offload
from serving.kvplan import GIB, KIB, KVPlanError, plan, shape_from_config

LLAMA3_8B = {
    "_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct", "model_type": "llama",
    "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 8192,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "torch_dtype": "bfloat16", "vocab_size": 128256,
}


def _kv(gpus: int = 1, kv_cache_dtype: str = "auto"):  # type: ignore[no-untyped-def]
    return plan(shape_from_config(LLAMA3_8B), gpu_gib=80, gpus=gpus, weights_bytes=16 * GIB,
                kv_cache_dtype=kv_cache_dtype)


def test_working_set_fits_the_node_by_hand() -> None:
    o = plan_offload(_kv(), node_ram_gib=256, working_set_tokens=1_000_000, reuse_share=0.6)
    assert o.kv_bytes_per_token == 128 * KIB  # 2 x 32 layers x 8 KV heads x 128 x 2 B
    assert o.working_set_bytes == 1_000_000 * 128 * KIB  # 122.07 GiB
    assert o.free_gib_per_engine == 256 - 8 - 32 == 216
    assert o.size_gib == 123 and o.covered_share == 1.0
    assert o.reused_tokens_served_share == pytest.approx(0.6)
    assert o.pod_memory_request_gib == 155 and not o.notes


def test_node_caps_the_tier_and_engines_share_the_node() -> None:
    o = plan_offload(_kv(), node_ram_gib=256, working_set_tokens=1_000_000, reuse_share=0.6,
                     engines_per_node=4)
    assert o.free_gib_per_engine == (256 - 8) / 4 - 32 == 30
    assert o.size_gib == 30
    assert o.covered_share == pytest.approx(30 * GIB / (1_000_000 * 128 * KIB))  # ~0.246
    assert any("only 30 GiB fit" in n for n in o.notes)
    assert o.engines_per_node * o.pod_memory_request_gib + o.node_reserved_gib <= 256


def test_fp8_halves_and_tensor_parallel_counts_every_rank() -> None:
    fp8 = plan_offload(_kv(kv_cache_dtype="fp8"), node_ram_gib=512, working_set_tokens=1_000_000, reuse_share=0.5)
    assert fp8.kv_bytes_per_token == 64 * KIB and fp8.size_gib == 62  # ceil(61.04)
    tp16 = plan_offload(_kv(gpus=16), node_ram_gib=2048, working_set_tokens=1_000, reuse_share=0.5)
    assert tp16.kv_bytes_per_token == 16 * (2 * 32 * 1 * 128 * 2)  # 8 KV heads replicated over 16 ranks
    assert tp16.working_set_bytes == 1008 * tp16.kv_bytes_per_token  # rounded up to 16-token blocks


@pytest.mark.parametrize(("kwargs", "note"), [
    ({"reuse_share": 0.05, "working_set_tokens": 10_000, "node_ram_gib": 256}, "save little prefill"),
    ({"reuse_share": 0.5, "working_set_tokens": 0, "node_ram_gib": 256}, "nothing to offload"),
    ({"reuse_share": 0.5, "working_set_tokens": 10_000, "node_ram_gib": 40}, "no room for a tier"),
])
def test_recommends_off_and_says_why(kwargs: dict, note: str) -> None:
    o = plan_offload(_kv(), **kwargs)
    assert o.size_gib == 0 and not o.enabled
    assert any(note in n for n in o.notes)
    assert offload_values(o) == {"kvOffload": {"enabled": False}}


def test_bad_inputs_fail_clearly() -> None:
    for kwargs in ({"reuse_share": 1.5}, {"working_set_tokens": -1}, {"node_ram_gib": 0},
                   {"engines_per_node": 0}):
        with pytest.raises(KVPlanError):
            plan_offload(_kv(), **({"node_ram_gib": 256, "working_set_tokens": 1, "reuse_share": 0.5} | kwargs))


def test_cli_prints_the_arithmetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    rc = main(["kv-plan", str(tmp_path / "config.json"), "--gpu-gib", "80", "--weights-gib", "16",
               "--node-ram-gib", "256", "--working-set-tokens", "1000000", "--reuse-share", "0.6"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "256 GiB - 8 GiB reserved" in out and "= 216.0 GiB free per engine" in out
    assert "= 122.07 GiB" in out and "recommended: 123 GiB" in out
    assert "--kv-offloading-backend native --kv-offloading-size 123" in out
    assert "32 + 123 = 155 GiB" in out
    rc = main(["kv-plan", str(tmp_path / "config.json"), "--gpu-gib", "80", "--node-ram-gib", "256",
               "--reuse-share", "2"])
    assert rc == 2 and "reuse_share" in capsys.readouterr().err


def test_cli_values_entry_renders_a_pod_that_fits_the_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    rc = main(["kv-plan", str(tmp_path / "config.json"), "--gpu-gib", "80", "--weights-gib", "16", "--values",
               "--node-ram-gib", "128", "--pod-memory-gib", "30.5", "--working-set-tokens", "2000000",
               "--reuse-share", "0.5", "--model-id", "meta-llama/Meta-Llama-3-8B-Instruct"])
    assert rc == 0
    values = yaml.safe_load(capsys.readouterr().out)
    (entry,) = values["models"]
    assert entry["kvOffload"] == {"enabled": True, "backend": "native", "sizeGiB": 89}  # floor(128 - 8 - 30.5)

    import helm_python as helm

    chart_dir = Path(__file__).resolve().parents[2] / "helm" / "cachestack"
    with helm.Chart.load(str(chart_dir)) as chart:
        chart.validate_schema(chart.merge_values(values))
        rendered = chart.render(values, name="cs", namespace="llm")
    docs = [d for d in yaml.safe_load_all(rendered["cachestack/templates/vllm.yaml"]) if d and d["kind"] == "Deployment"]
    c = docs[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][c["args"].index("--kv-offloading-size") + 1] == "89"
    request_mi = int(c["resources"]["requests"]["memory"].removesuffix("Mi"))
    assert request_mi == 31232 + 89 * 1024  # 30.5 GiB + 89 GiB
    assert request_mi <= (128 - 8) * 1024, "the pod must fit the node's RAM minus the reserve"
