"""The faq scenario's question pool: labelled intents, their paraphrases and near misses, asked with
Zipf-distributed popularity.

A pool file is JSON Lines, one intent a line::

    {"id": "billing.refund_days.30", "paraphrases": ["Can I get a refund within 30 days of purchase?", ...],
     "near_misses": ["billing.refund_days.60", ...], "family": "billing.refund_days", "change": "number"}

Only ``id`` and ``paraphrases`` are required. Paraphrases of one intent need the same answer; a near miss
reads almost the same but needs a different one (an entity, a number or a direction changed). The
shipped pool is ``loadtests/data/faq_intents.jsonl``. The labelled pair files of a paraphrase set
(``{"text_a", "text_b", "label"}`` lines, or a JSON array of ``{"origin", "similar"}``) can be read
instead: see :func:`load_pairs`.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_POOL = Path(__file__).resolve().parent.parent / "data" / "faq_intents.jsonl"
_QUERY_NORM = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Intent:
    id: str
    paraphrases: tuple[str, ...]
    near_misses: tuple[str, ...] = ()
    family: str = ""
    change: str = ""


@dataclass(slots=True)
class Pool:
    intents: list[Intent]
    source: str
    by_id: dict[str, Intent] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {i.id: i for i in self.intents}


def _key(text: str) -> str:
    """Roughly the gateway's query normalisation: two intents must never share a question."""
    return _QUERY_NORM.sub(" ", text.casefold()).strip().rstrip(" ?.")


def _check(intents: list[Intent], source: str) -> Pool:
    if not intents:
        raise ValueError(f"{source}: no intents")
    owner: dict[str, str] = {}
    ids: set[str] = set()
    for intent in intents:
        if intent.id in ids:
            raise ValueError(f"{source}: intent id {intent.id!r} appears twice")
        ids.add(intent.id)
        for text in intent.paraphrases:
            other = owner.setdefault(_key(text), intent.id)
            if other != intent.id:
                raise ValueError(f"{source}: {text!r} belongs to both {other!r} and {intent.id!r}")
    return Pool(intents, source)


def load_pool(path: str | Path = DEFAULT_POOL) -> Pool:
    """Read a JSON Lines pool; a malformed line fails with its line number."""
    intents: list[Intent] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                paraphrases = tuple(str(p) for p in doc["paraphrases"] if str(p).strip())
                if not paraphrases:
                    raise ValueError("no paraphrases")
                intents.append(Intent(str(doc["id"]), paraphrases, tuple(map(str, doc.get("near_misses", ()))),
                                      str(doc.get("family", "")), str(doc.get("change", ""))))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not an intent ({exc})") from None
    return _check(intents, str(path))


def load_pairs(path: str | Path, limit: int = 1000, seed: int = 0) -> Pool:
    """Intents from labelled pairs: the questions joined by "same" pairs (label 1, or origin/similar)
    form one intent; a "different" pair (label 0) between two intents makes them near misses.

    Only intents with at least two questions are kept (a lone question can only ever hit exactly),
    those with a near miss first, then ``limit`` of them chosen with ``seed``. The file is read where
    it is, at run time: licensed pair sets must not be copied into the repository.
    """
    same: list[tuple[str, str]] = []
    different: list[tuple[str, str]] = []
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        same = [(d["origin"], d["similar"]) for d in json.loads(text)]
    else:
        for line in text.splitlines():
            if line.strip():
                d = json.loads(line)
                (same if int(d["label"]) == 1 else different).append((d["text_a"], d["text_b"]))
    parent: dict[str, str] = {}

    def find(q: str) -> str:
        root = parent.setdefault(q, q)
        while root != parent[root]:
            root = parent[root]
        while parent[q] != root:
            parent[q], q = root, parent[q]
        return root

    for a, b in same:
        parent[find(_key(a))] = find(_key(b))
    groups: dict[str, dict[str, str]] = {}
    for q in itertools.chain.from_iterable(same):
        groups.setdefault(find(_key(q)), {}).setdefault(_key(q), q)
    near: dict[str, set[str]] = {}
    for a, b in different:
        ra, rb = find(_key(a)), find(_key(b))
        if ra in groups and rb in groups and ra != rb:
            near.setdefault(ra, set()).add(rb)
            near.setdefault(rb, set()).add(ra)
    roots = sorted(r for r, qs in groups.items() if len(qs) >= 2)
    rng = random.Random(seed)
    rng.shuffle(roots)
    roots.sort(key=lambda r: r not in near)  # stable: shuffled, those with near misses first
    chosen = roots[:limit]
    names = {r: f"pair.{n}" for n, r in enumerate(chosen)}
    intents = [Intent(names[r], tuple(groups[r].values()), tuple(names[x] for x in sorted(near.get(r, ())) if x in names))
               for r in chosen]
    return _check(intents, str(path))


class ZipfSampler:
    """Intents drawn with probability proportional to 1 / rank**s; ranks are a seeded shuffle, so the
    popular intents are not all from one family. A fixed seed gives every worker the same ranking."""

    def __init__(self, pool: Pool, s: float = 1.0, seed: int = 0) -> None:
        order = list(pool.intents)
        random.Random(seed).shuffle(order)
        self.ranked = order
        self._cum = list(itertools.accumulate(1.0 / (rank ** s) for rank in range(1, len(order) + 1)))

    def draw(self, rng: random.Random) -> Intent:
        i = bisect.bisect_left(self._cum, rng.random() * self._cum[-1])
        return self.ranked[min(i, len(self.ranked) - 1)]

    def probability(self, rank: int) -> float:
        """Probability of the intent at 1-based ``rank``."""
        prev = self._cum[rank - 2] if rank > 1 else 0.0
        return (self._cum[rank - 1] - prev) / self._cum[-1]
