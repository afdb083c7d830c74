"""``cachestack purge``: ask a running gateway's admin API to delete cache entries."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("purge", help="delete cache entries through a gateway's admin API")
    p.add_argument("--url", default=os.environ.get("CACHESTACK_URL", "http://127.0.0.1:8080"),
                   help="gateway base URL (env CACHESTACK_URL)")
    p.add_argument("--admin-key-file", help="file holding the admin key (else env CACHESTACK_ADMIN_KEY)")
    for name in ("namespace", "tenant", "model", "version", "key", "similar-to"):
        p.add_argument(f"--{name}")
    p.add_argument("--threshold", type=float, help="with --similar-to: cosine at or above which to purge")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    key = os.environ.get("CACHESTACK_ADMIN_KEY", "")
    if args.admin_key_file:
        with open(args.admin_key_file) as fh:
            key = fh.read().strip()
    if not key:
        print("cachestack: no admin key (--admin-key-file or CACHESTACK_ADMIN_KEY)", file=sys.stderr)
        return 2
    body = {k: v for k, v in {"namespace": args.namespace, "tenant": args.tenant, "model": args.model,
                              "version": args.version, "key": args.key, "similar_to": args.similar_to,
                              "threshold": args.threshold}.items() if v is not None}
    req = urllib.request.Request(args.url.rstrip("/") + "/admin/cache/purge", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            print(json.loads(r.read())["purged"])
            return 0
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        print(f"cachestack: purge failed: HTTP {exc.code}: {message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cachestack: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
