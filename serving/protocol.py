"""OpenAI request and error models: every request the gateway accepts, validated in one place.

Models allow extra fields, because vLLM accepts many (top_k, min_p, repetition_penalty, ...) and the
gateway passes them through untouched; the fields declared here are the ones the gateway reads or
must reject early with a 400 that names the field. Every value, declared or not, is hashed into the
cache key and forwarded, so :func:`check_values` bounds them all: numbers within 64-bit range and
nesting at most ``MAX_DEPTH`` deep (the JSON encoder refuses larger integers and deeper nesting).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator


# pydantic puts the union member it tried into an error's location ("stop.str"): not a field name
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list|dict|tuple|literal|function-[a-z-]+)(\[.*\])?$")
MAX_DEPTH = 32  # JSON nesting of a request body; orjson encodes at most 254 levels
INT64 = 2**63  # numbers in a body lie in (-INT64, INT64): what vLLM and the cache's JSON encoder take


class OpenAIError(Exception):
    """An error the client sees, in OpenAI's shape, with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | int | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class SamplingFields(_Open):
    """Fields common to chat and completions that the gateway validates and keys on."""

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logprobs: Any = None
    user: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    logprobs: StrictBool | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    best_of: int | None = Field(None, ge=1, le=128)
    suffix: str | None = None
    logprobs: StrictInt | None = Field(None, ge=0, le=20)


class ResponseInputMessage(_Open):
    """One item of a Responses ``input`` list: a message (``type`` "message" or absent) or another item
    (function_call_output, ...), passed through to vLLM as it is."""

    type: str | None = None
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: str | list[dict[str, Any]] | None = None


class ResponsesRequest(_Open):
    """POST /v1/responses. ``input`` is one user text or a list of items; ``instructions`` is the system
    prompt. Fields the gateway keys on or refuses early are declared; the rest pass through to vLLM."""

    model: str = Field(min_length=1)
    input: StrictStr | list[ResponseInputMessage]
    instructions: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None  # the chat flow reads it; Responses streams carry usage anyway
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_output_tokens: int | None = Field(None, ge=1)
    previous_response_id: str | None = Field(None, min_length=1)
    store: bool | None = None
    background: bool | None = None
    tools: list[dict[str, Any]] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if not value:
            raise ValueError("input must not be empty")
        return value


class EmbeddingRequest(_Open):
    """POST /v1/embeddings. ``input`` is one text, a list of texts, or token ids (one list or several)."""

    model: str = Field(min_length=1)
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValueError("input must not be an empty string")
        elif not value:
            raise ValueError("input must not be an empty list")
        elif any(item == "" or item == [] for item in value):
            raise ValueError("input must not contain an empty string or an empty token list")
        return value

    def texts(self) -> list[str] | None:
        """The inputs as texts, or None when they are token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if isinstance(self.input[0], str):
            return list(self.input)  # type: ignore[arg-type]
        return None


M = TypeVar("M", bound=BaseModel)


def _invalid(path: tuple[str | int, ...], message: str) -> OpenAIError:
    param = ".".join(str(p) for p in path) or None
    return OpenAIError(400, f"invalid field {param}: {message}", param=param, code="invalid_value")


def check_values(body: dict[str, Any]) -> None:
    """Refuse, naming the field, a number outside 64-bit range or nesting deeper than ``MAX_DEPTH``.

    orjson decodes an integer beyond 64 bits as a float, so floats are bounded by the same range.
    """
    stack: list[tuple[dict[str, Any] | list[Any], tuple[str | int, ...]]] = [(body, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            raise _invalid(path, f"nested more than {MAX_DEPTH} levels deep")
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, (dict, list)):
                if value:
                    stack.append((value, (*path, key)))
            elif isinstance(value, bool) or value is None or isinstance(value, str):
                continue
            elif isinstance(value, int):
                if not -INT64 < value < INT64:
                    raise _invalid((*path, key), "integer outside the 64-bit range")
            elif isinstance(value, float) and not (math.isfinite(value) and -INT64 < value < INT64):
                raise _invalid((*path, key), "number outside the 64-bit range")


def parse_request(raw: bytes, model: type[M], *, max_messages: int | None = None,
                  max_tokens: int | None = None) -> tuple[dict[str, Any], M]:
    """Decode and validate a request body; a 400 that names the offending field otherwise.

    ``max_messages`` bounds a chat's message list, ``max_tokens`` the tokens it may ask for.
    Returns the decoded dict (forwarded as sent, extras included) and the validated model.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    check_values(body)
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _invalid(tuple(p for p in first["loc"] if not _TYPE_TAG.match(str(p))), first["msg"]) from None
    if max_messages is not None and isinstance(parsed, ChatCompletionRequest) and len(parsed.messages) > max_messages:
        raise _invalid(("messages",), f"more than {max_messages} messages")
    if max_tokens is not None:
        # only the fields this route declares (validated ints): an undeclared one is an untyped extra
        # passed through as sent, and comparing it would raise on a list or a string
        for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = getattr(parsed, name) if name in type(parsed).model_fields else None
            if value is not None and value > max_tokens:
                raise _invalid((name,), f"at most {max_tokens} tokens may be asked for")
    return body, parsed
