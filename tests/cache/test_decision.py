"""The decision rule the gateway runs: real MiniLM cosines, the shipped verifier, the guards.

Pairs are hand-made here (no QQP text): near-misses that differ by a negation, a number, an entity, a
direction or a time must not hit; paraphrases must.
"""

from __future__ import annotations

import pytest

from cache.decision import Candidate, RuleSettings, ThresholdRule, VerifiedRule, build_rule, shipped_defaults
from cache.embedder import Embedder
from cache.keys import normalise_query

NEAR_MISSES = [
    ("How do I enable 2FA on my account?", "How do I disable 2FA on my account?"),
    ("What was my NEET score of 492 worth?", "What was my NEET score of 385 worth?"),
    ("Can I return an item without a receipt?", "Can I return an item with a receipt?"),
    ("How do I reset my password on the iPhone app?", "How do I reset my password on the Android app?"),
    ("Convert 100 USD to EUR", "Convert 100 EUR to USD"),
    ("What's the weather in Berlin today?", "What's the weather in Berlin tomorrow?"),
    ("What is the capital of Australia?", "What is the capital of Austria?"),
    ("How do I cancel my Netflix subscription?", "How do I cancel my Spotify subscription?"),
    ("Write a poem about cats", "Write a poem about dogs"),
    ("Translate 'good morning' into French", "Translate 'good morning' into German"),
    ("Is the store open on Sunday?", "Is the store open on Monday?"),
    ("How long does shipping take to Canada?", "How long does shipping take to Mexico?"),
]

PARAPHRASES = [
    ("How do I enable 2FA on my account?", "How can I turn on two-factor authentication for my account?"),
    ("What is the capital of France?", "What's the capital city of France?"),
    ("How do I reset my password?", "How can I reset my password?"),
    ("What are the health benefits of green tea?", "What are the benefits of drinking green tea for health?"),
    ("How can I improve my English speaking skills?", "How do I improve my spoken English?"),
    ("What is the best way to learn Python?", "What's the best way to learn Python programming?"),
    ("How do I lose weight fast?", "What is the fastest way to lose weight?"),
    ("Why is the sky blue?", "Why does the sky look blue?"),
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def rule() -> VerifiedRule:
    r = build_rule({"verifier": "default", "guards": True})
    assert isinstance(r, VerifiedRule) and r.verifier is not None
    return r


def item(embedder: Embedder, cached: list[str], new: str) -> tuple[str, list[Candidate]]:
    texts = [normalise_query(t) for t in cached]
    q = normalise_query(new)
    vecs = embedder.encode(texts + [q])
    sims = vecs[:-1] @ vecs[-1]
    cands = [Candidate(f"e{i}", t, float(s)) for i, (t, s) in enumerate(zip(texts, sims, strict=True))]
    return q, sorted(cands, key=lambda c: c.similarity, reverse=True)


def test_near_misses_never_hit_at_defaults(embedder: Embedder, rule: VerifiedRule) -> None:
    settings = shipped_defaults()
    items = [item(embedder, [a], b) for a, b in NEAR_MISSES] + [item(embedder, [b], a) for a, b in NEAR_MISSES]
    decisions = rule.decide(items, settings)
    assert len(decisions) == len(items)
    wrong = [(it[0], d) for it, d in zip(items, decisions, strict=True) if d.hit]
    assert not wrong, wrong


def test_paraphrases_hit_at_defaults(embedder: Embedder, rule: VerifiedRule) -> None:
    settings = shipped_defaults()
    items = [item(embedder, [a], b) for a, b in PARAPHRASES]
    decisions = rule.decide(items, settings)
    hits = sum(d.hit for d in decisions)
    # the rule is tuned for precision first (QQP-calibrated): at least half of these paraphrases hit
    assert hits >= len(PARAPHRASES) // 2, [(it[0], d.score, d.reason) for it, d in zip(items, decisions, strict=True)]
    for d in decisions:
        if d.hit:  # served by the calibrated probability, or by the cross-encoder's confident gate
            assert (d.reason == "verified" and d.score >= settings.verifier_threshold) or d.reason == "confident"


def test_plain_threshold_would_hit_the_near_misses(embedder: Embedder) -> None:
    """The guards and verifier matter: a cosine threshold at the old default serves many near-misses."""
    items = [item(embedder, [a], b) for a, b in NEAR_MISSES]
    hits = sum(d.hit for d in ThresholdRule().decide(items, RuleSettings(threshold=0.80)))
    assert hits >= len(NEAR_MISSES) // 2


def test_top_k_picks_the_candidate_that_verifies(embedder: Embedder, rule: VerifiedRule) -> None:
    # two stored queries are close: one negated (vetoed), one reworded (served)
    q, cands = item(embedder, ["How do I not enable 2FA on my account?",
                               "How can I enable 2FA on my account?"],
                    "How do I enable 2FA on my account?")
    assert all(c.similarity >= shipped_defaults().threshold for c in cands)
    [d] = rule.decide([(q, cands)], shipped_defaults())
    assert d.hit and d.candidate is not None and "not" not in d.candidate.query
    [alone] = rule.decide([(q, [c for c in cands if "not" in c.query])], shipped_defaults())
    assert not alone.hit and alone.reason.startswith("guard")


def test_structural_cases(rule: VerifiedRule) -> None:
    s = RuleSettings(threshold=0.8, verifier_threshold=0.5)
    same = Candidate("x", "how do i reset my password", 0.99)
    low = Candidate("y", "what is a password manager", 0.40)
    d_none, d_low, d_same = rule.decide([("q", []), ("how do i reset my password", [low]),
                                         ("how do i reset my password", [low, same])], s)
    assert not d_none.hit and d_none.reason == "no candidate"
    assert not d_low.hit and d_low.reason == "below threshold"
    assert d_same.hit and d_same.candidate == same
    [veto] = rule.decide([("refund for order 1234", [Candidate("z", "refund for order 1243", 0.98)])], s)
    assert not veto.hit and veto.reason.startswith("guard")


def test_build_rule_variants() -> None:
    assert isinstance(build_rule({"verifier": "none", "guards": False}), ThresholdRule)
    guarded = build_rule({"verifier": "none", "guards": True})
    assert isinstance(guarded, VerifiedRule) and guarded.verifier is None
    [d] = guarded.decide([("enable 2fa", [Candidate("a", "disable 2fa", 0.97)])], RuleSettings(0.9))
    assert not d.hit

    class Cfg:  # an object with the config's attributes, like the gateway's DecisionConfig
        threshold = 0.8
        top_k = 3
        verifier = "default"
        verifier_threshold = 0.42
        guards = True

    r = build_rule(Cfg())
    assert isinstance(r, VerifiedRule) and r.default_verifier_threshold == pytest.approx(0.42)


def test_verifier_path_that_does_not_exist(tmp_path) -> None:  # noqa: ANN001
    from cache.verifier import VerifierError

    with pytest.raises(VerifierError):
        build_rule({"verifier": str(tmp_path / "none-here")})


def test_verifier_scores_the_nearest_survivor_first_and_the_rest_only_when_needed() -> None:
    """A hit costs one verifier pair; the other candidates are scored only when the nearest fails."""
    rule = build_rule({"verifier": "default", "guards": True})
    scored: list[list[tuple[str, str]]] = []
    real = rule.verifier.scores

    def counting(pairs, cosines):  # type: ignore[no-untyped-def]
        scored.append(list(pairs))
        return real(pairs, cosines)

    rule.verifier.scores = counting  # type: ignore[method-assign]
    q = "how can i reset my password"
    good = Candidate("a", "how do i reset my password", 0.93)
    others = [Candidate("b", "how do i reset my router", 0.85), Candidate("c", "how do i reset my phone", 0.84)]
    [d] = rule.decide([(q, [others[1], good, others[0]])], shipped_defaults())
    assert d.hit and d.candidate == good
    assert scored == [[("how do i reset my password", q)]]

    scored.clear()
    far = "what is the best pizza topping"
    [d] = rule.decide([(far, [Candidate("x", "what is the best pizza in naples", 0.86),
                              Candidate("y", "what is the best pasta sauce", 0.82)])], shipped_defaults())
    assert not d.hit
    assert [len(batch) for batch in scored] == [1, 1]  # the nearest first, then the other


# -- long pairs: the verifier reads both whole texts -----------------------------------------

LONG_START = ("I bought a laptop from your online store three weeks ago. It arrived with a cracked screen, the "
              "charger does not fit the socket, and the keyboard is missing two keys. I have photos of the box "
              "and of the damage, and the courier's delivery note says the parcel was left at my door. ")


def test_a_pair_that_differs_only_past_64_tokens_is_judged_on_its_end(embedder: Embedder, rule: VerifiedRule) -> None:
    """The ends differ after ~70 tokens of shared text: a read cut to 64 tokens scores the two pairs alike."""
    assert rule.verifier is not None
    cached = normalise_query(LONG_START + "Can I get a full refund?")
    reworded = normalise_query(LONG_START + "Is a full refund possible?")
    other = normalise_query(LONG_START + "Can I get a replacement unit instead?")
    assert len(rule.verifier.tokenizer.encode(cached, other).ids) > 2 * rule.verifier.meta.max_length
    (_, [c_re]), (_, [c_other]) = item(embedder, [cached], reworded), item(embedder, [cached], other)
    p_re, p_other = rule.verifier.probabilities([(cached, reworded), (cached, other)],
                                                [c_re.similarity, c_other.similarity])
    assert p_re - p_other > 0.2, (p_re, p_other)
    # at a threshold the reworded ending meets, the other ending is still refused
    s = RuleSettings(threshold=0.8, verifier_threshold=float(p_re) - 0.01)
    d_re, d_other = rule.decide([(reworded, [c_re]), (other, [c_other])], s)
    assert d_re.hit and d_re.reason in ("verified", "confident")
    assert not d_other.hit and d_other.reason == "verifier rejected"


def test_a_pair_too_long_to_read_whole_is_a_miss_not_a_truncated_read(rule: VerifiedRule) -> None:
    assert rule.verifier is not None
    long_a = " ".join(["x1"] * 320)  # 959 characters (the semantic tier takes 1,000), 640 tokens
    long_b = long_a + " y1"
    assert len(long_b) <= 1000 and len(rule.verifier.tokenizer.encode(long_a, long_b).ids) > 512
    [p] = rule.verifier.probabilities([(long_a, long_b)], [0.99])
    assert p != p  # NaN: not scored
    [d] = rule.decide([(long_b, [Candidate("a", long_a, 0.99)])], RuleSettings(threshold=0.8, verifier_threshold=0.0))
    assert not d.hit and d.reason == "too long to verify" and d.candidate is not None
    # the same item with a short neighbour that does verify still hits on it
    short = Candidate("b", "x1 x2", 0.95)
    [d] = rule.decide([("x1 x2 x3", [Candidate("a", long_a, 0.99), short])],
                      RuleSettings(threshold=0.8, verifier_threshold=0.0))
    assert d.hit and d.candidate == short
