"""Forwarding /v1/embeddings to a vLLM embedding deployment (``--runner pooling``).

The deployment gets the request's model, inputs (texts or token ids, as sent: its tokenizer is the
one ids are meant for) and dimensions, nothing else (no ``user``). Its answer comes back as
little-endian float32 base64 and is re-encoded for the client, so what the client sees is the
gateway's own response whatever the engine sends. Errors map as for chat (serving/relay.py): a 5xx
becomes the gateway's 502/503 and its body stays in the log; a 4xx keeps its status and message in
OpenAI's shape; a transport failure is 502/504 (serving/upstream.py).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving.config import EmbeddingDeploymentConfig, UpstreamConfig
from serving.protocol import EmbeddingRequest, OpenAIError
from serving.relay import upstream_failure
from serving.upstream import UpstreamClient


@dataclass(frozen=True, slots=True)
class Embedded:
    rows: np.ndarray  # (inputs, dim) float32
    tokens: int


class Deployment:
    """The deployment's models and one pooled client to it."""

    def __init__(self, cfg: EmbeddingDeploymentConfig) -> None:
        self.url = cfg.url
        self.models = frozenset(cfg.models)
        self.client = UpstreamClient(UpstreamConfig(urls=[cfg.url], api_key_file=cfg.api_key_file,
                                                    timeouts=cfg.timeouts))

    def cards(self) -> list[dict[str, Any]]:
        """Its entries in /v1/models."""
        return [{"id": m, "object": "model", "created": 0, "owned_by": "vllm"} for m in sorted(self.models)]

    async def embed(self, req: EmbeddingRequest) -> Embedded:
        """The deployment's vectors for ``req``; OpenAIError (OpenAI's shape) for every failure."""
        body: dict[str, Any] = {"model": req.model, "input": req.input, "encoding_format": "base64",
                                "endianness": "little"}
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        resp = await self.client.post(self.url, "/v1/embeddings", orjson.dumps(body))
        payload = await resp.read()
        if resp.status >= 500:
            raise upstream_failure(resp.status, payload)
        if resp.status != 200:
            raise refusal(resp.status, payload)
        try:
            doc = orjson.loads(payload)
            data = sorted(doc["data"], key=lambda d: d["index"])
            rows = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
            tokens = int(doc.get("usage", {}).get("prompt_tokens", 0))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise OpenAIError(502, "the embedding deployment answered something that is not embeddings",
                              "upstream_error", code="upstream_error") from None
        count = 1 if isinstance(req.input, str) or isinstance(req.input[0], int) else len(req.input)
        if rows.shape[0] != count:
            raise OpenAIError(502, f"the embedding deployment answered {rows.shape[0]} embeddings for {count} inputs",
                              "upstream_error", code="upstream_error")
        return Embedded(rows.astype(np.float32), tokens)

    async def start(self) -> None:
        await self.client.start()

    async def aclose(self) -> None:
        await self.client.aclose()


def refusal(status: int, payload: bytes) -> OpenAIError:
    """A 4xx from the deployment in OpenAI's shape: its message, type, param and code when it sent them."""
    err: Any = None
    try:
        err = orjson.loads(payload).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if not isinstance(err, dict):
        return OpenAIError(status, f"the embedding deployment refused the request (HTTP {status})")

    def text(key: str) -> str | None:
        value = err.get(key)
        return str(value)[:1000] if isinstance(value, str | int) and not isinstance(value, bool) else None

    return OpenAIError(status, text("message") or f"the embedding deployment refused the request (HTTP {status})",
                       text("type") or "invalid_request_error", text("param"), text("code"))
