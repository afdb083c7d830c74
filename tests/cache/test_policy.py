"""cache/policy.py: every rule of the module docstring, and tenant / conversation isolation."""

from __future__ import annotations

from typing import Any

import pytest

from cache.config import CacheConfig, NamespaceConfig
from cache.policy import OPEN_SCOPE, SHARED_SCOPE, CacheControl, Caller, PolicyError, make_plan


def cfg(**namespaces: dict[str, Any]) -> CacheConfig:
    spaces = {"default": NamespaceConfig()}
    spaces.update({name: NamespaceConfig(**v) for name, v in namespaces.items()})
    return CacheConfig(namespaces=spaces, max_semantic_chars=200)


def chat(q: str = "How do I reset my password?", history: list[dict[str, Any]] | None = None,
         **params: Any) -> dict[str, Any]:
    body = {"model": "m", "messages": [*(history or []), {"role": "user", "content": q}]}
    body.setdefault("temperature", 0)
    body.update(params)
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()


def plan(body: dict[str, Any], *, c: CacheConfig | None = None, kind: str = "chat", tenant: str | None = "t1",
         user: str | None = None, cc: CacheControl = CacheControl(), ns: str | None = None):
    return make_plan(c or cfg(), kind, body, Caller(tenant, user), cc, ns)


NO_CACHE, NO_STORE = CacheControl(no_cache=True), CacheControl(no_store=True)


# -- baseline --------------------------------------------------------------------------------


def test_deterministic_single_turn_uses_every_layer() -> None:
    p = plan(chat())
    assert (p.lookup, p.store, p.semantic) == (True, True, True)
    assert p.query == "how do i reset my password"
    assert p.namespace == "default" and p.scope == "tenant:t1" and p.tenant == "t1" and p.model == "m"
    assert p.max_age is None


def test_disabled_cache_or_namespace_bypasses() -> None:
    off = CacheConfig(enabled=False)
    p = plan(chat(), c=off)
    assert (p.lookup, p.store, p.semantic) == (False, False, False)
    p = plan(chat(), c=cfg(quiet={"enabled": False}), ns="quiet")
    assert (p.lookup, p.store, p.semantic) == (False, False, False)


# -- sampled requests ------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [DROP, None, 0.7, 1.0, 2])
def test_sampled_never_is_default_and_bypasses(temperature: Any) -> None:
    p = plan(chat(temperature=temperature))
    assert (p.lookup, p.store, p.semantic) == (False, False, False)


@pytest.mark.parametrize("temperature", [DROP, None, 0.3])
def test_sampled_exact_keeps_exact_only(temperature: Any) -> None:
    p = plan(chat(temperature=temperature), c=cfg(s={"sampled": "exact"}), ns="s")
    assert (p.lookup, p.store, p.semantic) == (True, True, False)


@pytest.mark.parametrize("temperature", [DROP, 0.3])
def test_sampled_all_keeps_semantic(temperature: Any) -> None:
    p = plan(chat(temperature=temperature), c=cfg(s={"sampled": "all"}), ns="s")
    assert (p.lookup, p.store, p.semantic) == (True, True, True)


def test_temperature_zero_is_not_sampled_in_never_namespace() -> None:
    for t in (0, 0.0):
        p = plan(chat(temperature=t))
        assert (p.lookup, p.store, p.semantic) == (True, True, True)


def test_absent_temperature_hashes_like_one() -> None:
    c = cfg(s={"sampled": "all"})
    assert plan(chat(temperature=DROP), c=c, ns="s").exact_key == plan(chat(temperature=1.0), c=c, ns="s").exact_key
    assert plan(chat(temperature=DROP), c=c, ns="s").exact_key != plan(chat(temperature=0.5), c=c, ns="s").exact_key


# -- exact-only rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 2},
        {"logprobs": True},
        {"logprobs": True, "top_logprobs": 3},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    ],
)
def test_n_logprobs_tools_are_exact_only(extra: dict[str, Any]) -> None:
    p = plan(chat(**extra))
    assert (p.lookup, p.store, p.semantic) == (True, True, False)
    assert p.exact_key != plan(chat()).exact_key


@pytest.mark.parametrize("n", [[1, 2], {}, "2", 2.5])
def test_an_n_of_any_other_type_is_exact_only(n: Any) -> None:
    # found by loadtests/hostile_input.py: `n` is undeclared on /v1/responses, a list there was a 500
    body = {"model": "m", "input": "How do I reset my password?", "temperature": 0, "n": n}
    p = plan(body, kind="responses")
    assert (p.lookup, p.store, p.semantic) == (True, True, False)


def test_n_one_and_empty_tools_keep_semantic() -> None:
    assert plan(chat(n=1)).semantic
    assert plan(chat(tools=[])).semantic
    assert plan(chat(logprobs=False)).semantic


def test_completion_logprobs_is_exact_only() -> None:
    p = plan({"model": "m", "prompt": "hello there", "temperature": 0, "logprobs": 2}, kind="completion")
    assert (p.lookup, p.semantic) == (True, False)


def test_completion_logprobs_zero_is_exact_only() -> None:
    p = plan({"model": "m", "prompt": "hello there", "temperature": 0, "logprobs": 0}, kind="completion")
    assert p.semantic is False


@pytest.mark.parametrize(
    "last",
    [
        {"role": "assistant", "content": "Sure."},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]},
        {"role": "user", "content": None},
    ],
)
def test_last_turn_not_user_text_is_exact_only(last: dict[str, Any]) -> None:
    body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}, last]}
    p = plan(body)
    assert (p.lookup, p.store, p.semantic) == (True, True, False)
    assert p.query == ""
    # the whole conversation is the context: another last turn is another key
    other = {**body, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Nope."}]}
    assert plan(other).fingerprint != p.fingerprint and plan(other).exact_key != p.exact_key


def test_user_text_parts_are_semantic_and_equal_to_string() -> None:
    body = {"model": "m", "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "How do I reset my password?"}]}]}
    p = plan(body)
    assert p.semantic and p.exact_key == plan(chat()).exact_key


def test_long_query_is_exact_only() -> None:
    c = cfg()
    at_limit = plan(chat(q="a" * c.max_semantic_chars), c=c)
    over = plan(chat(q="a" * (c.max_semantic_chars + 1)), c=c)
    assert at_limit.semantic is True
    assert (over.lookup, over.store, over.semantic) == (True, True, False)


def test_empty_query_is_exact_only() -> None:
    p = plan(chat(q="   ?"))
    assert p.query == "" and p.semantic is False and p.lookup


def test_completion_prompt_string_semantic_list_exact() -> None:
    s = plan({"model": "m", "prompt": "Hello there.", "temperature": 0}, kind="completion")
    assert s.semantic and s.query == "hello there"
    lst = plan({"model": "m", "prompt": ["Hello there."], "temperature": 0}, kind="completion")
    assert lst.semantic is False and lst.lookup and lst.query == ""
    other = plan({"model": "m", "prompt": ["Bye."], "temperature": 0}, kind="completion")
    assert other.exact_key != lst.exact_key


def test_chat_and_completion_do_not_share_keys() -> None:
    c = plan(chat(q="hello"))
    t = plan({"model": "m", "prompt": "hello", "temperature": 0}, kind="completion")
    assert c.fingerprint != t.fingerprint and c.exact_key != t.exact_key


# -- Cache-Control (serving/cache_control.py parses the header) --------------------------


def test_no_cache_skips_lookup_but_stores() -> None:
    p = plan(chat(), cc=NO_CACHE)
    assert (p.lookup, p.store, p.semantic) == (False, True, True)


def test_no_store_looks_up_but_does_not_store() -> None:
    p = plan(chat(), cc=NO_STORE)
    assert (p.lookup, p.store, p.semantic) == (True, False, True)


def test_no_cache_no_store_is_semantic_off() -> None:
    p = plan(chat(), cc=CacheControl(no_cache=True, no_store=True))
    assert (p.lookup, p.store, p.semantic) == (False, False, False)


def test_max_age_is_carried() -> None:
    assert plan(chat(), cc=CacheControl(max_age=42.0)).max_age == 42.0
    assert plan(chat()).max_age is None


def test_cache_control_does_not_reenable_bypass() -> None:
    p = plan(chat(temperature=0.9), cc=CacheControl(max_age=5.0))
    assert (p.lookup, p.store) == (False, False)


# -- namespaces ------------------------------------------------------------------------------


def test_unknown_namespace_is_policy_error() -> None:
    with pytest.raises(PolicyError) as info:
        plan(chat(), ns="nope")
    assert info.value.param == "X-Cache-Namespace"
    assert "nope" in str(info.value)
    assert isinstance(info.value, ValueError)


ACL = {"a-only": {"readers": ["alice"]},
       "faq": {"shared": True, "writers": ["alice"]},
       "pub": {"shared": True, "readers": ["alice", "bob"], "writers": []},
       "feed": {"readers": ["bob"], "writers": ["alice"]}}


def acl_error(ns: str, tenant: str | None) -> str:
    with pytest.raises(PolicyError) as info:
        plan(chat(), c=cfg(**ACL), tenant=tenant, ns=ns)
    return str(info.value)


def test_forbidden_namespace_reads_exactly_like_an_unknown_one() -> None:
    assert acl_error("a-only", "bob") == acl_error("nope", "bob").replace("nope", "a-only")
    assert acl_error("pub", "carol") == acl_error("a-only", "carol").replace("a-only", "pub")
    assert acl_error("a-only", None) == acl_error("a-only", "bob")  # the open scope matches only '*'


def test_readers_look_up_writers_store() -> None:
    c = cfg(**ACL)
    assert (lambda p: (p.lookup, p.store))(plan(chat(), c=c, tenant="alice", ns="a-only")) == (True, True)
    a, b = plan(chat(), c=c, tenant="alice", ns="faq"), plan(chat(), c=c, tenant="bob", ns="faq")
    assert (a.lookup, a.store) == (True, True)
    assert (b.lookup, b.store) == (True, False)  # reads what alice wrote, never overwrites it
    assert a.exact_key == b.exact_key
    # no-cache from a reader who may not write: answered fresh, stored nowhere
    nb = plan(chat(), c=c, tenant="bob", ns="faq", cc=NO_CACHE)
    assert (nb.lookup, nb.store, nb.semantic) == (False, False, False)
    p = plan(chat(), c=c, tenant="alice", ns="pub")
    assert (p.lookup, p.store) == (True, False)  # writers: []: nothing new is stored
    f = plan(chat(), c=c, tenant="alice", ns="feed")
    assert (f.lookup, f.store) == (False, True)  # a writer who is no reader
    with pytest.raises(PolicyError):
        plan(chat(), c=c, tenant="carol", ns="feed")


def test_sampled_answers_in_a_shared_namespace_are_stored_only_for_writers() -> None:
    c = cfg(faq={"shared": True, "writers": ["alice"], "sampled": "all"})
    hot = chat(temperature=1.0)
    assert plan(hot, c=c, tenant="bob", ns="faq", cc=NO_CACHE).store is False
    assert plan(hot, c=c, tenant="alice", ns="faq", cc=NO_CACHE).store is True


def test_shared_namespace_must_name_its_writers() -> None:
    with pytest.raises(ValueError, match="writers"):
        NamespaceConfig(shared=True)
    assert NamespaceConfig(shared=True, writers=[]).may_write("alice") is False
    assert NamespaceConfig(shared=True, writers=["*"]).may_write("anyone") is True


@pytest.mark.parametrize("bad", [{"readers": ["_shared"]}, {"writers": ["a b"]}, {"readers": ["a,b"]},
                                 {"shared": True, "per_user": True, "writers": []}])
def test_namespace_acl_names_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        NamespaceConfig(**bad)


def test_default_namespace_is_open_to_every_tenant() -> None:
    with pytest.raises(ValueError, match="readers"):
        CacheConfig(namespaces={"default": NamespaceConfig(readers=["alice"])})


@pytest.mark.parametrize("name", ["a:b", "a b", "_x", "", "x" * 65])
def test_namespace_names_are_validated(name: str) -> None:
    with pytest.raises(ValueError, match="namespace name"):
        CacheConfig(namespaces={"default": NamespaceConfig(), name: NamespaceConfig()})


def test_tenant_names_of_acls() -> None:
    assert cfg(**ACL).tenant_names() == {"default": set(), "a-only": {"alice"}, "faq": {"alice"},
                                         "pub": {"alice", "bob"}, "feed": {"alice", "bob"}}


# -- scopes ----------------------------------------------------------------------------------


def test_open_scope_is_no_tenant_scope() -> None:
    """Entries written without tenants are unreachable once tenants exist, whatever their names."""
    c = cfg(pub={"shared": True, "writers": ["*"]})
    for ns in (None, "pub"):
        open_plan = plan(chat(), c=c, tenant=None, ns=ns)
        assert open_plan.scope == OPEN_SCOPE
        for tenant in ("open", "default", "shared", "t1"):
            p = plan(chat(), c=c, tenant=tenant, ns=ns)
            assert p.scope != OPEN_SCOPE and p.fingerprint != open_plan.fingerprint
            assert p.exact_key != open_plan.exact_key


def test_per_user_namespace_scopes_by_end_user() -> None:
    c = cfg(me={"per_user": True})
    u1, u2 = plan(chat(), c=c, ns="me", user="u1"), plan(chat(), c=c, ns="me", user="u2")
    assert (u1.lookup, u1.store, u1.semantic) == (True, True, True)
    assert u1.scope == u2.scope == "tenant:t1"  # one partition per tenant ...
    assert u1.fingerprint != u2.fingerprint and u1.exact_key != u2.exact_key  # ... the KNN filter differs
    assert u1.end_user and u1.end_user != u2.end_user and "u1" not in u1.end_user
    assert plan(chat(), c=c, ns="me", user="u1").exact_key == u1.exact_key
    other_tenant = plan(chat(), c=c, ns="me", user="u1", tenant="t2")
    assert other_tenant.fingerprint != u1.fingerprint
    # outside a per_user namespace the end user changes nothing
    assert plan(chat(), user="u1").exact_key == plan(chat(), user="u2").exact_key == plan(chat()).exact_key
    assert plan(chat(), user="u1").end_user == ""


def test_per_user_namespace_without_end_user_bypasses() -> None:
    p = plan(chat(), c=cfg(me={"per_user": True}), ns="me")
    assert (p.lookup, p.store, p.semantic) == (False, False, False)
    assert "end user" in p.reason


def test_blank_namespace_header_means_default() -> None:
    assert plan(chat(), ns="   ").namespace == "default"
    assert plan(chat(), ns="").exact_key == plan(chat()).exact_key


def test_namespace_header_is_stripped() -> None:
    c = cfg(faq={})
    assert plan(chat(), c=c, ns=" faq ").namespace == "faq"


def test_namespaces_and_versions_separate_keys() -> None:
    c1 = cfg(faq={"version": "1"})
    c2 = cfg(faq={"version": "2"})
    d, f1, f2 = plan(chat(), c=c1), plan(chat(), c=c1, ns="faq"), plan(chat(), c=c2, ns="faq")
    assert len({d.fingerprint, f1.fingerprint, f2.fingerprint}) == 3
    assert len({d.exact_key, f1.exact_key, f2.exact_key}) == 3
    assert f2.settings.version == "2"


def test_tenants_are_separated_in_private_namespace() -> None:
    a, b = plan(chat(), tenant="alice"), plan(chat(), tenant="bob")
    assert (a.scope, b.scope) == ("tenant:alice", "tenant:bob")
    assert a.fingerprint != b.fingerprint and a.exact_key != b.exact_key


def test_shared_namespace_has_one_scope_for_all_tenants() -> None:
    c = cfg(pub={"shared": True, "writers": ["alice"]})
    a, b = plan(chat(), c=c, tenant="alice", ns="pub"), plan(chat(), c=c, tenant="bob", ns="pub")
    assert a.scope == b.scope == SHARED_SCOPE
    assert a.fingerprint == b.fingerprint and a.exact_key == b.exact_key
    assert (a.tenant, b.tenant) == ("alice", "bob")
    private = plan(chat(), c=c, tenant="alice")
    assert private.fingerprint != a.fingerprint


def test_model_separates_keys() -> None:
    assert plan(chat(model="a")).exact_key != plan(chat(model="b")).exact_key


def test_output_params_separate_keys() -> None:
    assert plan(chat(max_tokens=5)).fingerprint != plan(chat(max_tokens=6)).fingerprint
    assert plan(chat(top_k=5)).fingerprint != plan(chat()).fingerprint
    assert plan(chat(stream=True, user="x")).exact_key == plan(chat()).exact_key


# -- multi-turn ------------------------------------------------------------------------------


def test_same_question_different_history_differs() -> None:
    h1 = [{"role": "user", "content": "Tell me about Python"}, {"role": "assistant", "content": "A language."}]
    h2 = [{"role": "user", "content": "Tell me about Rust"}, {"role": "assistant", "content": "A language."}]
    a, b, none = plan(chat(q="Is it fast?", history=h1)), plan(chat(q="Is it fast?", history=h2)), plan(chat(q="Is it fast?"))
    assert a.query == b.query == none.query
    assert len({a.fingerprint, b.fingerprint, none.fingerprint}) == 3
    assert len({a.exact_key, b.exact_key, none.exact_key}) == 3
    assert plan(chat(q="Is it fast?", history=list(h1))).exact_key == a.exact_key


def test_system_prompt_is_context() -> None:
    a = plan(chat(history=[{"role": "system", "content": "Answer in French."}]))
    b = plan(chat(history=[{"role": "system", "content": "Answer in German."}]))
    assert a.fingerprint != b.fingerprint and a.semantic and b.semantic


def test_exact_key_hashes_the_raw_text_and_the_semantic_query_is_normalised() -> None:
    a, b = plan(chat(q="How do I reset my password?")), plan(chat(q="  how do I RESET my password"))
    assert a.exact_key != b.exact_key  # case, spaces and "?" differ: not the same request
    assert a.query == b.query == "how do i reset my password"  # ... but the same question
    assert plan(chat(q="How do I reset my password?")).exact_key == a.exact_key


@pytest.mark.parametrize(("a", "b"), [
    ("def f():\n    return 1", "def f(): return 1"),  # indentation is syntax
    ("def f():\n    return 1", "def f():\n\treturn 1"),
    ("SELECT * FROM Users", "select * from users"),
    ("Translate: Hello World", "Translate: hello world"),
    ("What is 5?", "What is 5"),
])
def test_whitespace_or_case_variants_never_share_an_exact_key(a: str, b: str) -> None:
    assert plan(chat(q=a)).exact_key != plan(chat(q=b)).exact_key
    completion = {"model": "m", "prompt": a, "temperature": 0}
    assert plan(completion, kind="completions").exact_key != plan({**completion, "prompt": b}, kind="completions").exact_key
    assert plan(completion, kind="completions").exact_key == plan(dict(completion), kind="completions").exact_key


# -- Responses API ---------------------------------------------------------------------------


def responses(inp: Any = "How do I reset my password?", **params: Any) -> dict[str, Any]:
    return {"model": "m", "input": inp, "temperature": 0, **params}


def test_responses_string_input_is_the_query_and_instructions_the_context() -> None:
    p = plan(responses(), kind="responses")
    assert (p.lookup, p.store, p.semantic) == (True, True, True)
    assert p.query == "how do i reset my password"
    other = plan(responses(instructions="Answer in French."), kind="responses")
    assert other.query == p.query and other.fingerprint != p.fingerprint


def test_responses_message_list_splits_history_and_last_user_text() -> None:
    turns = [{"role": "user", "content": "Let's talk about Spain."}, {"role": "assistant", "content": "Sure."},
             {"role": "user", "content": [{"type": "input_text", "text": "What is its capital?"}]}]
    p = plan(responses(turns), kind="responses")
    assert p.query == "what is its capital" and p.semantic and not p.head
    germany = [{**turns[0], "content": "Let's talk about Germany."}, *turns[1:]]
    assert plan(responses(germany), kind="responses").fingerprint != p.fingerprint
    # the same text as a string input has no history: a different context
    assert plan(responses("What is its capital?"), kind="responses").fingerprint != p.fingerprint


def test_responses_never_share_entries_with_chat() -> None:
    r = plan(responses("Hello there"), kind="responses")
    c = plan(chat("Hello there"))
    assert r.query == c.query and r.exact_key != c.exact_key


def test_responses_output_fields_are_in_the_fingerprint_and_defaults_are_not() -> None:
    base = plan(responses(), kind="responses").fingerprint
    assert plan(responses(max_output_tokens=20), kind="responses").fingerprint != base
    assert plan(responses(text={"format": {"type": "json_object"}}), kind="responses").fingerprint != base
    assert plan(responses(text={"format": {"type": "text"}}, truncation="disabled", store=True,
                          metadata={"a": "b"}), kind="responses").fingerprint == base


def test_responses_last_item_not_user_text_is_exact_only() -> None:
    items = [{"role": "user", "content": "2+2?"}, {"type": "function_call_output", "call_id": "c1", "output": "4"}]
    p = plan(responses(items), kind="responses")
    assert (p.lookup, p.store, p.semantic) == (True, True, False) and p.query == ""


@pytest.mark.parametrize("extra", [{"previous_response_id": "resp_1"}, {"background": True}])
def test_responses_with_upstream_state_bypass(extra: dict[str, Any]) -> None:
    p = plan(responses(**extra), kind="responses")
    assert (p.lookup, p.store, p.semantic) == (False, False, False)


def test_responses_store_matters_only_with_an_upstream_that_stores() -> None:
    assert plan(responses(store=True), kind="responses").lookup  # vLLM's default: nothing is stored upstream
    storing = CacheConfig(responses_upstream_store=True)
    assert not plan(responses(), c=storing, kind="responses").lookup  # absent means true (OpenAI's default)
    assert not plan(responses(store=True), c=storing, kind="responses").store
    assert plan(responses(store=False), c=storing, kind="responses").lookup


def test_responses_exact_key_hashes_the_raw_input() -> None:
    a, b = plan(responses("def f():\n    return 1"), kind="responses"), plan(responses("def f(): return 1"), kind="responses")
    assert a.exact_key != b.exact_key and a.query == b.query
