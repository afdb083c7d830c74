"""cache/store.py against a real Valkey + RediSearch: schema, exact get/set, scoped KNN, purge."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from cache.config import RedisConfig
from cache.store import SCOPE_TAGS, CacheStore, decode_answer, encode_answer

pytestmark = pytest.mark.e2e

DIM = 8


def unit(*coords: float, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[: len(coords)] = coords
    return v / np.linalg.norm(v)


def at_cos(c: float, dim: int = DIM) -> np.ndarray:
    """A unit vector whose cosine with e1 is ``c``."""
    return unit(c, float(np.sqrt(max(0.0, 1 - c * c))), dim=dim)


E1 = unit(1.0)


def tags(**over: str) -> dict[str, str]:
    base = {"scope": "tenant-a", "fingerprint": "f" * 32, "model": "m", "version": "1", "namespace": "default"}
    base.update(over)
    return base


def answer(text: str) -> dict:
    return {"object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


@pytest.fixture(params=["standalone", "cluster", "shared"])
def deployment(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every store test runs against one Valkey and a 3-node Valkey Cluster (partition layout), and
    against one Valkey in the shared layout."""
    cluster = request.param.startswith("cluster")
    out: dict[str, Any] = ({"url": request.getfixturevalue("redis_cluster_url"), "cluster": True} if cluster
                           else {"url": request.getfixturevalue("redis_url")})
    if request.param.endswith("shared"):
        out["index_layout"] = "shared"
    return out


@pytest.fixture
async def make_store(deployment: dict[str, Any]) -> AsyncIterator[Callable[..., CacheStore]]:
    made: list[CacheStore] = []

    def make(prefix: str | None = None, dim: int = DIM, embedder_id: str = "", **over: Any) -> CacheStore:
        cfg = RedisConfig(**deployment, index_prefix=prefix or f"t{uuid.uuid4().hex[:12]}",
                          lookup_budget_ms=2000, store_timeout_ms=5000, **over)
        store = CacheStore(cfg, dim, embedder_id=embedder_id)
        made.append(store)
        return store

    yield make
    for store in made:
        try:
            await store.drop_all()
        except Exception:
            pass
        await store.aclose()


async def put(store: CacheStore, entry_id: str, vec: np.ndarray | None, tg: dict[str, str], text: str = "a",
              ttl_s: int = 600, tenant: str | None = None) -> None:
    await store.put(store.entry_id(tg, entry_id), answer=answer(text), query=f"q {entry_id}", embedding=vec,
                    tags={**tg, "tenant": tenant or tg["scope"]}, ttl_s=ttl_s)


# -- schema ----------------------------------------------------------------------------------


async def test_ensure_index_idempotent_and_restart_keeps_entries(make_store) -> None:
    s1 = make_store()
    await s1.ensure_index()
    await s1.ensure_index()
    await put(s1, "e1", E1, tags())
    s2 = make_store(prefix=s1.cfg.index_prefix)
    await s2.ensure_index()
    assert s2.name_prefix == s1.name_prefix
    got = await s2.get(s2.entry_id(tags(), "e1"))
    assert got is not None and got.answer == answer("a")
    hits = await s2.knn(E1, tags(), 3)
    assert [h.entry_id.split(":", 1)[1] for h in hits] == ["e1"]
    assert await s2.count() == 1


async def test_embedder_switch_of_one_dimension_never_mixes_vectors(make_store) -> None:
    # stock and fine-tuned MiniLM both have 384 dimensions: the embedder's identity keeps them apart
    prefix = f"t{uuid.uuid4().hex[:12]}"
    stock, tuned = make_store(prefix, embedder_id="aaaa"), make_store(prefix, embedder_id="bbbb")
    assert stock.name_prefix != tuned.name_prefix and stock.key_prefix != tuned.key_prefix
    await stock.ensure_index()
    await tuned.ensure_index()
    await put(stock, "s", E1, tags())
    assert await tuned.knn(E1, tags(), 5) == []
    assert await tuned.get(tuned.entry_id(tags(), "s")) is None
    assert await tuned.partitions() == []
    await put(tuned, "t", E1, tags())
    assert [h.entry_id.split(":", 1)[1] for h in await stock.knn(E1, tags(), 5)] == ["s"]
    assert [h.entry_id.split(":", 1)[1] for h in await tuned.knn(E1, tags(), 5)] == ["t"]


async def test_dimension_change_gets_its_own_index(make_store) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    small, big = make_store(prefix, dim=8), make_store(prefix, dim=16)
    assert small.name_prefix != big.name_prefix
    assert small.key_prefix != big.key_prefix
    await small.ensure_index()
    await big.ensure_index()
    await put(small, "s", E1, tags())
    await put(big, "b", unit(1.0, dim=16), tags())
    assert [h.entry_id.split(":", 1)[1] for h in await small.knn(E1, tags(), 5)] == ["s"]
    assert [h.entry_id.split(":", 1)[1] for h in await big.knn(unit(1.0, dim=16), tags(), 5)] == ["b"]
    assert await small.count() == 1 and await big.count() == 1
    assert await small.get(small.entry_id(tags(), "b")) is None and await big.get(big.entry_id(tags(), "s")) is None


async def test_dimension_whose_prefix_is_a_string_prefix_of_another(make_store) -> None:
    # "p:e4" is a string prefix of "p:e48:..." keys; the 4-dim index must not see 48-dim entries
    prefix = f"t{uuid.uuid4().hex[:12]}"
    d4, d48 = make_store(prefix, dim=4), make_store(prefix, dim=48)
    await d4.ensure_index()
    await d48.ensure_index()
    await put(d48, "x", unit(1.0, dim=48), tags())
    await put(d4, "y", unit(1.0, dim=4), tags())
    assert await d4.count() == 1
    assert [h.entry_id.split(":", 1)[1] for h in await d4.knn(unit(1.0, dim=4), tags(), 5)] == ["y"]
    assert await d4.purge(tags()) == 1
    assert await d48.get(d48.entry_id(tags(), "x")) is not None


# -- exact get / put -------------------------------------------------------------------------


def test_encode_small_raw_large_compressed() -> None:
    small = answer("short")
    big = answer("the quick brown fox jumps over the lazy dog " * 200)
    assert encode_answer(small)[:1] == b"j"
    blob = encode_answer(big)
    assert blob[:1] == b"z" and len(blob) < len(encode_answer(small)) + len(str(big)) // 4
    assert decode_answer(encode_answer(small)) == small and decode_answer(blob) == big
    with pytest.raises(ValueError):
        decode_answer(b"j[1, 2]")


async def test_put_get_roundtrip(make_store) -> None:
    s = make_store()
    await s.ensure_index()
    assert await s.get(s.entry_id(tags(), "missing")) is None
    before = time.time()
    await s.put(s.entry_id(tags(), "k1"), answer=answer("héllo ✓"), query="hello", embedding=E1, tags={**tags(), "tenant": "a"},
                ttl_s=600)
    got = await s.get(s.entry_id(tags(), "k1"))
    assert got is not None
    assert got.answer == answer("héllo ✓") and got.query == "hello"
    assert before - 1 <= got.created <= time.time() + 1


async def test_large_answer_roundtrip_is_compressed(make_store) -> None:
    s = make_store()
    await s.ensure_index()
    big = answer("lorem ipsum dolor sit amet " * 2000)
    await s.put(s.entry_id(tags(), "big"), answer=big, query="q", embedding=None, tags={**tags(), "tenant": "a"}, ttl_s=600)
    raw = await s.redis.hget(s.key(s.entry_id(tags(), "big")), "answer")
    assert raw[:1] == b"z" and len(raw) < len(str(big)) // 5
    got = await s.get(s.entry_id(tags(), "big"))
    assert got is not None and got.answer == big


async def test_entry_without_embedding_is_exact_only(make_store) -> None:
    s = make_store()
    await s.ensure_index()
    await put(s, "noemb", None, tags())
    assert (await s.get(s.entry_id(tags(), "noemb"))) is not None
    assert await s.knn(E1, tags(), 5) == []


async def test_ttl_is_set(make_store) -> None:
    s = make_store()
    await s.ensure_index()
    await put(s, "k", E1, tags(), ttl_s=321)
    ttl = await s.redis.ttl(s.key(s.entry_id(tags(), "k")))
    assert 300 <= ttl <= 321
    await put(s, "k", E1, tags(), ttl_s=50)  # a rewrite resets the TTL
    assert 40 <= await s.redis.ttl(s.key(s.entry_id(tags(), "k"))) <= 50


async def test_expired_entry_is_gone(make_store) -> None:
    s = make_store()
    await s.ensure_index()
    await put(s, "k", E1, tags(), ttl_s=1)
    await s.redis.pexpire(s.key(s.entry_id(tags(), "k")), 50)
    time.sleep(0.15)
    assert await s.get(s.entry_id(tags(), "k")) is None
    assert await s.knn(E1, tags(), 5) == []


# -- KNN scoping -----------------------------------------------------------------------------


async def test_knn_orders_best_first_with_similarity(make_store) -> None:
    s = make_store()
    await s.ensure_index()
    for name, c in [("c99", 0.99), ("c80", 0.80), ("c50", 0.50), ("c95", 0.95)]:
        await put(s, name, at_cos(c), tags())
    hits = await s.knn(E1, tags(), 3)
    assert [h.entry_id.split(":", 1)[1] for h in hits] == ["c99", "c95", "c80"]
    for h, c in zip(hits, (0.99, 0.95, 0.80), strict=True):
        assert h.similarity == pytest.approx(c, abs=1e-4)
        assert h.query == "q " + h.entry_id.split(":", 1)[1] and h.created > 0


@pytest.mark.parametrize("protocol", [3, 2])
async def test_knn_carries_each_neighbours_answer_intact(redis_url: str, protocol: int) -> None:
    """A semantic hit is served from the KNN reply itself, so the answers must come back byte-exact:
    a long one (stored zlib-compressed: binary) and a short one (raw JSON), over RESP3 and RESP2."""
    from redis.asyncio import Redis

    cfg = RedisConfig(url=redis_url, index_prefix=f"t{uuid.uuid4().hex[:12]}", store_timeout_ms=5000)
    s = CacheStore(cfg, DIM, client=Redis.from_url(redis_url, protocol=protocol))
    try:
        await _answers_intact(s)
    finally:
        await s.drop_all()
        await s.aclose()


async def _answers_intact(s: CacheStore) -> None:
    await s.ensure_index()
    long_text = "Paris is the capital of France. " * 60 + "\u00e9\u00e8 \U0001f600 \x00"
    await put(s, "long", at_cos(0.99), tags(), text=long_text)
    await put(s, "short", at_cos(0.95), tags(), text="Madrid.")
    assert encode_answer(answer(long_text))[:1] == b"z"  # the binary case really is exercised
    hits = await s.knn(E1, tags(), 3)
    assert [h.answer() for h in hits] == [answer(long_text), answer("Madrid.")]


@pytest.mark.parametrize("tag", SCOPE_TAGS)
async def test_knn_needs_every_scoping_tag_equal(make_store, tag: str) -> None:
    s = make_store()
    await s.ensure_index()
    await put(s, "mine", at_cos(0.9), tags())
    await put(s, "other", E1, tags(**{tag: "different"}))  # closer, but in another scope
    hits = await s.knn(E1, tags(), 5)
    assert [h.entry_id.split(":", 1)[1] for h in hits] == ["mine"]
    hits = await s.knn(E1, tags(**{tag: "different"}), 5)
    assert [h.entry_id.split(":", 1)[1] for h in hits] == ["other"]


async def test_knn_only_entries_matching_all_tags_among_many(make_store) -> None:
    s = make_store()
    await s.ensure_index()
    variants = [tags()] + [tags(**{t: v}) for t in SCOPE_TAGS for v in ("x1", "x2")]
    for i, tg in enumerate(variants):
        await put(s, f"e{i}", at_cos(0.9 + i * 0.001), tg)
    hits = await s.knn(E1, tags(), 50)
    assert [h.entry_id.split(":", 1)[1] for h in hits] == ["e0"]


SPECIAL = [
    "a-b", "a.b", "a/b", "a:b", "a b", "{a", "a}", "a|b", "*", "a*", "a@b", "a\\b", "a'b", 'a"b',
    "a$b", "(a)", "[a]", "-a", "@scope:{x}", "a b | c", "tenant-1.eu/west:prod {x}",
]
NEIGHBOURS = ["a", "b", "ab", "a b", "x", "scope"]



def _all_tags(v: str) -> dict[str, str]:
    return tags(scope=v, fingerprint="fp", model=v, version=v, namespace=v)


@pytest.mark.parametrize("value", [
    *SPECIAL,
    "a,b",
    "A",
    " a",
])
async def test_tag_value_matches_exactly_itself(make_store, value: str) -> None:
    """Every tag of the value under test is the same text (the fingerprint is equal for all entries,
    so only the TAG filter separates them); it must neither break the query nor widen it."""
    s = make_store()
    await s.ensure_index()
    others = [n for n in NEIGHBOURS if n != value]
    await put(s, "target", at_cos(0.9), _all_tags(value))
    for i, n in enumerate(others):
        await put(s, f"n{i}", E1, _all_tags(n))
    hits = await s.knn(E1, _all_tags(value), 50)
    assert [h.entry_id.split(":", 1)[1] for h in hits] == ["target"]
    for n in others:
        assert "target" not in {h.entry_id.split(":", 1)[1] for h in await s.knn(E1, _all_tags(n), 50)}, n
    assert await s.count({"tenant": value}) == 1
    for n in others:
        assert await s.purge({"tenant": n}) == 1, n
    assert await s.get(s.entry_id(_all_tags(value), "target")) is not None


@pytest.mark.parametrize("injection", ["a|b", "*", "a*", "a b", "a}|{b", "a} @model:{m", "a\\|b"])
async def test_injected_scope_does_not_reach_other_tenants(make_store, injection: str) -> None:
    s = make_store()
    await s.ensure_index()
    for who in ("a", "b", "ab", "a b"):
        await put(s, who, E1, tags(scope=who))
    hits = await s.knn(E1, tags(scope=injection), 10)
    assert {h.entry_id.split(":", 1)[1] for h in hits} <= {injection}
    assert await s.count(tags(scope=injection)) == (1 if injection == "a b" else 0)


async def test_empty_tag_value_does_not_widen(make_store) -> None:
    s = make_store()
    await s.ensure_index()
    await put(s, "a", E1, tags(scope="a"))
    await put(s, "b", E1, tags(scope="b"))
    with pytest.raises(ValueError):  # refused, never a wildcard
        await s.knn(E1, tags(scope=""), 10)


# -- purge -----------------------------------------------------------------------------------


async def test_purge_by_tags(make_store) -> None:
    s = make_store()
    await s.ensure_index()
    for i in range(3):
        await put(s, f"a{i}", at_cos(0.9), tags(scope="a"), tenant="alice")
        await put(s, f"b{i}", at_cos(0.9), tags(scope="b"), tenant="bob")
    await put(s, "a-other-ns", at_cos(0.9), tags(scope="a", namespace="faq"), tenant="alice")
    assert await s.count() == 7
    assert await s.purge({"tenant": "alice", "namespace": "default"}) == 3
    assert await s.count() == 4
    for i in range(3):
        assert await s.get(s.entry_id(tags(scope="a"), f"a{i}")) is None
        assert await s.get(s.entry_id(tags(scope="b"), f"b{i}")) is not None
    assert await s.get(s.entry_id(tags(scope="a", namespace="faq"), "a-other-ns")) is not None
    assert await s.purge({"tenant": "nobody"}) == 0
    assert await s.count() == 4


async def test_purge_everything_in_this_index_only(make_store) -> None:
    s, other = make_store(), make_store()
    await s.ensure_index()
    await other.ensure_index()
    for i in range(5):
        await put(s, f"k{i}", at_cos(0.9), tags())
    await put(other, "keep", E1, tags())
    assert await s.purge(None) == 5
    assert await s.count() == 0
    assert await other.get(other.entry_id(tags(), "keep")) is not None


async def test_purge_by_vector_and_threshold(make_store) -> None:
    s = make_store()
    await s.ensure_index()
    for name, c in [("c99", 0.99), ("c96", 0.96), ("c90", 0.90), ("c50", 0.50)]:
        await put(s, name, at_cos(c), tags(), tenant="alice")
    await put(s, "bob99", at_cos(0.99), tags(scope="b"), tenant="bob")
    n = await s.purge({"tenant": "alice"}, vector=E1, threshold=0.95)
    assert n == 2
    assert await s.get(s.entry_id(tags(), "c99")) is None and await s.get(s.entry_id(tags(), "c96")) is None
    assert await s.get(s.entry_id(tags(), "c90")) is not None and await s.get(s.entry_id(tags(), "c50")) is not None
    assert await s.get(s.entry_id(tags(scope="b"), "bob99")) is not None
    n = await s.purge(None, vector=E1, threshold=0.85)
    assert n == 2
    assert await s.get(s.entry_id(tags(scope="b"), "bob99")) is None and await s.get(s.entry_id(tags(), "c90")) is None and await s.get(s.entry_id(tags(), "c50")) is not None


async def test_ping(make_store) -> None:
    s = make_store()
    assert await s.ping() is True


async def test_partitions_by_scope_and_purge_reaches_exact_only_entries(make_store) -> None:
    s = make_store()
    await put(s, "sem", E1, tags(scope="a"), tenant="alice")
    await put(s, "exact-only", None, tags(scope="a", namespace="tools"), tenant="alice")
    await put(s, "other", E1, tags(scope="b"), tenant="bob")
    assert len(await s.partitions()) == 3  # (scope, namespace, model, version) each get an index
    assert await s.purge({"tenant": "alice"}) == 2
    assert await s.get(s.entry_id(tags(scope="a", namespace="tools"), "exact-only")) is None
    assert await s.get(s.entry_id(tags(scope="b"), "other")) is not None


async def test_knn_in_a_partition_never_created_is_empty(make_store) -> None:
    s = make_store()
    assert await s.knn(E1, tags(scope="nobody-yet"), 5) == []


async def test_knn_with_the_batches_hint_finds_the_same_neighbours(make_store) -> None:
    s = make_store()
    for name, c in [("c99", 0.99), ("c95", 0.95), ("c80", 0.80)]:
        await put(s, name, at_cos(c), tags())
    await put(s, "other-fp", E1, tags(fingerprint="g" * 32))
    plain = [h.entry_id for h in await s.knn(E1, tags(), 3)]
    hinted = [h.entry_id for h in await s.knn(E1, tags(), 3, large=True)]
    assert plain == hinted and len(plain) == 3
    assert s.hybrid_hint  # RediSearch accepts HYBRID_POLICY


async def test_concurrent_first_writes_to_a_partition_all_succeed(make_store) -> None:
    """The first answers of a new partition arrive together (a burst of misses, or two gateway
    replicas): each sees no index and creates it; the losers' "already exists" is no failure."""
    s = make_store()
    first = make_store(prefix=s.cfg.index_prefix)  # a second replica on the same Redis
    vec = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    await asyncio.gather(*(store.put(store.entry_id(tags(), f"k{i}"), answer=answer(str(i)), query=f"q{i}",
                                     embedding=vec, tags=tags(), ttl_s=60)
                           for i, store in enumerate([s, first] * 4)))
    assert all([await s.get(s.entry_id(tags(), f"k{i}")) is not None for i in range(8)])


# -- index lifecycle ---------------------------------------------------------------------------


async def test_bumped_namespace_version_retires_its_partitions(make_store) -> None:
    s = make_store()
    await put(s, "old", E1, tags(version="1"))
    await put(s, "other-ns", E1, tags(version="1", namespace="faq"))
    await put(s, "new", E1, tags(version="2"))
    assert len(await s.partitions()) == 3
    s.set_live_versions({"default": "2", "faq": "1"})
    retired = await s.retire()
    assert retired == [s.partition_of(tags(version="1"))]
    assert await s.get(s.entry_id(tags(version="1"), "old")) is None
    assert await s.knn(E1, tags(version="1"), 5) == []
    assert [h.entry_id.split(":", 1)[1] for h in await s.knn(E1, tags(version="2"), 5)] == ["new"]
    assert await s.get(s.entry_id(tags(version="1", namespace="faq"), "other-ns")) is not None
    assert sorted(await s.partitions()) == sorted([s.partition_of(tags(version="2")),
                                                   s.partition_of(tags(version="1", namespace="faq"))])
    s.set_live_versions({"default": "2"})  # faq left the config
    assert await s.retire() == [s.partition_of(tags(version="1", namespace="faq"))]
    assert await s.count() == 1


async def test_a_new_index_retires_stale_partitions_another_replica_wrote(make_store) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    old, new = make_store(prefix), make_store(prefix)
    await put(old, "stale", E1, tags(version="1"))  # a replica still on the old config
    new.set_live_versions({"default": "2"})
    await put(new, "fresh", E1, tags(version="2"))  # its first write creates an index: a sweep
    assert await new.get(new.entry_id(tags(version="1"), "stale")) is None
    assert await new.partitions() == [new.partition_of(tags(version="2"))]


async def test_index_count_is_bounded_least_recently_written_first(make_store) -> None:
    s = make_store(max_indexes=2)
    for who in ("a", "b"):
        await put(s, who, E1, tags(scope=who))
    await s.registry.redis.zadd(s.registry.used_key, {s.partition_of(tags(scope="a")): 1.0})  # a: written long ago
    await put(s, "c", E1, tags(scope="c"))
    if s.shared:  # one index whatever the number of partitions: nothing to bound
        assert len(await s.partitions()) == 3 and await s.count() == 3
        return
    assert sorted(await s.partitions()) == sorted(s.partition_of(tags(scope=w)) for w in ("b", "c"))
    assert await s.get(s.entry_id(tags(scope="a"), "a")) is None
    assert len(await s._searchable()) == 2
    assert [h.entry_id.split(":", 1)[1] for h in await s.knn(E1, tags(scope="b"), 5)] == ["b"]


async def test_purge_by_model_drops_that_models_partitions_only(make_store) -> None:
    s = make_store()
    for who in ("a", "b"):
        await put(s, f"{who}-m", E1, tags(scope=who, model="m"))
        await put(s, f"{who}-m2", E1, tags(scope=who, model="m2"))
    assert await s.purge({"model": "m"}) == 2
    assert await s.count() == 2
    assert await s.partitions() and all(
        p.model == "m2" for p in await s.registry.all())
    assert [h.entry_id.split(":", 1)[1] for h in await s.knn(E1, tags(scope="a", model="m2"), 5)] == ["a-m2"]
    assert await s.knn(E1, tags(scope="a", model="m"), 5) == []
    assert await s.purge({"model": "m", "version": "1"}) == 0
    await put(s, "again", E1, tags(scope="a", model="m"))  # a retired partition comes back on write
    assert [h.entry_id.split(":", 1)[1] for h in await s.knn(E1, tags(scope="a", model="m"), 5)] == ["again"]


async def test_a_partition_lives_in_one_slot_and_its_index_on_that_node(make_store) -> None:
    """What makes a lookup touch one shard: every key of a partition (entries, verdict window) hashes
    to one slot, and the index that answers its KNN sits on the node that owns that slot."""
    s = make_store()
    for who in ("a", "b", "c", "d", "e", "f"):
        await put(s, who, E1, tags(scope=who))
    await s.add_verdict(s.entry_id(tags(scope="a"), "a"), b"\x01", keep_bytes=64, window=8, ttl_s=60)
    if not s.cfg.cluster:
        assert len({(await s._index(p)).name for p in await s.partitions()}) == (1 if s.shared else 6)
        return
    from redis.cluster import key_slot

    owners = set()
    for who in ("a", "b", "c", "d", "e", "f"):
        pid = s.partition_of(tags(scope=who))
        key = s.key(s.entry_id(tags(scope=who), who))
        assert key_slot(key.encode()) == key_slot(s.verdict_key(pid).encode())
        owner = s.redis.get_node_from_key(key)
        owners.add(owner.name)
        index = await s._index(pid)
        # the index is reached on the slot's owner, and it finds the partition's entry there
        assert index._redis_client.connection_pool.connection_kwargs["port"] == owner.port
        assert [h.entry_id.split(":", 1)[1] for h in await s.knn(E1, tags(scope=who), 5)] == [who]
    assert len(owners) > 1  # six partitions spread over the three shards
    names = {n for c in await s.topology.search_clients() for n in await c.execute_command("FT._LIST")
             if n.decode().startswith(s.name_prefix)}
    assert len(names) == 6  # each index exists once, on its partition's node
