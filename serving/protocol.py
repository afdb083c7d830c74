"""OpenAI request and error models: every request the gateway accepts, validated in one place.

Models allow extra fields, because vLLM accepts many (top_k, min_p, repetition_penalty, ...) and the
gateway passes them through untouched; the fields declared here are the ones the gateway reads or
must reject early with a 400 that names the field.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator


# pydantic puts the union member it tried into an error's location ("stop.str"): not a field name
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list|dict|tuple|literal|function-[a-z-]+)(\[.*\])?$")


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
    best_of: int | None = Field(None, ge=1)
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


def parse_request(raw: bytes, model: type[M]) -> tuple[dict[str, Any], M]:
    """Decode and validate a request body; a 400 that names the offending field otherwise.

    Returns the decoded dict (forwarded as sent, extras included) and the validated model.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if not _TYPE_TAG.match(str(p))) or None
        raise OpenAIError(400, f"invalid field {param}: {first['msg']}", param=param, code="invalid_value") from None
    return body, parsed
