"""API key -> tenant, the end user behind it, and the admin key. Keys are compared as SHA-256
digests, never stored in clear.

Every tenant comes from ``auth.tenants`` or the ``keys_file``, validated alike; a start that would
make two scopes one (one key under two tenants, the admin key also a tenant's key, a namespace ACL
naming a tenant that has no key) is refused with a message naming both sides.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from starlette.datastructures import Headers

from cache.config import CacheConfig
from cache.policy import Caller
from serving.config import AuthConfig, ConfigError, TenantConfig
from serving.protocol import OpenAIError

OPEN_TENANT = "default"
MAX_END_USER_CHARS = 256


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _load_keys_file(path: str) -> list[TenantConfig]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"auth.keys_file {path} must map tenant names to lists of SHA-256 digests")
    tenants = []
    for name, digests in data.items():
        try:
            tenants.append(TenantConfig(name=str(name), key_sha256=[str(d) for d in (
                digests if isinstance(digests, list) else [digests])]))
        except ValidationError as exc:
            raise ConfigError(f"auth.keys_file {path}: tenant {str(name)[:64]!r}: {exc.errors()[0]['msg']}") from None
    return tenants


class Authenticator:
    """Without tenants configured every request is the one open tenant (the local default)."""

    def __init__(self, cfg: AuthConfig) -> None:
        tenants = [*cfg.tenants, *(_load_keys_file(cfg.keys_file) if cfg.keys_file else [])]
        self._by_digest: dict[str, str] = {}
        for tenant in tenants:
            for digest in tenant.key_sha256:
                other = self._by_digest.setdefault(digest, tenant.name)
                if other != tenant.name:
                    raise ConfigError(f"one API key digest ({digest[:12]}...) is listed under two tenants, "
                                      f"{other!r} and {tenant.name!r}: each key must belong to one tenant")
        self.tenant_names = frozenset(t.name for t in tenants)
        self._admin = cfg.admin_digest()
        if self._admin is not None and self._admin in self._by_digest:
            raise ConfigError(f"the admin key is also an API key of tenant {self._by_digest[self._admin]!r}")
        self._end_user_header = cfg.end_user_header
        # open only when no tenants are configured at all: an empty keys file (a Secret not yet
        # populated) must lock everyone out, not let everyone in
        self.open = not cfg.tenants and not cfg.keys_file

    @property
    def multi_tenant(self) -> bool:
        return not self.open

    def check_namespaces(self, cache: CacheConfig) -> None:
        """Refuse a namespace ACL naming a tenant that has no key: a typo would lock out (or in) no one."""
        for ns, names in cache.tenant_names().items():
            unknown = sorted(names - self.tenant_names)
            if unknown:
                raise ConfigError(f"cache.namespaces.{ns} lists tenant {unknown[0]!r} in readers or writers, "
                                  "but auth configures no such tenant")

    def check_rate_limits(self, tenants: Iterable[str]) -> None:
        """Refuse rate limits for a tenant that has no key (a typo would limit no one)."""
        for name in tenants:
            if name not in self.tenant_names and not (self.open and name == OPEN_TENANT):
                raise ConfigError(f"rate_limits.tenants names tenant {name!r}, but auth configures no such tenant")

    def tenant(self, authorization: str | None) -> str:
        if self.open:
            return OPEN_TENANT
        key = _bearer(authorization)
        if key is None:
            raise OpenAIError(401, "missing API key: send 'Authorization: Bearer <key>'",
                              "authentication_error", code="invalid_api_key")
        tenant = self._by_digest.get(hashlib.sha256(key.encode()).hexdigest())
        if tenant is None:
            raise OpenAIError(401, "invalid API key", "authentication_error", code="invalid_api_key")
        return tenant

    def caller(self, tenant: str, headers: Headers, body: Mapping[str, Any]) -> Caller:
        """The cache's view of who asks: the open scope or a tenant, and its end user if named
        (``auth.end_user_header`` when configured, else the body's ``user``)."""
        if self._end_user_header is not None:
            where, end_user = self._end_user_header, headers.get(self._end_user_header)
        else:
            where, end_user = "user", body.get("user")
        if end_user is not None and (not isinstance(end_user, str) or len(end_user) > MAX_END_USER_CHARS):
            raise OpenAIError(400, f"{where} must be a string of at most {MAX_END_USER_CHARS} characters",
                              param=where, code="invalid_value")
        return Caller(None if self.open else tenant, end_user or None)

    def require_admin(self, authorization: str | None) -> None:
        key = _bearer(authorization)
        if self._admin is None:
            raise OpenAIError(403, "admin API is disabled: no admin key is configured",
                              "permission_error", code="admin_disabled")
        if key is None or not hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), self._admin):
            raise OpenAIError(403, "admin key required", "permission_error", code="forbidden")
