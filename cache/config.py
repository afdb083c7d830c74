"""Configuration of the caching layers (pydantic, no HTTP): serving/config.py nests these models.

Defaults here are the shipped defaults; see the README for why each is what it is.
"""

from __future__ import annotations

import re

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator


class Strict(BaseModel):
    """Base for config sections: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisConfig(Strict):
    url: str = Field("redis://127.0.0.1:6379/0", description="with cluster: any node of the cluster")
    cluster: bool = Field(
        False, description="the URL is a Redis Cluster node: keyed commands follow the slots, searches go to the "
        "node holding the partition's slot (docs/cluster.md)")
    index_layout: Literal["partition", "shared"] = Field(
        "partition", description="partition: one HNSW index per (tenant scope, namespace, model, version), the "
        "fastest KNN; shared: one index (per node) with the partition's tags in the prefilter, for managed "
        "services that allow few indexes (docs/cluster.md has both measured)")
    max_indexes: int = Field(
        1000, ge=1, description="partition layout: at most this many indexes; a new partition beyond it drops "
        "the least recently written one with its entries (ElastiCache allows 10 indexes: use shared there)")
    password_file: str | None = None
    lookup_budget_ms: float = Field(50.0, gt=0, description="a slower cache lookup is skipped")
    store_timeout_ms: float = Field(500.0, gt=0)
    index_prefix: str = Field("cachestack", pattern=r"^[A-Za-z0-9_:-]+$")
    retry_after_s: float = Field(2.0, gt=0, description="wait before reconnecting after a failure")
    trip_after_timeouts: int = Field(
        3, ge=1, description="consecutive lookup/store timeouts before the store is skipped for retry_after_s "
        "(one timeout may be a saturated gateway, not Redis; errors and failed pings skip it at once)")
    max_connections: int = Field(
        64, ge=1, description="sockets in the pool; a call beyond them waits for a free one within its budget")
    hnsw_m: int = Field(16, ge=4, le=128)
    hnsw_ef_construction: int = Field(200, ge=10)
    hnsw_ef_runtime: int = Field(64, ge=10)
    knn_hybrid_policy: Literal["BATCHES", "none"] = Field(
        "BATCHES",
        description="hint for first-turn lookups, whose fingerprint holds most of a partition; conversation "
                    "lookups (tiny subsets) keep the engine's choice; servers without the hint ignore it")

    def password(self) -> str | None:
        """The password from ``password_file``, if one is named."""
        if not self.password_file:
            return None
        with open(self.password_file) as fh:
            return fh.read().strip() or None

    @model_validator(mode="after")
    def _layout_fits(self) -> RedisConfig:
        if self.cluster and self.index_layout == "shared":
            raise ValueError("redis.index_layout 'shared' needs one Redis, not a cluster: a cluster node's index "
                             "returns no fields of keys outside its own name's slot (docs/cluster.md); use "
                             "'partition' with cluster")
        return self


class RemoteEncoderConfig(Strict):
    """A vLLM embedding deployment (``--runner pooling``) that embeds for the cache (cache/vllm_encoder.py)."""

    url: str = Field(description="its base URL, e.g. http://cachestack-embedder:8000")
    model: str | None = Field(None, description="its served model name; None: embedder.model's last path part")
    api_key_file: str | None = Field(None, description="file holding the key the deployment expects, if any")
    timeout_ms: float = Field(
        150.0, gt=0, description="one embedding call; slower is a failure (the lookup goes on without it). "
        "Must stay below cache.lookup_deadline_ms")
    same_weights: bool = Field(
        True, description="the deployment serves embedder.model's own folder: its vectors share the in-process "
        "path's indexes (equal cosines to 1e-3, tests/e2e/test_vllm_embedder.py); false: other weights, a "
        "vector space and indexes of their own")
    retry_after_s: float = Field(2.0, gt=0, description="an error (refused, 5xx, bad answer) skips it this long")
    trip_after_timeouts: int = Field(3, ge=1, description="consecutive timeouts that skip it like an error")

    @model_validator(mode="after")
    def _http_url(self) -> RemoteEncoderConfig:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"embedder.remote.url {self.url!r} must start with http:// or https://")
        return self


class EmbedderConfig(Strict):
    model: str = Field("all-MiniLM-L6-v2", description="sentence-transformers model name or path")
    backend: Literal["onnx", "torch", "vllm"] = Field(
        "onnx", description="onnx: exported once, run by onnxruntime (same vectors, ~2x faster here); vllm: a "
        "vLLM embedding deployment (embedder.remote) embeds, the model folder gives the tokenizer and identity")
    remote: RemoteEncoderConfig | None = Field(None, description="the deployment, for backend vllm")
    onnx_dir: str = Field("~/.cache/cachestack/onnx", description="where the exported graph is kept")
    device: str = "cpu"
    batch_wait_ms: float = Field(
        0.0, ge=0, description="extra wait for batch mates when the encoder is idle (busy: they queue anyway)")
    max_batch: int = Field(64, ge=1)
    threads: int = Field(
        2, ge=1, description="intra-op threads of one encode; idle threads sleep, never spin. Measured "
        "here (loadtests/README.md, two paired runs): 2 cut the semantic-hit p50 at concurrency 1 by "
        "14% against 1; hits/s at concurrency 32 moved within the noise (212 vs 213, 198 vs 211)")

    @model_validator(mode="after")
    def _remote_named(self) -> EmbedderConfig:
        if self.backend == "vllm" and self.remote is None:
            raise ValueError("embedder.backend vllm needs embedder.remote (the deployment's url)")
        return self


class JudgeConfig(Strict):
    """The optional LLM judge for borderline pairs (cache/judge.py); off by default: see
    docs/decision-quality.md for what it did with the local SmolLM2."""

    enabled: bool = False
    min_score: float = Field(0.5, ge=0.0, le=1.0,
                             description="a pair the verifier rejected is asked about from this probability")
    model: str | None = Field(None, description="model to ask; None: the request's own model")
    timeout_ms: float = Field(1000.0, gt=0, description="no verdict in time: no hit")
    background: bool = Field(
        False, description="ask after the response instead of before it (cache/background_judge.py): the "
        "pair stays a miss, a yes stores the new question as an alias of the cached entry")
    max_pending: int = Field(64, ge=1, description="background pairs waiting for the judge; more are dropped")
    concurrency: int = Field(1, ge=1, description="background judge calls at once")


class DecisionConfig(Strict):
    """The semantic hit rule; see cache/decision.py."""

    threshold: float | None = Field(
        None, ge=-1.0, le=1.0,
        description="cosine floor for a candidate; None: the floor calibrated with the verifier for this "
                    "embedder (verifier.json), or 0.93 without a verifier")
    top_k: int = Field(3, ge=1, le=50)
    verifier: Literal["none", "default"] | str = Field(
        "default", description="'none', 'default' (the shipped cross-encoder) or a path"
    )
    verifier_threshold: float | None = Field(None, ge=0.0, le=1.0, description="None: the model's calibrated default (verifier.json)")
    confident_gate: bool = Field(True, description="serve a pair the cross-encoder alone is sure of from the "
                                                   "calibrated confident_floor up (verifier.json; cache/decision.py)")
    verifier_threads: int = Field(1, ge=1, description="onnxruntime threads of the verifier")
    max_batch: int = Field(32, ge=1, description="lookups whose candidates the verifier scores in one run")
    guards: bool = Field(True, description="reject pairs that differ in numbers, negation, ...")
    judge: JudgeConfig = JudgeConfig()


SamplingPolicy = Literal["never", "exact", "all"]
EVERY_TENANT = "*"
TENANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # serving/config.py TenantConfig.name
# A tenant name or "*" for every tenant.
TenantRef = Annotated[str, StringConstraints(pattern=rf"^(\*|{TENANT_NAME[1:-1]})$")]
NAMESPACE_NAME = TENANT_NAME  # a header value and part of every key: no separators, no spaces


class NamespaceConfig(Strict):
    """How one namespace caches, and who may use it. Defaults suit general Q&A; FAQ namespaces raise ttl_s.

    ``readers`` may look entries up, ``writers`` have their answers stored; a tenant in neither list
    gets the same 404 as for a namespace that does not exist. In a private namespace each tenant reads
    and writes only its own entries; in a shared one every reader reads what the writers wrote, so
    ``writers`` must be named (a content tenant that warms it; ``[]``: nothing new is stored).
    """

    enabled: bool = True
    ttl_s: int = Field(86_400, ge=1, description="one day; evergreen FAQ: 7-30 days; volatile: hours")
    version: str = Field("1", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    shared: bool = Field(False, description="entries visible to every reader, written by the writers only")
    readers: list[TenantRef] = Field(
        default_factory=lambda: [EVERY_TENANT], description="tenants who may look entries up; '*': every tenant")
    writers: list[TenantRef] | None = Field(
        None, description="tenants whose answers are stored; None: the readers (private namespaces only)")
    per_user: bool = Field(
        False, description="entries are scoped by the end user behind the API key (OpenAI `user` field or "
        "auth.end_user_header) as well as by tenant; a request naming no end user bypasses the cache")
    threshold: float | None = Field(None, ge=-1.0, le=1.0, description="overrides decision.threshold")
    verifier_threshold: float | None = Field(None, ge=0.0, le=1.0)
    confident_gate: bool | None = Field(None, description="overrides decision.confident_gate")
    sampled: SamplingPolicy = Field(
        "never",
        description="answers sampled at temperature > 0: never cached, exact only, or all layers",
    )
    shadow_rate: float = Field(0.0, ge=0.0, le=1.0, description="fraction of hits re-checked upstream")
    adaptive: bool = Field(
        False, description="learn when to serve from verdicts (cache/adaptive.py) instead of the static "
        "verifier threshold, under max_false_hit_rate; the static rule decides until verdicts arrive")
    max_false_hit_rate: float = Field(
        0.02, gt=0.0, lt=1.0,
        description="adaptive: bound on P(a lookup is served a wrong answer), for every lookup that has a "
        "candidate past the floor and the guards")

    @model_validator(mode="after")
    def _access_is_explicit(self) -> NamespaceConfig:
        if self.shared and self.writers is None:
            raise ValueError("a shared namespace needs `writers`: the tenants whose answers every reader "
                             "gets ([]: none, the namespace serves what is stored and the admin may purge)")
        if self.shared and self.per_user:
            raise ValueError("per_user and shared exclude each other (per-user entries are never shared)")
        return self

    def may_read(self, tenant: str | None) -> bool:
        """``tenant`` None is the open scope (no tenants configured): only ``'*'`` admits it."""
        return _listed(self.readers, tenant)

    def may_write(self, tenant: str | None) -> bool:
        return _listed(self.readers if self.writers is None else self.writers, tenant)


def _listed(names: list[str], tenant: str | None) -> bool:
    return EVERY_TENANT in names or (tenant is not None and tenant in names)


class PriceConfig(Strict):
    prompt_per_1k: float = Field(0.0, ge=0)
    completion_per_1k: float = Field(0.0, ge=0)


class BackgroundConfig(Strict):
    """Work done after the response: stores and shadow checks, each capped in number and in time."""

    max_stores: int = Field(256, ge=1, description="stores in flight; more answers are not stored (counted)")
    max_shadows: int = Field(16, ge=1, description="shadow checks in flight; more hits are not re-checked")
    timeout_s: float = Field(60.0, gt=0, description="a background task still running after this is cancelled")


class ReplicasConfig(Strict):
    """How gateway replicas agree through Redis (docs/replicas.md)."""

    heartbeat_ms: float = Field(250.0, gt=0, description="PING on the purge subscription this often")
    max_silence_ms: float = Field(
        1000.0, gt=0, description="the L1 answers only while the purge subscription was heard this recently: "
        "the bound on how long a replica cut off from Redis may serve a purged entry from memory")
    l1_max_age_s: float = Field(30.0, gt=0, description="an entry stays in a replica's L1 at most this long")
    flight_lease_ms: int = Field(
        2000, ge=100, description="single-flight lease across replicas (SET NX PX), renewed while the leader "
        "generates: a leader that dies releases its followers after at most this (plus flight_poll_ms)")
    flight_poll_ms: int = Field(250, ge=10, description="a follower checks its leader's lease this often")
    flight_batch_ms: int = Field(
        20, ge=0, description="a streaming leader writes its chunks for followers at most this often "
        "(one XADD per batch; the first chunk at once)")
    stats_flush_s: float = Field(
        1.0, gt=0, description="how often a replica adds its counts to the fleet's (stats API, shadow estimate)")
    flight_max_wait_s: float = Field(
        120.0, gt=0, description="a follower waiting longer than this for its answer (a streaming follower: for "
        "its first chunk) calls upstream itself")

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> ReplicasConfig:
        if self.heartbeat_ms * 2 > self.max_silence_ms:
            raise ValueError(f"replicas.heartbeat_ms ({self.heartbeat_ms:g}) must be at most half of "
                             f"max_silence_ms ({self.max_silence_ms:g}), or a healthy replica turns its L1 off")
        if self.flight_poll_ms >= self.flight_lease_ms:
            raise ValueError("replicas.flight_poll_ms must be below flight_lease_ms")
        return self


class CacheConfig(Strict):
    enabled: bool = True
    default_namespace: str = "default"
    namespaces: dict[str, NamespaceConfig] = Field(default_factory=lambda: {"default": NamespaceConfig()})
    l1_max_bytes: int = Field(64 * 1024 * 1024, ge=0, description="in-process exact LRU; 0 disables")
    max_semantic_chars: int = Field(
        1000, ge=1, description="longer queries are exact-only: the embedder reads ~256 tokens"
    )
    max_entry_bytes: int = Field(256 * 1024, ge=1024, description="larger answers are not stored")
    speculative_upstream: bool = Field(
        True, description="start the upstream call when the semantic stage begins, cancel it on a hit: a "
        "miss then waits for no embedding or KNN; a semantic hit costs the upstream one cancelled request")
    responses_upstream_store: bool = Field(
        False, description="vLLM runs with VLLM_ENABLE_RESPONSES_API_STORE=1: Responses requests with store true "
        "or absent are then not cached (a replayed id could not be retrieved or continued)")
    lookup_deadline_ms: float = Field(
        250.0, gt=0, description="the whole lookup (Redis, embedding, verifier, judge); past it the request "
        "goes upstream (a miss with the speculative call never waits for it). redis.lookup_budget_ms bounds "
        "each Redis round trip inside it, and only those feed the breaker: a deadline passed never trips it")
    semantic_max_queue: int = Field(
        32, ge=1, description="lookups waiting for the embedder or the verifier; with more, the semantic stage "
        "is skipped (exact tiers only) instead of queueing behind a backlog")
    background: BackgroundConfig = BackgroundConfig()
    replicas: ReplicasConfig = ReplicasConfig()
    decision: DecisionConfig = DecisionConfig()
    prices: dict[str, PriceConfig] = Field(
        default_factory=dict, description="model -> price per 1k tokens, for the savings metric"
    )

    @model_validator(mode="after")
    def _namespaces_valid(self) -> CacheConfig:
        for name in self.namespaces:
            if not re.match(NAMESPACE_NAME, name):
                raise ValueError(f"namespace name {name!r} must match {NAMESPACE_NAME}")
        default = self.namespaces.get(self.default_namespace)
        if default is None:
            raise ValueError(f"default_namespace {self.default_namespace!r} is not in namespaces")
        if EVERY_TENANT not in default.readers:
            raise ValueError(f"default_namespace {self.default_namespace!r} serves every request without "
                             "X-Cache-Namespace: its readers must be ['*']")
        judge = self.decision.judge
        if judge.enabled and judge.timeout_ms >= self.lookup_deadline_ms:
            raise ValueError(f"decision.judge.timeout_ms ({judge.timeout_ms:g}) must be below lookup_deadline_ms "
                             f"({self.lookup_deadline_ms:g}): the judge runs inside the lookup")
        return self

    def tenant_names(self) -> dict[str, set[str]]:
        """Tenant names each namespace's readers and writers list (for the start-up check against auth)."""
        return {ns: {t for t in (*c.readers, *(c.writers or ())) if t != EVERY_TENANT}
                for ns, c in self.namespaces.items()}


