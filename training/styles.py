"""Conversational framings of a question, for training the verifier to read past them.

Quora questions are terse ("How do I learn Python?"); users of a chat app write the same question
inside a frame ("Hey, can you tell me how to learn Python? Thanks!") or as a request ("Explain
recursion"). A verifier trained on Quora alone scores such pairs low even when the question inside is
the same. :func:`styled_pairs` makes positives (a question and a framed or re-formed version of it)
and, so that a frame never becomes a cue for "same", as many negatives framed the same way (one side
of a labelled non-duplicate or a synthetic near-miss gets a frame).

Built on the fly from the tuning questions; nothing is written to the repo.
"""

from __future__ import annotations

import random
import re

PREFIXES = [
    "can you tell me ", "could you tell me ", "i'd like to know ", "i want to know ", "please tell me ",
    "quick question: ", "hey, ", "hi! ", "hello, ", "i was wondering ", "do you know ", "help me understand ",
    "question: ", "i need to know ", "any idea ", "so ", "ok so ", "i'm curious, ", "tell me ",
]
SUFFIXES = [
    " thanks!", " thank you", " please", " please answer briefly.", " can you help?", " any ideas?",
    " in simple terms", " explain please", " thx", " asking for a friend",
]
# (pattern on the normalised question, replacements); group 1 is the rest of the question
FORMS = [
    (r"^what is (.+)$", ["explain {}", "tell me about {}", "what does {} mean", "define {}",
                          "can you explain {}", "what's {}", "give me an explanation of {}"]),
    (r"^what are (.+)$", ["explain {}", "tell me about {}", "list {}", "can you explain {}"]),
    (r"^how do i (.+)$", ["how to {}", "how can i {}", "what's the best way to {}", "steps to {}",
                           "i want to {}, how?", "how would i {}", "what should i do to {}"]),
    (r"^how can i (.+)$", ["how to {}", "how do i {}", "what's the way to {}", "steps to {}",
                            "i want to {}, how?"]),
    (r"^how to (.+)$", ["how do i {}", "how can i {}", "what's the best way to {}", "steps to {}"]),
    (r"^(why .+)$", ["tell me {}", "explain {}", "can you explain {}", "i want to understand {}"]),
    (r"^what is the best way to (.+)$", ["how do i {}", "best way to {}", "how should i {}"]),
    (r"^which is the best (.+)$", ["what is the best {}", "best {}", "recommend the best {}"]),
]
_FORMS = [(re.compile(p), outs) for p, outs in FORMS]


def _strip(q: str) -> str:
    return q.strip().rstrip("?.! ").strip()


def reform(q: str, rng: random.Random) -> str | None:
    """The same question in another grammatical form ("what is X" -> "explain X"), or None."""
    base = _strip(q).lower()
    for pattern, outs in _FORMS:
        m = pattern.match(base)
        if m:
            return rng.choice(outs).format(m.group(1))
    return None


def frame(q: str, rng: random.Random) -> str:
    """The question inside a conversational frame: a prefix, a suffix, or both."""
    body = _strip(q)
    body = body[0].lower() + body[1:] if body else body
    roll = rng.random()
    out = body
    if roll < 0.75:
        out = rng.choice(PREFIXES) + out
    if roll > 0.45:
        out = out + ("?" if rng.random() < 0.5 else "") + rng.choice(SUFFIXES)
    elif rng.random() < 0.6:
        out += "?"
    return out


def restyle(q: str, rng: random.Random) -> str:
    """A re-formed and/or framed version of ``q`` (always different from it)."""
    new = reform(q, rng) if rng.random() < 0.6 else None
    if new is None or rng.random() < 0.5:
        new = frame(new or q, rng)
    return new


def styled_pairs(questions: list[str], negatives: list[tuple[str, str]], n_pos: int, n_neg: int,
                 seed: int = 29) -> list[tuple[str, str, int]]:
    """``n_pos`` positives (q, restyled q) or (restyled q, restyled q), and ``n_neg`` negatives: a
    pair from ``negatives`` (different questions) with one or both sides restyled."""
    rng = random.Random(seed)
    qs = questions[:]
    rng.shuffle(qs)
    out: list[tuple[str, str, int]] = []
    for q in qs[:n_pos]:
        a = restyle(q, rng) if rng.random() < 0.35 else q
        b = restyle(q, rng)
        if a.strip().lower() != b.strip().lower():
            out.append((a, b, 1) if rng.random() < 0.5 else (b, a, 1))
    negs = negatives[:]
    rng.shuffle(negs)
    for a, b in negs[:n_neg]:
        if rng.random() < 0.35:
            a = restyle(a, rng)
        b = restyle(b, rng)
        out.append((a, b, 0) if rng.random() < 0.5 else (b, a, 0))
    return out
