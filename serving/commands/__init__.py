"""Subcommands of the ``cachestack`` CLI: each module exposes ``register(subparsers)``.

A module's ``register`` adds one or more subparsers and sets ``func`` (returning an exit code) via
``set_defaults``; serving/cli.py lists the modules in COMMAND_MODULES.
"""
