"""Sizing the KV offload tier (vLLM's host-memory copy of prefix-cache blocks) for one node.

Why: the tier only pays when it can hold the prefixes the workload repeats, and it is pinned host
memory, so it must fit next to everything else on the node. The native backend writes every
completed block through to host memory, so the tier is sized to the whole reused working set, not
to what overflows the GPU. Pure arithmetic: the CLI in serving/commands/kv_plan.py prints it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from serving.kvplan import BLOCK_SIZE, GIB, KVPlan, KVPlanError, round_up

#: Below this share of repeated prompt tokens the tier saves too little prefill to be worth its RAM.
MIN_REUSE_SHARE = 0.1
#: Host memory kept back on the node for the kubelet, the OS and the node's other pods.
DEFAULT_NODE_RESERVED_GIB = 8.0
#: The vLLM pod's own host memory without the tier (the chart's default memory request).
DEFAULT_POD_MEMORY_GIB = 32.0


@dataclass(frozen=True)
class OffloadPlan:
    """How much host memory to give the offload tier of each engine, and why."""

    node_ram_gib: float
    node_reserved_gib: float
    engines_per_node: int
    pod_memory_gib: float
    free_gib_per_engine: float
    kv_bytes_per_token: int
    working_set_tokens: int
    working_set_bytes: int
    reuse_share: float
    size_gib: int
    covered_share: float
    notes: list[str] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.size_gib > 0

    @property
    def pod_memory_request_gib(self) -> float:
        """What the chart requests for the pod with the tier on (its memory + the tier)."""
        return self.pod_memory_gib + self.size_gib

    @property
    def reused_tokens_served_share(self) -> float:
        """Upper bound on the share of prompt tokens the tier can serve (reuse x coverage)."""
        return self.reuse_share * self.covered_share


def plan_offload(
    kv: KVPlan,
    *,
    node_ram_gib: float,
    working_set_tokens: int,
    reuse_share: float,
    pod_memory_gib: float = DEFAULT_POD_MEMORY_GIB,
    node_reserved_gib: float = DEFAULT_NODE_RESERVED_GIB,
    engines_per_node: int = 1,
) -> OffloadPlan:
    """Tier size = the reused working set in KV bytes, rounded up to GiB, capped by the node's free RAM.

    ``working_set_tokens``: distinct prefix tokens that recur (e.g. 500 system prompts x 2k tokens);
    ``reuse_share``: share of prompt tokens that repeat an earlier prefix (vLLM's prefix-cache
    queries that hit, or the gateway's cached_tokens / prompt_tokens).
    """
    if node_ram_gib <= 0 or engines_per_node < 1:
        raise KVPlanError("node RAM and engines per node must be positive")
    if working_set_tokens < 0:
        raise KVPlanError("working_set_tokens must be >= 0")
    if not 0 <= reuse_share <= 1:
        raise KVPlanError(f"reuse_share must be in [0, 1], got {reuse_share}")
    if pod_memory_gib < 0 or node_reserved_gib < 0:
        raise KVPlanError("pod memory and node reserve must be >= 0")
    notes: list[str] = []
    per_token = kv.kv_bytes_per_token_per_gpu * kv.gpus  # every rank offloads its own heads
    ws_bytes = round_up(working_set_tokens, BLOCK_SIZE) * per_token
    free = (node_ram_gib - node_reserved_gib) / engines_per_node - pod_memory_gib
    want = math.ceil(ws_bytes / GIB)
    size = max(0, min(want, math.floor(free)))
    if kv.shape.mla_latent_dim:
        notes.append("MLA model: vLLM's offload backends do not support it; leave kvOffload off")
        size = 0
    elif reuse_share < MIN_REUSE_SHARE:
        notes.append(f"only {reuse_share:.0%} of prompt tokens repeat (< {MIN_REUSE_SHARE:.0%}): "
                     "the tier would save little prefill; leave kvOffload off")
        size = 0
    elif working_set_tokens == 0:
        notes.append("no reused prefix tokens: nothing to offload; leave kvOffload off")
        size = 0
    elif free < 1:
        notes.append(f"the node has {free:.1f} GiB left per engine after the reserve and the pod's own "
                     "memory: no room for a tier; add RAM or run fewer engines per node")
        size = 0
    elif size < want:
        notes.append(f"the working set needs {want} GiB but only {size} GiB fit per engine: "
                     "the tier holds the most recent part of it (LRU)")
    covered = 1.0 if ws_bytes == 0 else min(1.0, size * GIB / ws_bytes)
    return OffloadPlan(
        node_ram_gib=node_ram_gib, node_reserved_gib=node_reserved_gib, engines_per_node=engines_per_node,
        pod_memory_gib=pod_memory_gib, free_gib_per_engine=free, kv_bytes_per_token=per_token,
        working_set_tokens=working_set_tokens, working_set_bytes=ws_bytes, reuse_share=reuse_share,
        size_gib=size, covered_share=covered, notes=notes,
    )


def offload_values(o: OffloadPlan) -> dict[str, object]:
    """The chart keys for this plan: ``kvOffload`` and the pod's memory without the tier (the chart adds it)."""
    if not o.enabled:
        return {"kvOffload": {"enabled": False}}
    return {
        "kvOffload": {"enabled": True, "backend": "native", "sizeGiB": o.size_gib},
        "resources": {"requests": {"memory": f"{math.ceil(o.pod_memory_gib * 1024)}Mi"}},
    }
