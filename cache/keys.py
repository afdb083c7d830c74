"""Cache keys: what makes two requests "the same context", and the query that is compared.

The context fingerprint hashes everything that can change an answer except the last user turn:
model, namespace version, the earlier messages, tools, response_format and every sampling or
output parameter, with OpenAI's defaults filled in so that an omitted field and its explicit
default hash alike. Unknown parameters (vLLM extras) are included, not dropped: a field we do not
know might change the output, and treating it as context costs only hit rate.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import orjson

# Fields that never change the generated text; everything else is context.
NON_OUTPUT_FIELDS = frozenset(
    {"model", "messages", "prompt", "stream", "stream_options", "user", "metadata", "store",
     "service_tier", "request_id", "priority", "cache_salt", "safety_identifier", "prompt_cache_key"}
)

# OpenAI's defaults: a field equal to its default hashes as if it were absent.
OPENAI_DEFAULTS: Mapping[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "n": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "logprobs": False,
    "echo": False,
    "best_of": 1,
    "parallel_tool_calls": True,
    "response_format": {"type": "text"},
    "stop": [],
    "logit_bias": {},
    "suffix": "",
    # Responses API
    "tools": [],
    "tool_choice": "auto",
    "truncation": "disabled",
    "top_logprobs": 0,
    "include": [],
    "text": {"format": {"type": "text"}},
    "background": False,
}

_WS = re.compile(r"\s+")
# Fullwidth ASCII forms (U+FF01..U+FF5E) are the same characters as ASCII; other compatibility
# forms are not folded (NFKC would turn 10² into 102).
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}


def normalise_query(text: str) -> str:
    """NFC, fullwidth ASCII folded, case-folded, whitespace collapsed, trailing "?" and "." dropped.

    Only changes that cannot change the meaning: digits, superscripts (NFKC would make 10² into 102),
    "!" (5! is a factorial), negations and word order are kept.
    """
    text = unicodedata.normalize("NFC", text).translate(_FULLWIDTH).casefold()
    text = _WS.sub(" ", text).strip()
    return text.rstrip(" ?.。")


_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})  # chat's, and the Responses API's


def message_text(content: Any) -> str | None:
    """The text of a message's content (a string, or a list of text parts); None if not all text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                return None
        return "\n".join(parts)
    return None


def canonical_params(body: Mapping[str, Any]) -> dict[str, Any]:
    """Output-changing request fields with None and defaults removed and aliases merged."""
    params: dict[str, Any] = {}
    for key, value in body.items():
        if key in NON_OUTPUT_FIELDS or value is None:
            continue
        if key in ("max_completion_tokens", "max_output_tokens"):
            key = "max_tokens"
        if key == "stop" and isinstance(value, str):
            value = [value]
        if key in OPENAI_DEFAULTS and _same(value, OPENAI_DEFAULTS[key]):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        params[key] = value
    return params


def _same(value: Any, default: Any) -> bool:
    """Equal to the default without bool/int confusion (completions logprobs=0 is not False)."""
    if isinstance(value, bool) != isinstance(default, bool):
        return False
    return bool(value == default)


def _digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def fingerprint(model: str, version: str, context: Any, params: Mapping[str, Any]) -> str:
    """Hash of everything but the query; entries are only compared within one fingerprint."""
    return _digest({"m": model, "v": version, "c": context, "p": dict(params)})


def exact_key(fp: str, text: str) -> str:
    """Key of an exact hit: the fingerprint plus the query's raw text, byte for byte.

    Not the normalised query: whitespace is syntax in code and case changes a completion, so only
    the identical text is the same request. Normalisation belongs to the semantic tier.
    """
    return _digest({"f": fp, "q": text})


def canonical_messages(messages: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages reduced to what the model sees: role, name, text or parts, tool calls."""
    out: list[dict[str, Any]] = []
    for m in messages:
        entry: dict[str, Any] = {"role": m.get("role")}
        text = message_text(m.get("content"))
        entry["content"] = text if text is not None else m.get("content")
        for extra in ("name", "tool_calls", "tool_call_id"):
            if m.get(extra) is not None:
                entry[extra] = m[extra]
        out.append(entry)
    return out
