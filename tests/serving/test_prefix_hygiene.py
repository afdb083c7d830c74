"""Prefix hygiene: dynamic content at the start of prompts is named once, counted, never logged."""

from __future__ import annotations

import logging
import uuid

import pytest
from prometheus_client import CollectorRegistry, Counter

from serving import prefix_hygiene
from serving.prefix_hygiene import PATTERN_NAMES, PrefixHygiene

SYSTEM = "system: You are the ACME support assistant. Answer briefly and politely."


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def hygiene(registry: CollectorRegistry) -> PrefixHygiene:
    counter = Counter("cachestack_prefix_unstable", "test", ["namespace", "pattern"], registry=registry)
    return PrefixHygiene(window=64, head_chars=256, counter=counter)


def unstable(registry: CollectorRegistry, namespace: str, pattern: str) -> float:
    return registry.get_sample_value("cachestack_prefix_unstable_total", {"namespace": namespace, "pattern": pattern}) or 0.0


def test_timestamp_at_the_start_is_named_once_and_counted(hygiene: PrefixHygiene, registry: CollectorRegistry) -> None:
    results = [
        hygiene.observe("faq", f"system: Current time: 2025-03-0{i + 1}T10:{10 + i}:07Z. {SYSTEM}") for i in range(6)
    ]
    assert results[:2] == [None, None]  # two values are not yet "keeps changing"
    assert results[2] == "timestamp"
    assert results[3:] == [None, None, None]  # warned once
    assert unstable(registry, "faq", "timestamp") == 4  # every affected request counts


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda i: f"Request id: {uuid.uuid4()}\n{SYSTEM}", "uuid"),
        (lambda i: f"trace req_{i:04d}a9f3c2e1 {SYSTEM}", "request_id"),
        (lambda i: f"Today is March {i + 1}, 2025. {SYSTEM}", "date"),
        (lambda i: f"Today is 2025-03-0{i + 1}. {SYSTEM}", "date"),
        (lambda i: f"Session 8812{i}4417 for user. {SYSTEM}", "long_number"),
        (lambda i: f"now={1736000000 + i * 37} {SYSTEM}", "timestamp"),
    ],
)
def test_each_dynamic_pattern_is_recognised(hygiene: PrefixHygiene, make: object, pattern: str) -> None:
    found = {hygiene.observe("ns", make(i)) for i in range(5)} - {None}  # type: ignore[operator]
    assert found == {pattern}
    assert pattern in PATTERN_NAMES


def test_static_prefix_and_varying_questions_are_fine(hygiene: PrefixHygiene, registry: CollectorRegistry) -> None:
    questions = ["Where is my order?", "How do I reset my password?", "Can I pay by card?", "Is there a refund?"]
    for _ in range(5):
        for q in questions:
            assert hygiene.observe("support", f"{SYSTEM}\nuser: {q}") is None
    # a dated prompt whose date never changes is cacheable too
    for _ in range(10):
        assert hygiene.observe("support", f"Policy of 2024-01-01. {SYSTEM}") is None
    assert unstable(registry, "support", "date") == 0


def test_numbers_in_different_templates_do_not_count_together(hygiene: PrefixHygiene) -> None:
    # different static text around each number: different prompts, not one prompt with a changing value
    for i, topic in enumerate(["orders", "billing", "shipping", "returns", "accounts"]):
        assert hygiene.observe("ns", f"Ticket {10000 + i} about {topic}. {SYSTEM}") is None


def test_only_the_head_is_looked_at(hygiene: PrefixHygiene) -> None:
    tail_varies = [f"{SYSTEM * 5}\nuser: it is now 2025-03-0{i + 1}T10:00:00Z" for i in range(5)]
    assert all(hygiene.observe("ns", head) is None for head in tail_varies)  # beyond head_chars: cacheable


def test_warns_once_per_namespace_and_pattern(hygiene: PrefixHygiene) -> None:
    def stamped(i: int) -> str:
        return f"[{i:02d}:15:00] {SYSTEM}"

    assert [hygiene.observe("a", stamped(i)) for i in range(3)][-1] == "timestamp"
    assert [hygiene.observe("b", stamped(i)) for i in range(3)][-1] == "timestamp"  # other namespace: own warning
    assert {hygiene.observe("a", f"{uuid.uuid4()} {SYSTEM}") for _ in range(3)} == {None, "uuid"}  # other pattern


def test_the_earliest_dynamic_item_is_named(hygiene: PrefixHygiene) -> None:
    names = {hygiene.observe("ns", f"id {uuid.uuid4()} at 2025-03-0{i + 1}T10:00:00Z {SYSTEM}") for i in range(4)}
    assert names - {None} == {"uuid"}


def test_no_prompt_text_in_logs(hygiene: PrefixHygiene, caplog: pytest.LogCaptureFixture) -> None:
    secret = "CustomerSecretName"
    with caplog.at_level(logging.DEBUG):
        for i in range(4):
            hygiene.observe("faq", f"{secret} 2025-03-0{i + 1}T10:00:00Z {SYSTEM}")
    assert caplog.records, "expected a warning"
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "timestamp" in text and "faq" in text
    assert secret not in text and "2025-03" not in text and "ACME" not in text


def test_memory_is_bounded(hygiene: PrefixHygiene, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefix_hygiene, "MAX_NAMESPACES", 10)
    for n in range(50):
        for i in range(200):
            hygiene.observe(f"ns{n}", f"{i} {uuid.uuid4()} {SYSTEM}")
    assert len(hygiene._spaces) == 10
    for space in hygiene._spaces.values():
        assert len(space.recent) <= hygiene.window and len(space.raw) <= hygiene.window
        assert len(space.warned) <= len(PATTERN_NAMES)


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        PrefixHygiene(window=1, head_chars=256)
