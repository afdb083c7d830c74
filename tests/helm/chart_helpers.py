"""Render the chart with Helm's own engine (helm-python-sdk, no helm binary, no cluster).

A module of its own (not conftest) so `import` cannot pick up another directory's conftest."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "cachestack"
PROFILES = {
    "default": None,
    "cpu": CHART / "values-cpu.yaml",
    "external-redis": CHART / "values-external-redis.yaml",
}
RELEASE, NAMESPACE = "cs", "llm"


def profile_values(profile: str) -> dict[str, Any]:
    path = PROFILES[profile]
    return yaml.safe_load(path.read_text()) if path else {}


def render_raw(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, exactly what `helm template` would produce."""
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def docs_of(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                docs.append(doc | {"__template__": path})
    return docs


@functools.lru_cache(maxsize=None)
def _cached_profile(profile: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    rendered = render_raw(profile_values(profile))
    return rendered, docs_of(rendered)


def render_profile(profile: str) -> list[dict[str, Any]]:
    return copy.deepcopy(_cached_profile(profile)[1])


def raw_profile(profile: str) -> dict[str, str]:
    return dict(_cached_profile(profile)[0])


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return docs_of(render_raw(values))


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str) -> dict[str, Any]:
    found = find(docs, kind, name_suffix)
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(doc: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]["containers"][index]


def vllm_deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d for d in docs
        if d["kind"] == "Deployment"
        and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "vllm"
    ]
