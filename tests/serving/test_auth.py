"""serving/auth.py: API key -> tenant by SHA-256 digest, keys files, the admin key; 401 / 403."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from starlette.datastructures import Headers

from cache.config import CacheConfig, NamespaceConfig
from cache.policy import Caller
from serving.auth import OPEN_TENANT, Authenticator
from serving.config import AuthConfig, ConfigError, TenantConfig
from serving.protocol import OpenAIError


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(key: str) -> str:
    return f"Bearer {key}"


def raises(status: int, fn, *args) -> OpenAIError:  # type: ignore[no-untyped-def]
    with pytest.raises(OpenAIError) as info:
        fn(*args)
    assert info.value.status == status
    return info.value


# -- tenants ---------------------------------------------------------------------------------


def test_open_mode_without_tenants() -> None:
    a = Authenticator(AuthConfig())
    assert a.open and not a.multi_tenant
    for header in (None, "", "Bearer anything", "garbage"):
        assert a.tenant(header) == OPEN_TENANT


def test_keys_by_digest() -> None:
    cfg = AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[sha("k-acme-1"), sha("k-acme-2").upper()]),
                              TenantConfig(name="globex", key_sha256=[sha("k-globex")])])
    a = Authenticator(cfg)
    assert a.multi_tenant and not a.open
    assert a.tenant(bearer("k-acme-1")) == "acme"
    assert a.tenant(bearer("k-acme-2")) == "acme"
    assert a.tenant(bearer("k-globex")) == "globex"
    assert a.tenant("bearer k-globex") == "globex"
    assert a.tenant("Bearer   k-globex  ") == "globex"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic k-acme", "k-acme", "Token k-acme"])
def test_missing_key_is_401(header: str | None) -> None:
    a = Authenticator(AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[sha("k-acme")])]))
    e = raises(401, a.tenant, header)
    assert e.type == "authentication_error" and e.code == "invalid_api_key"


@pytest.mark.parametrize("key", ["wrong", "k-acm", "k-acme x", "K-ACME", sha("k-acme")])
def test_wrong_key_is_401(key: str) -> None:
    a = Authenticator(AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[sha("k-acme")])]))
    e = raises(401, a.tenant, bearer(key))
    assert e.code == "invalid_api_key"


def test_keys_file(tmp_path: Path) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text(f"acme:\n  - {sha('file-acme-1')}\n  - {sha('file-acme-2').upper()}\n"
                 f"initech: {sha('file-initech')}\n")
    cfg = AuthConfig(tenants=[TenantConfig(name="globex", key_sha256=[sha("k-globex")])], keys_file=str(f))
    a = Authenticator(cfg)
    assert a.tenant(bearer("file-acme-1")) == "acme"
    assert a.tenant(bearer("file-acme-2")) == "acme"
    assert a.tenant(bearer("file-initech")) == "initech"
    assert a.tenant(bearer("k-globex")) == "globex"
    raises(401, a.tenant, bearer("file-acme-3"))


def test_keys_file_alone_enables_auth(tmp_path: Path) -> None:
    f = tmp_path / "keys.json"
    f.write_text('{"acme": ["%s"]}' % sha("j"))
    a = Authenticator(AuthConfig(keys_file=str(f)))
    assert a.multi_tenant and a.tenant(bearer("j")) == "acme"
    raises(401, a.tenant, None)


def test_keys_file_not_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ValueError):
        Authenticator(AuthConfig(keys_file=str(f)))


def test_empty_keys_file_does_not_open_the_gateway(tmp_path: Path) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text("")
    a = Authenticator(AuthConfig(keys_file=str(f)))
    raises(401, a.tenant, None)


def test_tenant_without_keys_does_not_open_the_gateway() -> None:
    a = Authenticator(AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[])]))
    raises(401, a.tenant, None)


# -- admin -----------------------------------------------------------------------------------


def test_admin_by_sha() -> None:
    a = Authenticator(AuthConfig(admin_key_sha256=sha("root").upper()))
    a.require_admin(bearer("root"))
    e = raises(403, a.require_admin, bearer("nope"))
    assert e.type == "permission_error"
    raises(403, a.require_admin, None)
    raises(403, a.require_admin, "Basic root")


def test_admin_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CS_TEST_ADMIN", "from-env")
    a = Authenticator(AuthConfig(admin_key_env="CS_TEST_ADMIN"))
    a.require_admin(bearer("from-env"))
    raises(403, a.require_admin, bearer("from-file"))


def test_admin_from_file(tmp_path: Path) -> None:
    f = tmp_path / "admin"
    f.write_text("from-file\n")
    a = Authenticator(AuthConfig(admin_key_file=str(f)))
    a.require_admin(bearer("from-file"))
    raises(403, a.require_admin, bearer("from"))


def test_admin_sha_wins_over_file(tmp_path: Path) -> None:
    f = tmp_path / "admin"
    f.write_text("file-key")
    a = Authenticator(AuthConfig(admin_key_sha256=sha("sha-key"), admin_key_file=str(f)))
    a.require_admin(bearer("sha-key"))
    raises(403, a.require_admin, bearer("file-key"))


@pytest.mark.parametrize("cfg", [AuthConfig(), AuthConfig(admin_key_env="CS_TEST_UNSET_ADMIN_VAR")])
def test_no_admin_key_disables_admin(cfg: AuthConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CS_TEST_UNSET_ADMIN_VAR", raising=False)
    a = Authenticator(cfg)
    e = raises(403, a.require_admin, bearer("anything"))
    assert e.code == "admin_disabled"


def test_empty_admin_file_disables_admin(tmp_path: Path) -> None:
    f = tmp_path / "admin"
    f.write_text("\n")
    a = Authenticator(AuthConfig(admin_key_file=str(f)))
    raises(403, a.require_admin, "Bearer ")
    raises(403, a.require_admin, bearer(""))


def test_tenant_key_is_not_admin_and_admin_is_not_tenant() -> None:
    cfg = AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[sha("k-acme")])], admin_key_sha256=sha("root"))
    a = Authenticator(cfg)
    raises(403, a.require_admin, bearer("k-acme"))
    raises(401, a.tenant, bearer("root"))


# -- scope names that must not collide -------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "Default", "_shared", "_x", "a:b", "a b", "", "x" * 65])
def test_reserved_or_malformed_tenant_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        TenantConfig(name=name, key_sha256=[sha("k")])


@pytest.mark.parametrize("name", ["_shared", "default", "a:b", "a,b"])
def test_keys_file_names_are_validated_like_tenants(tmp_path: Path, name: str) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text(f'"{name}": ["{sha("k")}"]\n')
    with pytest.raises(ConfigError, match="keys_file"):
        Authenticator(AuthConfig(keys_file=str(f)))


def test_keys_file_digests_are_validated(tmp_path: Path) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text("acme: [not-a-digest]\n")
    with pytest.raises(ConfigError, match="acme"):
        Authenticator(AuthConfig(keys_file=str(f)))


def test_one_digest_under_two_tenants_is_refused_naming_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Authenticator(AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[sha("k")]),
                                          TenantConfig(name="globex", key_sha256=[sha("k").upper()])]))
    assert "'acme'" in str(info.value) and "'globex'" in str(info.value)
    f = tmp_path / "keys.yaml"
    f.write_text(f"initech: [{sha('k')}]\n")
    with pytest.raises(ConfigError) as info:  # across the config and the keys file too
        Authenticator(AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[sha("k")])], keys_file=str(f)))
    assert "'acme'" in str(info.value) and "'initech'" in str(info.value)


def test_a_tenant_in_config_and_keys_file_merges(tmp_path: Path) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text(f"acme: [{sha('k2')}]\n")
    a = Authenticator(AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[sha("k1")])], keys_file=str(f)))
    assert a.tenant(bearer("k1")) == a.tenant(bearer("k2")) == "acme"


def test_tenant_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[sha("a")]),
                            TenantConfig(name="acme", key_sha256=[sha("b")])])


def test_admin_key_that_is_a_tenant_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="acme"):
        Authenticator(AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[sha("k")])],
                                 admin_key_sha256=sha("k")))


def test_namespace_acl_must_name_configured_tenants() -> None:
    cache = CacheConfig(namespaces={"default": NamespaceConfig(),
                                    "faq": NamespaceConfig(shared=True, writers=["acme", "acmee"])})
    a = Authenticator(AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[sha("k")])]))
    with pytest.raises(ConfigError, match="faq.*'acmee'"):
        a.check_namespaces(cache)
    with pytest.raises(ConfigError, match="acme"):
        Authenticator(AuthConfig()).check_namespaces(cache)  # no tenants at all
    ok = CacheConfig(namespaces={"default": NamespaceConfig(), "faq": NamespaceConfig(shared=True, writers=["acme"])})
    a.check_namespaces(ok)


# -- the end user behind a key ---------------------------------------------------------------


def test_caller_end_user_from_body_or_configured_header() -> None:
    keyed = AuthConfig(tenants=[TenantConfig(name="acme", key_sha256=[sha("k")])])
    a = Authenticator(keyed)
    assert a.caller("acme", Headers({"x-end-user": "h"}), {"user": "u1"}) == Caller("acme", "u1")
    assert a.caller("acme", Headers(), {}) == Caller("acme", None)
    assert a.caller("acme", Headers(), {"user": ""}) == Caller("acme", None)
    h = Authenticator(keyed.model_copy(update={"end_user_header": "X-End-User"}))
    assert h.caller("acme", Headers({"x-end-user": "h"}), {"user": "u1"}) == Caller("acme", "h")
    assert h.caller("acme", Headers(), {"user": "u1"}) == Caller("acme", None)  # the header only
    assert Authenticator(AuthConfig()).caller(OPEN_TENANT, Headers(), {"user": "u"}) == Caller(None, "u")
    e = raises(400, a.caller, "acme", Headers(), {"user": "u" * 257})
    assert e.param == "user"
    e = raises(400, h.caller, "acme", Headers({"x-end-user": "u" * 257}), {})
    assert e.param == "X-End-User"
