"""The identifier guard (cache/identifiers.py through cache/guards.py): a swapped order id, ticket code,
email, url, path, file name, version or quoted string vetoes a hit; rewordings around them pass."""

from __future__ import annotations

import pytest

from cache import guards, identifiers
from cache.keys import normalise_query

SWAPS = [
    ("Where is my package? Reference code QWERTYU.", "Where is my package? Reference code ZXCVBNM.", "code"),
    ("Status of order AB-1234", "Status of order AB-1243", "code"),
    ("Has ticket INC0042 been closed?", "Has ticket INC0047 been closed?", "code"),
    ("My booking ref is KXQZ, can I change the date?", "My booking ref is PLMN, can I change the date?", "code"),
    ("Cancel order qwertyu", "Cancel order asdfghj", "code"),
    ("Support ticket #A7F3 is still open", "Support ticket #B9K2 is still open", "code"),
    ("How do I configure IPv6 on the router?", "How do I configure IPv4 on the router?", "code"),
    ("Send the invoice to bob@example.com", "Send the invoice to alice@example.com", "email"),
    ("Is https://status.example.com down?", "Is https://status.example.org down?", "url"),
    ("Why does www.shop.com/cart fail to load", "Why does www.shop.com/checkout fail to load", "url"),
    ("What permissions should /etc/ssh/sshd_config have?", "What permissions should /etc/ssh/ssh_config have?", "path"),
    ("Where is ~/.bashrc loaded", "Where is ~/.profile loaded", "path"),
    ("How do I open config.yaml in the editor?", "How do I open settings.json in the editor?", "file"),
    ("Why is report_2024.xlsx read-only?", "Why is report_2023.xlsx read-only?", "file"),
    ("Does the plugin support Python 3.10?", "Does the plugin support Python 3.1?", "version"),
    ("What changed in v2.1.0", "What changed in v2.0.1", "version"),
    ("Translate 'good morning' into French", "Translate 'good night' into French", "quoted"),
    ('What does the error "disk quota exceeded" mean?', 'What does the error "permission denied" mean?', "quoted"),
    ("Why does `git push` fail with 403", "Why does `git pull` fail with 403", "quoted"),
]

KEPT = [
    ("Where is my package? Reference code QWERTYU.", "Reference code QWERTYU: where is my parcel?"),
    ("Status of ticket AB-1234", "What is the status of ticket ab 1234"),
    ("Status of ticket AB-1234", "ticket AB1234 status"),
    ("What does 'carpe diem' mean?", "What is the meaning of carpe diem?"),  # quoted on one side only
    ("How does GSoC work?", "How does Google Summer of Code work?"),  # an acronym spelled out
    ("What is my order status?", "What is the status of my order?"),  # "status" is no code
    ("Can I cancel my order please?", "How do I cancel an order?"),
    ("Lose 10kg in a month", "Lose 10 kg in a month"),  # a quantity, the number guard's
    ("Is 24/7 support included and/or extra?", "Is support 24/7 included, and/or extra?"),
    ("How do I enable 2FA?", "How can I turn on 2FA?"),
    ("Email bob@example.com about the refund", "Write to bob@example.com about my refund"),
    ("Is https://example.com/ down?", "Is example.com down right now?"),
    ("What does roll no.1 mean", "what does roll no. 1 mean"),
    ("I lied to my girlfriend.What should I do", "I lied to my girlfriend, what should I do"),
]


@pytest.mark.parametrize(("a", "b", "kind"), SWAPS)
def test_a_swapped_identifier_vetoes_both_ways(a: str, b: str, kind: str) -> None:
    for x, y in ((a, b), (b, a)):
        reason = guards.identifier_guard(normalise_query(x), normalise_query(y))
        assert reason == f"identifier differs ({kind})", (x, y, reason)
        assert guards.check(normalise_query(x), normalise_query(y)) is not None


@pytest.mark.parametrize(("a", "b"), KEPT)
def test_the_same_identifiers_reworded_pass_both_ways(a: str, b: str) -> None:
    assert guards.identifier_guard(normalise_query(a), normalise_query(b)) is None
    assert guards.identifier_guard(normalise_query(b), normalise_query(a)) is None


def test_what_counts_as_an_identifier() -> None:
    found = identifiers.find(normalise_query(
        "Mail ann@x.io the file /var/log/app.log, build.gradle and v1.2 for ticket QWERTY at https://x.io/a/ "
        "with code 'abc def'"))
    assert found == {("email", "ann@x.io"), ("path", "/var/log/app.log"), ("file", "build.gradle"),
                     ("version", "v1.2"), ("code", "qwerty"), ("url", "x.io/a"), ("quoted", "abc def")}
    assert identifiers.find(normalise_query("what is the best way to learn english, e.g. by reading")) == set()
    assert identifiers.find(normalise_query("my 50-year-old dad wants 4k video at 1080p")) == set()


def test_the_identifier_reason_names_the_kind_not_the_text() -> None:
    reason = guards.check("email bob@example.com", "email alice@example.com")
    assert reason is not None and "bob" not in reason and "alice" not in reason
