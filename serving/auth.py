"""API key -> tenant, and the admin key. Keys are compared as SHA-256 digests, never stored in clear."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import yaml

from serving.config import AuthConfig
from serving.protocol import OpenAIError

OPEN_TENANT = "default"


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _load_keys_file(path: str) -> dict[str, list[str]]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"auth.keys_file {path} must map tenant names to lists of SHA-256 digests")
    return {str(t): [str(d).lower() for d in (v if isinstance(v, list) else [v])] for t, v in data.items()}


class Authenticator:
    """Without tenants configured every request is the one open tenant (the local default)."""

    def __init__(self, cfg: AuthConfig) -> None:
        self._by_digest: dict[str, str] = {}
        for tenant in cfg.tenants:
            for digest in tenant.key_sha256:
                self._by_digest[digest] = tenant.name
        if cfg.keys_file:
            for name, digests in _load_keys_file(cfg.keys_file).items():
                for digest in digests:
                    self._by_digest[digest] = name
        self._admin = cfg.admin_digest()
        # open only when no tenants are configured at all: an empty keys file (a Secret not yet
        # populated) must lock everyone out, not let everyone in
        self.open = not cfg.tenants and not cfg.keys_file

    @property
    def multi_tenant(self) -> bool:
        return not self.open

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

    def require_admin(self, authorization: str | None) -> None:
        key = _bearer(authorization)
        if self._admin is None:
            raise OpenAIError(403, "admin API is disabled: no admin key is configured",
                              "permission_error", code="admin_disabled")
        if key is None or not hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), self._admin):
            raise OpenAIError(403, "admin key required", "permission_error", code="forbidden")
