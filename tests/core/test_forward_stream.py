"""Streams forwarded as bytes: an OpenAI caller, an OpenAI-compatible upstream.

The relay lets such a stream's events through as the upstream sent them instead of
decoding and re-encoding each. Judged here against the decoded path on the same
upstream stream: what the caller reads, and what gets recorded.
"""

from __future__ import annotations

import itertools
import json
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, cast
from unittest import mock

import anyio
import httpx2
import openai
import pytest

from routing_middleware import relay as relay_module
from routing_middleware._intercept_kit import kit_for
from routing_middleware.cache import ResponseCache
from routing_middleware.engine import LLMRoute
from routing_middleware.metering import MemorySink, UsageRecord
from routing_middleware.providers.base import ProviderConfig
from routing_middleware.providers.openai_forward import OpenAIForwarder
from routing_middleware.providers.openai_stream import OpenAIStreamDecoder
from routing_middleware.relay import Relay, RelayResponse
from routing_middleware.router import Deployment
from routing_middleware.schema import ChatRequest, LLMError, Message, UpstreamProtocolError
from routing_middleware.testing import Failure, FakeProvider
from routing_middleware.tokens import estimate_request_tokens
from tests.core import relay_fixtures
from tests.core.relay_fixtures import (
    CALL,
    CLAUDE,
    TEXT,
    TOOLS,
    A,
    B,
    StubEngine,
    fake_provider,
)
from tests.core.served_upstream import TEXT as SERVED_TEXT
from tests.core.served_upstream import decision as served_decision
from tests.core.served_upstream import dispatcher as served_dispatcher
from tests.core.served_upstream import served_fake


class Upstream:
    """A mock transport's handler answering from ``fake``, its body in pieces:
    ``split`` bytes each (0: one per event), ``crlf`` line ends, or a connection
    dropped after ``drop_after`` pieces. ``bodies`` holds every body sent."""

    def __init__(
        self, fake: FakeProvider, split: int = 0, crlf: bool = False, drop_after: int = -1
    ) -> None:
        self.fake = fake
        self.split = split
        self.crlf = crlf
        self.drop_after = drop_after
        self.bodies: list[bytes] = []
        #: pieces handed out so far, and for each the frames of the package between
        #: whoever read it and this upstream
        self.handed = 0
        self.depths: list[int] = []

    def _hand(self) -> None:
        self.handed += 1
        frame = sys._getframe(2)
        depth = 0
        while frame is not None:
            depth += frame.f_globals.get("__name__", "").startswith("routing_middleware.")
            frame = frame.f_back  # type: ignore[assignment]
        self.depths.append(depth)

    def _answer(self, request: httpx2.Request) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        status, headers, body = self.fake.handle(
            request.method, request.url.path, headers=dict(request.headers), body=request.read()
        )
        if status == 0:
            raise httpx2.ConnectError("connection reset")
        self.bodies.append(body)
        if self.crlf:
            body = body.replace(b"\n", b"\r\n")
        if self.split:
            pieces = [body[i : i + self.split] for i in range(0, len(body), self.split)]
        else:
            sep = b"\r\n\r\n" if self.crlf else b"\n\n"
            pieces = [event + sep for event in body.split(sep) if event]
        return status, headers, pieces

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        status, headers, pieces = self._answer(request)
        drop = self.drop_after

        def body() -> Iterator[bytes]:
            for n, piece in enumerate(pieces):
                if n == drop:
                    raise httpx2.ReadError("connection dropped")
                self._hand()
                yield piece

        return httpx2.Response(status, headers=headers, content=body())

    async def handle_async(self, request: httpx2.Request) -> httpx2.Response:
        status, headers, pieces = self._answer(request)
        drop = self.drop_after

        async def body() -> AsyncIterator[bytes]:
            for n, piece in enumerate(pieces):
                if n == drop:
                    raise httpx2.ReadError("connection dropped")
                self._hand()
                yield piece

        return httpx2.Response(status, headers=headers, content=body())


def make_relay(
    upstream: Upstream, primary: Deployment = A, fallbacks: tuple[Deployment, ...] = (), **kw: Any
) -> tuple[Relay, MemorySink]:
    relay, dispatcher = relay_fixtures.make_relay(upstream, primary, fallbacks, **kw)
    return relay, cast("MemorySink", dispatcher.sink)


def body(model: str = "gpt-a", include_usage: bool | None = True, **extra: Any) -> bytes:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "What is two plus two?"}],
        "stream": True,
        **extra,
    }
    if include_usage is not None:
        payload["stream_options"] = {"include_usage": include_usage}
    return json.dumps(payload).encode()


@contextmanager
def decoded() -> Iterator[None]:
    """The relay as it streams without forwarding: every event decoded and re-encoded."""
    with mock.patch.object(relay_module, "_offer_bytes", return_value=None):
        yield


def drain(answer: RelayResponse) -> bytes:
    assert answer.stream is not None, answer.body
    return b"".join(answer.stream)


def adrain(relay: Relay, data: bytes) -> bytes:
    async def main() -> bytes:
        answer = await relay.ahandle("openai", data, provider="openai")
        assert answer.astream is not None, answer.body
        return b"".join([piece async for piece in answer.astream])

    return anyio.run(main)


def events(stream: bytes) -> list[Any]:
    """The payloads of a caller's stream, ``"[DONE]"`` as such."""
    out: list[Any] = []
    for event in stream.split(b"\n\n"):
        if event:
            assert event.startswith(b"data: "), event
            data = event[6:].decode()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def seen(stream: bytes) -> dict[str, Any]:
    """What a caller makes of a stream: text, finish, usage, error, markers."""
    text, finish, usage, error, done = [], None, None, None, 0
    for event in events(stream):
        if event == "[DONE]":
            done += 1
            continue
        if "error" in event:
            error = (event["error"]["type"], event["error"]["message"])
            continue
        for choice in event["choices"]:
            text.append(choice["delta"].get("content") or "")
            finish = choice.get("finish_reason") or finish
        if event.get("usage"):
            usage = (event["usage"]["prompt_tokens"], event["usage"]["completion_tokens"])
    return {"text": "".join(text), "finish": finish, "usage": usage, "error": error, "done": done}


def facts(records: list[UsageRecord]) -> list[tuple[Any, ...]]:
    return [
        (
            r.status,
            r.error_kind,
            r.chosen_model,
            r.attempt,
            r.usage,
            r.cost,
            r.requested_cost,
            r.ttft_ms is not None,
            r.streamed,
        )
        for r in records
    ]


# --------------------------------------------------------------------------- bytes


def test_the_callers_bytes_are_the_upstreams() -> None:
    upstream = Upstream(fake_provider())
    relay, _ = make_relay(upstream)
    out = drain(relay.handle("openai", body(), provider="openai"))
    assert out == upstream.bodies[0]
    assert out.count(b"data: [DONE]\n\n") == 1
    assert seen(out)["text"] == TEXT


def test_the_usage_event_is_left_out_unless_asked_for() -> None:
    for include in (False, None):
        upstream = Upstream(fake_provider())
        relay, sink = make_relay(upstream)
        out = drain(relay.handle("openai", body(include_usage=include), provider="openai"))
        sent = upstream.bodies[0]
        usage_event = [e for e in sent.split(b"\n\n") if b'"choices":[]' in e]
        assert len(usage_event) == 1  # llmroute asks for usage upstream to meter
        assert out == sent.replace(usage_event[0] + b"\n\n", b"")
        assert seen(out)["usage"] is None
        assert sink.records[0].usage.output_tokens > 0
        assert not sink.records[0].usage.estimated


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize(("split", "crlf"), [(0, True), (1, False), (7, False), (7, True)])
def test_any_split_and_line_ends_give_the_same_events(
    split: int, crlf: bool, is_async: bool
) -> None:
    upstream = Upstream(fake_provider(), split=split, crlf=crlf)
    relay, sink = make_relay(upstream)
    if is_async:
        out = adrain(relay, body())
    else:
        out = drain(relay.handle("openai", body(), provider="openai"))
    assert out == upstream.bodies[0]  # \r\n line ends arrive as \n
    assert sink.records[0].status == "ok"


def test_the_first_bytes_wait_for_content_and_the_rest_goes_by_reads() -> None:
    upstream = Upstream(fake_provider())
    relay, _ = make_relay(upstream)
    answer = relay.handle("openai", body(), provider="openai")
    assert answer.stream is not None
    pieces = list(answer.stream)
    role_and_first = upstream.bodies[0].split(b"\n\n")[:2]
    assert pieces[0] == b"\n\n".join(role_and_first) + b"\n\n"
    assert pieces[-1] == b"data: [DONE]\n\n"


# --------------------------------------------------------------------------- the read path


URL = "https://api.openai.com/v1/chat/completions"


def _intercepted(relay: Relay, upstream: Upstream, is_async: bool) -> tuple[list[bytes], list[int]]:
    """A forwarded stream read through interception's response, as a client reads
    it: the pieces, and how many pieces the upstream had handed out at each."""

    async def aread() -> tuple[list[bytes], list[int]]:
        answer = await relay.ahandle("openai", body(), provider="openai")
        response = kit_for(httpx2.Request("POST", URL)).relay_response(answer)
        pieces, handed = [], []
        async for piece in response.aiter_raw():
            pieces.append(piece)
            handed.append(upstream.handed)
        await response.aclose()
        return pieces, handed

    if is_async:
        return anyio.run(aread)
    answer = relay.handle("openai", body(), provider="openai")
    response = kit_for(httpx2.Request("POST", URL)).relay_response(answer)
    pieces, handed = [], []
    for piece in response.iter_raw():
        pieces.append(piece)
        handed.append(upstream.handed)
    response.close()
    return pieces, handed


@pytest.mark.parametrize("is_async", [False, True])
def test_once_started_each_read_passes_one_frame_and_reaches_the_caller_at_once(
    is_async: bool,
) -> None:
    upstream = Upstream(fake_provider())
    relay, sink = make_relay(upstream)
    pieces, handed = _intercepted(relay, upstream, is_async)
    assert b"".join(pieces) == upstream.bodies[0]
    # role, then the first content: read through the dispatcher's effects
    assert min(upstream.depths[:2]) > 1
    # the rest: only the stream's own generator stands between the caller and the upstream
    assert set(upstream.depths[2:]) == {1}
    # no read waits for the next: every piece arrives as the upstream hands one out
    assert handed[0] == 2
    assert all(b - a == 1 for a, b in itertools.pairwise(handed))
    assert sink.records[0].status == "ok"


@pytest.mark.parametrize("is_async", [False, True])
def test_a_decoded_stream_once_flowing_is_read_by_its_consumer_without_the_logic(
    is_async: bool,
) -> None:
    """Decoded (not forwarded), the stream reads its first events through the
    dispatcher's effects, then the rest straight off the upstream, and pieces still
    reach the caller as the upstream hands them out."""
    upstream = Upstream(fake_provider())
    relay, sink = make_relay(upstream)
    with decoded():
        pieces, handed = _intercepted(relay, upstream, is_async)
    assert seen(b"".join(pieces)) == seen(upstream.bodies[0])
    # after the first events: the flow, the stream's next step and the relay's encoding
    # (async, also the step's guard against cancellation); through the dispatcher's
    # effects it was two more, its driver's step and read
    assert set(upstream.depths[2:]) == {4 if is_async else 3}
    # not gathered: the caller had half its pieces before the upstream handed out most
    assert handed[len(handed) // 2] < upstream.handed - 3
    assert sink.records[0].status == "ok"


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("reads", [0, 1, 3])
def test_closing_the_intercepted_response_ends_the_call_once(is_async: bool, reads: int) -> None:
    upstream = Upstream(fake_provider())
    relay, sink = make_relay(upstream)

    async def aclose_after() -> None:
        answer = await relay.ahandle("openai", body(), provider="openai")
        response = kit_for(httpx2.Request("POST", URL)).relay_response(answer)
        chunks = response.aiter_raw()
        for _ in range(reads):
            await chunks.__anext__()
        await response.aclose()
        await response.aclose()

    if is_async:
        anyio.run(aclose_after)
    else:
        answer = relay.handle("openai", body(), provider="openai")
        response = kit_for(httpx2.Request("POST", URL)).relay_response(answer)
        chunks = response.iter_raw()
        for _ in range(reads):
            next(chunks)
        response.close()
        response.close()
    [record] = sink.records
    assert (record.status, record.error_kind) == ("error", "ConsumerClosed")
    assert upstream.handed < len(upstream.bodies[0].split(b"\n\n")) - 1


@pytest.mark.parametrize("is_async", [False, True])
def test_a_failure_mid_stream_reaches_an_intercepted_caller_as_an_error_event(
    is_async: bool,
) -> None:
    for upstream in (Upstream(fake_provider(), drop_after=5), Upstream(_failing(after=4))):
        relay, sink = make_relay(upstream)
        pieces, _ = _intercepted(relay, upstream, is_async)
        out = b"".join(pieces)
        assert seen(out)["text"]
        assert "error" in events(out)[-1]
        assert b"[DONE]" not in out
        [record] = sink.records
        assert record.status == "error"
        assert record.usage.estimated


def _failing(after: int) -> FakeProvider:
    fake = fake_provider()
    fake.inject("gpt-a", Failure.stream_error(after=after, message="the model fell over"))
    return fake


# --------------------------------------------------------------------------- metering


FAILURES = [
    None,
    Failure.no_usage(),
    Failure.cut(3),
    Failure.cut(3, terminal=True),
    Failure.stream_error(after=3),
    Failure.malformed(),
    Failure.cut(0),
    Failure.reset(),
]


def _both(failure: Failure | None, run: Any, **kw: Any) -> list[tuple[bytes, MemorySink]]:
    results = []
    for plain in (False, True):
        fake = fake_provider()
        if failure is not None:
            fake.inject("gpt-a", failure)
        relay, sink = make_relay(Upstream(fake), fallbacks=(B,), **kw)
        if plain:
            with decoded():
                results.append((run(relay), sink))
        else:
            results.append((run(relay), sink))
    return results


@pytest.mark.parametrize("failure", FAILURES, ids=lambda f: f.kind if f else "ok")
@pytest.mark.parametrize("include", [True, False])
def test_records_and_what_the_caller_sees_match_the_decoded_path(
    failure: Failure | None, include: bool
) -> None:
    def run(relay: Relay) -> bytes:
        return drain(relay.handle("openai", body(include_usage=include), provider="openai"))

    (forwarded, fsink), (plain, psink) = _both(failure, run)
    assert facts(fsink.records) == facts(psink.records)
    assert seen(forwarded) == seen(plain)
    assert fsink.records[-1].usage.output_tokens > 0


@pytest.mark.parametrize(
    "failure", [None, Failure.no_usage(), Failure.stream_error(after=2), Failure.cut(2)]
)
def test_async_records_match_the_decoded_path(failure: Failure | None) -> None:
    (forwarded, fsink), (plain, psink) = _both(
        failure, lambda relay: adrain(relay, body(include_usage=True))
    )
    assert facts(fsink.records) == facts(psink.records)
    assert seen(forwarded) == seen(plain)


def test_an_estimate_when_the_upstream_sends_no_usage() -> None:
    fake = fake_provider()
    fake.inject("gpt-a", Failure.no_usage())
    upstream = Upstream(fake)
    relay, sink = make_relay(upstream)
    out = drain(relay.handle("openai", body(), provider="openai"))
    usage = sink.records[0].usage
    assert usage.estimated
    last = events(out)[-2]
    first = events(upstream.bodies[0])[0]
    assert last["choices"] == []
    assert (last["id"], last["model"]) == (first["id"], first["model"])
    assert last["usage"]["completion_tokens"] == usage.output_tokens
    assert out.startswith(upstream.bodies[0].removesuffix(b"data: [DONE]\n\n"))


def test_a_failure_after_the_start_ends_with_an_error_event_and_an_error_record() -> None:
    fake = fake_provider()
    fake.inject("gpt-a", Failure.stream_error(after=2, message="the model fell over"))
    relay, sink = make_relay(Upstream(fake), fallbacks=(B,))
    out = drain(relay.handle("openai", body(), provider="openai"))
    last = events(out)[-1]
    assert "the model fell over" in last["error"]["message"]
    assert b"[DONE]" not in out
    assert [(r.status, r.chosen_model) for r in sink.records] == [("error", "openai/gpt-a")]
    assert sink.records[0].usage.estimated


def test_a_dropped_connection_after_the_start_ends_with_an_error_event() -> None:
    for drop in (3, 5):
        relay, sink = make_relay(Upstream(fake_provider(), drop_after=drop), fallbacks=(B,))
        out = drain(relay.handle("openai", body(), provider="openai"))
        assert "error" in events(out)[-1]
        assert [(r.status, r.error_kind) for r in sink.records] == [
            ("error", "UpstreamUnavailable")
        ]
        with decoded():
            relay, plain = make_relay(Upstream(fake_provider(), drop_after=drop), fallbacks=(B,))
            drain(relay.handle("openai", body(), provider="openai"))
        assert facts(sink.records) == facts(plain.records)


def test_failing_before_content_falls_over_to_the_next_deployment() -> None:
    fake = fake_provider()
    fake.inject("gpt-a", Failure.stream_error(after=0))
    upstream = Upstream(fake)
    relay, sink = make_relay(upstream, fallbacks=(B,))
    out = drain(relay.handle("openai", body(), provider="openai"))
    assert out == upstream.bodies[-1]
    assert seen(out)["text"] == "B answers instead."
    assert [r.status for r in sink.records] == ["error", "ok"]


def test_closing_early_records_what_was_forwarded() -> None:
    for plain in (False, True):
        relay, sink = make_relay(Upstream(fake_provider()))
        with decoded() if plain else nullcontext():
            answer = relay.handle("openai", body(), provider="openai")
            assert answer.stream is not None
            got = b""
            while "That" not in seen(got)["text"]:
                got += next(answer.stream)
            answer.stream.close()  # type: ignore[attr-defined]
        [record] = sink.records
        assert (record.status, record.error_kind) == ("error", "ConsumerClosed")
        assert record.usage.estimated
        request = ChatRequest(
            model="gpt-a", messages=[Message(role="user", content="What is two plus two?")]
        )
        assert record.usage.input_tokens == estimate_request_tokens(request)
        assert record.usage.output_tokens > 5
        assert record.cost > 0


# --------------------------------------------------------------------------- eligibility


def _forwarded(out: bytes) -> bool:
    """Whether the caller got the upstream's own events (the fake's response ids)."""
    ids = {e["id"] for e in events(out) if isinstance(e, dict) and "id" in e}
    assert len(ids) == 1  # one id per stream, whichever path
    return ids.pop().startswith("chatcmpl-fake")


@pytest.mark.parametrize(
    ("options", "primary", "extra", "expected"),
    [
        ({}, A, {}, True),
        ({"stream_holdback": 1}, A, {}, False),
        ({"stream_failover": "continue"}, A, {}, False),
        ({"store_content": True}, A, {}, False),
        ({"cache": ResponseCache()}, A, {"temperature": 0}, False),
        ({"cache": ResponseCache()}, A, {"temperature": 0.5}, True),
        ({}, CLAUDE, {}, False),
    ],
    ids=["default", "holdback", "continue", "store", "cached", "uncached", "anthropic"],
)
def test_what_streams_forward_bytes(
    options: dict[str, Any], primary: Deployment, extra: dict[str, Any], expected: bool
) -> None:
    relay, sink = make_relay(Upstream(fake_provider()), primary=primary, **options)
    out = drain(relay.handle("openai", body(**extra), provider="openai"))
    assert _forwarded(out) is expected
    assert seen(out)["text"] == TEXT
    assert seen(out)["done"] == 1
    assert sink.records[-1].status == "ok"


def test_another_caller_dialect_gets_decoded_chunks() -> None:
    relay, _ = make_relay(Upstream(fake_provider()))
    data = json.dumps(
        {
            "model": "gpt-a",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "What is two plus two?"}],
        }
    ).encode()
    out = drain(relay.handle("anthropic", data, provider="anthropic"))
    assert b"event: message_start" in out
    assert b"chatcmpl-fake" not in out


def test_a_fallback_in_another_dialect_is_decoded_an_openai_one_forwarded() -> None:
    fake = fake_provider()
    fake.inject("claude-a", Failure.unavailable())
    upstream = Upstream(fake)
    relay, _ = make_relay(upstream, primary=CLAUDE, fallbacks=(A,))
    out = drain(relay.handle("openai", body(), provider="openai"))
    assert _forwarded(out)
    fake.inject("gpt-a", Failure.unavailable())
    relay, _ = make_relay(upstream, primary=A, fallbacks=(CLAUDE,))
    out = drain(relay.handle("openai", body(), provider="openai"))
    assert not _forwarded(out)
    assert seen(out)["text"] == TEXT


# --------------------------------------------------------------------------- the SDK


def _client(relay: Relay, is_async: bool) -> Any:
    if is_async:

        async def ahandle(request: httpx2.Request) -> httpx2.Response:
            answer = await relay.ahandle("openai", await request.aread(), provider="openai")
            return httpx2.Response(answer.status, headers=answer.headers, content=answer.astream)

        return openai.AsyncOpenAI(
            api_key="caller",
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(ahandle)),
            max_retries=0,
        )

    def handle(request: httpx2.Request) -> httpx2.Response:
        answer = relay.handle("openai", request.read(), provider="openai")
        return httpx2.Response(answer.status, headers=answer.headers, content=answer.stream)

    return openai.OpenAI(
        api_key="caller",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handle)),
        max_retries=0,
    )


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("include", [True, False])
def test_the_openai_sdk_reads_a_forwarded_stream(is_async: bool, include: bool) -> None:
    relay, sink = make_relay(Upstream(fake_provider()))
    client = _client(relay, is_async)
    kwargs: dict[str, Any] = {
        "model": "gpt-a",
        "messages": [{"role": "user", "content": "What is two plus two?"}],
        "stream": True,
        "stream_options": {"include_usage": include},
    }

    async def collect() -> list[Any]:
        return [chunk async for chunk in await client.chat.completions.create(**kwargs)]

    chunks = anyio.run(collect) if is_async else list(client.chat.completions.create(**kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = [c.usage for c in chunks if c.usage is not None]
    if include:
        assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == [
            (sink.records[0].usage.input_tokens, sink.records[0].usage.output_tokens)
        ]
    else:
        assert usage == []
    assert chunks[0].id.startswith("chatcmpl-fake")


def test_the_openai_sdk_assembles_forwarded_tool_calls() -> None:
    relay, sink = make_relay(Upstream(fake_provider()), primary=TOOLS)
    client = _client(relay, False)
    chunks = list(
        client.chat.completions.create(
            model="gpt-tools",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}],
            stream=True,
        )
    )
    arguments = "".join(
        call.function.arguments or ""
        for c in chunks
        for call in (c.choices[0].delta.tool_calls or [] if c.choices else [])
    )
    names = [
        call.function.name
        for c in chunks
        for call in (c.choices[0].delta.tool_calls or [] if c.choices else [])
        if call.function.name
    ]
    assert json.loads(arguments) == CALL.arguments
    assert names == ["weather"]
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-fake")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert sink.records[0].status == "ok"


def test_the_openai_sdk_raises_on_a_failure_after_the_start() -> None:
    fake = fake_provider()
    fake.inject("gpt-a", Failure.stream_error(after=2, message="the model fell over"))
    relay, _ = make_relay(Upstream(fake))
    client = _client(relay, False)
    stream = client.chat.completions.create(
        model="gpt-a", messages=[{"role": "user", "content": "What is two plus two?"}], stream=True
    )
    with pytest.raises(openai.APIError, match="the model fell over"):
        list(stream)


# --------------------------------------------------------------------------- the forwarder


CONFIG = ProviderConfig(name="openai", dialect="openai", base_url="https://fake.invalid/v1")
REQUEST = ChatRequest(model="gpt-a", messages=[Message(role="user", content="hi")])


def _event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    payload: dict[str, Any] = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "up-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def test_the_forwarder_maps_an_in_band_error_as_the_decoder_does() -> None:
    error = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    stream = _event({"role": "assistant", "content": "Hi"}) + _event({"content": "!"}) + error
    forwarder = OpenAIForwarder(CONFIG, REQUEST, False)
    with pytest.raises(LLMError) as forwarded:
        forwarder.feed(stream)
    with pytest.raises(LLMError) as decoded_error:
        OpenAIStreamDecoder(CONFIG, REQUEST).feed(stream)
    assert type(forwarded.value) is type(decoded_error.value)
    assert forwarded.value.message == decoded_error.value.message


def test_the_forwarder_needs_done_and_a_finish_reason() -> None:
    forwarder = OpenAIForwarder(CONFIG, REQUEST, False)
    assert forwarder.feed(_event({"content": "Hi"}))
    with pytest.raises(UpstreamProtocolError, match="DONE"):
        forwarder.close()
    forwarder = OpenAIForwarder(CONFIG, REQUEST, False)
    forwarder.feed(_event({"content": "Hi"}) + b"data: [DONE]\n\n")
    with pytest.raises(UpstreamProtocolError, match="finish reason"):
        forwarder.close()
    decoder, texts = forwarder.replay()
    assert texts == ["Hi"]
    assert decoder.usage is not None
    assert decoder.usage.estimated


def test_the_forwarder_reshapes_what_the_encoder_would_and_drops_comments() -> None:
    forwarder = OpenAIForwarder(CONFIG, REQUEST, True)
    first = _event({"role": "assistant", "content": "Hi"})
    plain = _event({"content": " there"})
    thinking = _event({"reasoning": "hmm"})
    stream = first + b": keep-alive\n\n" + plain + thinking + plain
    out = forwarder.feed(stream)
    assert out.startswith(first + plain)
    assert out.endswith(plain)
    [middle] = [e for e in events(out) if "reasoning_content" in e["choices"][0]["delta"]]
    assert middle["choices"][0]["delta"]["reasoning_content"] == "hmm"
    assert (middle["id"], middle["model"], middle["created"]) == (
        "chatcmpl-up",
        "up-model",
        1700000000,
    )
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    tail = forwarder.feed(_event({}, "stop", usage=usage) + b"data: [DONE]\n\n")
    assert b'"usage"' not in tail  # usage riding on a choice is kept for the usage event
    end = events(forwarder.close())
    assert end[0]["usage"]["completion_tokens"] == 4
    assert end[0]["id"] == "chatcmpl-up"
    assert end[1] == "[DONE]"


def test_the_forwarder_sees_a_finish_after_plain_events_of_the_same_shape() -> None:
    forwarder = OpenAIForwarder(CONFIG, REQUEST, False)
    forwarder.feed(_event({"content": "a"}))  # decoded: the answer starts, its shape kept
    quoted = _event({"content": 'say "hi" \\ there'})
    assert forwarder.feed(quoted) is quoted  # the known shape: no search
    assert not forwarder.finished
    forwarder.feed(_event({"content": "."}, "length"))
    assert forwarder.finished
    forwarder.feed(b"data: [DONE]\n\n")
    assert forwarder.close() == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "opening",
    [
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "", "refusal": None},
        {"role": "assistant"},
    ],
)
def test_an_opening_event_is_held_as_it_came_and_names_reshaped_events(
    opening: dict[str, Any],
) -> None:
    forwarder = OpenAIForwarder(CONFIG, REQUEST, False)
    first = _event(opening).replace(b'"chatcmpl-up"', b'"chatcmpl-first"')
    assert forwarder.feed(first) == b""  # no text yet: held
    assert not forwarder.started
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    out = forwarder.feed(_event({"tool_calls": [call]}))
    assert out.startswith(first)
    reshaped = json.loads(out[len(first) :].split(b"\n\n")[0][6:])
    assert reshaped["id"] == "chatcmpl-first"
    assert reshaped["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "f"


@pytest.mark.parametrize("role_first", [False, True])
def test_the_first_text_starts_the_answer_and_later_texts_go_by_their_shape(
    role_first: bool,
) -> None:
    """The first text may come with the role; the events after it, without, still
    go by as they came with no search."""
    forwarder = OpenAIForwarder(CONFIG, REQUEST, False)
    first = _event({"role": "assistant", "content": "Hi"} if role_first else {"content": "Hi"})
    assert forwarder.feed(first) == first
    assert forwarder.started
    forwarder.feed(_event({"content": " there"}))
    third = _event({"content": "!"})
    assert forwarder.feed(third) is third  # the known shape: no search
    assert forwarder.replay()[1] == ["Hi there!"]


def test_a_lone_finish_goes_as_it_came_and_an_empty_one_is_no_finish() -> None:
    forwarder = OpenAIForwarder(CONFIG, REQUEST, False)
    forwarder.feed(_event({"role": "assistant", "content": ""}) + _event({"content": "a"}))
    empty = _event({}, "")
    assert forwarder.feed(empty) == b""  # decoded: nothing in it for a caller
    assert not forwarder.finished
    finish = _event({}, "length")
    assert forwarder.feed(finish) == finish
    assert forwarder.finished
    forwarder.feed(b"data: [DONE]\n\n")
    assert forwarder.close() == b"data: [DONE]\n\n"
    unfinished = OpenAIForwarder(CONFIG, REQUEST, False)
    unfinished.feed(_event({"content": "a"}) + empty + b"data: [DONE]\n\n")
    with pytest.raises(UpstreamProtocolError, match="without a finish reason"):
        unfinished.close()


def test_an_event_without_a_delta_before_the_text_is_decoded_and_dropped() -> None:
    """Azure opens with prompt filter results and no choices: nothing for a caller."""
    forwarder = OpenAIForwarder(CONFIG, REQUEST, False)
    azure = b'data: {"id":"","choices":[],"prompt_filter_results":[{"prompt_index":0}]}\n\n'
    forwarder.feed(azure)
    text = _event({"content": "a"})
    assert forwarder.feed(text) == text


def test_the_shape_of_plain_events_is_learned_from_the_first_decoded_one() -> None:
    forwarder = OpenAIForwarder(CONFIG, REQUEST, False)
    forwarder.feed(_event({"role": "assistant", "content": ""}))  # no text: no shape
    first = _event({"content": 'a \\"quoted\\" "start"'})
    assert forwarder.feed(first).endswith(first)  # decoded: the answer starts
    second = _event({"content": "b"})
    assert forwarder.feed(second) is second  # went by on the shape of the first
    assert forwarder.replay()[1] == ['a \\"quoted\\" "start"b']


def test_a_decoded_event_whose_first_content_string_is_not_its_text_teaches_no_shape() -> None:
    """A ``content`` key before the delta's (here in ``logprobs``) holds another
    string: taking that for the text would count the second event's decoy as text."""
    forwarder = OpenAIForwarder(CONFIG, REQUEST, False)
    events = [
        _event({"content": "a"}).replace(
            b'"choices"', b'"logprobs":{"content":"%s"},"choices"' % decoy
        )
        for decoy in (b"x", b"y")
    ]
    assert b"".join(forwarder.feed(event) for event in events) == b"".join(events)
    assert forwarder.replay()[1] == ["aa"]


# --------------------------------------------------------------------------- real sockets


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeProvider, str]]:
    with served_fake() as found:
        yield found


def _socket_run(url: str, client: str, is_async: bool, data: bytes) -> tuple[bytes, MemorySink]:
    """One relayed stream over sockets; every client closed after."""
    import httpx

    sink = MemorySink()
    lib: Any = {"httpx": httpx, "httpx2": httpx2}.get(client)
    if is_async:

        async def main() -> bytes:
            upstream = "aiohttp" if lib is None else lib.AsyncClient()
            dispatcher = served_dispatcher(url, sink, async_client=upstream)
            relay = Relay(cast("LLMRoute", StubEngine(dispatcher, served_decision())))
            answer = await relay.ahandle("openai", data, provider="openai")
            assert answer.astream is not None
            out = b"".join([piece async for piece in answer.astream])
            await dispatcher.aclose()
            if lib is not None:
                await upstream.aclose()
            return out

        return anyio.run(main), sink
    with lib.Client() as upstream:
        dispatcher = served_dispatcher(url, sink, client=upstream)
        relay = Relay(cast("LLMRoute", StubEngine(dispatcher, served_decision())))
        return drain(relay.handle("openai", data, provider="openai")), sink


@pytest.mark.parametrize(
    ("client", "is_async"),
    [("httpx", False), ("httpx2", False), ("httpx", True), ("httpx2", True), ("aiohttp", True)],
)
def test_forwarding_over_a_real_socket(
    served: tuple[FakeProvider, str], client: str, is_async: bool
) -> None:
    if client == "aiohttp":
        pytest.importorskip("aiohttp")
    _, url = served
    data = body(model="gpt-a", include_usage=True)
    with decoded():
        decoded_out, psink = _socket_run(url, client, is_async, data)
    forwarded, fsink = _socket_run(url, client, is_async, data)
    assert _forwarded(forwarded)
    assert not _forwarded(decoded_out)
    assert seen(forwarded) == seen(decoded_out)
    assert seen(forwarded)["text"] == SERVED_TEXT
    assert facts(fsink.records) == facts(psink.records)
    assert fsink.records[0].status == "ok"
    assert fsink.records[0].cost > 0


def test_closing_early_records_what_was_forwarded_async() -> None:
    relay, sink = make_relay(Upstream(fake_provider()))

    async def main() -> None:
        answer = await relay.ahandle("openai", body(), provider="openai")
        assert answer.astream is not None
        got = b""
        async for piece in answer.astream:
            got += piece
            if "That" in seen(got)["text"]:
                break
        await answer.astream.aclose()  # type: ignore[attr-defined]

    anyio.run(main)
    [record] = sink.records
    assert (record.status, record.error_kind) == ("error", "ConsumerClosed")
    assert record.usage.estimated
    assert record.usage.output_tokens > 5


def _replayed(pieces: list[bytes], ended: bool) -> tuple[Any, str]:
    """What decoding every piece afresh gives (usage, text), stopping at an error."""
    decoder = OpenAIStreamDecoder(CONFIG, REQUEST)
    texts: list[str] = []
    try:
        for piece in pieces:
            texts.extend(chunk.text for chunk in decoder.feed(piece) if chunk.text)
        if ended:
            texts.extend(chunk.text for chunk in decoder.close() if chunk.text)
    except LLMError:
        pass
    return decoder.usage, "".join(texts)


@pytest.mark.parametrize("split", [0, 1000])
@pytest.mark.parametrize("end", ["no usage", "cut", "error", "malformed"])
def test_a_long_stream_holds_little_and_replays_as_a_fresh_decode(end: str, split: int) -> None:
    """Read an event at a time (most go by as plain events), or in pieces of
    ``split`` bytes (each decoded); ``malformed``: a plain event with a raw control
    character in its text, which the caller gets and decoding refuses."""
    first = _event({"role": "assistant", "content": ""}) + _event({"content": "Über"})
    # ASCII text first; then escaped, raw UTF-8, and bytes that are not UTF-8
    plain = [_event({"content": f" tok{n % 97}" + "é" * (n > 3_000)}) for n in range(7_000)]
    for n in range(3_001, len(plain), 3):
        plain[n] = plain[n].replace(b"\\u00e9", "é".encode() if n % 2 else b"\xff")
    tail = {
        "no usage": _event({}, "stop") + b"data: [DONE]\n\n",
        "cut": b"",
        "error": b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n',
        "malformed": _event({}, "stop") + b"data: [DONE]\n\n",
    }[end]
    if end == "error":
        plain[4_000:4_000] = [tail]
        tail = b""
    if end == "malformed":
        plain[4_000] = plain[4_000].replace(b" tok", b" \x01tok")
    stream = first + b"".join(plain) + tail
    assert len(stream) > 1_200_000
    if split:
        bounds = [*range(0, len(stream), split), len(stream)]
    else:
        bounds = [0]
        for event in stream.split(b"\n\n")[:-1]:
            bounds.append(bounds[-1] + len(event) + 2)
    spans = list(itertools.pairwise(bounds))
    forwarder = OpenAIForwarder(CONFIG, REQUEST, True)
    tracemalloc.start()
    try:
        failed = None
        for at, to in spans:
            try:
                forwarder.feed(stream[at:to])  # each read made as it arrives
            except LLMError as error:
                failed = error
                break
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 512 * 1024  # the stream itself is over 1.2 MB
    pieces = [stream[at:to] for at, to in spans]
    if end == "error":
        assert failed is not None
        usage, text = _replayed(pieces, ended=False)
    else:
        assert failed is None
        if end == "cut":
            with pytest.raises(UpstreamProtocolError):
                forwarder.close()
        else:
            assert forwarder.close().endswith(b"data: [DONE]\n\n")
        usage, text = _replayed(pieces, ended=True)
    decoder, texts = forwarder.replay()
    assert decoder.usage == usage
    assert "".join(texts) == text
    assert forwarder.replay()[0].usage == usage  # asking again changes nothing
    if end == "no usage":
        assert forwarder.usage == usage
        assert usage is not None
        assert usage.estimated
        assert usage.output_tokens > 7_000


@pytest.mark.parametrize(
    "block",
    [
        b'data: {"choices":[{"index":0,"delta":{"content":"caf\xc3\xa9"}}]}',
        b'data:{"choices":[{"index":0,"delta":{"content":"tight"}}]}',
        b'data:  {"choices":[{"index":0,"delta":{"content":"two spaces"}}]}',
        b"event: delta\nid: 7\n: note\n"
        b'data: {"choices":[{"index":0,\ndata: "delta":{"content":"x"}}]}',
        b'data: {"choices":[{"index":0,"delta":{"content":"bad \xff byte"}}]}',
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}',
        b"data: \ndata: ",
        b"data",
        b"data: [DONE]",
    ],
)
def test_the_forwarders_events_decode_as_a_feed_of_their_bytes(block: bytes) -> None:
    start = _event({"role": "assistant", "content": "Hi"})
    forwarder = OpenAIForwarder(CONFIG, REQUEST, True)
    assert forwarder.feed(start)
    forwarder.feed(block + b"\n\n")
    decoder = OpenAIStreamDecoder(CONFIG, REQUEST)
    decoder.feed(start)
    chunks = decoder.feed(block + b"\n\n")
    assert forwarder.done == decoder.done
    assert forwarder.usage == decoder.usage
    side = OpenAIStreamDecoder(CONFIG, REQUEST)
    side.feed(start)
    data = b"\n".join(
        line.partition(b":")[2].removeprefix(b" ")
        for line in block.split(b"\n")
        if line.partition(b":")[0] == b"data"
    )
    assert side.event(data.decode("utf-8", "replace")) == chunks


@pytest.mark.parametrize("data", ["not json", "[1, 2]"])
def test_an_event_that_is_no_json_object_fails_as_a_feed_does(data: str) -> None:
    with pytest.raises(UpstreamProtocolError) as fed:
        OpenAIStreamDecoder(CONFIG, REQUEST).feed(f"data: {data}\n\n".encode())
    with pytest.raises(UpstreamProtocolError) as decoded:
        OpenAIStreamDecoder(CONFIG, REQUEST).event(data)
    assert decoded.value.message == fed.value.message
    forwarder = OpenAIForwarder(CONFIG, REQUEST, False)
    with pytest.raises(UpstreamProtocolError) as forwarded:
        forwarder.feed(f"data: {data}\n\n".encode())
    assert forwarded.value.message == fed.value.message


def test_an_event_after_done_decodes_to_nothing() -> None:
    decoder = OpenAIStreamDecoder(CONFIG, REQUEST)
    assert decoder.event("[DONE]") == []
    assert decoder.done
    assert decoder.event('{"choices":[{"index":0,"delta":{"content":"late"}}]}') == []
    with pytest.raises(UpstreamProtocolError, match="finish reason"):
        decoder.close()  # nothing fed: no SSE state to end


@pytest.mark.parametrize("is_async", [False, True])
def test_the_end_reaches_the_caller_once_the_call_is_recorded(is_async: bool) -> None:
    relay, sink = make_relay(Upstream(fake_provider()))
    pieces: list[tuple[bytes, int]] = []  # each piece, and the records made when it came

    async def aread() -> None:
        answer = await relay.ahandle("openai", body(), provider="openai")
        assert answer.astream is not None
        async for piece in answer.astream:
            pieces.append((piece, len(sink.records)))

    if is_async:
        anyio.run(aread)
    else:
        answer = relay.handle("openai", body(), provider="openai")
        assert answer.stream is not None
        pieces.extend((piece, len(sink.records)) for piece in answer.stream)
    assert pieces[-1] == (b"data: [DONE]\n\n", 1)
    assert all(made == 0 for _, made in pieces[:-1])
    assert len(sink.records) == 1
    assert sink.records[0].status == "ok"
