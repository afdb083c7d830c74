"""The /v1/embeddings flow: auth -> body limit -> protocol -> cached vectors -> the gateway's own
embedder, or the vLLM embedding deployment serving the model (serving/embedding_deployment.py) -> float
or base64 rows.

The local model is the cache's embedder, listed in /v1/models under its own name. Its inputs must be
text: token ids are refused, because the ids clients send are almost always another tokenizer's
(LangChain's OpenAIEmbeddings sends tiktoken cl100k ids by default); read as this model's WordPiece
ids they would give a vector of unrelated words, silently. An input longer than the model reads is
refused too (OpenAI's behaviour), since truncating it would embed only its start. A deployment that
is forwarded to receives the inputs as sent: its model's tokenizer is the one it expects ids in.

Both are cached exactly, per tenant: the local model per text (keyed by the weights' identity), a
deployment's model per whole request (keyed by its served name, so a deployment that changes weights
must change the name or have its vectors purged). A forwarded request holds one of the tenant's
``server.max_in_flight_per_tenant`` slots like a chat request.
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

from cache.batching import Unavailable
from cache.embedder import Embedder, MicroBatcher
from cache.vectors import VectorCache, Vectors, vector_key
from serving import metrics
from serving.cache_control import parse_cache_control
from serving.embedding_deployment import Deployment
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
    deployment: Deployment | None = None

    def cards(self) -> list[dict[str, Any]]:
        """The embedding models in /v1/models."""
        return ([self.local.card()] if self.local is not None else []) + (
            self.deployment.cards() if self.deployment is not None else [])


async def handle(request: Request) -> Response:
    gw: Gateway = request.app.state.gw
    return await _handle(request, gw, gw.auth.tenant(request.headers.get("authorization")))


async def _handle(request: Request, gw: Gateway, tenant: str) -> Response:
    started = time.perf_counter()
    raw = await read_body(request, gw.cfg.server.max_body_bytes)
    _, req = parse_request(raw, EmbeddingRequest)
    emb = gw.embeddings
    local = emb.local if emb.local is not None and req.model == emb.local.name else None
    deployment = emb.deployment if emb.deployment is not None and req.model in emb.deployment.models else None
    if local is None and deployment is None:
        raise OpenAIError(404, f"The model '{req.model}' does not exist or does not serve embeddings",
                          param="model", code="model_not_found")
    request.state.model = req.model
    count = 1 if isinstance(req.input, str) else len(req.input)
    if count > emb.max_inputs:
        raise OpenAIError(400, f"input has {count} items; at most {emb.max_inputs} are accepted per request",
                          param="input", code="too_many_inputs")
    cc = parse_cache_control(request.headers.get("cache-control"))
    cache = emb.vectors
    lookup = cache if cache is not None and not cc.no_cache else None
    store = cache if cache is not None and not cc.no_store else None

    async def respond() -> Response:
        if local is not None:
            rows, tokens, hits = await _embed_locally(local, req, tenant, lookup, store)
        else:
            assert deployment is not None
            rows, tokens, hits = await _forward(deployment, req, tenant, lookup, store)
        result = ("HIT" if hits == len(rows) else "MISS") if lookup or store else "BYPASS"
        body = _response(req, rows, tokens, req.model)
        metrics.REQUEST_SECONDS.labels(PATH, result).observe(time.perf_counter() - started)
        return Response(body, 200, media_type="application/json", headers={"x-cache": result})

    return await (gw.slots.run(tenant, respond) if deployment is not None else respond())


async def _forward(deployment: Deployment, req: EmbeddingRequest, tenant: str, lookup: VectorCache | None,
                   store: VectorCache | None) -> tuple[list[np.ndarray], int, int]:
    """(one row per input, prompt tokens, inputs answered from the cache): a repeat of the whole
    request is answered from the cache; anything else is forwarded whole."""
    key = vector_key(tenant, f"deployment:{req.model}", {"input": req.input, "dimensions": req.dimensions})
    cached = (await lookup.get_many([key]))[0] if lookup is not None else None
    if cached is not None:
        return list(cached.rows), cached.tokens, cached.rows.shape[0]
    got = await deployment.embed(req)
    if store is not None:
        store.put_later({key: Vectors(got.tokens, got.rows)})
    return list(got.rows), got.tokens, 0


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
        try:
            vecs = await asyncio.gather(*(local.batcher.embed(texts[i]) for i in chunk))
        except Unavailable as exc:  # a remote embedder backend (cache/vllm_encoder.py) failing
            raise OpenAIError(503, f"the embedder of {local.name} is unavailable: {exc}", "service_unavailable",
                              code="embedder_unavailable") from None
        for i, row in zip(chunk, vecs, strict=True):
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
