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
  ``max-age=N`` accepts only entries younger than N seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cache.config import CacheConfig, NamespaceConfig
from cache.keys import canonical_messages, canonical_params, exact_key, fingerprint, message_text, normalise_query

SHARED_SCOPE = "_shared"


class PolicyError(ValueError):
    """The request names something the cache does not have (an unknown namespace): a 400."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class CacheControl:
    no_cache: bool = False
    no_store: bool = False
    max_age: float | None = None


def parse_cache_control(header: str | None) -> CacheControl:
    """Parse the directives we honour; unknown directives are ignored, as HTTP caches do."""
    if not header:
        return CacheControl()
    no_cache = no_store = False
    max_age: float | None = None
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age":
            try:
                max_age = max(0.0, float(value.strip().strip('"')))
            except ValueError:
                pass
    return CacheControl(no_cache, no_store, max_age)


@dataclass(frozen=True, slots=True)
class CachePlan:
    """What the cache does for one request; built once, read by lookup and store."""

    tenant: str
    scope: str  # the tenant, or SHARED_SCOPE in a shared namespace
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
    tenant: str,
    cache_control: str | None = None,
    namespace_header: str | None = None,
) -> CachePlan:
    """Apply the policy to a validated request body (see module docstring)."""
    ns_name = (namespace_header or "").strip() or cfg.default_namespace
    ns = cfg.namespaces.get(ns_name)
    if ns is None:
        raise PolicyError(f"unknown cache namespace {ns_name!r}", "X-Cache-Namespace")
    cc = parse_cache_control(cache_control)
    model = str(body.get("model"))
    scope = SHARED_SCOPE if ns.shared else tenant

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
        if ((body.get("n") or 1) > 1 or (body.get("logprobs") is not None and body.get("logprobs") is not False) or body.get("top_logprobs")
                or body.get("tools")):
            semantic, reason = False, "n>1, logprobs or tools: exact only"
        elif len(query) > cfg.max_semantic_chars:
            semantic, reason = False, "query longer than the embedder reads: exact only"
        elif not query:
            semantic, reason = False, "empty query"

    lookup = store = cfg.enabled and ns.enabled
    if not lookup:
        reason = "cache disabled"
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
    if cc.no_cache:
        lookup = False
    if cc.no_store:
        store = False

    fp = fingerprint(model, f"{ns_name}:{ns.version}:{scope}", context, params)
    key = exact_key(fp, raw)
    return CachePlan(
        tenant=tenant, scope=scope, namespace=ns_name, settings=ns, model=model, fingerprint=fp,
        query=query, head=head, exact_key=key, lookup=lookup, store=store, semantic=semantic and (lookup or store),
        max_age=cc.max_age, reason=reason,
    )
