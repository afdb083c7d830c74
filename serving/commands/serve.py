"""``cachestack serve --config FILE``: the gateway alone, in front of vLLM and Redis you run."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from serving.config import ConfigError, Settings, load_config


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the gateway (upstreams and Redis from the config)")
    p.add_argument("--config", help="YAML config file (env CACHESTACK_* overrides it)")
    p.add_argument("--host", help="overrides server.host")
    p.add_argument("--port", type=int, help="overrides server.port")
    p.set_defaults(func=run)


def _stopped(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def serve_gateway(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the gateway until SIGINT/SIGTERM: uvicorn then stops accepting, lets in-flight requests
    finish for ``server.shutdown_grace_s`` (cancelling what is left) and runs the lifespan shutdown
    (background stores drained). uvicorn raises the signal again once it is done; for SIGTERM that
    ends the process with status 0, since a drained stop is not a failure."""
    import uvicorn

    from serving.app import create_app

    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(create_app(settings), **uvicorn_options(settings, host, port))


def uvicorn_options(settings: Settings, host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """How the gateway's uvicorn runs: one worker, uvloop and httptools, idle client connections kept
    ``server.keep_alive_s`` (uvicorn's own default, 5 s, is shorter than most clients' pools keep them,
    so requests raced its close and were reset)."""
    return {"host": host or settings.server.host, "port": port or settings.server.port, "loop": "uvloop",
            "http": "httptools", "access_log": settings.server.access_log, "log_level": "info",
            "timeout_graceful_shutdown": settings.server.shutdown_grace_s,
            "timeout_keep_alive": settings.server.keep_alive_s}


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print(f"cachestack: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_gateway(settings, args.host, args.port)
    return 0
