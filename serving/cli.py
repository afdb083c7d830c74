"""``cachestack``: serve, up, eval, calibrate, kv-plan, cache-plan, purge."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = ("serve", "up", "evaluate", "kv_plan", "cache_plan", "purge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cachestack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"serving.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from serving.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:  # found after loading (tenants and namespace ACLs that do not fit)
        print(f"cachestack: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
