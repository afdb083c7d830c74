"""KV offload tier: off by default; when on, vLLM gets the offload flags and the pod's memory grows by its size."""

from __future__ import annotations

import json

import helm_python as helm
import kubernetes_validate
import pytest
from chart_helpers import container, render, render_profile, vllm_deployments
from test_chart_render import K8S_VERSION

pytestmark = pytest.mark.helm


def _model(**kv_offload: object) -> dict:
    return {"name": "m", "model": "org/m", "tensorParallelSize": 2, "gpus": 2,
            "resources": {"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"memory": "64Gi"}},
            "kvOffload": kv_offload}


def _dep(**kv_offload: object) -> dict:
    (dep,) = vllm_deployments(render({"models": [_model(**kv_offload)]}))
    return dep


def _validate(dep: dict) -> None:
    dep = dict(dep)
    dep.pop("__template__")
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


def test_off_by_default_leaves_args_and_memory_alone() -> None:
    (dep,) = vllm_deployments(render_profile("default"))
    c = container(dep)
    assert not any(a.startswith("--kv-offloading") or a == "--kv-transfer-config" for a in c["args"])
    assert c["resources"]["requests"]["memory"] == "32Gi" and c["resources"]["limits"]["memory"] == "64Gi"
    assert not any(e["name"].startswith("LMCACHE_") for e in c["env"])


def test_native_backend_flags_and_memory_grow_by_the_offload_size() -> None:
    dep = _dep(enabled=True, backend="native", sizeGiB=40)
    c = container(dep)
    args = c["args"]
    assert args[args.index("--kv-offloading-backend") + 1] == "native"
    assert args[args.index("--kv-offloading-size") + 1] == "40"
    assert "--kv-transfer-config" not in args
    assert c["resources"]["requests"]["memory"] == "72Gi"  # 32 + 40
    assert c["resources"]["limits"]["memory"] == "104Gi"  # 64 + 40
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    _validate(dep)


def test_lmcache_backend_uses_the_connector_and_sizes_each_rank() -> None:
    dep = _dep(enabled=True, backend="lmcache", sizeGiB=30, lmcache={"remoteUrl": "redis://kv:6379"})
    c = container(dep)
    args = c["args"]
    cfg = json.loads(args[args.index("--kv-transfer-config") + 1])
    assert cfg == {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
    assert "--kv-offloading-backend" not in args
    env = {e["name"]: e["value"] for e in c["env"] if e["name"].startswith("LMCACHE_")}
    assert env["LMCACHE_LOCAL_CPU"] == "True"
    assert float(env["LMCACHE_MAX_LOCAL_CPU_SIZE"]) == 15.0  # 30 GiB over 2 tensor-parallel ranks
    assert env["LMCACHE_CHUNK_SIZE"] == "256"
    assert env["LMCACHE_REMOTE_URL"] == "redis://kv:6379"
    assert c["resources"]["requests"]["memory"] == "62Gi"
    _validate(dep)


def test_mi_requests_add_exactly_and_missing_limit_stays_unlimited() -> None:
    m = _model(enabled=True, sizeGiB=8)
    m["resources"] = {"requests": {"memory": "1536Mi"}}
    (dep,) = vllm_deployments(render({"models": [m]}))
    res = container(dep)["resources"]
    assert res["requests"]["memory"] == "9728Mi"  # 1536 Mi + 8 x 1024 Mi
    assert "memory" not in res["limits"]  # only the GPU limit; no memory limit was set
    m["resources"] = {}
    (dep,) = vllm_deployments(render({"models": [m]}))
    assert container(dep)["resources"]["requests"]["memory"] == "8Gi"
    _validate(dep)


@pytest.mark.parametrize("bad", [
    {"enabled": True, "sizeGiB": 0},
    {"enabled": True, "sizeGiB": "16Gi"},
    {"enabled": True, "backend": "disk", "sizeGiB": 4},
    {"enabled": True},
    {"enabled": True, "sizeGiB": 4, "lmcache": {"remoteUrl": "http://kv"}},
    {"enabled": True, "sizeGiB": 4, "sizegib": 4},
])
def test_schema_rejects_bad_offload_values(bad: dict) -> None:
    with pytest.raises(helm.HelmError, match="kvOffload"):
        render({"models": [_model(**bad)]})


def test_offload_needs_a_gpu_prefix_caching_and_a_summable_memory() -> None:
    with pytest.raises(helm.HelmError, match="needs a GPU"):
        render({"models": [_model(enabled=True, sizeGiB=4) | {"gpus": 0, "tensorParallelSize": None}]})
    with pytest.raises(helm.HelmError, match="enablePrefixCaching"):
        render({"models": [_model(enabled=True, sizeGiB=4) | {"enablePrefixCaching": False}]})
    m = _model(enabled=True, sizeGiB=4)
    m["resources"] = {"requests": {"memory": "32G"}}
    with pytest.raises(helm.HelmError, match="whole number of Mi, Gi or Ti"):
        render({"models": [m]})
