"""``cachestack eval`` and ``cachestack calibrate``: the serving decision rule on labelled pairs.

Both read the gateway config (``--config``), build the same embedder and the same rule the gateway
builds, and treat every pair as if ``text_a`` had been cached and ``text_b`` asked.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from serving.config import ConfigError, load_config


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", required=True, help="JSONL, JSON array or CSV/TSV of labelled pairs")
    p.add_argument("--a", default="text_a", help="column of the cached query (default text_a)")
    p.add_argument("--b", default="text_b", help="column of the new query (default text_b)")
    p.add_argument("--label", default="label", help="0/1 column: 1 = the cached answer fits (default label)")
    p.add_argument("--config", help="gateway YAML config; its embedder and decision settings are used")
    p.add_argument("--namespace", help="use this namespace's threshold overrides (default: the default namespace)")
    p.add_argument("--limit", type=int, help="only the first N pairs")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("eval", help="precision/recall of the semantic hit rule on labelled pairs")
    _common(p)
    p.add_argument("--threshold", type=float, help="override the cosine threshold")
    p.add_argument("--verifier-threshold", type=float, help="override the verifier threshold")
    p.add_argument("--json", dest="json_out", help="write a JSON summary here")
    p.add_argument("--plot", help="write a precision/recall-vs-threshold PNG here")
    p.set_defaults(func=run_eval)

    c = sub.add_parser("calibrate", help="propose the thresholds that reach a target precision")
    _common(c)
    c.add_argument("--target-precision", type=float, required=True, help="e.g. 0.95")
    c.add_argument("--min-threshold", type=float, default=0.5, help="lowest cosine floor tried (default 0.5)")
    c.add_argument("--base-rate", type=float,
                   help="share of lookups that have a true duplicate cached, at which the target precision must "
                        "hold (default: the file's own share of label-1 pairs; 0.5 = class-balanced)")
    c.set_defaults(func=run_calibrate)


def _fail(msg: str) -> int:
    one_line = "; ".join(part.strip() for part in str(msg).splitlines() if part.strip())
    print(f"cachestack: {one_line}", file=sys.stderr)
    return 2


def _setup(args: argparse.Namespace) -> tuple[Any, Any, Any, list[tuple[str, str, int]]]:
    """(settings, namespace name, (threshold, verifier threshold) as configured, pairs) or raise
    ConfigError / PairsFileError."""
    from cache.evaluation import load_pairs

    settings = load_config(args.config)
    ns_name = args.namespace or settings.cache.default_namespace
    if ns_name not in settings.cache.namespaces:
        raise ConfigError(f"namespace {ns_name!r} is not configured (have: {', '.join(settings.cache.namespaces)})")
    pairs = load_pairs(args.pairs, args.a, args.b, args.label)
    if args.limit:
        pairs = pairs[: args.limit]
    ns = settings.cache.namespaces[ns_name]
    d = settings.cache.decision
    rs = (ns.threshold if ns.threshold is not None else d.threshold,
          ns.verifier_threshold if ns.verifier_threshold is not None else d.verifier_threshold,
          ns.confident_gate if ns.confident_gate is not None else d.confident_gate)
    return settings, ns_name, rs, pairs


def _build(settings: Any) -> tuple[Any, Any]:
    from cache.decision import build_rule
    from cache.embedder import embedder_from_config

    e = settings.embedder
    embedder = embedder_from_config(e)
    return embedder, build_rule(settings.cache.decision, embedder=e.model)


def run_eval(args: argparse.Namespace) -> int:
    from cache.decision import resolve_settings
    from cache.evaluation import PairsFileError, format_table, plot, score_pairs, summarise
    from cache.verifier import VerifierError

    try:
        settings, _ns, (threshold, vthr, confident), pairs = _setup(args)
    except (ConfigError, PairsFileError) as exc:
        return _fail(str(exc))
    try:
        embedder, rule = _build(settings)
    except VerifierError as exc:
        return _fail(str(exc))
    rs = resolve_settings(rule, args.threshold if args.threshold is not None else threshold,
                          args.verifier_threshold if args.verifier_threshold is not None else vthr, confident)
    ps = score_pairs(pairs, embedder, rule, rs.threshold, confident=confident)
    d = settings.cache.decision
    summary = summarise(ps, rs, str(d.verifier), bool(d.guards), getattr(rule, "default_verifier_threshold", None))
    print(format_table(summary))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    if args.plot:
        plot(summary, args.plot)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from cache.evaluation import PairsFileError, best_at_precision, score_pairs, without_gate
    from cache.verifier import VerifierError

    if not 0.0 < args.target_precision <= 1.0:
        return _fail(f"--target-precision must be in (0, 1], got {args.target_precision}")
    if args.base_rate is not None and not 0.0 < args.base_rate < 1.0:
        return _fail(f"--base-rate must be in (0, 1), got {args.base_rate}")
    try:
        settings, ns_name, _rs, pairs = _setup(args)
    except (ConfigError, PairsFileError) as exc:
        return _fail(str(exc))
    try:
        embedder, rule = _build(settings)
    except VerifierError as exc:
        return _fail(str(exc))
    floors = [float(f) for f in np.round(np.arange(args.min_threshold, 0.9751, 0.025), 4)]
    # with and without the verifier's confident gate: its hits count at every floor and threshold, so
    # a namespace whose pairs it serves wrongly reaches its target only with the gate off
    best, gate = None, True
    scored = score_pairs(pairs, embedder, rule, args.min_threshold, confident=True)
    views = [(True, scored)]
    if getattr(rule, "confident", None):
        views.append((False, without_gate(scored)))
    for confident, ps in views:
        found = best_at_precision(ps, args.target_precision, floors, base_rate=args.base_rate)
        if found is not None and (best is None or found.true_hits > best.true_hits):
            best, gate = found, confident
    if best is None:
        print(f"cachestack: no settings reach precision {args.target_precision} on these pairs", file=sys.stderr)
        return 1
    vthr = None if best.verifier_threshold is None else math.floor(best.verifier_threshold * 1e6) / 1e6
    rate = best.base_rate if args.base_rate is None else args.base_rate
    print(f"# precision {best.precision_at(rate):.4f} holds where {rate:.0%} of lookups have a true duplicate "
          f"cached (this file: {best.base_rate:.0%}); recall {best.recall:.4f}, false-hit rate "
          f"{best.false_hit_rate:.4f}, {best.hits} hits ({best.false_hits} false) on {len(pairs)} pairs")
    print("# the same settings at other shares of duplicates: "
          + ", ".join(f"{r:.0%}: precision {best.precision_at(r):.3f}" for r in (0.1, 0.3, 0.5, 0.7)))
    print("cache:")
    print("  namespaces:")
    print(f"    {ns_name}:")
    print(f"      threshold: {math.floor(best.threshold * 1e6) / 1e6}")
    if vthr is not None:
        print(f"      verifier_threshold: {vthr}")
    if getattr(rule, "confident", None):
        print(f"      confident_gate: {'true' if gate else 'false'}")
    return 0
