"""Router: prefix affinity, multi-turn stickiness, spread, bounded load, ejection, ring changes."""

from __future__ import annotations

import collections
import math

import pytest
from prometheus_client import CollectorRegistry

from serving.config import RoutingConfig, UpstreamConfig
from serving.router import HashRing, NoReplica, Replica, Router, affinity_text
from serving.vllm_metrics import VllmSnapshot

URLS4 = [f"http://10.0.0.{i}:8000" for i in range(1, 5)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_router(urls: list[str] = URLS4, clock: FakeClock | None = None, **routing: object) -> Router:
    cfg = UpstreamConfig(urls=urls, routing=RoutingConfig(**routing))
    return Router(cfg, clock=clock or FakeClock())


def chat(system: str, *turns: str) -> dict[str, object]:
    """A chat body: system prompt, then alternating user/assistant turns."""
    messages: list[dict[str, object]] = [{"role": "system", "content": system}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return {"model": "smollm2", "messages": messages}


def route(router: Router, affinity: str) -> Replica:
    replica = router.choose(affinity)
    router.release(replica, ok=True)
    return replica


# -- affinity text ------------------------------------------------------------------------------


def test_affinity_text_is_stable_across_turns() -> None:
    t1 = affinity_text(chat("Be terse.", "What is APC?"))
    t2 = affinity_text(chat("Be terse.", "What is APC?", "Prefix caching.", "Why does it help?"))
    t3 = affinity_text(chat("Be terse.", "What is APC?", "Prefix caching.", "Why?", "Reuse.", "And routing?"))
    assert t1 == t2 == t3
    assert "Be terse." in t1 and "What is APC?" in t1
    assert "Why does it help?" not in t2


def test_affinity_text_separates_what_vllm_would_not_share() -> None:
    base = chat("Be terse.", "Hello")
    assert affinity_text(base) != affinity_text(chat("Be verbose.", "Hello"))
    assert affinity_text(base) != affinity_text(chat("Be terse.", "Goodbye"))
    assert affinity_text(base) != affinity_text({**base, "model": "other"})
    assert affinity_text(base) != affinity_text({**base, "cache_salt": "tenant-b"})
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {}}}]
    with_tools = affinity_text({**base, "tools": tools})
    assert "get_time" in with_tools
    assert with_tools.index("get_time") < with_tools.index("user:Hello")


def test_affinity_text_content_parts_and_completions() -> None:
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]}
    assert "user:Hi there" in affinity_text(parts)
    assert affinity_text({"prompt": "Once upon a time"}) == "Once upon a time"
    assert affinity_text({"model": "m", "prompt": "x"}).endswith("\nx")
    assert affinity_text({"prompt": [1, 2, 3]}) == "[1, 2, 3]"


def test_affinity_text_of_responses_requests() -> None:
    one = {"model": "m", "instructions": "Be terse.", "input": "What is APC?"}
    assert affinity_text(one) == "model=m\nBe terse.\nWhat is APC?"
    turns = [{"role": "user", "content": [{"type": "input_text", "text": "What is APC?"}]},
             {"role": "assistant", "content": "Prefix caching."}]
    t1 = affinity_text({"model": "m", "instructions": "Be terse.", "input": turns[:1]})
    t2 = affinity_text({"model": "m", "instructions": "Be terse.",
                        "input": [*turns, {"role": "user", "content": "Why?"}]})
    assert t1 == t2 and "user:What is APC?" in t1 and "Why?" not in t2
    assert affinity_text({**one, "cache_salt": "b"}) != affinity_text(one)


# -- prefix-aware --------------------------------------------------------------------------------


def test_same_prefix_same_replica() -> None:
    router = make_router()
    key = affinity_text(chat("You are a support agent for ACME.", "My order is late"))
    first = route(router, key)
    assert all(route(router, key) is first for _ in range(50))
    assert first is router.owner(key)


def test_multi_turn_conversation_sticks_to_one_replica() -> None:
    router = make_router(prefix_chars=64)  # short window: the conversation quickly outgrows it
    history = ["Tell me about prefix caching in vLLM, in detail please."]
    landed = set()
    for turn in range(8):
        landed.add(route(router, affinity_text(chat("You are a helpful assistant.", *history))).url)
        history += [f"answer {turn} " * 20, f"follow-up question {turn}"]
    assert len(landed) == 1


def test_long_shared_system_prompt_beyond_prefix_chars_shares_a_replica() -> None:
    router = make_router(prefix_chars=256)
    system = "You are the ACME assistant. " * 40  # > prefix_chars: every conversation shares its head
    owners = {route(router, affinity_text(chat(system, f"question {i}"))).url for i in range(30)}
    assert len(owners) == 1


def test_distribution_over_many_prefixes_is_roughly_even() -> None:
    router = make_router()
    counts = collections.Counter(route(router, f"system: prompt number {i}\nuser: hi").url for i in range(20000))
    assert set(counts) == set(URLS4)
    for url in URLS4:
        assert 0.15 < counts[url] / 20000 < 0.35, counts


HOT = "system: one very hot shared system prompt, longer than prefix_chars " * 2


def conv(i: int) -> str:
    """Conversation i of the hot system prompt: same ring key (prefix_chars=64), own session."""
    return f"{HOT}\nuser: conversation {i}"


def test_bounded_load_spills_to_next_on_ring_and_comes_back() -> None:
    router = make_router(load_factor=1.25, prefix_chars=64)
    owner = router.owner(conv(0))
    assert owner is not None and all(router.owner(conv(i)) is owner for i in range(40))
    held = [router.choose(conv(i)) for i in range(40)]  # none released: all in flight at once
    total = len(held)
    limit = max(math.ceil(1.25 * total / 4), total // 4 + 1)
    loads = {r.url: r.in_flight for r in router.replicas()}
    assert max(loads.values()) <= limit
    assert loads[owner.url] == max(loads.values())  # the owner keeps the largest share
    assert sum(r.spilled for r in router.replicas()) > 0
    ring_order = list(router._ring.walk(conv(0)[:64]))
    # the first spill goes to the next replica on the ring, not a random one
    first_other = next(r for r in held if r is not owner)
    assert first_other.url == ring_order[1]
    for r in held:
        router.release(r, ok=True)
    assert route(router, conv(1000)) is owner  # a new conversation: back to the owner
    spilled_conv = next(i for i, r in enumerate(held) if r is not owner)
    # a spilled conversation stays where its history is cached, now that the owner is idle too
    assert route(router, conv(spilled_conv)) is held[spilled_conv]


def test_session_memory_is_bounded() -> None:
    router = make_router(prefix_chars=64)
    router._sessions_max = 100
    for i in range(1000):
        route(router, conv(i))
    assert len(router._sessions) == 100


def test_bounded_load_does_not_spill_at_low_concurrency() -> None:
    router = make_router(urls=URLS4[:2], load_factor=1.25)
    key = "system: warm prefix"
    a = router.choose(key)
    b = router.choose(key)  # 2 in flight vs 0: within ceil(1.25 * mean) with the +1 floor
    assert a is b
    c = router.choose(key)
    assert c is not a  # the third would put 3 vs 0 over the cap
    for r in (a, b, c):
        router.release(r, ok=True)


def test_bounded_load_uses_fresh_vllm_queue() -> None:
    clock = FakeClock()
    router = make_router(urls=URLS4[:2], clock=clock, prefix_chars=64)
    owner = router.owner(conv(0))
    other = next(r for r in router.replicas() if r is not owner)
    assert owner is not None
    # other gateways keep the owner busy: vLLM reports 12 queued, the other replica idle
    router.vllm_metrics.put(owner.url, VllmSnapshot(at=clock.now, running=4, waiting=8))
    router.vllm_metrics.put(other.url, VllmSnapshot(at=clock.now, running=0, waiting=0))
    assert route(router, conv(0)) is other
    clock.now += 3 * router.routing.metrics_scrape_s  # stale: back to in-flight counts
    assert route(router, conv(1)) is owner


def test_load_adds_own_requests_since_the_scrape() -> None:
    clock = FakeClock()
    router = make_router(urls=URLS4[:1], clock=clock)
    r = router.replicas()[0]
    router.vllm_metrics.put(r.url, VllmSnapshot(at=clock.now, running=5, waiting=1, in_flight_at_scrape=0))
    assert router.load(r) == 6
    held = [router.choose("x") for _ in range(3)]
    assert router.load(r) == 9
    for h in held:
        router.release(h, ok=True)
    assert router.load(r) == 6


# -- health --------------------------------------------------------------------------------------


def test_ejection_after_consecutive_failures_and_recovery() -> None:
    clock = FakeClock()
    router = make_router(clock=clock, eject_after_failures=3, eject_for_s=10.0, prefix_chars=64)
    owner = router.owner(conv(0))
    assert owner is not None
    for _ in range(2):
        router.release(router.choose(conv(0)), ok=False)
    router.release(router.choose(conv(0)), ok=True)  # a success resets the streak
    for _ in range(2):
        router.release(router.choose(conv(0)), ok=False)
    assert route(router, conv(0)) is owner  # still 2 in a row
    for _ in range(3):
        router.release(router.choose(conv(0)), ok=False)
    assert not owner.available(clock.now)
    assert owner.ejections == 1
    others = {route(router, conv(i)).url for i in range(20)}
    assert owner.url not in others and len(others) == 1  # consistently the next replica on the ring
    assert {r["url"] for r in router.status() if not r["healthy"]} == {owner.url}
    clock.now += 10.5
    assert route(router, conv(5)) is not owner  # moved conversations stay with their new cache
    retried = router.choose(conv(100))
    assert retried is owner  # new conversations: tried again after eject_for_s
    router.release(retried, ok=False)  # on probation: a single failure ejects it again
    assert not owner.available(clock.now) and owner.ejections == 2
    clock.now += 10.5
    assert route(router, conv(101)) is owner  # this one succeeds, which ends the probation
    router.release(router.choose(conv(101)), ok=False)
    assert owner.available(clock.now)  # one failure is no longer enough


def test_with_every_replica_ejected_the_one_back_first_is_chosen() -> None:
    clock = FakeClock()
    router = make_router(urls=URLS4[:2], clock=clock, eject_after_failures=1, eject_for_s=10.0)
    first, second = router.replicas()
    for r in (first, second):
        r.in_flight += 1
        router.release(r, ok=False)
        clock.now += 1  # `first` was ejected a second before `second`: it comes back first
    assert not first.available(clock.now) and not second.available(clock.now)
    chosen = [router.choose(f"conversation {i}") for i in range(6)]
    assert all(r is first for r in chosen) and first.while_ejected == 6 and second.while_ejected == 0
    assert router.choose("x", exclude=[first]) is second  # a retry still goes elsewhere
    with pytest.raises(NoReplica):
        router.choose("x", exclude=[first, second])
    clock.now += 11
    assert router.choose("anything") in router.replicas()
    assert first.while_ejected == 6  # healthy again: the normal policy chose


def test_no_replica_at_all_raises_no_replica() -> None:
    empty = make_router(urls=URLS4[:1])
    empty.set_urls([])
    with pytest.raises(NoReplica):
        empty.choose("x")


# -- ring changes --------------------------------------------------------------------------------


def test_adding_a_replica_moves_only_about_one_nth_of_keys() -> None:
    router = make_router()
    keys = [f"system: tenant {i} prompt" for i in range(10000)]
    before = {k: router.owner(k).url for k in keys}  # type: ignore[union-attr]
    new = "http://10.0.0.9:8000"
    router.set_urls([*URLS4, new])
    after = {k: router.owner(k).url for k in keys}  # type: ignore[union-attr]
    moved = [k for k in keys if before[k] != after[k]]
    assert 0.12 < len(moved) / len(keys) < 0.30  # ideal 1/5
    assert {after[k] for k in moved} == {new}  # keys only move to the newcomer


def test_removing_a_replica_moves_only_its_keys_and_keeps_state() -> None:
    router = make_router()
    survivor = router.replicas()[0]
    survivor.in_flight = 2
    keys = [f"conversation {i}" for i in range(5000)]
    before = {k: router.owner(k).url for k in keys}  # type: ignore[union-attr]
    gone = URLS4[3]
    router.set_urls(URLS4[:3])
    after = {k: router.owner(k).url for k in keys}  # type: ignore[union-attr]
    assert all(before[k] == after[k] for k in keys if before[k] != gone)
    assert all(after[k] != gone for k in keys)
    assert router.replicas()[0] is survivor and survivor.in_flight == 2


def test_ring_is_deterministic_across_processes() -> None:
    # blake2b, not hash(): every gateway replica must agree on the owner
    a = HashRing(URLS4, 64)
    b = HashRing(list(reversed(URLS4)), 64)
    assert all(a.owner(f"k{i}") == b.owner(f"k{i}") for i in range(500))
    assert list(a.walk("k1"))[0] == a.owner("k1") and sorted(a.walk("k1")) == sorted(URLS4)


# -- other policies ------------------------------------------------------------------------------


def test_round_robin_cycles_over_healthy_replicas() -> None:
    router = make_router(urls=URLS4[:3], policy="round_robin")
    seen = [route(router, "same prefix").url for _ in range(6)]
    assert seen[:3] == URLS4[:3] and seen[3:] == URLS4[:3]


def test_least_loaded_picks_the_least_busy() -> None:
    router = make_router(urls=URLS4[:3], policy="least_loaded")
    held = [router.choose("k") for _ in range(3)]
    assert {r.url for r in held} == set(URLS4[:3])  # one each
    router.release(held[1], ok=True)
    assert router.choose("k") is held[1]


def test_least_loaded_prefers_vllm_queue_when_fresh() -> None:
    clock = FakeClock()
    router = make_router(urls=URLS4[:2], policy="least_loaded", clock=clock)
    a, b = router.replicas()
    router.vllm_metrics.put(a.url, VllmSnapshot(at=clock.now, running=3, waiting=5))
    router.vllm_metrics.put(b.url, VllmSnapshot(at=clock.now, running=1, waiting=0))
    assert all(route(router, "k") is b for _ in range(5))


def test_router_collector_exports_routing() -> None:
    router = make_router(urls=URLS4[:2])
    for i in range(10):
        route(router, f"k{i}")
    registry = CollectorRegistry()
    router.register(registry)
    total = sum(registry.get_sample_value("cachestack_route_requests_total", {"replica": u}) or 0 for u in URLS4[:2])
    assert total == 10
    assert registry.get_sample_value("cachestack_route_replica_healthy", {"replica": URLS4[0]}) == 1.0


def test_conversations_stay_put_when_a_replica_joins_and_move_when_theirs_leaves() -> None:
    router = make_router(urls=URLS4[:3])
    before = {i: route(router, f"system: s\nuser: conversation {i}").url for i in range(300)}
    router.set_urls(URLS4)  # scale-up: running conversations keep their warm replica
    assert all(route(router, f"system: s\nuser: conversation {i}").url == before[i] for i in range(300))
    assert route(router, "system: s\nuser: a new one") in router.replicas()
    gone = URLS4[0]
    router.set_urls(URLS4[1:])
    assert all(url != gone for url in router._sessions.values())
    moved = [i for i in range(300) if before[i] == gone]
    assert moved and all(route(router, f"system: s\nuser: conversation {i}").url != gone for i in moved)
