"""The one configuration model: YAML file validated by pydantic, every field overridable from env.

Env overrides use the prefix ``CACHESTACK_`` and ``__`` between nesting levels, for example
``CACHESTACK_REDIS__URL=redis://redis:6379`` or ``CACHESTACK_UPSTREAMS__URLS='["http://a:8000"]'``.
Unknown keys are rejected (a typo in a YAML key is an error, not a silently ignored setting).
Secrets (admin key, API keys) are never written here in clear: they come as SHA-256 hashes, or in
clear from a file or env var named by ``*_file`` / ``*_env`` fields.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, StringConstraints, ValidationError, field_validator, model_validator
from cache.config import TENANT_NAME, CacheConfig, EmbedderConfig, RedisConfig, Strict
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    max_header_bytes: int = Field(16_384, ge=1024, description="requests with larger headers (all of them) get 431")
    max_messages: int = Field(1024, ge=1, description="chat requests with more messages get 400")
    max_tokens: int = Field(32_768, ge=1, description="a larger max_tokens / max_completion_tokens gets 400")
    log_prompts: bool = Field(False, description="never log prompt or answer text unless set")
    max_in_flight_per_tenant: int | None = Field(
        None, ge=1, description="more concurrent generation requests from one tenant get 429")
    access_log: bool = False
    request_timeout_s: float = Field(
        600.0, gt=0, description="a generation request unanswered after this gets 504; a stream still "
        "running then ends with an error event")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="after SIGTERM, how long in-flight requests may finish before they are cut")
    keep_alive_s: float = Field(
        75.0, gt=0, description="how long an idle client connection is kept open; must exceed the idle "
        "timeout of every client and load balancer in front (ALB 60 s), or a request sent as the gateway "
        "closes the connection is reset")


class TimeoutConfig(Strict):
    connect_s: float = Field(5.0, gt=0)
    read_s: float = Field(600.0, gt=0, description="time allowed between two bytes from vLLM")
    pool_s: float = Field(10.0, gt=0)


RoutingPolicy = Literal["round_robin", "least_loaded", "prefix_aware"]


class RoutingConfig(Strict):
    policy: RoutingPolicy = "prefix_aware"
    prefix_chars: int = Field(
        2048, ge=64, description="leading characters of the prompt that pick a replica"
    )
    load_factor: float = Field(
        1.2, ge=1.0, description="a replica over this multiple of the mean in-flight load spills over"
    )
    virtual_nodes: int = Field(256, ge=1, le=4096, description="ring points per replica (64 split 2 replicas 57/43)")
    session_affinity_entries: int = Field(
        65536, ge=0, description="conversations remembered on the replica holding their history; 0: off")
    eject_after_failures: int = Field(3, ge=1)
    eject_for_s: float = Field(10.0, gt=0)
    metrics_scrape_s: float = Field(5.0, gt=0, description="how often each replica's /metrics is read")


class UpstreamConfig(Strict):
    urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8000"])
    dns_name: str | None = Field(None, description="headless Service name resolved to replica IPs")
    dns_port: int = Field(8000, ge=1, le=65535)
    dns_refresh_s: float = Field(10.0, gt=0)
    api_key_file: str | None = Field(None, description="file holding the key vLLM expects, if any")
    max_connections: int = Field(256, ge=1)
    max_keepalive: int = Field(64, ge=1)
    keepalive_s: float = Field(
        2.0, gt=0, description="how long an idle pooled connection to vLLM is reused; must stay below "
        "vLLM's idle timeout (VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s), or requests race its close")
    timeouts: TimeoutConfig = TimeoutConfig()
    routing: RoutingConfig = RoutingConfig()
    models_refresh_s: float = Field(30.0, gt=0, description="how long the merged /v1/models is kept")

    @field_validator("urls")
    @classmethod
    def _urls_are_http(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream url {url!r} must start with http:// or https://")
        return [u.rstrip("/") for u in urls]


RESERVED_TENANTS = frozenset({"default"})  # the open tenant's name (serving/auth.py OPEN_TENANT)


class TenantConfig(Strict):
    name: str = Field(pattern=TENANT_NAME)
    key_sha256: list[str] = Field(default_factory=list, description="hex SHA-256 of each API key")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.lower() in RESERVED_TENANTS:
            raise ValueError(f"tenant name {name!r} is reserved for the open scope (no tenants configured)")
        return name

    @field_validator("key_sha256")
    @classmethod
    def _hex_digests(cls, values: list[str]) -> list[str]:
        for v in values:
            if len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower()):
                raise ValueError(f"key_sha256 entry {v[:12]!r}... is not a hex SHA-256 digest")
        return [v.lower() for v in values]


class AuthConfig(Strict):
    tenants: list[TenantConfig] = Field(default_factory=list, description="empty: one open scope")
    keys_file: str | None = Field(
        None, description="YAML/JSON file {tenant: [sha256, ...]} merged into tenants (a mounted Secret)"
    )
    admin_key_sha256: str | None = None
    admin_key_file: str | None = Field(None, description="file holding the admin key in clear")
    admin_key_env: str | None = Field(None, description="env var holding the admin key in clear")
    end_user_header: str | None = Field(
        None, pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="header naming the end user behind an API key, set by your application; without it "
        "the body's OpenAI `user` field names them (per_user namespaces)")

    @model_validator(mode="after")
    def _names_unique(self) -> AuthConfig:
        seen: set[str] = set()
        for t in self.tenants:
            if t.name in seen:
                raise ValueError(f"tenant {t.name!r} is listed twice in auth.tenants")
            seen.add(t.name)
        return self

    def admin_digest(self) -> str | None:
        """The admin key's SHA-256 from whichever source is configured."""
        if self.admin_key_sha256:
            return self.admin_key_sha256.lower()
        clear: str | None = None
        if self.admin_key_file:
            clear = Path(self.admin_key_file).read_text().strip()
        elif self.admin_key_env:
            clear = os.environ.get(self.admin_key_env)
        return hashlib.sha256(clear.encode()).hexdigest() if clear else None


class PrefixHygieneConfig(Strict):
    enabled: bool = True
    window: int = Field(64, ge=8, description="recent prompt starts remembered per namespace")
    head_chars: int = Field(256, ge=16)


class LocalStackConfig(Strict):
    """`cachestack up`: the CPU stack started as child processes."""

    model: str = Field("smollm2", description="'smollm2' (bundled, converted once) or an HF id / path")
    served_model_name: str | None = None
    vllm_port: int = Field(8000, ge=1, le=65535)
    vllm_replicas: int = Field(1, ge=1, le=8)
    vllm_args: list[str] = Field(default_factory=lambda: ["--enforce-eager", "--max-model-len", "4096"])
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE per replica (whole GiB only)")
    redis_port: int = Field(6379, ge=1, le=65535)
    data_dir: str = Field(".cachestack", description="converted models, logs; reused across runs")


class EmbeddingDeploymentConfig(Strict):
    """A vLLM embedding deployment (``--runner pooling``) that /v1/embeddings forwards its models to."""

    url: str = Field(description="its base URL, e.g. http://cachestack-embedder:8000")
    models: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        min_length=1, description="the served model names requests are forwarded for (listed in /v1/models)")
    api_key_file: str | None = Field(None, description="file holding the key the deployment expects, if any")
    timeouts: TimeoutConfig = TimeoutConfig(read_s=60.0)

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"embeddings.deployment.url {url!r} must start with http:// or https://")
        return url.rstrip("/")


class EmbeddingsConfig(Strict):
    """POST /v1/embeddings: the cache's own embedder, and the models of an embedding deployment."""

    local: bool = Field(True, description="serve the cache's embedder (embedder.model) as a model of its own")
    local_name: str | None = Field(None, description="its id in /v1/models; None: embedder.model's last path part")
    deployment: EmbeddingDeploymentConfig | None = Field(
        None, description="forward requests for its models there (the vector cache still answers repeats)")
    max_inputs: int = Field(2048, ge=1, description="more inputs in one request get 400 (OpenAI's limit)")
    cache: bool = Field(True, description="exact, tenant-scoped cache of vectors (needs cache.enabled and Redis)")
    cache_ttl_s: int = Field(7 * 86_400, ge=1, description="how long a cached vector is kept")


class TenantRates(Strict):
    requests_per_minute: int | None = Field(None, ge=1, description="None: no request limit")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="upstream tokens (prompt + completion) per minute; None: no token limit")


class RateLimitConfig(Strict):
    """Per-tenant limits shared by every gateway replica through Redis (serving/rate_limits.py).
    Without tenants, every request is the tenant ``default``."""

    default: TenantRates = Field(default_factory=TenantRates, description="every tenant not listed below")
    tenants: dict[str, TenantRates] = Field(default_factory=dict, description="tenant name -> its own limits")


class Settings(BaseSettings):
    """Everything cachestack reads at start. Load with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix="CACHESTACK_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerConfig = ServerConfig()
    upstreams: UpstreamConfig = UpstreamConfig()
    redis: RedisConfig = RedisConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    cache: CacheConfig = CacheConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    auth: AuthConfig = AuthConfig()
    prefix_hygiene: PrefixHygieneConfig = PrefixHygieneConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    local: LocalStackConfig = LocalStackConfig()

    @model_validator(mode="after")
    def _remote_embedder_fits_the_deadline(self) -> Settings:
        remote = self.embedder.remote
        if self.embedder.backend == "vllm" and remote is not None and remote.timeout_ms >= self.cache.lookup_deadline_ms:
            raise ValueError(f"embedder.remote.timeout_ms ({remote.timeout_ms:g}) must be below "
                             f"cache.lookup_deadline_ms ({self.cache.lookup_deadline_ms:g}): it runs inside the lookup")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # env wins over the YAML file, which arrives as init kwargs.
        return (env_settings, init_settings)


class ConfigError(ValueError):
    """A config file or env var that does not validate; the message names key and value."""


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {where!r}")
        else:
            lines.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (if any), apply env overrides, validate; raise ConfigError with a clear message."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:  # an env value that is not JSON where a list or mapping is expected
        raise ConfigError(f"invalid configuration from the environment: {exc}") from None
