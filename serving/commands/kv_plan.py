"""``cachestack kv-plan MODEL --gpu-gib N``: KV-cache sizing and vLLM flags for one model.

With ``--node-ram-gib`` it also sizes the KV offload tier (host memory) from the workload's prefix reuse."""

from __future__ import annotations

import argparse
import sys

import yaml

from serving.kvoffload import (
    DEFAULT_NODE_RESERVED_GIB, DEFAULT_POD_MEMORY_GIB, OffloadPlan, offload_values, plan_offload,
)
from serving.kvplan import (
    DEFAULT_OVERHEAD_GIB, GIB, KV_CACHE_DTYPES, KVPlan, KVPlanError, human_bytes, load_model_config,
    plan, shape_from_config, values_entry, weights_bytes_in_folder,
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("kv-plan", help="how many sequences fit in the KV cache; suggested vLLM flags",
                       description=__doc__)
    p.add_argument("model", help="config.json, or an HF model folder holding one (weights sized from it)")
    p.add_argument("--gpu-gib", type=float, required=True, help="memory of one GPU in GiB (e.g. 80)")
    p.add_argument("--gpus", "--tensor-parallel-size", type=int, default=1, dest="gpus",
                   help="GPUs per engine (tensor parallel size)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--seq-len", type=int, help="tokens per sequence (prompt + answer); default min(max pos, 8192)")
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto")
    p.add_argument("--weights-gib", type=float, help="weights size; default: files in the folder, else estimated")
    p.add_argument("--overhead-gib", type=float, default=DEFAULT_OVERHEAD_GIB,
                   help="per-GPU reserve for activations, CUDA graphs and buffers")
    p.add_argument("--model-id", help="model id for the --values entry (default: config's _name_or_path)")
    p.add_argument("--name", help="entry name for --values (DNS label)")
    p.add_argument("--values", action="store_true", help="print a `models:` entry for helm/cachestack")
    off = p.add_argument_group("KV offload tier (host memory), planned when --node-ram-gib is given")
    off.add_argument("--node-ram-gib", type=float, help="host RAM of one GPU node in GiB")
    off.add_argument("--node-reserved-gib", type=float, default=DEFAULT_NODE_RESERVED_GIB,
                     help="RAM kept for the kubelet, OS and the node's other pods")
    off.add_argument("--engines-per-node", type=int, default=1, help="vLLM pods sharing one node")
    off.add_argument("--pod-memory-gib", type=float, default=DEFAULT_POD_MEMORY_GIB,
                     help="the vLLM pod's host memory without the tier (its memory request)")
    off.add_argument("--working-set-tokens", type=int, default=0,
                     help="distinct prefix tokens that recur (e.g. 500 system prompts x 2000 tokens = 1000000)")
    off.add_argument("--reuse-share", type=float, default=0.0,
                     help="share of prompt tokens that repeat an earlier prefix, 0..1")
    p.set_defaults(func=run)


def build_plan(args: argparse.Namespace) -> tuple[KVPlan, str]:
    """Plan from parsed CLI args; returns the plan and the model id used for the values entry."""
    cfg, folder = load_model_config(args.model)
    shape = shape_from_config(cfg, name=args.model_id or "")
    if args.weights_gib is not None:
        weights, source = int(args.weights_gib * GIB), "given with --weights-gib"
    else:
        weights = weights_bytes_in_folder(folder)
        source = f"weight files in {folder}" if weights else ""
    result = plan(
        shape, gpu_gib=args.gpu_gib, gpus=args.gpus, gpu_memory_utilization=args.gpu_memory_utilization,
        seq_len=args.seq_len, kv_cache_dtype=args.kv_cache_dtype, weights_bytes=weights,
        weights_source=source, overhead_gib=args.overhead_gib,
    )
    return result, args.model_id or shape.name


def report(p: KVPlan) -> str:
    """The human-readable plan: both formulas, the budget, the fit, the flags, the assumptions."""
    s = p.shape
    heads = f"{s.num_kv_heads} KV heads" if not s.mla_latent_dim else f"MLA latent {s.mla_latent_dim}"
    lines = [
        f"model: {s.name}  ({s.num_layers} layers, {s.num_attention_heads} attention heads, {heads}, "
        f"head_dim {s.head_dim}, weights {s.dtype})",
        f"KV dtype: {p.kv_cache_dtype} ({p.kv_dtype_bytes} byte{'s' if p.kv_dtype_bytes > 1 else ''} per element)",
        "",
        f"KV per token (GQA, what vLLM stores):  {human_bytes(p.kv_bytes_per_token)}"
        f"  = 2 x {s.num_layers} layers x {s.num_kv_heads} KV heads x {s.head_dim} x {p.kv_dtype_bytes} B"
        if not s.mla_latent_dim else
        f"KV per token (MLA latent):             {human_bytes(p.kv_bytes_per_token)}",
        f"KV per token (naive, all heads):       {human_bytes(p.naive_kv_bytes_per_token)}"
        f"  = 2 x {s.num_layers} x {s.num_attention_heads} heads x {s.head_dim} x {p.kv_dtype_bytes} B"
        f"  -> overstates {p.naive_overstatement:.1f}x",
        f"KV per sequence of {p.seq_len} tokens:  {human_bytes(p.kv_bytes_per_sequence)}",
        "",
        f"GPU: {p.gpus} x {p.gpu_gib:g} GiB at --gpu-memory-utilization {p.gpu_memory_utilization}",
        f"  weights:  {human_bytes(p.weights_bytes)} total, {human_bytes(p.weights_bytes // p.gpus)} per GPU"
        f"  ({p.weights_source})",
        f"  reserve:  {human_bytes(p.overhead_bytes_per_gpu)} per GPU (assumed: activations, CUDA graphs, buffers)",
        f"  KV cache: {human_bytes(p.kv_budget_bytes_per_gpu)} per GPU -> {p.kv_tokens:,} tokens",
        f"  fits {p.max_sequences} concurrent sequences of {p.seq_len} tokens",
        "",
    ]
    if p.suggested_max_model_len == 0:
        lines.append("no vLLM flags to suggest: the model does not fit (see the notes)")
    else:
        lines += [
        "suggested vLLM flags:",
        f"  --max-model-len {p.suggested_max_model_len} --max-num-seqs {p.suggested_max_num_seqs} "
        f"--gpu-memory-utilization {p.gpu_memory_utilization} --kv-cache-dtype {p.kv_cache_dtype}"
        + (f" --tensor-parallel-size {p.gpus}" if p.gpus > 1 else ""),
        "  (prefix caching shares KV pages between sequences with the same prefix: more fit in practice)",
        ]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def offload_report(o: OffloadPlan) -> str:
    """The offload recommendation with its arithmetic, so an operator can redo it by hand."""
    lines = [
        "KV offload tier (host memory):",
        (f"  node: {o.node_ram_gib:g} GiB - {o.node_reserved_gib:g} GiB reserved, / {o.engines_per_node} "
        f"engine{'s' if o.engines_per_node > 1 else ''}, - {o.pod_memory_gib:g} GiB pod memory "
        f"= {o.free_gib_per_engine:.1f} GiB free per engine"),
        (f"  working set: {o.working_set_tokens:,} reused prefix tokens x {human_bytes(o.kv_bytes_per_token)}"
        f" per token (all ranks) = {human_bytes(o.working_set_bytes)}"),
    ]
    if o.enabled:
        lines += [
            (f"  recommended: {o.size_gib} GiB = min(ceil(working set), floor(free)); holds "
            f"{o.covered_share:.0%} of the working set"),
            (f"  prompt tokens it can serve at most: {o.reuse_share:.0%} repeat x {o.covered_share:.0%} "
            f"held = {o.reused_tokens_served_share:.0%}"),
            (f"  pod memory request: {o.pod_memory_gib:g} + {o.size_gib} = {o.pod_memory_request_gib:g} GiB "
            "(the chart adds sizeGiB to the request and limit)"),
            f"  vLLM flags: --kv-offloading-backend native --kv-offloading-size {o.size_gib}",
            f"  chart: kvOffload: {{enabled: true, backend: native, sizeGiB: {o.size_gib}}}",
        ]
    else:
        lines.append("  recommended: off")
    lines += [f"  note: {n}" for n in o.notes]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        result, model_id = build_plan(args)
        offload = None if args.node_ram_gib is None else plan_offload(
            result, node_ram_gib=args.node_ram_gib, working_set_tokens=args.working_set_tokens,
            reuse_share=args.reuse_share, pod_memory_gib=args.pod_memory_gib,
            node_reserved_gib=args.node_reserved_gib, engines_per_node=args.engines_per_node,
        )
    except KVPlanError as exc:
        print(f"cachestack kv-plan: {exc}", file=sys.stderr)
        return 2
    if args.values:
        entry = values_entry(result, model_id, args.name)
        if offload is not None:
            entry |= offload_values(offload)
        print(f"# cachestack kv-plan: {result.max_sequences} sequences of {result.seq_len} tokens fit "
              f"({result.gpus} x {result.gpu_gib:g} GiB)")
        print(yaml.safe_dump({"models": [entry]}, sort_keys=False), end="")
    else:
        print(report(result))
        if offload is not None:
            print()
            print(offload_report(offload))
    return 0 if result.max_sequences > 0 else 1
