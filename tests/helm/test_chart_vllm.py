"""vLLM engines: GPUs only where they belong, prefix caching on by default, probes, storage."""

from __future__ import annotations

import pytest
from chart_helpers import container, find, one, render, render_profile, vllm_deployments

pytestmark = pytest.mark.helm


def _args(dep: dict) -> list[str]:
    return container(dep)["args"]


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_gpu_limits_and_tolerations_on_vllm_not_on_gateway() -> None:
    docs = render_profile("default")
    (dep,) = vllm_deployments(docs)
    pod = dep["spec"]["template"]["spec"]
    assert container(dep)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    for kind in ("Deployment", "StatefulSet"):
        for d in find(docs, kind):
            if d in vllm_deployments(docs):
                continue
            spec = d["spec"]["template"]["spec"]
            for c in spec["containers"]:
                assert "nvidia.com/gpu" not in str(c.get("resources", {})), d["metadata"]["name"]
            assert "nvidia.com/gpu" not in str(spec.get("tolerations", [])), d["metadata"]["name"]
            assert "nvidia.com/gpu" not in str(spec.get("nodeSelector", {})), d["metadata"]["name"]


def test_prefix_caching_and_token_details_on_by_default() -> None:
    (dep,) = vllm_deployments(render_profile("default"))
    args = _args(dep)
    assert "--enable-prefix-caching" in args and "--no-enable-prefix-caching" not in args
    assert "--enable-prompt-tokens-details" in args
    assert _flag(args, "--gpu-memory-utilization") == "0.9"
    assert _flag(args, "--max-model-len") == "8192"
    assert _flag(args, "--max-num-seqs") == "64"
    assert _flag(args, "--kv-cache-dtype") == "auto"
    assert _flag(args, "--tensor-parallel-size") == "1"
    assert _flag(args, "--served-model-name") == _flag(args, "--model")


def test_explicit_false_turns_prefix_caching_off_and_models_fill_defaults() -> None:
    docs = render({"models": [
        {"name": "a", "model": "org/a", "enablePrefixCaching": False, "kvCacheDtype": "fp8",
         "gpus": 2, "tensorParallelSize": 2, "servedModelName": "a"},
        {"name": "b", "model": "org/b"},
    ]})
    deps = {d["metadata"]["name"]: d for d in vllm_deployments(docs)}
    a, b = deps["cs-cachestack-vllm-a"], deps["cs-cachestack-vllm-b"]
    assert "--no-enable-prefix-caching" in _args(a) and "--enable-prefix-caching" not in _args(a)
    assert _flag(_args(a), "--kv-cache-dtype") == "fp8"
    assert container(a)["resources"]["limits"]["nvidia.com/gpu"] == 2
    # a minimal entry still gets prefix caching, one GPU and the GPU scheduling defaults
    assert "--enable-prefix-caching" in _args(b)
    assert container(b)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert b["spec"]["template"]["spec"]["tolerations"]
    assert container(b)["image"] == "vllm/vllm-openai:v0.11.0"


def test_probes_shm_storage_and_hf_token() -> None:
    docs = render({"vllm": {"hfToken": {"existingSecret": "hf", "existingSecretKey": "tok"}}})
    (dep,) = vllm_deployments(docs)
    c = container(dep)
    budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert budget >= 1200, "weights download + load needs a long startup budget"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["shm"]["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    claim = vols["models"]["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim", claim.removeprefix("cs-cachestack"))
    token = next(e for e in c["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "tok"}
    assert dep["spec"]["strategy"]["type"] == "Recreate"


def test_existing_claim_is_used_and_not_created() -> None:
    docs = render({"models": [{"name": "m", "model": "org/m", "storage": {"existingClaim": "weights"}}]})
    (dep,) = vllm_deployments(docs)
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["models"]["persistentVolumeClaim"]["claimName"] == "weights"
    assert not find(docs, "PersistentVolumeClaim")


def test_headless_service_per_model_selects_only_that_model() -> None:
    docs = render({"models": [{"name": "a", "model": "org/a"}, {"name": "b", "model": "org/b"}]})
    for dep in vllm_deployments(docs):
        svc = one(docs, "Service", dep["metadata"]["name"].removeprefix("cs-cachestack"))
        assert svc["spec"]["clusterIP"] == "None"
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
        other = [d for d in vllm_deployments(docs) if d is not dep][0]
        olabels = other["spec"]["template"]["metadata"]["labels"]
        assert not all(olabels.get(k) == v for k, v in svc["spec"]["selector"].items())


def test_cpu_profile_has_no_gpu_anywhere() -> None:
    docs = render_profile("cpu")
    (dep,) = vllm_deployments(docs)
    args = _args(dep)
    assert "nvidia.com/gpu" not in str(docs)
    assert "--gpu-memory-utilization" not in args and "--tensor-parallel-size" not in args
    assert "--enable-prefix-caching" in args
    assert not dep["spec"]["template"]["spec"].get("tolerations")
    assert "vllm/vllm-openai" not in container(dep)["image"]


def test_duplicate_model_names_fail_clearly() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="used twice"):
        render({"models": [{"name": "a", "model": "x"}, {"name": "a", "model": "y"}]})
    with pytest.raises(helm.HelmError, match="tensorParallelSize"):
        render({"models": [{"name": "a", "model": "x", "gpus": 1, "tensorParallelSize": 4}]})
