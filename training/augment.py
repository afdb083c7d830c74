"""Synthetic near-miss pairs made from the tuning questions, so the verifier learns that a changed
entity, number, time, direction or polarity is a different question, while harmless rewording is not.

Every pair is built on the fly from the questions of the tuning part; nothing is written to the repo.
"""

from __future__ import annotations

import random
import re

ANTONYMS = [
    ("enable", "disable"), ("increase", "decrease"), ("buy", "sell"), ("before", "after"),
    ("upload", "download"), ("import", "export"), ("start", "stop"), ("open", "close"),
    ("add", "remove"), ("install", "uninstall"), ("win", "lose"), ("best", "worst"),
    ("advantages", "disadvantages"), ("pros", "cons"), ("male", "female"), ("men", "women"),
    ("good", "bad"), ("cheap", "expensive"), ("maximum", "minimum"), ("first", "last"),
    ("more", "less"), ("positive", "negative"), ("legal", "illegal"), ("possible", "impossible"),
    ("love", "hate"), ("encrypt", "decrypt"), ("lock", "unlock"), ("subscribe", "unsubscribe"),
    ("connect", "disconnect"), ("gain", "lose"), ("above", "below"), ("inside", "outside"),
    ("send", "receive"), ("hire", "fire"), ("rich", "poor"), ("easy", "hard"), ("old", "new"),
    ("fast", "slow"), ("high", "low"), ("long", "short"), ("hot", "cold"), ("true", "false"),
    ("success", "failure"), ("always", "never"), ("north", "south"), ("east", "west"),
    ("left", "right"), ("up", "down"), ("in", "out"), ("on", "off"), ("with", "without"),
]
TIME_WORDS = [
    ["today", "tomorrow", "yesterday"], ["this week", "next week", "last week"],
    ["this month", "next month", "last month"], ["this year", "next year", "last year"],
    ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"],
    ["january", "february", "march", "april", "may", "june", "july", "august", "september",
     "october", "november", "december"],
    ["morning", "evening", "night"],
]
REWORDINGS = [
    ("how do i", "how can i"), ("how can i", "how do i"), ("what is", "what's"), ("what's", "what is"),
    ("what are", "which are"), ("is it possible to", "can i"), ("can i", "is it possible to"),
    ("how to", "how do you"), ("best way", "easiest way"), ("should i", "do i need to"),
]
NUM = re.compile(r"\d+(?:[.,]\d+)?")
NEG_INSERT = [(r"\bis\b", "is not"), (r"\bcan\b", "cannot"), (r"\bdo\b", "don't"), (r"\bshould\b", "shouldn't"),
              (r"\bwill\b", "won't"), (r"\bdoes\b", "doesn't"), (r"\bare\b", "aren't")]
WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


def _sub_word(text: str, old: str, new: str) -> str | None:
    pat = re.compile(rf"\b{re.escape(old)}\b", re.IGNORECASE)
    if not pat.search(text):
        return None
    return pat.sub(new, text, count=1)


def number_change(q: str, rng: random.Random) -> str | None:
    m = list(NUM.finditer(q))
    if not m:
        return None
    hit = rng.choice(m)
    old = hit.group()
    try:
        val = float(old.replace(",", ""))
    except ValueError:
        return None
    new = val + rng.choice([1, 2, 3, 5, 10, -1, -2]) if val > 3 else val + rng.choice([1, 2, 3])
    new_s = str(int(new)) if float(new).is_integer() else f"{new:.1f}"
    if new_s == old:
        return None
    return q[: hit.start()] + new_s + q[hit.end():]


def antonym_swap(q: str, rng: random.Random) -> str | None:
    pairs = ANTONYMS[:]
    rng.shuffle(pairs)
    for a, b in pairs:
        if len(a) <= 3 and rng.random() < 0.7:  # short particles: rarer
            continue
        for old, new in ((a, b), (b, a)):
            out = _sub_word(q, old, new)
            if out is not None:
                return out
    return None


def time_change(q: str, rng: random.Random) -> str | None:
    groups = TIME_WORDS[:]
    rng.shuffle(groups)
    for group in groups:
        for w in group:
            out = _sub_word(q, w, rng.choice([x for x in group if x != w]))
            if out is not None:
                return out
    years = list(re.finditer(r"\b(19|20)\d\d\b", q))
    if years:
        y = rng.choice(years)
        return q[: y.start()] + str(int(y.group()) + rng.choice([-2, -1, 1, 2])) + q[y.end():]
    return None


def negate(q: str, rng: random.Random) -> str | None:
    for pat, rep in rng.sample(NEG_INSERT, len(NEG_INSERT)):
        if re.search(pat, q, re.IGNORECASE):
            return re.sub(pat, rep, q, count=1, flags=re.IGNORECASE)
    return None


def direction_swap(q: str, rng: random.Random) -> str | None:
    m = re.search(r"\bfrom ([\w.+#-]+(?: [\w.+#-]+)?) to ([\w.+#-]+(?: [\w.+#-]+)?)", q, re.IGNORECASE)
    if m:
        return q[: m.start()] + f"from {m.group(2)} to {m.group(1)}" + q[m.end():]
    m = re.search(r"\b([\w.+#-]+) to ([\w.+#-]+)\b", q)
    if m and m.group(1).lower() not in {"how", "want", "need", "going", "have", "able", "way", "is", "it"}:
        return None
    return None


def entity_swap(q: str, vocab: list[str], rng: random.Random) -> str | None:
    """Replace one capitalised (non-initial) or long content word with another from the corpus."""
    words = [m for m in WORD.finditer(q)]
    cands = [m for i, m in enumerate(words)
             if ((i > 0 and m.group()[0].isupper() and q[max(0, m.start() - 2):m.start()].strip() not in {".", "?", "!"})
                 or len(m.group()) >= 7)]
    if not cands:
        return None
    m = rng.choice(cands)
    new = rng.choice(vocab)
    if new.lower() == m.group().lower():
        return None
    return q[: m.start()] + new + q[m.end():]


def reword(q: str, rng: random.Random) -> str | None:
    for old, new in rng.sample(REWORDINGS, len(REWORDINGS)):
        out = _sub_word(q, old, new)
        if out is not None:
            return out
    return None


def swap_symmetric(q: str, rng: random.Random) -> str | None:
    """'difference between X and Y' / 'X vs Y' asked the other way round: the same question."""
    m = re.search(r"\b(?:between|vs\.?|versus) ([\w+#.-]+) (and|vs\.?|or) ([\w+#.-]+)\s*\??$", q, re.IGNORECASE)
    if m:
        return q[: m.start(1)] + f"{m.group(3)} {m.group(2)} {m.group(1)}" + q[m.end(3):]
    return None


def synthetic_pairs(questions: list[str], n_neg: int, n_pos: int, seed: int = 13) -> list[tuple[str, str, int]]:
    """About ``n_neg`` near-miss negatives and ``n_pos`` harmless-rewording positives."""
    rng = random.Random(seed)
    vocab = sorted({w for q in questions for i, w in enumerate(WORD.findall(q)) if i > 0 and w[0].isupper() and len(w) > 2})
    vocab += sorted({w for q in questions for w in WORD.findall(q) if len(w) >= 7})[:20000]
    makers = [number_change, antonym_swap, time_change, negate, direction_swap]
    out: list[tuple[str, str, int]] = []
    qs = questions[:]
    rng.shuffle(qs)
    i = 0
    while len(out) < n_neg and i < len(qs) * 3:
        q = qs[i % len(qs)]
        i += 1
        kind = rng.random()
        if kind < 0.45:
            new = entity_swap(q, vocab, rng)
        else:
            new = rng.choice(makers)(q, rng)
        if new and new.strip().lower() != q.strip().lower():
            out.append((q, new, 0) if rng.random() < 0.5 else (new, q, 0))
    pos: list[tuple[str, str, int]] = []
    i = 0
    while len(pos) < n_pos and i < len(qs) * 3:
        q = qs[-1 - (i % len(qs))]
        i += 1
        new = swap_symmetric(q, rng) or reword(q, rng)
        if new and new != q:
            pos.append((q, new, 1))
    return out + pos
