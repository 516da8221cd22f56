"""Global interception: the official SDKs, unchanged, under instrument().

The engine runs offline (its FakeProviders answer routed calls). The SDK clients are
given a FakeNetwork behind the providers' real host names, standing for "where the
code sent the call": a routed call must never land there, a metered pass-through
call must land there unchanged.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from routing_middleware.context import route_hint
from routing_middleware.engine import LLMRoute
from routing_middleware.metering import MemorySink
from routing_middleware.testing import FakeModel, FakeNetwork, FakeProvider
from routing_middleware.transport import (
    RoutingTransport,
    instrument,
    instrument_client,
    is_instrumented,
    suppress_interception,
    uninstrument,
)

CALLER_KEY = "sk-caller-openai-0123456789"
PREMIUM = "gpt-5.4"
MESSAGES = [{"role": "user", "content": "Summarize: the printer jams."}]
HOOKED = [
    (lib.Client, lib.AsyncClient)
    for lib in (httpx, httpx2)  # type: ignore[attr-defined]
]


@pytest.fixture
def engine() -> Iterator[LLMRoute]:
    engine = LLMRoute(
        {"offline": "always", "offline_latency": "none"}, sink=MemorySink(), environ={}
    )
    instrument(engine)
    try:
        yield engine
    finally:
        uninstrument()


@pytest.fixture
def caller() -> tuple[FakeNetwork, FakeProvider, FakeProvider]:
    oa = FakeProvider(default_model=FakeModel("default", output_tokens=12))
    an = FakeProvider(default_model=FakeModel("default", output_tokens=12))
    return FakeNetwork({"api.openai.com": oa, "api.anthropic.com": an}), oa, an


def _records(engine: LLMRoute) -> list[Any]:
    sink = engine.sink
    assert isinstance(sink, MemorySink)
    return sink.records


def _upstream_calls(engine: LLMRoute) -> int:
    return sum(len(fake.calls) for fake in engine.fake_network.providers.values())


# ----------------------------------------------------------------------------- openai SDK


def test_openai_sdk_made_before_instrument_is_routed(caller: Any) -> None:
    network, caller_fake, _ = caller
    client = openai.OpenAI(
        api_key=CALLER_KEY,
        http_client=httpx2.Client(transport=network.transport("httpx2")),
        max_retries=0,
    )
    engine = LLMRoute(
        {"offline": "always", "offline_latency": "none"}, sink=MemorySink(), environ={}
    )
    instrument(engine)
    try:
        with route_hint(tier=1):
            raw = client.chat.completions.with_raw_response.create(model=PREMIUM, messages=MESSAGES)
            stream = client.chat.completions.create(model=PREMIUM, messages=MESSAGES, stream=True)
            chunks = list(stream)
    finally:
        uninstrument()
    completion = raw.parse()
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.choices[0].message.content
    served = raw.headers["x-llmroute-model"]
    provider = raw.headers["x-llmroute-provider"]
    assert served != f"openai/{PREMIUM}"
    assert provider != "openai"
    assert completion.model == served.split("/", 1)[1]
    assert float(raw.headers["x-llmroute-cost-usd"]) > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert {c.model for c in chunks} == {completion.model}
    assert caller_fake.calls == []
    assert len(_records(engine)) == 2
    assert _upstream_calls(engine) == 2  # the engine's own calls were not routed again


@pytest.mark.anyio
async def test_async_openai_sdk_is_routed(engine: LLMRoute, caller: Any) -> None:
    network, caller_fake, _ = caller
    client = openai.AsyncOpenAI(
        api_key=CALLER_KEY,
        http_client=httpx2.AsyncClient(transport=network.async_transport("httpx2")),
        max_retries=0,
    )
    async with route_hint(tier=1):
        completion = await client.chat.completions.create(model=PREMIUM, messages=MESSAGES)
        stream = await client.chat.completions.create(
            model=PREMIUM,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert completion.model != PREMIUM
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert caller_fake.calls == []
    assert len(_records(engine)) == 2
    assert _upstream_calls(engine) == 2


def test_default_sdk_client_and_plain_httpx_are_covered(engine: LLMRoute) -> None:
    # The SDK's own default client, and an old-style plain httpx client, addressed to
    # the (local) Ollama host: routing answers them; were they not intercepted, a
    # closed local port would refuse them, nothing would be sent anywhere else.
    local = "http://127.0.0.1:11434/v1"
    client = openai.OpenAI(api_key=CALLER_KEY, base_url=local, max_retries=0)
    with route_hint(tier=1):
        completion = client.chat.completions.create(model=PREMIUM, messages=MESSAGES)
        with httpx.Client() as plain:
            response = plain.post(
                f"{local}/chat/completions", json={"model": PREMIUM, "messages": MESSAGES}
            )
    assert completion.model != PREMIUM
    assert response.headers["x-llmroute-model"] != f"openai/{PREMIUM}"


@pytest.mark.anyio
async def test_openai_aiohttp_client_is_covered(engine: LLMRoute) -> None:
    pytest.importorskip("aiohttp")
    # Addressed to the (local) Ollama host: were it not intercepted, the call would be
    # refused by a closed local port, never sent anywhere else.
    client = openai.AsyncOpenAI(
        api_key=CALLER_KEY,
        base_url="http://127.0.0.1:11434/v1",
        http_client=openai.DefaultAioHttpClient(),
        max_retries=0,
    )
    async with client, route_hint(tier=1, allow_providers=["deepseek", "openai"]):
        raw = await client.chat.completions.with_raw_response.create(
            model=PREMIUM, messages=MESSAGES
        )
        stream = await client.chat.completions.create(model=PREMIUM, messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert raw.headers["x-llmroute-provider"] in {"deepseek", "openai"}
    assert raw.parse().choices[0].message.content
    assert text
    assert len(_records(engine)) == 2


# ----------------------------------------------------------------------------- anthropic SDK


def test_anthropic_sdk_routed_to_an_openai_compatible_provider(
    engine: LLMRoute, caller: Any
) -> None:
    network, _, anthropic_fake = caller
    client = anthropic.Anthropic(
        api_key="sk-ant-caller",
        http_client=httpx2.Client(transport=network.transport("httpx2")),
        max_retries=0,
    )
    hint = route_hint(tier=1, allow_providers=["deepseek", "openai"])
    with hint:
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=100, messages=MESSAGES
        )
        with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=100, messages=MESSAGES
        ) as stream:
            final = stream.get_final_message()
    message = raw.parse()
    assert isinstance(message, anthropic.types.Message)
    assert message.content[0].type == "text"
    assert raw.headers["x-llmroute-provider"] in {"deepseek", "openai"}
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    assert anthropic_fake.calls == []
    assert len(_records(engine)) == 2


@pytest.mark.anyio
async def test_async_anthropic_sdk_routed(engine: LLMRoute, caller: Any) -> None:
    network, _, anthropic_fake = caller
    client = anthropic.AsyncAnthropic(
        api_key="sk-ant-caller",
        http_client=httpx2.AsyncClient(transport=network.async_transport("httpx2")),
        max_retries=0,
    )
    async with route_hint(tier=1, allow_providers=["deepseek", "openai"]):
        message = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=100, messages=MESSAGES
        )
        stream = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=100, messages=MESSAGES, stream=True
        )
        kinds = [event.type async for event in stream]
    assert message.content[0].type == "text"
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert anthropic_fake.calls == []
    assert _upstream_calls(engine) == 2


# ----------------------------------------------------------------------------- streams


def test_early_break_records_exactly_once(engine: LLMRoute, caller: Any) -> None:
    network, _, _ = caller
    client = openai.OpenAI(
        api_key=CALLER_KEY,
        http_client=httpx2.Client(transport=network.transport("httpx2")),
        max_retries=0,
    )
    with route_hint(tier=1):
        stream = client.chat.completions.create(model=PREMIUM, messages=MESSAGES, stream=True)
        for index, _ in enumerate(stream):
            if index == 1:
                break
        stream.close()
        with client.chat.completions.create(model=PREMIUM, messages=MESSAGES, stream=True):
            pass  # closed before reading a single chunk
    records = _records(engine)
    assert len(records) == 2
    assert len({r.call_id for r in records}) == 2
    assert all(r.streamed for r in records)


@pytest.mark.anyio
async def test_async_early_break_records_exactly_once(engine: LLMRoute, caller: Any) -> None:
    network, _, _ = caller
    client = openai.AsyncOpenAI(
        api_key=CALLER_KEY,
        http_client=httpx2.AsyncClient(transport=network.async_transport("httpx2")),
        max_retries=0,
    )
    async with route_hint(tier=1):
        stream = await client.chat.completions.create(model=PREMIUM, messages=MESSAGES, stream=True)
        async for _ in stream:
            break
        await stream.close()
    assert len(_records(engine)) == 1


# ----------------------------------------------------------------------------- metered only


def test_responses_and_embeddings_are_metered_and_untouched(engine: LLMRoute, caller: Any) -> None:
    network, caller_fake, _ = caller
    client = openai.OpenAI(
        api_key=CALLER_KEY,
        http_client=httpx2.Client(transport=network.transport("httpx2")),
        max_retries=0,
    )
    with route_hint(tier=1, feature="search"):
        response = client.responses.create(model="gpt-4o-mini", input="hello")
        events = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True))
        embedding = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert response.model == "gpt-4o-mini"
    assert response.output_text
    assert events[-1].type == "response.completed"
    assert embedding.data[0].embedding
    calls = caller_fake.calls
    assert [c.endpoint for c in calls] == ["responses", "responses", "embeddings"]
    assert all(c.api_key == CALLER_KEY for c in calls)
    records = _records(engine)
    assert [r.endpoint for r in records] == ["responses", "responses", "embeddings"]
    for record, call in zip(records, calls, strict=True):
        assert record.chosen_model == record.requested_model
        assert record.reasons == ()
        assert record.usage.input_tokens == call.usage.input_tokens  # type: ignore[union-attr]
        assert record.usage.output_tokens == call.usage.output_tokens  # type: ignore[union-attr]
        assert record.cost > 0
        assert record.feature == "search"
    assert records[1].streamed
    assert records[1].ttft_ms is not None
    assert _upstream_calls(engine) == 0


@pytest.mark.anyio
async def test_async_responses_stream_is_metered(engine: LLMRoute, caller: Any) -> None:
    network, caller_fake, _ = caller
    client = openai.AsyncOpenAI(
        api_key=CALLER_KEY,
        http_client=httpx2.AsyncClient(transport=network.async_transport("httpx2")),
        max_retries=0,
    )
    stream = await client.responses.create(model="gpt-4o-mini", input="hi", stream=True)
    types = [event.type async for event in stream]
    assert types[-1] == "response.completed"
    [record] = _records(engine)
    assert record.endpoint == "responses"
    assert record.usage.output_tokens > 0
    assert len(caller_fake.calls) == 1


# ----------------------------------------------------------------------------- untouched


class _RawServer:
    """A local HTTP server that keeps the exact bytes of every request it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.received.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b'x-upstream: yes\r\ncontent-length: 11\r\n\r\n{"ok":true}'
                )

    def close(self) -> None:
        self._sock.close()


def _exercise(lib: Any, url: str) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    seen = []
    with lib.Client() as client:
        for response in (
            client.get(f"{url}/v1/models", params={"q": "1"}, headers={"x-custom": "a"}),
            client.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": []}),
            client.post(f"{url}/upload", content=b"\x00\x01raw", headers={"authorization": "k"}),
        ):
            seen.append((response.status_code, list(response.headers.items()), response.content))
    return seen


@pytest.mark.anyio
async def test_non_llm_requests_are_byte_identical_and_uninstrument_restores() -> None:
    originals = [(cls, cls.__dict__["_transport_for_url"]) for pair in HOOKED for cls in pair]
    server = _RawServer()
    url = f"http://127.0.0.1:{server.port}"
    try:
        plain = {lib.__name__: _exercise(lib, url) for lib in (httpx, httpx2)}
        before = list(server.received)
        server.received.clear()
        engine = LLMRoute(
            {"offline": "always", "offline_latency": "none"}, sink=MemorySink(), environ={}
        )
        instrument(engine)
        instrument(engine)  # idempotent
        assert is_instrumented()
        try:
            routed = {lib.__name__: _exercise(lib, url) for lib in (httpx, httpx2)}
            async with httpx2.AsyncClient() as client:
                await client.get(f"{url}/v1/models", params={"q": "1"}, headers={"x-custom": "a"})
        finally:
            uninstrument()
        during = list(server.received)
        assert not is_instrumented()
        assert routed == plain
        assert during[: len(before)] == before
        assert during[len(before)] == before[3]  # httpx2's GET, sent by an async client
        assert _records(engine) == []
        for cls, original in originals:
            assert cls.__dict__["_transport_for_url"] is original
        uninstrument()  # a second call is harmless
    finally:
        server.close()


def test_suppression_and_the_dispatchers_own_requests(engine: LLMRoute, caller: Any) -> None:
    network, caller_fake, _ = caller
    client = openai.OpenAI(
        api_key=CALLER_KEY,
        http_client=httpx2.Client(transport=network.transport("httpx2")),
        max_retries=0,
    )
    with suppress_interception(), route_hint(tier=1):
        completion = client.chat.completions.create(model=PREMIUM, messages=MESSAGES)
    assert completion.model == PREMIUM  # went where it was sent, as it was
    assert len(caller_fake.calls) == 1
    assert _records(engine) == []
    # an instrumented client inside a globally instrumented process: routed once
    explicit = instrument_client(
        httpx2.Client(transport=network.transport("httpx2")), engine=engine
    )
    assert isinstance(explicit._transport, RoutingTransport)
    with route_hint(tier=1):
        openai.OpenAI(
            api_key=CALLER_KEY, http_client=explicit, max_retries=0
        ).chat.completions.create(model=PREMIUM, messages=MESSAGES)
    assert _upstream_calls(engine) == 1
