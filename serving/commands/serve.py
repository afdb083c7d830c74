"""``cachestack serve --config FILE``: the gateway alone, in front of vLLM and Redis you run."""

from __future__ import annotations

import argparse
import logging
import sys

from serving.config import ConfigError, load_config


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the gateway (upstreams and Redis from the config)")
    p.add_argument("--config", help="YAML config file (env CACHESTACK_* overrides it)")
    p.add_argument("--host", help="overrides server.host")
    p.add_argument("--port", type=int, help="overrides server.port")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from serving.app import create_app

    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print(f"cachestack: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=args.host or settings.server.host, port=args.port or settings.server.port,
                loop="uvloop", http="httptools", access_log=settings.server.access_log, log_level="info",
                timeout_graceful_shutdown=30)
    return 0
