"""Upstream faults a real vLLM cannot produce on demand (hangs, dropped connections, garbage), from a
raw TCP fake; and a client that disconnects mid-stream, against the real vLLM."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from serving.local.processes import free_port

pytestmark = pytest.mark.e2e

MODELS = ["hang", "drop", "garbage", "badstatus", "error500", "midstream", "notjson"]


def _http(status: str, body: bytes, ctype: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1)) if b"ength" in head else 0
            body = json.loads(await reader.readexactly(length)) if length else {}
            if head.startswith(b"GET /v1/models"):
                data = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]})
                writer.write(_http("200 OK", data.encode()))
                await writer.drain()
                continue
            model = body.get("model")
            if model == "hang":
                await asyncio.sleep(3600)
            elif model == "drop":
                writer.close()
                return
            elif model == "badstatus":
                writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            elif model == "error500":
                err = json.dumps({"error": {"message": "engine died", "type": "InternalServerError",
                                            "param": None, "code": 500}}).encode()
                writer.write(_http("500 Internal Server Error", err))
            elif model == "notjson":
                writer.write(_http("200 OK", b"<html>oops</html>", "text/html"))
            elif model == "midstream":
                chunk = {"id": "x", "object": "chat.completion.chunk", "model": model,
                         "choices": [{"index": 0, "delta": {"content": "partial "}, "finish_reason": None}]}
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                for _ in range(2):
                    event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
                    writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.2)  # an engine dying mid-generation, after the relay began
                writer.close()  # broken off: no terminating chunk, no [DONE]
                return
            await writer.drain()
            writer.close()
            return
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[str]:
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def main() -> None:
        server = await asyncio.start_server(_handle, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    ready.wait(5)
    yield f"http://127.0.0.1:{port}"  # the daemon thread ends with the session


@pytest.fixture
def gw(gateway_factory, fake_upstream, redis_url):
    return gateway_factory(fake_upstream, redis_url, upstreams={"timeouts": {"read_s": 0.5}},
                           cache={"namespaces": {"default": {"sampled": "all"}}})


def post(gw, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10)


@pytest.mark.parametrize("model, status, code", [
    ("hang", 504, "upstream_timeout"),
    ("drop", 502, None),
    ("badstatus", 502, None),
    ("error500", 502, 500),
    ("notjson", 502, "upstream_invalid_response"),
])
def test_upstream_fault_becomes_openai_error(gw, model, status, code):
    started = time.perf_counter()
    r = post(gw, model)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    assert time.perf_counter() - started < 5


def test_hang_seen_by_openai_client_as_504(gw):
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(model="hang", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 504


def test_stream_broken_midway_ends_with_error_event_and_is_not_stored(gw):
    r = post(gw, "midstream", stream=True)
    assert r.status_code == 200
    events = [line for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert "partial" in events[0]
    assert json.loads(events[-1][6:])["error"]["type"] == "upstream_error"
    gw.drain()
    assert gw.call(gw.gw.cache.store.count()) == 0


def _vllm(vllm_url: str, name: str) -> float:
    """Sum of a vLLM metric over its label sets."""
    text = httpx.get(vllm_url + "/metrics").text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}{{[^}}]*}} ([0-9.e+]+)$", text, re.M))


def test_client_disconnect_aborts_the_vllm_request(gateway_factory, vllm_url, redis_url):
    """vLLM 0.32 does not count aborts in request_success_total, so the proof is that the request
    stops running and stops producing tokens long before its 2,000 tokens, and never finishes."""
    gw = gateway_factory(vllm_url, redis_url, cache={"namespaces": {"default": {"sampled": "all"}}})
    finished_before = _vllm(vllm_url, "vllm:request_success_total")
    tokens_before = _vllm(vllm_url, "vllm:generation_tokens_total")
    body = {"model": "smollm2", "stream": True, "max_tokens": 2000, "ignore_eos": True, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}]}
    with httpx.Client(timeout=60) as http, http.stream("POST", gw.url + "/v1/chat/completions", json=body) as r:
        for i, _ in enumerate(r.iter_bytes()):
            if i >= 3:
                break  # leave mid-stream: the connection closes here
    deadline = time.monotonic() + 10
    while _vllm(vllm_url, "vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _vllm(vllm_url, "vllm:num_requests_running") == 0
    produced = _vllm(vllm_url, "vllm:generation_tokens_total") - tokens_before
    time.sleep(1.0)
    assert _vllm(vllm_url, "vllm:generation_tokens_total") - tokens_before == produced  # nothing more
    assert produced < 1000
    assert _vllm(vllm_url, "vllm:request_success_total") == finished_before  # it never completed
    gw.drain()
    assert gw.call(gw.gw.cache.store.count()) == 0  # an aborted stream is never stored
