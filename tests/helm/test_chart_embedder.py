"""GPU embedding engine: off by default; when on, a vLLM pooling Deployment on GPU nodes that only the gateway reaches."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest
from chart_helpers import CHART, container, find, one, render, render_profile
from test_chart_render import K8S_VERSION

from serving.config import load_config

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


def _gateway_settings(docs: list[dict], tmp_path, monkeypatch):
    for var in [v for v in __import__("os").environ if v.startswith("CACHESTACK_")]:
        monkeypatch.delenv(var)
    cm = one(docs, "ConfigMap", "-gateway")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    return load_config(path)


def test_gateway_embeds_through_the_deployment_when_it_is_on(tmp_path, monkeypatch) -> None:
    docs = render({"embedder": {"enabled": True}})
    s = _gateway_settings(docs, tmp_path, monkeypatch)
    svc = one(docs, "Service", "-embedder")
    assert s.embedder.backend == "vllm" and s.embedder.remote is not None
    assert s.embedder.remote.url == f"http://{svc['metadata']['name']}.llm.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
    assert s.embedder.remote.model == "sentence-transformers/all-MiniLM-L6-v2"  # the engine's --served-model-name
    assert s.embedder.remote.same_weights and s.embedder.remote.timeout_ms < s.cache.lookup_deadline_ms
    assert s.embedder.model == "all-MiniLM-L6-v2"  # the folder in the image: tokenizer and identity
    assert s.embeddings.deployment is None
    off = _gateway_settings(render_profile("default"), tmp_path, monkeypatch)
    assert off.embedder.backend == "onnx" and off.embedder.remote is None


def test_gateway_forwards_embeddings_and_keeps_onnx_when_asked(tmp_path, monkeypatch) -> None:
    docs = render({"embedder": {"enabled": True, "servedModelName": "minilm-gpu",
                                "gateway": {"cacheBackend": False, "forwardEmbeddings": True, "timeoutMs": 100}}})
    s = _gateway_settings(docs, tmp_path, monkeypatch)
    assert s.embedder.backend == "onnx"
    assert s.embeddings.deployment is not None and s.embeddings.deployment.models == ["minilm-gpu"]
    assert s.embeddings.deployment.url.endswith("-embedder.llm.svc.cluster.local:8000")
    c = container(_embedder(docs))
    assert c["args"][c["args"].index("--served-model-name") + 1] == "minilm-gpu"


def test_schema_rejects_bad_gateway_wiring() -> None:
    with pytest.raises(helm.HelmError, match="embedder"):
        render({"embedder": {"enabled": True, "gateway": {"timeoutMs": 0}}})
    with pytest.raises(helm.HelmError, match="embedder"):
        render({"embedder": {"enabled": True, "gateway": {"remote": True}}})
