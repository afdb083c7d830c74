"""GPU embedding engine: off by default; when on, a vLLM pooling Deployment on GPU nodes that only the gateway reaches."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest
from chart_helpers import CHART, container, find, one, render, render_profile
from test_chart_render import K8S_VERSION

pytestmark = pytest.mark.helm


def _embedder(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "-embedder")


def test_off_by_default() -> None:
    docs = render_profile("default")
    assert not [d for d in docs if "embedder" in d["metadata"]["name"]]


def test_pooling_engine_on_a_gpu_node_validates() -> None:
    docs = render({"embedder": {"enabled": True}})
    dep = _embedder(docs)
    c = container(dep)
    args = c["args"]
    assert args[args.index("--runner") + 1] == "pooling"
    assert args[args.index("--model") + 1] == "sentence-transformers/all-MiniLM-L6-v2"
    assert args[args.index("--served-model-name") + 1] == "sentence-transformers/all-MiniLM-L6-v2"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.2"
    assert args[args.index("--max-model-len") + 1] == "256"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert c["image"] == "vllm/vllm-openai:v0.11.0"
    svc = one(docs, "Service", "-embedder")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert labels["app.kubernetes.io/component"] == "embedder"
    np = one(docs, "NetworkPolicy", "-embedder")
    assert np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "embedder"
    peers = np["spec"]["ingress"][0]["from"]
    assert peers[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    report = helm.lint(str(CHART), {"embedder": {"enabled": True}}, strict=True, namespace="llm")
    assert not [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    for doc in (dep, svc, np):
        doc = dict(doc)
        doc.pop("__template__")
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_cpu_embedder_has_no_gpu_and_own_scheduling() -> None:
    docs = render({"embedder": {"enabled": True, "gpus": 0, "nodeSelector": {"pool": "cpu"}, "tolerations": [],
                                "image": {"repository": "local/vllm-cpu", "tag": "dev"}},
                   "networkPolicy": {"enabled": False}})
    dep = _embedder(docs)
    c = container(dep)
    assert "nvidia.com/gpu" not in str(dep)
    assert "--gpu-memory-utilization" not in c["args"]
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert c["image"] == "local/vllm-cpu:dev"
    assert not find(docs, "NetworkPolicy", "-embedder")


@pytest.mark.parametrize("bad", [
    {"enabled": True, "gpuMemoryUtilization": 1.5},
    {"enabled": True, "model": ""},
    {"enabled": True, "runner": "generate"},
    {"enabled": True, "cacheSize": "lots"},
])
def test_schema_rejects_bad_embedder_values(bad: dict) -> None:
    with pytest.raises(helm.HelmError, match="embedder"):
        render({"embedder": bad})
