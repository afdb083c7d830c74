"""Gateway: hardened pod, probes, graceful stop, and a config.yaml that serving.config accepts."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml
from chart_helpers import container, find, one, render, render_profile

from serving.config import load_config

pytestmark = pytest.mark.helm

SECRET_ADMIN = "admin-secret-value-7f3a"
SECRET_REDIS = "redis-secret-value-91bc"
HF_TOKEN = "hf_secret_token_value_55aa"
KEY_SHA = "ab" * 32


def _gateway_config(docs: list[dict]) -> dict:
    cm = one(docs, "ConfigMap", "-gateway")
    return yaml.safe_load(cm["data"]["config.yaml"])


def _load(cfg: dict, tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def test_rendered_config_parses_with_load_config(profile: str, tmp_path: Path, monkeypatch) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("CACHESTACK_")]:
        monkeypatch.delenv(var)
    docs = render_profile(profile)
    settings = _load(_gateway_config(docs), tmp_path)
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8080
    assert settings.upstreams.dns_name == "cs-cachestack-vllm.llm.svc.cluster.local"
    assert settings.upstreams.dns_port == 8000
    assert settings.upstreams.routing.policy == "prefix_aware"
    # the DNS name points at a real headless Service of the chart
    svc = one(docs, "Service", "-vllm")
    assert svc["spec"]["clusterIP"] == "None"
    assert settings.redis.password_file == "/etc/cachestack/redis/password"
    if profile == "external-redis":
        assert settings.redis.url.startswith("rediss://")
        assert not find(docs, "StatefulSet")
    else:
        assert settings.redis.url == "redis://cs-cachestack-redis.llm.svc.cluster.local:6379/0"


def test_config_with_auth_and_overrides_parses(tmp_path: Path) -> None:
    docs = render({
        "auth": {"tenants": {"acme": [KEY_SHA]}, "adminKey": SECRET_ADMIN},
        "gateway": {"config": {"cache": {"decision": {"threshold": 0.93}}, "server": {"max_body_bytes": 2048}}},
    })
    cfg = _gateway_config(docs)
    assert cfg["auth"] == {"keys_file": "/etc/cachestack/auth/keys.yaml",
                           "admin_key_file": "/etc/cachestack/auth/admin-key"}
    settings = _load(cfg, tmp_path)
    assert settings.cache.decision.threshold == 0.93
    assert settings.server.max_body_bytes == 2048 and settings.server.port == 8080
    # the mounted files are where the config says
    dep = one(docs, "Deployment", "-gateway")
    mounts = {m["name"]: m["mountPath"] for m in container(dep)["volumeMounts"]}
    assert mounts["auth"] == "/etc/cachestack/auth"
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "auth")
    assert {i["path"] for i in vol["secret"]["items"]} == {"keys.yaml", "admin-key"}
    secret = one(docs, "Secret", "-auth")
    assert yaml.safe_load(base64.b64decode(secret["data"]["keys.yaml"])) == {"acme": [KEY_SHA]}


def test_existing_auth_secret_maps_its_keys() -> None:
    docs = render({"auth": {"existingSecret": "my-keys", "keysFileKey": "tenants.yaml", "adminKeyKey": "admin"}})
    assert not find(docs, "Secret", "-auth")
    dep = one(docs, "Deployment", "-gateway")
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "auth")
    assert vol["secret"]["secretName"] == "my-keys"
    assert {(i["key"], i["path"]) for i in vol["secret"]["items"]} == {
        ("tenants.yaml", "keys.yaml"), ("admin", "admin-key")}


def test_no_secret_value_in_any_configmap() -> None:
    docs = render({
        "auth": {"tenants": {"acme": [KEY_SHA]}, "adminKey": SECRET_ADMIN},
        "redis": {"auth": {"password": SECRET_REDIS}},
        "vllm": {"hfToken": {"value": HF_TOKEN}},
    })
    secrets = find(docs, "Secret")
    blob = "".join(base64.b64decode(v).decode() for s in secrets for v in s["data"].values())
    for value in (SECRET_ADMIN, SECRET_REDIS, HF_TOKEN):
        assert value in blob, "the secret must land in a Secret"
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        for value in (SECRET_ADMIN, SECRET_REDIS, HF_TOKEN, KEY_SHA):
            assert value not in text, f"{value} leaked into {doc['kind']} {doc['metadata']['name']}"


def test_gateway_pod_is_hardened_with_probes_and_graceful_stop() -> None:
    docs = render_profile("default")
    dep = one(docs, "Deployment", "-gateway")
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    assert c["command"] == ["cachestack"]
    assert c["args"] == ["serve", "--config", "/etc/cachestack/config.yaml"]
    assert c["ports"][0]["containerPort"] == 8080
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    sleep_s = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > sleep_s
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    # secrets are files, not env values
    assert not any("valueFrom" in e for e in c["env"])


def test_gateway_has_hpa_pdb_and_service() -> None:
    docs = render_profile("default")
    dep = one(docs, "Deployment", "-gateway")
    assert "replicas" not in dep["spec"], "the HPA owns replicas"
    hpa = one(docs, "HorizontalPodAutoscaler", "-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    pdb = one(docs, "PodDisruptionBudget", "-gateway")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    svc = one(docs, "Service", "-gateway")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    cpu = render_profile("cpu")
    assert not find(cpu, "HorizontalPodAutoscaler") and one(cpu, "Deployment", "-gateway")["spec"]["replicas"] == 1


def test_config_change_rolls_the_gateway() -> None:
    a = one(render({}), "Deployment", "-gateway")
    b = one(render({"gateway": {"config": {"redis": {"lookup_budget_ms": 20}}}}), "Deployment", "-gateway")
    key = "checksum/config"
    assert a["spec"]["template"]["metadata"]["annotations"][key] != b["spec"]["template"]["metadata"]["annotations"][key]


def test_redis_password_wiring() -> None:
    docs = render_profile("default")
    sts = one(docs, "StatefulSet", "-redis")
    c = container(sts)
    ref = c["env"][0]["valueFrom"]["secretKeyRef"]
    dep = one(docs, "Deployment", "-gateway")
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "redis-password")
    assert vol["secret"]["secretName"] == ref["name"]
    assert vol["secret"]["items"][0]["key"] == ref["key"]
    args = next(e["value"] for e in c["env"] if e["name"] == "REDIS_ARGS")
    assert "--requirepass $(REDIS_PASSWORD)" in args
    assert c["image"].startswith("redis/redis-stack-server:")
    ext = render_profile("external-redis")
    vol = next(v for v in one(ext, "Deployment", "-gateway")["spec"]["template"]["spec"]["volumes"]
               if v["name"] == "redis-password")
    assert vol["secret"]["secretName"] == "managed-redis"


def test_redis8_image_runs_redis_server_with_args() -> None:
    docs = render({"redis": {"image": {"repository": "redis", "tag": "8.2"}, "persistence": {"enabled": True}}})
    sts = one(docs, "StatefulSet", "-redis")
    c = container(sts)
    assert c["command"] == ["redis-server"] and "--appendonly" in c["args"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
