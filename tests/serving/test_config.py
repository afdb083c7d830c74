"""serving/config.py: YAML + env loading, strict keys, errors that name key and value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.config import ConfigError, Settings, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CACHESTACK_* config override from the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.startswith("CACHESTACK_") and not name.startswith("CACHESTACK_TEST_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_without_file() -> None:
    s = load_config(None)
    assert isinstance(s, Settings)
    assert s.cache.default_namespace in s.cache.namespaces
    assert s.upstreams.urls and s.redis.url.startswith("redis://")


def test_yaml_values_are_read(tmp_path: Path) -> None:
    p = write(tmp_path, """
server: {port: 9000}
upstreams:
  urls: ["http://a:8000/", "https://b:8001"]
  routing: {policy: round_robin}
redis: {url: "redis://r:6379/2", index_prefix: "cs_1"}
cache:
  default_namespace: faq
  namespaces:
    faq: {ttl_s: 3600, shared: true, writers: [], version: "v2"}
""")
    s = load_config(p)
    assert s.server.port == 9000
    assert s.upstreams.urls == ["http://a:8000", "https://b:8001"]
    assert s.upstreams.routing.policy == "round_robin"
    assert s.redis.url == "redis://r:6379/2" and s.redis.index_prefix == "cs_1"
    ns = s.cache.namespaces["faq"]
    assert (ns.ttl_s, ns.shared, ns.version) == (3600, True, "v2")
    assert s.cache.default_namespace == "faq"


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == load_config(None)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("servr: {port: 1}\n", "servr"),
        ("redis: {urll: 'redis://x'}\n", "redis.urll"),
        ("upstreams: {routing: {polcy: round_robin}}\n", "upstreams.routing.polcy"),
        ("cache: {namespaces: {default: {ttl: 5}}}\n", "cache.namespaces.default.ttl"),
        ("cache: {decision: {treshold: 0.9}}\n", "cache.decision.treshold"),
        ("auth: {tenants: [{name: a, key: x}]}\n", "auth.tenants.0.key"),
    ],
)
def test_unknown_key_is_rejected_and_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert f"'{key}'" in str(info.value)
    assert "unknown key" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("server: {port: 0}\n", "server.port", "0"),
        ("server: {port: notaport}\n", "server.port", "notaport"),
        ("upstreams: {urls: ['ftp://x']}\n", "upstreams.urls", "ftp://x"),
        ("upstreams: {routing: {policy: random}}\n", "upstreams.routing.policy", "random"),
        ("redis: {index_prefix: 'bad prefix!'}\n", "redis.index_prefix", "bad prefix!"),
        ("redis: {lookup_budget_ms: -1}\n", "redis.lookup_budget_ms", "-1"),
        ("cache: {namespaces: {default: {sampled: sometimes}}}\n", "cache.namespaces.default.sampled", "sometimes"),
        ("cache: {namespaces: {default: {version: 'a b'}}}\n", "cache.namespaces.default.version", "a b"),
        ("cache: {decision: {threshold: 1.5}}\n", "cache.decision.threshold", "1.5"),
        ("auth: {tenants: [{name: 'a b'}]}\n", "auth.tenants.0.name", "a b"),
        ("auth: {tenants: [{name: a, key_sha256: [nothex]}]}\n", "auth.tenants.0.key_sha256", "nothex"),
    ],
)
def test_bad_value_is_named(tmp_path: Path, text: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    msg = str(info.value)
    assert key in msg and value in msg, msg


def test_default_namespace_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "cache: {default_namespace: nope}\n"))
    assert "nope" in str(info.value)


def test_env_beats_yaml_and_keeps_sibling_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, "redis: {url: 'redis://yaml:1/0', index_prefix: fromyaml, lookup_budget_ms: 25}\n"
                        "server: {port: 9001}\n")
    monkeypatch.setenv("CACHESTACK_REDIS__URL", "redis://env:2/0")
    s = load_config(p)
    assert s.redis.url == "redis://env:2/0"
    assert s.redis.index_prefix == "fromyaml" and s.redis.lookup_budget_ms == 25
    assert s.server.port == 9001


def test_env_nested_two_levels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, "cache:\n  decision: {threshold: 0.8, top_k: 7}\n  namespaces: {default: {ttl_s: 60}}\n")
    monkeypatch.setenv("CACHESTACK_CACHE__DECISION__THRESHOLD", "0.95")
    monkeypatch.setenv("CACHESTACK_UPSTREAMS__URLS", '["http://env:8000"]')
    s = load_config(p)
    assert s.cache.decision.threshold == 0.95 and s.cache.decision.top_k == 7
    assert s.cache.namespaces["default"].ttl_s == 60
    assert s.upstreams.urls == ["http://env:8000"]


def test_env_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHESTACK_SERVER__PORT", "7777")
    assert load_config(None).server.port == 7777


def test_bad_env_value_is_config_error_naming_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHESTACK_SERVER__PORT", "abc")
    with pytest.raises(ConfigError) as info:
        load_config(None)
    assert "server.port" in str(info.value) and "abc" in str(info.value)


def test_unknown_nested_env_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHESTACK_REDIS__URLL", "redis://x")
    with pytest.raises(ConfigError) as info:
        load_config(None)
    assert "redis.urll" in str(info.value)


def test_env_value_not_json_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHESTACK_UPSTREAMS__URLS", "http://a:8000")
    with pytest.raises(ConfigError):
        load_config(None)


def test_overrides_beat_yaml(tmp_path: Path) -> None:
    p = write(tmp_path, "server: {port: 9001}\n")
    assert load_config(p, server={"port": 9002}).server.port == 9002


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_not_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "mapping" in str(info.value)


def test_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "server: {port: [1\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_directory_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def test_settings_are_frozen() -> None:
    s = load_config(None)
    with pytest.raises(ValidationError):
        s.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("rel", ["config/example.yaml", "docker/gateway-config.yaml"])
def test_shipped_configs_load(rel: str) -> None:
    s = load_config(REPO / rel)
    assert s.cache.default_namespace in s.cache.namespaces
