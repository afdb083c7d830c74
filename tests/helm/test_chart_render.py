"""The chart renders, lints and yields manifests valid against the Kubernetes API schemas."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from chart_helpers import CHART, profile_values, raw_profile, render_profile

pytestmark = pytest.mark.helm

K8S_VERSION = "1.33.0"  # a recent release shipped in kubernetes-validate's bundled schemas
# Custom resources have no bundled schema: they are checked by the assertions below, not here.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "ScaledObject"}


def test_lint_default_and_profiles(profile: str) -> None:
    report = helm.lint(str(CHART), profile_values(profile), strict=True, namespace="llm")
    errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not errors, errors


def test_every_manifest_matches_kubernetes_schema(profile: str) -> None:
    docs = render_profile(profile)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "Pod"} <= kinds
    assert ("StatefulSet" in kinds) == (profile != "external-redis")
    checked = 0
    for doc in docs:
        doc.pop("__template__")
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 10


def test_optional_crds_render_with_expected_shape() -> None:
    """ServiceMonitor/PodMonitor/ScaledObject are skipped by the schema check, so check their fields here."""
    values = {"metrics": {"serviceMonitor": {"enabled": True}}, "vllm": {"keda": {"enabled": True}}}
    from chart_helpers import render, vllm_deployments

    docs = render(values)
    sm = [d for d in docs if d["kind"] == "ServiceMonitor"]
    pm = [d for d in docs if d["kind"] == "PodMonitor"]
    so = [d for d in docs if d["kind"] == "ScaledObject"]
    assert len(sm) == 1 and sm[0]["spec"]["endpoints"][0]["path"] == "/metrics"
    assert pm[0]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "vllm"
    (dep,) = vllm_deployments(docs)
    assert "replicas" not in dep["spec"], "KEDA owns replicas when enabled"
    assert so[0]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert "vllm:num_requests_waiting" in so[0]["spec"]["triggers"][0]["metadata"]["query"]


def test_crds_are_off_by_default() -> None:
    kinds = {d["kind"] for d in render_profile("default")}
    assert not kinds & CRD_KINDS


def test_notes_tell_how_to_reach_the_gateway() -> None:
    notes = raw_profile("default")["cachestack/templates/NOTES.txt"]
    assert "port-forward svc/cs-cachestack-gateway" in notes
    assert "helm test cs" in notes
    assert "no API keys are configured" in notes


def test_yaml_files_have_no_tabs_and_parse() -> None:
    for path in [CHART / "values.yaml", CHART / "values-cpu.yaml", CHART / "values-external-redis.yaml"]:
        text = path.read_text()
        assert "\t" not in text
        assert isinstance(yaml.safe_load(text), dict)
