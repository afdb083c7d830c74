"""A fast OpenAI-shaped upstream for throughput benchmarks: fixed answers, keep-alive, no model.

Raw asyncio protocol so that the upstream costs far less than the gateway under test; it is only used
where a real vLLM would be the bottleneck (requests/s), never for correctness.
Run: python loadtests/fake_upstream.py PORT [DELAY_MS]
With DELAY_MS every completion is answered that long after it arrived (an upstream with a fixed
generation time, for measuring what a cache miss adds without vLLM's own variance).
"""

from __future__ import annotations

import asyncio
import json
import sys

MODEL = "fake"
ANSWER = json.dumps({
    "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The capital of France is Paris."},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 37, "completion_tokens": 8, "total_tokens": 45,
              "prompt_tokens_details": {"cached_tokens": 32}},
}).encode()
DELAY_S = 0.0
MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()


def _chunk(content: str | None, finish: str | None) -> bytes:
    delta = {"content": content} if content is not None else {}
    return b"data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                                   "model": MODEL, "choices": [{"index": 0, "delta": delta,
                                                                "finish_reason": finish}]}).encode() + b"\n\n"


STREAM = b"".join([_chunk(w, None) for w in ["The ", "capital ", "is ", "Paris."]] + [_chunk(None, "stop"),
                                                                                       b"data: [DONE]\n\n"])


def response(status: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                length = int(head[i + 15:].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            if head.startswith(b"get /v1/models"):
                self.transport.write(response(b"200 OK", MODELS))
            elif head.startswith(b"get"):
                self.transport.write(response(b"200 OK", b"{}"))
            elif b'"stream":true' in body.replace(b" ", b""):
                self.answer(response(b"200 OK", STREAM, b"text/event-stream"))
            else:
                self.answer(response(b"200 OK", ANSWER))

    def answer(self, payload: bytes) -> None:
        if DELAY_S <= 0:
            self.transport.write(payload)
            return
        asyncio.get_running_loop().call_later(DELAY_S, self._late, payload)

    def _late(self, payload: bytes) -> None:
        if not self.transport.is_closing():  # a cancelled request's connection is gone
            self.transport.write(payload)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if len(sys.argv) > 2:
        DELAY_S = float(sys.argv[2]) / 1000.0
    asyncio.run(main(int(sys.argv[1])))
