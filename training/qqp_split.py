"""The deterministic split of qqp_dev.jsonl used to train and check the shipped verifier.

A pair belongs to the *tune* part when ``int(sha256(text_a as UTF-8).hexdigest(), 16) % 10 < 7``
and to the *check* part otherwise. ``text_a`` is hashed exactly as it appears in the file (before
normalisation), so every pair that starts from the same cached question lands in the same part.
Nothing from the file is copied into the repository: scripts read it from the path given.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

DEFAULT_QQP = "/work/shared/data/paraphrase-dev/qqp_dev.jsonl"


def bucket(text_a: str) -> int:
    """The pair's bucket, 0-9, by the SHA-256 of its text_a (training/README.md: 0-5 train, 6 calib, 7-9 check)."""
    return int(hashlib.sha256(text_a.encode("utf-8")).hexdigest(), 16) % 10


def part_of(text_a: str) -> str:
    """'tune' or 'check'."""
    return "tune" if bucket(text_a) < 7 else "check"


def read_pairs(path: str | Path = DEFAULT_QQP, part: str | None = None) -> Iterator[tuple[str, str, int]]:
    """(text_a, text_b, label) for the pairs of ``part`` ('tune', 'check' or None for all)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            a, b, y = row["text_a"], row["text_b"], int(row["label"])
            if part is None or part_of(a) == part:
                yield a, b, y


def write_part(path: str | Path, part: str, out: str | Path) -> int:
    """Write one part as JSONL (to a scratch path such as /tmp, never into the repo)."""
    n = 0
    with open(out, "w", encoding="utf-8") as fh:
        for a, b, y in read_pairs(path, part):
            fh.write(json.dumps({"text_a": a, "text_b": b, "label": y}) + "\n")
            n += 1
    return n


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--qqp", default=DEFAULT_QQP)
    ap.add_argument("--part", choices=["tune", "check"], required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    print(write_part(args.qqp, args.part, args.out), "pairs written to", args.out)
