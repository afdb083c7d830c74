"""LangChain's ChatOpenAI and OpenAIEmbeddings pointed at the gateway, configured as apps configure them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.e2e

KEY = "sk-langchain"
EMBEDDER = "all-MiniLM-L6-v2"


@pytest.fixture
def gw(gateway_factory, vllm_url, redis_url):
    return gateway_factory(vllm_url, redis_url,
                           auth={"tenants": [{"name": "lc", "key_sha256": [hashlib.sha256(KEY.encode()).hexdigest()]}]})


def hits(gw) -> float:
    from cache import metrics

    return sum(s.value for m in metrics.REQUESTS.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels.get("result") == "HIT")


def test_openai_embeddings(gw, embedder):
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: send text, as LangChain documents for non-OpenAI models (by default
    # it sends tiktoken ids, which the gateway refuses with a 400 rather than misreading them)
    emb = OpenAIEmbeddings(model=EMBEDDER, base_url=gw.url + "/v1", api_key=KEY, check_embedding_ctx_length=False,
                           max_retries=0)
    docs = ["Paris is the capital of France.", "The Nile is a river in Africa."]
    vectors = np.array(emb.embed_documents(docs), dtype=np.float32)
    query = np.array(emb.embed_query("Which city is France's capital?"), dtype=np.float32)
    assert np.allclose(vectors, embedder.encode(docs), atol=1e-6)
    assert float(vectors[0] @ query) > float(vectors[1] @ query)


def test_chat_openai_answers_and_hits_the_cache(gw):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=gw.url + "/v1", api_key=KEY, temperature=0, max_tokens=24, max_retries=0)
    first = llm.invoke("What is the capital of France?")
    gw.drain()
    before = hits(gw)
    second = llm.invoke("What is the capital of France?")
    assert "paris" in first.content.lower() and second.content == first.content
    assert hits(gw) == before + 1
    streamed = "".join(chunk.content for chunk in llm.stream("What is the capital of France?"))
    assert streamed == first.content and hits(gw) == before + 2


def test_chat_openai_on_the_responses_api(gw):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=gw.url + "/v1", api_key=KEY, temperature=0, max_tokens=24,
                     max_retries=0, use_responses_api=True)
    first = llm.invoke("What is the capital of France?")
    gw.drain()
    before = hits(gw)
    second = llm.invoke("What is the capital of France?")
    assert "paris" in first.text.lower() and second.text == first.text and hits(gw) == before + 1
