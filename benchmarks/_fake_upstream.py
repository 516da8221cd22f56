"""A minimal local OpenAI-compatible upstream for the interception benchmark.

Raw asyncio, HTTP/1.1 with keep-alive, no framework: its own cost stays small and
steady, so the difference between a raw call and an intercepted one is ours. The
answers are made once, at start, by :class:`~routing_middleware.testing.FakeProvider`
(a chat completion, and a chat completion stream with usage), then replayed: a
request whose body holds ``"stream": true`` gets the stream (chunked, one HTTP chunk
per SSE event), any other gets the JSON body.

Run: ``python benchmarks/_fake_upstream.py [--port 0]``; prints ``PORT <n>`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_STREAM = re.compile(rb'"stream"\s*:\s*true')


def canned() -> tuple[bytes, bytes]:
    """The full HTTP responses: ``(json_answer, stream_answer)``."""
    from routing_middleware.testing import FakeModel, FakeProvider

    fake = FakeProvider([FakeModel("gpt-4o-mini", output_tokens=40)], created=1_700_000_000)
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    _, _, body = fake.handle("POST", "/v1/chat/completions", body=json.dumps(request).encode())
    plain = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    request |= {"stream": True, "stream_options": {"include_usage": True}}
    _, _, sse = fake.handle("POST", "/v1/chat/completions", body=json.dumps(request).encode())
    events = [e + b"\n\n" for e in sse.split(b"\n\n") if e.strip()]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    stream = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n" + chunks
    )
    return plain, stream


class _Protocol(asyncio.Protocol):
    plain = b""
    stream = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            body = self.buffer[head_end + 4 : end]
            self.buffer = self.buffer[end:]
            self.transport.write(self.stream if _STREAM.search(body) else self.plain)


async def _serve(port: int) -> None:
    _Protocol.plain, _Protocol.stream = canned()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
