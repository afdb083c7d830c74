"""Cheap lexical guards: veto a semantic hit when two queries differ in something an embedding blurs.

Each guard looks at the two *normalised* queries (cache.keys.normalise_query: case-folded, so no
capitalisation is left to spot names) and returns a reason string when the stored answer cannot be
right for the new query, or None. They only ever veto; they never turn a miss into a hit.

- numbers:   the multisets of numbers differ ("score 492" vs "385 marks", "2 weeks" vs "3 weeks");
             number words up to twenty count as numbers ("two" == "2").
- negation:  one query is negated and the other is not ("can i" vs "can't i", "with" vs "without").
- antonym:   one query has a word and the other its opposite, without the word itself
             ("enable 2fa" vs "disable 2fa", "upload" vs "download", "buy" vs "sell").
- direction: what one query moves from, the other moves to, however worded ("from savings to
             checking" vs "move money to savings from checking", "100 cad in eur" vs "100 eur to cad"),
             or the same words with a different word after a directional one ("faster than java" vs
             "faster than python").
- action:    each query asks for a different thing to be done to the same object, and neither asks
             for the other's ("pause my subscription" vs "cancel my subscription", "unlock my account"
             vs "reset my password"); synonyms share a class ("cancel" == "terminate" == "close").
- time:      the time expressions differ ("today" vs "tomorrow", "last week" vs "next week", "monday" vs
             "friday", "in march" vs "in may").
- identifier: each query holds an identifier (email, url, path, file name, version, code, quoted
             string; cache/identifiers.py) the other lacks ("reference code qwertyu" vs "... zxcvbnm").

The guards were checked on the tuning part of the QQP-style pairs for the recall they cost (see
docs/decision-quality.md); each costs little recall there and catches the near-misses users report.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from cache import identifiers

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
_NUMBER = re.compile(r"(?<![a-z])\d+(?:[.,]\d+)*")

NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "dozen": "12", "half": "0.5",
}

NEGATIONS = {
    "not", "no", "never", "without", "cannot", "can't", "cant", "don't", "dont", "doesn't", "doesnt",
    "didn't", "didnt", "isn't", "isnt", "aren't", "arent", "wasn't", "wasnt", "weren't", "werent",
    "won't", "wont", "wouldn't", "wouldnt", "shouldn't", "shouldnt", "couldn't", "couldnt",
    "haven't", "havent", "hasn't", "hasnt", "hadn't", "hadnt", "mustn't", "neither", "nor", "none",
    "nobody", "nothing", "nowhere", "unable", "n't",
}

_ANTONYM_PAIRS = [
    ("enable", "disable"), ("enabled", "disabled"), ("enabling", "disabling"),
    ("activate", "deactivate"), ("increase", "decrease"), ("increases", "decreases"),
    ("increasing", "decreasing"), ("buy", "sell"), ("buying", "selling"), ("bought", "sold"),
    ("before", "after"), ("upload", "download"), ("uploading", "downloading"), ("import", "export"),
    ("install", "uninstall"), ("installing", "uninstalling"), ("encrypt", "decrypt"),
    ("lock", "unlock"), ("subscribe", "unsubscribe"), ("connect", "disconnect"), ("mount", "unmount"),
    ("block", "unblock"), ("follow", "unfollow"), ("mute", "unmute"), ("pause", "resume"),
    ("add", "remove"), ("adding", "removing"), ("open", "close"), ("start", "stop"), ("win", "lose"),
    ("winning", "losing"), ("gain", "lose"), ("gaining", "losing"), ("best", "worst"),
    ("advantages", "disadvantages"), ("advantage", "disadvantage"), ("pros", "cons"),
    ("male", "female"), ("men", "women"), ("boy", "girl"), ("boys", "girls"), ("husband", "wife"),
    ("boyfriend", "girlfriend"), ("maximum", "minimum"), ("max", "min"), ("highest", "lowest"),
    ("largest", "smallest"), ("biggest", "smallest"), ("most", "least"), ("more", "less"),
    ("positive", "negative"), ("legal", "illegal"), ("possible", "impossible"), ("love", "hate"),
    ("above", "below"), ("inside", "outside"), ("send", "receive"), ("sending", "receiving"),
    ("sent", "received"), ("incoming", "outgoing"), ("inbound", "outbound"), ("hire", "fire"),
    ("rich", "poor"), ("cheap", "expensive"), ("cheapest", "most expensive"), ("success", "failure"),
    ("always", "never"), ("north", "south"), ("east", "west"), ("import", "export"),
    ("deposit", "withdraw"), ("deposits", "withdrawals"), ("credit", "debit"), ("push", "pull"),
    ("upgrade", "downgrade"), ("upgrading", "downgrading"), ("login", "logout"), ("log in", "log out"),
    ("sign in", "sign out"), ("sign up", "sign out"), ("zoom in", "zoom out"), ("check in", "check out"),
    ("turn on", "turn off"), ("switch on", "switch off"), ("online", "offline"), ("visible", "hidden"),
    ("show", "hide"), ("allow", "deny"), ("accept", "reject"), ("approve", "reject"), ("include", "exclude"),
    ("inclusive", "exclusive"), ("public", "private"), ("internal", "external"), ("input", "output"),
    ("ascending", "descending"), ("compress", "decompress"), ("zip", "unzip"), ("encode", "decode"),
    ("serialize", "deserialize"), ("lowercase", "uppercase"), ("first", "last"), ("earliest", "latest"),
    ("oldest", "newest"), ("older", "newer"), ("faster", "slower"), ("better", "worse"),
    ("higher", "lower"), ("bigger", "smaller"), ("larger", "smaller"), ("longer", "shorter"),
    ("hot", "cold"), ("true", "false"), ("pass", "fail"), ("passed", "failed"), ("valid", "invalid"),
    ("safe", "unsafe"), ("healthy", "unhealthy"), ("happy", "unhappy"), ("like", "dislike"),
    ("agree", "disagree"), ("forward", "backward"), ("prefix", "suffix"), ("client", "server"),
    ("sender", "recipient"), ("buyer", "seller"), ("employer", "employee"), ("landlord", "tenant"),
    ("teacher", "student"), ("parent", "child"), ("parents", "children"), ("mother", "father"),
    ("import", "export"), ("arrival", "departure"), ("arrive", "depart"), ("entry", "exit"),
    ("refund", "charge"), ("overpaid", "underpaid"), ("overweight", "underweight"),
    ("overestimate", "underestimate"), ("maximize", "minimize"), ("morning", "evening"),
    ("logged in", "logged out"), ("logged in", "log out"), ("log in", "logged out"),
    ("signed in", "signed out"), ("signed in", "sign out"), ("sign in", "signed out"),
    ("dark", "light"), ("freeze", "unfreeze"), ("pause", "unpause"), ("archive", "unarchive"),
    ("pin", "unpin"), ("hide", "unhide"), ("link", "unlink"), ("pair", "unpair"), ("publish", "unpublish"),
    ("register", "unregister"), ("friend", "unfriend"), ("suspend", "unsuspend"), ("ban", "unban"),
]
ANTONYMS: dict[str, set[str]] = {}
for _a, _b in _ANTONYM_PAIRS:
    ANTONYMS.setdefault(_a, set()).add(_b)
    ANTONYMS.setdefault(_b, set()).add(_a)

TIME_GROUPS = [
    ("today", "tomorrow", "yesterday", "tonight"),
    ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "weekend", "weekday"),
    ("january", "february", "march", "april", "june", "july", "august", "september", "october",
     "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
     "nov", "dec"),
    ("morning", "afternoon", "evening", "night", "midnight", "noon"),
    ("spring", "summer", "autumn", "fall", "winter"),
]
_TIME_WORDS = {w for g in TIME_GROUPS for w in g}
_RELATIVE = re.compile(r"\b(this|next|last|previous|past|coming|upcoming)\s+(week|month|year|quarter|weekend|season|time)\b")
_AGO = re.compile(r"\b(ago|from now|in the past|in the future)\b")

DIRECTIONAL = {"to", "from", "into", "than", "onto", "towards", "toward"}
_DIR_SYNONYM = {"into": "to", "onto": "to", "towards": "to", "toward": "to"}
STOPWORDS = {
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "do", "does", "did", "i", "you", "we",
    "my", "your", "our", "it", "its", "of", "in", "on", "at", "for", "with", "and", "or", "how", "what",
    "which", "why", "who", "when", "where", "can", "should", "could", "would", "will", "me", "some",
    "any", "there", "this", "that", "these", "those", "get", "way", "ways", "best", "good", "way",
    "one", "make", "much", "many", "as", "by", "if", "so", "about", "have", "has", "had",
} - {"one"}


def tokens(text: str) -> list[str]:
    toks = _TOKEN.findall(text.casefold().replace("\u2019", "'"))
    return [t[:-2] if t.endswith("'s") else t for t in toks]


def numbers(text: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for m in _NUMBER.finditer(text):
        raw = m.group().replace(",", "")
        try:
            val = float(raw)
            out[str(int(val)) if val.is_integer() else str(val)] += 1
        except ValueError:
            out[raw] += 1
    for tok in tokens(text):
        if tok in NUMBER_WORDS:
            out[NUMBER_WORDS[tok]] += 1
    return out


def number_guard(a: str, b: str) -> str | None:
    na, nb = numbers(a), numbers(b)
    if na != nb:
        return "numbers differ"
    return None


def _negated(text: str) -> bool:
    count = 0
    for tok in tokens(text):
        if tok in NEGATIONS or tok.endswith("n't"):
            count += 1
    return count % 2 == 1


def negation_guard(a: str, b: str) -> str | None:
    if _negated(a) != _negated(b):
        return "negation differs"
    return None


def _phrases(toks: list[str]) -> set[str]:
    return set(toks) | {f"{x} {y}" for x, y in zip(toks, toks[1:])}


def antonym_guard(a: str, b: str) -> str | None:
    pa, pb = _phrases(tokens(a)), _phrases(tokens(b))
    for w in pa - pb:
        opposite = ANTONYMS.get(w)
        if opposite and (opposite & pb) and not (opposite & pa):
            return f"opposite words ({w} / {sorted(opposite & pb)[0]})"
    return None


def _content(toks: list[str]) -> Counter[str]:
    return Counter(t for t in toks if t.isalnum() and t not in STOPWORDS and t not in DIRECTIONAL)


#: verbs whose object becomes something else: what is given, and what is wanted after "for"/"into"/"to"
_CONVERT_VERBS = ("exchange", "swap", "trade", "replace", "substitute", "convert", "turn", "transform", "translate")
_WANTED_MARKERS = {"for", "with", "into", "to"}


def _inflections(word: str) -> set[str]:
    """The word and its regular verb forms (cancel: cancels, cancelled, canceled, cancelling, ...)."""
    forms = {word, word + "s", word + "es", word + "ed", word + "d", word + "ing"}
    if word.endswith("e"):
        forms |= {word[:-1] + "ing", word[:-1] + "ed"}
    if word[-1] in "lpgt" and word[-2] in "aeiou":
        forms |= {word + word[-1] + "ed", word + word[-1] + "ing"}
    return forms


_CONVERT_FORMS = {form for verb in _CONVERT_VERBS for form in _inflections(verb)}


def _singular(w: str) -> str:
    if len(w) <= 3 or not w.endswith("s") or w.endswith("ss"):
        return w
    if w.endswith("ies"):
        return w[:-3] + "y"
    if w.endswith(("sses", "shes", "ches", "xes", "zes")):
        return w[:-2]
    return w[:-1]


_PARTICLES = {"out", "up", "down", "off", "over", "back", "around", "away"}


def _role(words: list[str]) -> str | None:
    """The first object word among the next few words: no stopword, particle or number."""
    for w in words[:4]:
        if not w.isdigit() and w not in STOPWORDS and w not in DIRECTIONAL and w not in _NOT_OBJECT \
                and w not in _PARTICLES:
            return _singular(w)
    return None


def _exchange(toks: list[str]) -> tuple[str, str] | None:
    """(given, wanted) of "exchange a large for a small", "convert a png into a jpg", or None."""
    words = [w for w in toks if w.isalnum()]
    for i, t in enumerate(words):
        if t in _CONVERT_FORMS:
            given = _role(words[i + 1 :])
            if given is None:
                return None
            rest = words[i + 1 :]
            at = next(k for k, w in enumerate(rest) if _singular(w) == given)
            for j, w in enumerate(rest[at + 1 : at + 5]):
                if w in _WANTED_MARKERS:
                    wanted = _role(rest[at + 2 + j :])
                    return (given, wanted) if wanted is not None else None
            return None
    return None


def _objects(toks: list[str]) -> Counter[tuple[str, str]]:
    """(directional word, the first content word after it) for every directional word."""
    out: Counter[tuple[str, str]] = Counter()
    for i, t in enumerate(toks):
        if t in DIRECTIONAL:
            for nxt in toks[i + 1 :]:
                if nxt.isalnum() and nxt not in STOPWORDS and nxt not in DIRECTIONAL:
                    out[(_DIR_SYNONYM.get(t, t), nxt)] += 1
                    break
    return out


_SOURCE = {"from"}
_TARGET = {"to", "into", "onto", "towards", "toward"}
_AMOUNT_IN = re.compile(r"\b\d+(?:[.,]\d+)?\s+([a-z]+)\s+(?:in|to|into)\s+([a-z]+)")
_NOT_OBJECT = {"new", "old", "current", "other", "main", "own", "another", "different", "all", "everything"}


def _route(toks: list[str], text: str) -> tuple[str | None, str | None]:
    """(source, target): the first content word after "from" and after "to"/"into", or of
    "100 usd in eur" (an amount's unit and what it becomes)."""
    source = target = None
    for i, t in enumerate(toks):
        if t in _SOURCE or t in _TARGET:
            nxt = next((w for w in toks[i + 1 :] if w.isalpha() and w not in STOPWORDS
                        and w not in DIRECTIONAL and w not in _NOT_OBJECT), None)
            if t in _SOURCE and source is None:
                source = nxt
            elif t in _TARGET and target is None:
                target = nxt
    m = _AMOUNT_IN.search(text)
    if m and source is None and target is None:
        source, target = m.group(1), m.group(2)
    return source, target


def _ends(toks: list[str]) -> tuple[str, str] | None:
    """The content words just before and just after the last "to"/"into" ("yen to euros"), or None."""
    at = max((i for i, t in enumerate(toks) if t in _TARGET), default=None)
    if at is None:
        return None

    def word(t: str) -> bool:
        return t.isalnum() and t not in STOPWORDS and t not in DIRECTIONAL

    before = next((_singular(t) for t in reversed(toks[max(0, at - 2) : at]) if word(t)), None)
    after = next((_singular(t) for t in toks[at + 1 : at + 3] if word(t)), None)
    return (before, after) if before is not None and after is not None else None


def direction_guard(a: str, b: str) -> str | None:
    ta, tb = tokens(a), tokens(b)
    (sa, da), (sb, db) = _route(ta, a), _route(tb, b)
    # reworded, but what one moves from the other moves to ("from savings to checking" vs
    # "move funds into savings from checking")
    if (sa is not None and sa == db and sa != da) or (da is not None and da == sb and sa != da):
        return f"direction differs ({sa} / {da})"
    xa, xb = _exchange(ta), _exchange(tb)
    if xa is not None and xb is not None and xa != xb and (xa[0] == xb[1] or xa[1] == xb[0]):
        return f"direction differs ({xa[0]} for {xa[1]})"  # what one gives, the other wants
    ea, eb = _ends(ta), _ends(tb)
    if ea is not None and eb is not None and ea[0] != ea[1] and ea == eb[::-1]:
        return f"direction differs ({ea[0]} to {ea[1]})"  # "yen to euros" / "rate for euros to yen"
    if ta == tb or _content(ta) != _content(tb):
        return None  # not a reordering of the same words; the other checks judge it
    oa, ob = _objects(ta), _objects(tb)
    markers_a = Counter(m for m, _ in oa.elements())
    markers_b = Counter(m for m, _ in ob.elements())
    if markers_a == markers_b and oa != ob:
        # same words, but a different word follows "to"/"from"/"than": roles swapped
        diff = sorted((oa - ob) + (ob - oa))
        return f"direction differs ({' '.join(diff[0])})"
    return None


#: things to be done to an account, a subscription, an order or a card that need different answers;
#: the words of one class are synonyms here. Only verbs whose answers differ are listed: broad verbs
#: ("change", "use", "get") are not actions for this guard.
ACTION_CLASSES: dict[str, tuple[str, ...]] = {
    "end": ("cancel", "terminate", "close", "delete", "remove", "deactivate", "unsubscribe", "discontinue",
            "erase", "cancellation", "deletion", "termination"),
    "pause": ("pause", "suspend"),
    "resume": ("resume", "reactivate", "unpause", "restart"),
    "lock": ("lock",),
    "unlock": ("unlock",),
    "reset": ("reset", "recover"),
    "track": ("track", "trace"),
    "return": ("return",),
    "refund": ("refund", "reimburse", "reimbursement"),
    "exchange": ("exchange", "swap"),
    "transfer": ("transfer",),
    "renew": ("renew", "renewal"),
    "postpone": ("postpone", "reschedule", "delay"),
    "dispute": ("dispute", "chargeback"),
}


_ACTION_OF: dict[str, str] = {form: cls for cls, words in ACTION_CLASSES.items() for w in words
                               for form in _inflections(w)}


def _actions(toks: list[str]) -> set[str]:
    found = {_ACTION_OF[t] for t in toks if t in _ACTION_OF}
    found |= {"return" for x, y in zip(toks, toks[1:]) if x in {"send", "sending", "sent"} and y == "back"}
    return found


def action_guard(a: str, b: str) -> str | None:
    """Each query asks for an action the other does not ("event cancelled, refund?" vs "event
    postponed, refund?"); an action on one side only (a detail left out) passes."""
    xa, xb = _actions(tokens(a)), _actions(tokens(b))
    if xa - xb and xb - xa:
        return f"action differs ({sorted(xa - xb)[0]} / {sorted(xb - xa)[0]})"
    return None


def _times(text: str) -> set[str]:
    toks = tokens(text)
    found = {t for t in toks if t in _TIME_WORDS}
    if "may" in toks:  # the month, not the verb: "in may", "may 2024", "may 5"
        i = toks.index("may")
        if (i > 0 and toks[i - 1] in {"in", "of", "since", "until", "during", "early", "late"}) or (
            i + 1 < len(toks) and toks[i + 1].isdigit()
        ):
            found.add("may")
    found |= {" ".join(m.groups()) for m in _RELATIVE.finditer(text.casefold())}
    found |= {m.group(1) for m in _AGO.finditer(text.casefold())}
    return found


def time_guard(a: str, b: str) -> str | None:
    ta, tb = _times(a), _times(b)
    if ta != tb:
        return "time differs"
    return None


def identifier_guard(a: str, b: str) -> str | None:
    found = identifiers.swapped(a, b)
    if found is not None:
        return f"identifier differs ({found[0]})"  # the kind only: reasons are logged, queries are not
    return None


GUARDS: dict[str, Callable[[str, str], str | None]] = {
    "numbers": number_guard,
    "negation": negation_guard,
    "antonym": antonym_guard,
    "direction": direction_guard,
    "action": action_guard,
    "time": time_guard,
    "identifier": identifier_guard,
}


def check(a: str, b: str, enabled: frozenset[str] | None = None) -> str | None:
    """The first guard that vetoes the pair (its reason), or None when every guard lets it pass."""
    for name, guard in GUARDS.items():
        if enabled is not None and name not in enabled:
            continue
        reason = guard(a, b)
        if reason:
            return reason
    return None
