"""May this request be looked up, may its answer be stored, and under which keys.

The rules, most restrictive first (README "Cache policy" explains each):
- cache or namespace disabled: BYPASS.
- sampled requests (temperature > 0; absent means OpenAI's 1.0): per namespace ``sampled``:
  ``never`` (default: the client asked for a fresh sample), ``exact``, or ``all``.
- ``n`` > 1, logprobs, tools or a last turn that is not plain user text: exact layer only,
  because a paraphrase match cannot vouch for tool calls, several samples or token probabilities.
- a query longer than the embedder reads (``max_semantic_chars``): exact only, since two long
  queries that differ only past the truncation point would embed identically.
- Responses API: ``instructions`` and the earlier input items are the context, the last user text the
  query; ``previous_response_id``, ``background`` and (with an upstream that stores responses)
  ``store`` make a request uncacheable (:func:`responses_state`).
- ``Cache-Control: no-cache`` skips the lookup but stores; ``no-store`` skips the store;
  ``max-age=N`` accepts only entries younger than N seconds (serving/ parses the header).
- who may use a namespace: its ``readers`` look up, its ``writers`` are stored; anyone else gets
  the error of a namespace that does not exist. A ``per_user`` namespace without an end user: BYPASS.

Scopes are built so that no name can collide: ``open`` (no tenants configured), ``tenant:<name>``,
``shared``, and in a ``per_user`` namespace a digest of the end user joins the fingerprint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cache.config import CacheConfig, NamespaceConfig
from cache.keys import canonical_messages, canonical_params, exact_key, fingerprint, message_text, normalise_query

OPEN_SCOPE = "open"  # no tenants configured; tenant scopes are "tenant:<name>", never this
SHARED_SCOPE = "shared"


class PolicyError(ValueError):
    """The request names a namespace it may not use: unknown and forbidden read alike (one 4xx)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def namespace_error(name: str) -> PolicyError:
    """The one error for an unknown or a forbidden namespace, so it tells no one which exist."""
    return PolicyError(f"cache namespace {name[:64]!r} does not exist or this API key may not use it",
                       "X-Cache-Namespace")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: the tenant (None: no tenants configured, the open scope) and the end user behind
    its API key, if the request names one."""

    tenant: str | None
    end_user: str | None = None


@dataclass(frozen=True, slots=True)
class CacheControl:
    """The Cache-Control directives the cache honours (serving/ parses the header)."""

    no_cache: bool = False
    no_store: bool = False
    max_age: float | None = None


def scope_of(caller: Caller, ns: NamespaceConfig) -> str:
    """The partition scope: open, shared, or one tenant's."""
    if caller.tenant is None:
        return OPEN_SCOPE
    return SHARED_SCOPE if ns.shared else f"tenant:{caller.tenant}"


def user_scope(end_user: str) -> str:
    """An end user's part of the fingerprint: a digest, so no user id can look like another scope."""
    return hashlib.sha256(end_user.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class CachePlan:
    """What the cache does for one request; built once, read by lookup and store."""

    tenant: str | None  # None: no tenants configured
    scope: str  # OPEN_SCOPE, SHARED_SCOPE or "tenant:<name>": the partition
    end_user: str  # user_scope() of the end user in a per_user namespace, else ""
    namespace: str
    settings: NamespaceConfig
    model: str
    fingerprint: str
    query: str  # normalised last user turn (or the whole prompt), for the semantic tier; "" when none
    head: bool  # no earlier assistant turn: this fingerprint gathers many entries (store: KNN strategy)
    exact_key: str  # hashes the raw text: only the identical query is an exact hit
    lookup: bool
    store: bool
    semantic: bool
    max_age: float | None
    reason: str  # why a layer is off, for logs and tests


RESPONSES_CONTEXT_FIELDS = frozenset({"input", "instructions"})


def _items(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    value = body.get("input")
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def responses_context(body: Mapping[str, Any]) -> tuple[Any, str, bool, str]:
    """(context, raw query text, semantic, reason) of a Responses request: ``instructions`` and every input item
    but a last user text are the context; that text (or a string ``input``) is the query. The context
    is tagged with the API, so a Responses entry never answers a chat request of the same text."""
    value = body.get("input")
    instructions = body.get("instructions")
    if isinstance(value, str):
        return {"api": "responses", "instructions": instructions, "items": []}, value, True, ""
    items = _items(body)
    last = items[-1] if items else {}
    is_message = last.get("type") in (None, "message")
    text = message_text(last.get("content")) if is_message and last.get("role") == "user" else None
    if text is None:
        context = {"api": "responses", "instructions": instructions, "items": canonical_messages(items)}
        return context, "", False, "last input item is not user text"
    context = {"api": "responses", "instructions": instructions, "items": canonical_messages(items[:-1])}
    return context, text, True, ""


def responses_state(cfg: CacheConfig, body: Mapping[str, Any]) -> str:
    """Why a Responses request must not be cached at all, or "" (README "Cache policy" explains).

    ``previous_response_id`` continues a conversation held upstream under that id, and ``background``
    runs detached from this request: neither can be answered by a replay. With an upstream that stores
    responses (``cache.responses_upstream_store``), ``store`` true or absent (OpenAI's default) asks for a
    response that can be retrieved and continued later, which a replayed id could not be.
    """
    if body.get("previous_response_id"):
        return "previous_response_id: the context is upstream state"
    if body.get("background"):
        return "background response"
    if cfg.responses_upstream_store and body.get("store") is not False:
        return "store (true or absent) with an upstream that stores responses"
    return ""


def _effective_temperature(body: Mapping[str, Any]) -> float:
    t = body.get("temperature")
    return 1.0 if t is None else float(t)


def make_plan(
    cfg: CacheConfig,
    kind: str,
    body: Mapping[str, Any],
    caller: Caller,
    cc: CacheControl = CacheControl(),
    namespace: str | None = None,
) -> CachePlan:
    """Apply the policy to a validated request body (see module docstring)."""
    ns_name = (namespace or "").strip() or cfg.default_namespace
    ns = cfg.namespaces.get(ns_name)
    tenant = caller.tenant
    if ns is None or not (ns.may_read(tenant) or ns.may_write(tenant)):
        raise namespace_error(ns_name)
    model = str(body.get("model"))
    scope = scope_of(caller, ns)
    end_user = user_scope(caller.end_user) if ns.per_user and caller.end_user else ""

    semantic = True
    reason = ""
    head = True
    if kind == "chat":
        messages = list(body.get("messages") or [])
        head = not any(m.get("role") == "assistant" for m in messages[:-1])
        last = messages[-1] if messages else {}
        last_text = message_text(last.get("content")) if last.get("role") == "user" else None
        if last_text is None:
            context: Any = canonical_messages(messages)
            raw, semantic, reason = "", False, "last turn is not user text"
        else:
            context, raw = canonical_messages(messages[:-1]), last_text
    elif kind == "responses":
        context, raw, semantic, reason = responses_context(body)
        head = not any(item.get("role") == "assistant" for item in _items(body)[:-1])
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            context, raw = None, prompt
        else:
            context, raw, semantic, reason = prompt, "", False, "prompt is not one string"
    query = normalise_query(raw)

    params = canonical_params({k: v for k, v in body.items() if k not in RESPONSES_CONTEXT_FIELDS}
                              if kind == "responses" else body)
    if semantic:
        # `n` is undeclared on some routes (Responses): any value but absent or 1 is treated as several
        if (body.get("n") not in (None, 1) or (body.get("logprobs") is not None and body.get("logprobs") is not False) or body.get("top_logprobs")
                or body.get("tools")):
            semantic, reason = False, "n>1, logprobs or tools: exact only"
        elif len(query) > cfg.max_semantic_chars:
            semantic, reason = False, "query longer than the embedder reads: exact only"
        elif not query:
            semantic, reason = False, "empty query"

    lookup = store = cfg.enabled and ns.enabled
    if not lookup:
        reason = "cache disabled"
    elif ns.per_user and not end_user:
        lookup = store = False
        reason = "namespace is per_user and the request names no end user"
    elif _effective_temperature(body) > 0.0:
        if ns.sampled == "never":
            lookup = store = semantic = False
            reason = "sampled request (temperature > 0) in a namespace with sampled: never"
        elif ns.sampled == "exact":
            semantic, reason = False, "sampled request: exact only"
    if kind == "responses":
        unshareable = responses_state(cfg, body)
        if unshareable:
            lookup = store = semantic = False
            reason = unshareable
    if cc.no_cache or not ns.may_read(tenant):
        lookup = False
    if cc.no_store or not ns.may_write(tenant):
        store = False

    scope_key = f"{ns_name}:{ns.version}:{scope}" + (f":user:{end_user}" if end_user else "")
    fp = fingerprint(model, scope_key, context, params)
    key = exact_key(fp, raw)
    return CachePlan(
        tenant=tenant, scope=scope, end_user=end_user, namespace=ns_name, settings=ns, model=model,
        fingerprint=fp, query=query, head=head, exact_key=key, lookup=lookup, store=store,
        semantic=semantic and (lookup or store), max_age=cc.max_age, reason=reason,
    )
