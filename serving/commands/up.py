"""``cachestack up``: vLLM CPU + Valkey/RediSearch as child processes, then the gateway in front."""

from __future__ import annotations

import argparse
import logging
import sys

from serving.config import ConfigError, Settings, load_config


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="run the whole stack locally (CPU vLLM, Valkey, gateway)")
    p.add_argument("--config", help="YAML config file (env CACHESTACK_* overrides it)")
    p.add_argument("--model", help="'smollm2' (bundled), an HF id or a folder (with a GPU: the official vllm)")
    p.add_argument("--replicas", type=int, help="number of vLLM replicas")
    p.add_argument("--port", type=int, help="gateway port (server.port)")
    p.set_defaults(func=run)


def with_stack(settings: Settings, vllm_urls: list[str], redis_url: str) -> Settings:
    """The settings with upstreams and Redis pointed at the local children."""
    return settings.model_copy(update={
        "upstreams": settings.upstreams.model_copy(update={"urls": vllm_urls, "dns_name": None}),
        "redis": settings.redis.model_copy(update={"url": redis_url}),
    })


def run(args: argparse.Namespace) -> int:
    from serving.commands.serve import serve_gateway
    from serving.local.stack import start_stack

    try:
        overrides: dict[str, object] = {}
        settings = load_config(args.config)
        local = settings.local.model_dump()
        if args.model:
            local["model"] = args.model
        if args.replicas:
            local["vllm_replicas"] = args.replicas
        overrides["local"] = local
        if args.port:
            overrides["server"] = {**settings.server.model_dump(), "port": args.port}
        settings = load_config(args.config, **overrides)
    except ConfigError as exc:
        print(f"cachestack: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with start_stack(settings.local) as stack:
        settings = with_stack(settings, stack.vllm_urls, stack.redis_url)
        print(f"cachestack: gateway on http://{settings.server.host}:{settings.server.port}/v1 "
              f"(model '{stack.served_model}'); Ctrl-C stops everything", file=sys.stderr)
        serve_gateway(settings)
    return 0
