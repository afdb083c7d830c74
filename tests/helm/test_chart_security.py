"""NetworkPolicy, the values schema, the Grafana dashboard and the helm test hook."""

from __future__ import annotations

import json

import helm_python as helm
import pytest
from chart_helpers import CHART, find, one, render, render_profile, vllm_deployments

pytestmark = pytest.mark.helm


def _labels(doc: dict) -> dict:
    return doc["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_networkpolicy_only_gateway_reaches_vllm_and_redis() -> None:
    docs = render_profile("default")
    gateway = _labels(one(docs, "Deployment", "-gateway"))
    redis = _labels(one(docs, "StatefulSet", "-redis"))
    (vllm,) = [_labels(d) for d in vllm_deployments(docs)]
    test_pod = one(docs, "Pod", "-test-cache-hit")["metadata"]["labels"]
    for target, port in ((vllm, "http"), (redis, "redis")):
        (pol,) = [p for p in find(docs, "NetworkPolicy") if _selects(p["spec"]["podSelector"], target)]
        assert pol["spec"]["policyTypes"] == ["Ingress"]
        peers = [peer for rule in pol["spec"]["ingress"] for peer in rule["from"]]
        pod_peers = [p for p in peers if "namespaceSelector" not in p]
        assert pod_peers and all(_selects(p["podSelector"], gateway) for p in pod_peers)
        assert not any(_selects(p["podSelector"], test_pod) for p in pod_peers)
        assert not any(_selects(p["podSelector"], redis if target is vllm else vllm) for p in pod_peers)
        assert all(rule["ports"][0]["port"] == port for rule in pol["spec"]["ingress"])
    # Prometheus may scrape vLLM, from its own namespace only
    vpol = [p for p in find(docs, "NetworkPolicy") if _selects(p["spec"]["podSelector"], vllm)][0]
    prom = [p for p in vpol["spec"]["ingress"][0]["from"] if "namespaceSelector" in p]
    assert prom and prom[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "prometheus"


def test_gateway_policy_open_by_default_and_narrowable() -> None:
    gpol = one(render_profile("default"), "NetworkPolicy", "-gateway")
    assert "from" not in gpol["spec"]["ingress"][0]
    narrowed = render({"networkPolicy": {"gatewayFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}]}})
    peers = one(narrowed, "NetworkPolicy", "-gateway")["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"team": "apps"}}} in peers
    test_pod = one(narrowed, "Pod", "-test-cache-hit")["metadata"]["labels"]
    assert any("podSelector" in p and "namespaceSelector" not in p and _selects(p["podSelector"], test_pod)
               for p in peers), "helm test must still reach the gateway"


def test_no_redis_policy_with_external_redis() -> None:
    docs = render_profile("external-redis")
    assert not find(docs, "NetworkPolicy", "-redis")


@pytest.mark.parametrize(("values", "message"), [
    ({"models": [{"name": "Big_Model", "model": "x"}]}, "/models/0/name"),
    ({"models": [{"name": "m", "model": "x", "gpuMemoryUtilization": 1.2}]}, "gpuMemoryUtilization"),
    ({"models": [{"name": "m", "model": "x", "kvCacheDtype": "int3"}]}, "kvCacheDtype"),
    ({"models": [{"name": "m"}]}, "model"),
    ({"models": []}, "/models"),
    ({"redis": {"enabled": False}}, "/redis/external/url"),
    ({"redis": {"enabled": False, "external": {"url": "http://x"}}}, "/redis/external/url"),
    ({"gateway": {"replica": 3}}, "replica"),
    ({"gateway": {"port": 80}}, "/gateway/port"),
    ({"gateway": {"config": {"serverr": {}}}}, "serverr"),
    ({"auth": {"tenants": {"acme": ["not-a-digest"]}}}, "/auth/tenants/acme/0"),
])
def test_schema_rejects_bad_values(values: dict, message: str) -> None:
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(chart.merge_values(values) if "models" not in values else values)
    assert message in str(err.value)


def test_schema_accepts_defaults_and_profiles(profile: str) -> None:
    from chart_helpers import profile_values

    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart.merge_values(profile_values(profile)))


def test_dashboard_uses_current_metric_names() -> None:
    docs = render_profile("default")
    cm = one(docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["cachestack.json"])
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for name in ("cachestack_cache_requests_total", "cachestack_request_seconds_bucket",
                 "cachestack_cache_tokens_saved_total", "cachestack_cache_money_saved_total",
                 "cachestack_requests_total", "cachestack_cache_similarity_bucket",
                 "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total",
                 "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:num_requests_waiting"):
        assert name in exprs, name
    assert "vllm:gpu_" not in json.dumps(dash)
    assert "by (layer)" in exprs


def test_helm_test_hook_expects_a_hit_on_the_repeat() -> None:
    docs = render_profile("default")
    pod = one(docs, "Pod", "-test-cache-hit")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    script = c["args"][0]
    assert script.count("ask)") >= 2 or script.count("$(ask)") >= 2
    assert '"HIT"' in script and "exit 1" in script
    assert '"temperature":0' in script
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GATEWAY"] == "http://cs-cachestack-gateway:80"
    assert env["MODEL"] == "Qwen/Qwen2.5-7B-Instruct"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
