"""Upstream calls sent straight to httpx's (or httpx2's) connection pool, over real sockets.

The dispatcher's default client, and any client whose transport for the URL is the
library's own ``HTTPTransport``, skip httpx's request and response objects; these
tests hold that path to what the client would have done.
"""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import httpx2
import pytest

from routing_middleware import transport as routing_transport
from routing_middleware._fake_asgi import serve
from routing_middleware.engine import LLMRoute
from routing_middleware.metering import MemorySink
from routing_middleware.retry import RetryPolicy
from routing_middleware.schema import (
    InvalidRequest,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from routing_middleware.testing import Failure, FakeProvider
from tests.core.served_upstream import CATALOG, KEY, TEXT, chat, decision, dispatcher, served_fake


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeProvider, str]]:
    with served_fake() as found:
        yield found


@pytest.fixture(autouse=True)
def _clean(served: tuple[FakeProvider, str]) -> None:
    served[0].clear_failures()


@pytest.mark.parametrize("lib", [None, httpx, httpx2], ids=["default", "httpx", "httpx2"])
def test_a_call_and_a_stream_through_the_pool(lib: Any, served: tuple[FakeProvider, str]) -> None:
    fake, url = served
    sink = MemorySink()
    given = lib.Client() if lib else None
    d = dispatcher(url, sink, client=given)
    before = len(fake.ledger.calls)

    assert d.dispatch(chat(), decision()).text == TEXT
    assert d.sync_sender()._core is not None  # the pool path was taken
    pieces = [chunk.text or "" for chunk in d.stream(chat(stream=True), decision())]
    d.close()
    if given is not None:
        given.close()

    assert "".join(pieces) == TEXT
    assert len(pieces) > 1
    calls = fake.ledger.calls[before:]
    assert [c.status for c in calls] == [200, 200]
    assert calls[0].api_key == KEY
    assert calls[0].headers["host"] == url.removeprefix("http://")
    assert "accept-encoding" not in calls[0].headers  # answers come uncompressed
    assert calls[1].headers["accept"] == "text/event-stream"
    assert [r.status for r in sink.records] == ["ok", "ok"]
    assert all(r.usage.output_tokens and r.cost > 0 for r in sink.records)


def test_the_async_pool_path(served: tuple[FakeProvider, str]) -> None:
    _, url = served
    sink = MemorySink()

    async def main() -> list[str]:
        async with httpx.AsyncClient() as client:
            d = dispatcher(url, sink, async_client=client)
            assert (await d.adispatch(chat(), decision())).text == TEXT
            assert d.async_sender()._core is not None  # type: ignore[union-attr]
            stream = await d.astream(chat(stream=True), decision())
            return [chunk.text or "" async for chunk in stream]

    assert "".join(anyio.run(main)) == TEXT
    assert [r.status for r in sink.records] == ["ok", "ok"]


def test_error_answers_keep_their_status_headers_and_body(
    served: tuple[FakeProvider, str],
) -> None:
    fake, url = served
    d = dispatcher(url, retry=RetryPolicy(max_retries=1, base_delay=0))
    fake.inject("gpt-a", Failure(status=429, retry_after=0))
    assert d.dispatch(chat(), decision()).text == TEXT  # Retry-After read, retried
    fake.inject("gpt-a", Failure(status=400))
    with pytest.raises(InvalidRequest) as caught:
        d.dispatch(chat(), decision())
    assert caught.value.status_code == 400
    d.close()


def test_a_refused_connection_and_a_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = dispatcher(f"http://127.0.0.1:{port}", retry=RetryPolicy(max_retries=0))
    with pytest.raises(UpstreamUnavailable):
        d.dispatch(chat(), decision())
    d.close()


def test_a_read_timeout(served: tuple[FakeProvider, str]) -> None:
    fake, url = served
    fake.inject("gpt-a", Failure(kind="timeout", hang=2.0))
    d = dispatcher(url, retry=RetryPolicy(max_retries=0, attempt_timeout=0.2))
    with pytest.raises(UpstreamTimeout):
        d.dispatch(chat(), decision())
    d.close()


def _compressing_upstream(encoding: str) -> Any:
    """An OpenAI-shaped upstream that compresses its answers though not asked to."""
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-a",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
    }
    body = gzip.compress(json.dumps(answer).encode())

    async def app(scope: Any, receive: Any, send: Any) -> None:
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-encoding", encoding.encode()),
            (b"content-length", b"%d" % len(body)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def test_a_gzip_answer_sent_unasked_is_decoded() -> None:
    with serve(_compressing_upstream("gzip")) as url:
        d = dispatcher(url)
        assert d.dispatch(chat(), decision()).text == TEXT
        d.close()


def test_an_unknown_compression_is_refused_by_name() -> None:
    with serve(_compressing_upstream("br")) as url:
        d = dispatcher(url, retry=RetryPolicy(max_retries=0))
        with pytest.raises(UpstreamProtocolError, match="'br'"):
            d.dispatch(chat(), decision())
        d.close()


def test_under_instrument_the_engines_own_calls_still_take_the_pool(
    served: tuple[FakeProvider, str],
) -> None:
    fake, url = served
    engine = LLMRoute(
        {
            "providers": {"openai": {"api_key": KEY, "base_url": f"{url}/v1"}},
            "offline": "never",
            "cache": {"enabled": False},
        },
        catalog=CATALOG,
        sink=MemorySink(),
    )
    routing_transport.instrument(engine)
    try:
        answer = engine.complete(chat(), decision=decision())
    finally:
        routing_transport.uninstrument()
    assert answer.response.text == TEXT
    assert engine.dispatcher.sync_sender()._core is not None
    assert fake.ledger.calls[-1].api_key == KEY
    engine.close()


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize("core_name", ["httpcore", "httpcore2"])
def test_the_pool_request_is_what_the_library_would_build(core_name: str) -> None:
    import importlib

    from routing_middleware._core_send import CoreSender
    from routing_middleware.providers.base import EncodedRequest

    core: Any = importlib.import_module(core_name)
    sender = CoreSender(core_name, {"user-agent": "test/1", "accept-encoding": "gzip"})
    assert sender._build is not None  # the direct path applies to the installed library
    encoded = EncodedRequest(
        "POST",
        "http://127.0.0.1:9/v1/chat/completions",
        {"Authorization": "Bearer sk-x", "content-type": "application/json"},
        {"model": "m"},
    )
    url = httpx2.URL(encoded.url)
    timeout = {"connect": 1.0, "read": 2.0, "write": 3.0, "pool": 4.0}
    made = sender.request(url, encoded, b'{"model":"m"}', timeout)
    expected = core.Request(
        "POST",
        made.url,
        headers=[
            ("host", "127.0.0.1:9"),
            ("user-agent", "test/1"),
            ("authorization", "Bearer sk-x"),
            ("content-type", "application/json"),
            ("content-length", "13"),
        ],
        content=b'{"model":"m"}',
        extensions={"timeout": timeout},
    )
    assert type(made) is core.Request
    assert type(made.stream) is type(expected.stream)
    assert list(made.stream) == list(expected.stream) == [b'{"model":"m"}']
    state, wanted = vars(made).copy(), vars(expected).copy()
    state.pop("stream")
    wanted.pop("stream")
    assert state == wanted
    assert bytes(made.url) == b"http://127.0.0.1:9/v1/chat/completions"


def test_a_library_building_requests_otherwise_gets_its_constructor() -> None:
    import types

    from routing_middleware._core_send import CoreSender, _direct_builder
    from routing_middleware.providers.base import EncodedRequest

    class Request:
        """Like httpcore's, but keeping one more attribute."""

        def __init__(self, method: Any, url: Any, **kw: Any) -> None:
            self.method, self.url = method, url
            self.headers, self.extensions = kw["headers"], kw["extensions"]
            self.stream = [kw["content"]]
            self.trace = None

    real: Any = __import__("httpcore")
    fake = types.ModuleType("fake_core")
    fake.Request = Request  # type: ignore[attr-defined]
    fake.URL = real.URL  # type: ignore[attr-defined]
    assert _direct_builder(fake) is None
    import sys

    sys.modules["fake_core"] = fake
    try:
        sender = CoreSender("fake_core", {})
        encoded = EncodedRequest("POST", "http://127.0.0.1:9/v1/x", {}, {})
        made = sender.request(httpx2.URL(encoded.url), encoded, b"{}", {})
    finally:
        del sys.modules["fake_core"]
    assert type(made) is Request
    assert made.trace is None
