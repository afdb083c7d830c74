"""The /v1/embeddings flow: auth -> body limit -> protocol -> cached vectors -> the gateway's own
embedder (or a vLLM embedding deployment) for the rest -> float or base64 rows.

The local model is the cache's embedder, listed in /v1/models under its own name. Its inputs must be
text: token ids are refused, because the ids clients send are almost always another tokenizer's
(LangChain's OpenAIEmbeddings sends tiktoken cl100k ids by default); read as this model's WordPiece
ids they would give a vector of unrelated words, silently. An input longer than the model reads is
refused too (OpenAI's behaviour), since truncating it would embed only its start. A deployment that
is forwarded to receives the inputs as sent: its model's tokenizer is the one it expects ids in.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from cache.embedder import Embedder, MicroBatcher
from cache.vectors import VectorCache, Vectors, vector_key
from serving import metrics
from serving.cache_control import parse_cache_control
from serving.limits import read_body
from serving.protocol import EmbeddingRequest, OpenAIError, parse_request

if TYPE_CHECKING:
    from serving.app import Gateway

PATH = "/v1/embeddings"


@dataclass(frozen=True, slots=True)
class LocalModel:
    """The gateway's own embedder, served as a model."""

    name: str
    embedder: Embedder
    batcher: MicroBatcher  # shared with the cache's lookups: one encoder, batches interleave

    def card(self) -> dict[str, Any]:
        """Its entry in /v1/models."""
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "cachestack",
                "max_model_len": self.embedder.max_tokens}


def local_name(model: str, configured: str | None) -> str:
    """The local model's id: as configured, else the last part of the embedder's name or path."""
    return configured or PurePath(model.rstrip("/")).name


@dataclass(slots=True)
class Embeddings:
    """Everything /v1/embeddings needs, built once per process."""

    local: LocalModel | None
    vectors: VectorCache | None
    max_inputs: int


async def handle(request: Request) -> Response:
    gw: Gateway = request.app.state.gw
    return await _handle(request, gw, gw.auth.tenant(request.headers.get("authorization")))


async def _handle(request: Request, gw: Gateway, tenant: str) -> Response:
    started = time.perf_counter()
    raw = await read_body(request, gw.cfg.server.max_body_bytes)
    _, req = parse_request(raw, EmbeddingRequest)
    emb = gw.embeddings
    local = emb.local
    if local is None or req.model != local.name:
        raise OpenAIError(404, f"The model '{req.model}' does not exist or does not serve embeddings",
                          param="model", code="model_not_found")
    request.state.model = req.model
    count = 1 if isinstance(req.input, str) else len(req.input)
    if count > emb.max_inputs:
        raise OpenAIError(400, f"input has {count} items; at most {emb.max_inputs} are accepted per request",
                          param="input", code="too_many_inputs")
    cc = parse_cache_control(request.headers.get("cache-control"))
    cache = emb.vectors
    lookup, store = cache is not None and not cc.no_cache, cache is not None and not cc.no_store
    rows, tokens, hits = await _embed_locally(local, req, tenant, cache if lookup else None,
                                              cache if store else None)
    result = ("HIT" if hits == len(rows) else "MISS") if lookup or store else "BYPASS"
    body = _response(req, rows, tokens, local.name)
    metrics.REQUEST_SECONDS.labels(PATH, result).observe(time.perf_counter() - started)
    return Response(body, 200, media_type="application/json", headers={"x-cache": result})


async def _embed_locally(local: LocalModel, req: EmbeddingRequest, tenant: str, lookup: VectorCache | None,
                         store: VectorCache | None) -> tuple[list[np.ndarray], int, int]:
    """(one row per input, prompt tokens, inputs answered from the cache)."""
    texts = req.texts()
    if texts is None:
        raise OpenAIError(400, f"token-id input is not accepted by {local.name}: send the text (token ids are "
                          "almost always another tokenizer's; LangChain: OpenAIEmbeddings(..., "
                          "check_embedding_ctx_length=False))", param="input", code="unsupported_input")
    if req.dimensions is not None:
        raise OpenAIError(400, f"{local.name} has a fixed size of {local.embedder.dim} dimensions: "
                          "dimensions is not supported", param="dimensions", code="unsupported_parameter")
    counts = await asyncio.to_thread(local.embedder.token_counts, texts)
    limit = local.embedder.max_tokens
    for i, n in enumerate(counts):
        if n > limit:
            raise OpenAIError(400, f"input[{i}] is {n} tokens; {local.name} reads at most {limit}",
                              param=f"input[{i}]", code="context_length_exceeded")
    keys = [vector_key(tenant, local.embedder.identity, t) for t in texts]
    cached = await lookup.get_many(keys) if lookup is not None else [None] * len(texts)
    rows: list[np.ndarray | None] = [v.rows[0] if v is not None else None for v in cached]
    missing = [i for i, row in enumerate(rows) if row is None]
    step = local.batcher.max_batch
    for start in range(0, len(missing), step):  # a batch at a time: cache lookups queued meanwhile go next
        chunk = missing[start:start + step]
        for i, row in zip(chunk, await asyncio.gather(*(local.batcher.embed(texts[i]) for i in chunk)), strict=True):
            rows[i] = row
    if store is not None and missing:
        store.put_later({keys[i]: Vectors(counts[i], rows[i][None, :]) for i in missing})  # type: ignore[index]
    return rows, sum(counts), len(texts) - len(missing)  # type: ignore[return-value]


def _response(req: EmbeddingRequest, rows: list[np.ndarray], tokens: int, model: str) -> bytes:
    """OpenAI's list of embeddings; base64 is little-endian float32, as OpenAI sends it."""
    if req.encoding_format == "base64":
        encoded: list[Any] = [base64.b64encode(np.asarray(r, dtype="<f4").tobytes()).decode() for r in rows]
    else:
        encoded = [np.asarray(r, dtype=np.float32) for r in rows]
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
    return orjson.dumps({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                        option=orjson.OPT_SERIALIZE_NUMPY)
