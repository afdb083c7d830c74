"""Identifiers in a normalised query: strings that must match exactly for two questions to be the same.

An embedding reads "reference code qwertyu" and "reference code zxcvbnm" as the same sentence, and
the number guard sees digits only. What counts as an identifier, found by shape in the normalised
(case-folded) text, so that serving, eval and calibrate share one code path:

- email:     ``name@host.tld``
- url:       ``http(s)://...`` or ``www....`` (scheme, ``www.`` and a trailing ``/`` ignored)
- path:      ``/etc/hosts``, ``~/x``, ``./run.sh``, ``src/app/main.py``, ``c:\\x\\y``
- file:      a name with an extension, or a domain: ``config.yaml``, ``node.js``, ``example.com``
- version:   ``3.10``, ``v2.1.0``, ``v2`` (``3.10`` is not ``3.1``: the number guard reads floats)
- code:      a token mixing letters and digits (``ab-1234``, ``ipv6``, ``sha256``), a run of four or
             more consonants (``zxcvbnm``), ``#`` and what follows, and a word that is no English
             word (outside the shipped tokenizer's whole-word vocabulary) or holds a digit right after
             code/id/ref/ticket/order/invoice/... (``order qwertyu``; ``order status`` is no code)
- quoted:    the text between '...', "...", `...` or curly quotes

Quantities (``10kg``, ``2fa``, ``3rd``, ``1080p``: digits then at most four letters) are left to the
number guard, so "10 kg" and "10kg" agree. An identifier of one query matches when the other query
holds the same string anywhere: as an identifier, as a word, as two adjacent words written together
("ab 1234" for "ab-1234"), or for a quoted string as plain text ("what does carpe diem mean" for
"what does 'carpe diem' mean"). Only an identifier with no match on the other side is a difference.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

_TOKENIZER = Path(__file__).parent / "models" / "verifier" / "tokenizer.json"

_CHUNK = re.compile(r"[^\s,;!?()\[\]{}<>\"`'“”‘’]+")
_TRAIL = ".:-_/"
_EMAIL = re.compile(r"^[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+$")
_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|www\.)\S+$")
_VERSION = re.compile(r"^v?\d+(?:\.\d+)+$|^v\d+$")
_FILE = re.compile(r"^[\w-]{2,}(?:\.[\w-]+)*\.[a-z][a-z0-9]{0,5}$")
_PATH = re.compile(r"^(?:~|\.{1,2}|[a-z]:)?[/\\]?(?:[\w.@+-]+[/\\])*[\w.@+-]*$")
_QUANTITY = re.compile(r"^\d+(?:[.,]\d+)?(?:-?[a-z]+)+$")
_MIXED = re.compile(r"^(?=[\w-]*[a-z])(?=[\w-]*\d)[a-z0-9]+(?:[-_][a-z0-9]+)*$")
_CONSONANTS = re.compile(r"^[bcdfghjklmnpqrstvwxz]{4,}$")
_QUOTED = re.compile(r"\"([^\"]{1,200})\"|`([^`]{1,200})`|“([^”]{1,200})”|‘([^’]{1,200})’"
                     r"|(?<![\w'])'([^']{1,200})'(?![\w'])")
EXTENSIONS = frozenset({
    "com", "org", "net", "io", "dev", "ai", "app", "co", "uk", "de", "fr", "in", "edu", "gov", "txt",
    "log", "csv", "json", "yaml", "yml", "toml", "ini", "cfg", "conf", "xml", "html", "htm", "css", "js",
    "ts", "py", "rb", "go", "rs", "java", "c", "h", "cpp", "sh", "bat", "exe", "dll", "so", "zip", "tar",
    "gz", "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "png", "jpg", "jpeg", "gif", "svg", "mp3",
    "mp4", "mov", "sql", "db", "md", "env", "lock", "pem", "key", "crt", "apk", "dmg", "iso", "msi",
})
CODE_WORDS = frozenset({
    "code", "id", "ref", "reference", "ticket", "order", "case", "invoice", "booking", "confirmation",
    "tracking", "serial", "pnr", "voucher", "coupon", "promo", "sku", "reservation", "account", "no",
    "number", "claim", "policy", "member", "membership", "customer", "transaction", "receipt", "license",
    "licence", "key", "token", "username", "user", "handle", "pin",
})


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """Whole words of the shipped tokenizer's vocabulary (30k WordPiece entries): a word outside it
    is a made-up string (a code, a rare name) rather than an English word."""
    vocab = json.loads(_TOKENIZER.read_text(encoding="utf-8"))["model"]["vocab"]
    return frozenset(w for w in vocab if w.isalpha() and not w.startswith("##"))


def _chunks(text: str) -> list[str]:
    return [c.rstrip(_TRAIL) for c in _CHUNK.findall(text) if c.rstrip(_TRAIL)]


def _canonical(kind: str, s: str) -> str:
    if kind == "url":
        s = re.sub(r"^[a-z][a-z0-9+.-]*://", "", s)
        return s.removeprefix("www.").rstrip("/")
    if kind == "code":
        return re.sub(r"[-_#]", "", s)
    return s


def _kind(chunk: str, after_code_word: bool) -> str | None:
    if "@" in chunk and _EMAIL.match(chunk):
        return "email"
    if _URL.match(chunk):
        return "url"
    if _VERSION.match(chunk):
        return "version"
    if ("/" in chunk or "\\" in chunk) and _PATH.match(chunk) and _is_path(chunk):
        return "path"
    if _is_file(chunk):
        return "file"
    if chunk.startswith("#") and len(chunk) > 1:
        return "code"
    if _QUANTITY.match(chunk):
        return None
    if _MIXED.match(chunk) or _CONSONANTS.match(chunk):
        return "code"
    if after_code_word and chunk.isalnum() and (any(ch.isdigit() for ch in chunk) or chunk not in english_words()):
        return "code"
    return None


def _is_path(chunk: str) -> bool:
    """A slash makes a path only with a root or a file name at its end: not "and/or", "24/7",
    "strangest/weirdest/wildest"."""
    if not any(ch.isalpha() for ch in chunk):
        return False  # a date or a fraction: the number guard's
    if chunk[0] in "/\\~." or re.match(r"^[a-z]:[/\\]", chunk):
        return True
    return _is_file(re.split(r"[/\\]", chunk)[-1])


def _is_file(chunk: str) -> bool:
    """``name.ext`` whose extension is one (``yaml``, ``com``) or no English word: "india.how" is a
    missing space."""
    if not _FILE.match(chunk) or chunk.replace(".", "").isdigit():
        return False
    ext = chunk.rsplit(".", 1)[1]
    return ext in EXTENSIONS or (ext not in english_words() and not ext.isdigit())


def find(text: str) -> set[tuple[str, str]]:
    """(kind, canonical string) of every identifier in a normalised query."""
    found: set[tuple[str, str]] = set()
    for m in _QUOTED.finditer(text):
        inner = " ".join(next(g for g in m.groups() if g is not None).split())
        if inner:
            found.add(("quoted", inner))
    chunks = _chunks(text)
    for i, chunk in enumerate(chunks):
        kind = _kind(chunk, i > 0 and chunks[i - 1].lstrip("#") in CODE_WORDS and chunk not in CODE_WORDS)
        if kind is not None:
            found.add((kind, _canonical(kind, chunk)))
    return found


def _squash(text: str) -> str:
    """Letters and digits only: "roll no. 1" and "roll no.1" hold the same quoted text."""
    return re.sub(r"[\W_]+", "", text)


def _forms(text: str) -> set[str]:
    """Every string an identifier of the other query may match in this one."""
    chunks = _chunks(text)
    forms = set(chunks)
    forms |= {re.sub(r"[-_#]", "", c) for c in chunks}
    forms |= {p for c in chunks for p in re.split(r"[-_/\\]", c) if p}
    forms |= {a + b for a, b in zip(chunks, chunks[1:])}
    forms |= {a + b + c for a, b, c in zip(chunks, chunks[1:], chunks[2:])}
    forms |= {_canonical("url", c) for c in chunks if _URL.match(c)}
    return forms


def _missing(ids: set[tuple[str, str]], other: str) -> list[tuple[str, str]]:
    """The identifiers ``other`` does not hold (see the module docstring for what holds one)."""
    forms = _forms(other)
    squashed = _squash(other)
    out = []
    for kind, s in sorted(ids):
        if kind == "quoted":
            if _squash(s) not in squashed:
                out.append((kind, s))
        elif s not in forms:
            out.append((kind, s))
    return out


def swapped(a: str, b: str) -> tuple[str, str] | None:
    """(kind, string) when each query has an identifier the other lacks: one was swapped for another.

    An identifier on one side only ("how does gsoc work" vs "how does google summer of code work",
    "what does 'carpe diem' mean" vs "what does carpe diem mean") is a detail one query spells out,
    not a different question: it costs recall (measured on QQP, docs/guards.md) and is let through.
    """
    ids_a, ids_b = find(a), find(b)
    if not ids_a or not ids_b:
        return None
    miss_a, miss_b = _missing(ids_a, b), _missing(ids_b, a)
    if miss_a and miss_b:
        return miss_a[0]
    return None
