"""The explicit levels of interception: RoutingTransport and instrument_client.

Upstreams are FakeProviders: the engine's own (offline mode) answer routed calls;
a separate "caller" fake stands behind the host the code addressed, so a call that
is sent on unchanged (observe mode, fail-open, metered endpoints) lands there.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import anyio
import httpx
import httpx2
import openai
import pytest

from routing_middleware.context import route_hint
from routing_middleware.engine import LLMRoute
from routing_middleware.metering import MemorySink
from routing_middleware.testing import FakeModel, FakeNetwork, FakeProvider
from routing_middleware.transport import (
    AsyncRoutingTransport,
    RoutingTransport,
    get_engine,
    instrument_client,
    set_engine,
    uninstrument_client,
)

FAST: dict[str, Any] = {"offline": "always", "offline_latency": "none"}
CALLER_KEY = "sk-caller-openai-0123456789"
CHAT_URL = "https://api.openai.com/v1/chat/completions"
PREMIUM = "gpt-5.4"


def _engine(**config: Any) -> LLMRoute:
    return LLMRoute({**FAST, **config}, sink=MemorySink(), environ={})


def _records(engine: LLMRoute) -> list[Any]:
    sink = engine.sink
    assert isinstance(sink, MemorySink)
    return sink.records


def _caller_network() -> tuple[FakeNetwork, FakeProvider, FakeProvider]:
    """Fakes behind the hosts the caller's code addresses (not the engine's upstreams)."""
    oa = FakeProvider(default_model=FakeModel("default", output_tokens=12))
    an = FakeProvider(default_model=FakeModel("default", output_tokens=12))
    return FakeNetwork({"api.openai.com": oa, "api.anthropic.com": an}), oa, an


def _chat_body(model: str = PREMIUM, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Summarize: hi"}], **extra}


def _offline_fake(engine: LLMRoute, host: str) -> FakeProvider:
    provider: FakeProvider = engine.fake_network.providers[host]
    return provider


# ----------------------------------------------------------------------------- explicit


def test_plain_httpx_chat_call_is_routed_to_a_cheaper_model() -> None:
    engine = _engine()
    network, caller_fake, _ = _caller_network()
    transport = RoutingTransport(network.transport(), engine=engine)
    with httpx.Client(transport=transport) as client, route_hint(tier=1):
        response = client.post(
            CHAT_URL, json=_chat_body(), headers={"authorization": f"Bearer {CALLER_KEY}"}
        )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    served = response.headers["x-llmroute-model"]
    assert served != f"openai/{PREMIUM}"
    assert body["model"] == served.split("/", 1)[1]
    assert response.headers["x-llmroute-provider"] == served.split("/", 1)[0]
    assert float(response.headers["x-llmroute-cost-usd"]) > 0
    assert "hint_tier" in response.headers["x-llmroute-decision"]
    assert caller_fake.calls == []  # the addressed host never saw it
    [record] = _records(engine)
    assert record.chosen_model == served
    assert record.requested_model == f"openai/{PREMIUM}"


def test_httpx2_transport_serves_the_openai_sdk_streaming() -> None:
    engine = _engine()
    network, _, _ = _caller_network()
    http = httpx2.Client(transport=RoutingTransport(network.transport("httpx2"), engine=engine))
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
    with route_hint(tier=1):
        stream = client.chat.completions.create(
            model=PREMIUM,
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None
    assert chunks[0].model != PREMIUM
    [record] = _records(engine)
    assert record.streamed
    assert record.status == "ok"


def test_default_inner_transport_is_made_for_the_requests_library() -> None:
    for lib, module in (("httpx", httpx), ("httpx2", httpx2)):
        transport = RoutingTransport(lib=lib)  # type: ignore[arg-type]
        request = module.Request("GET", "http://127.0.0.1:9/")
        assert isinstance(transport._inner_for(request), module.HTTPTransport)
        transport.close()
    with pytest.raises(ValueError, match="lib must be"):
        RoutingTransport(lib="requests")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_async_httpx2_transport_with_the_anthropic_sdk() -> None:
    engine = _engine()
    network, _, anthropic_fake = _caller_network()
    transport = AsyncRoutingTransport(network.async_transport("httpx2"), engine=engine)
    client = anthropic.AsyncAnthropic(
        api_key="sk-ant-caller", http_client=httpx2.AsyncClient(transport=transport), max_retries=0
    )
    hint = route_hint(tier=1, allow_providers=["openai", "deepseek"])
    async with hint:
        raw = await client.messages.with_raw_response.create(
            model="claude-sonnet-4-6",
            max_tokens=100,
            messages=[{"role": "user", "content": "Classify: refund"}],
        )
    message = await raw.parse()
    assert message.content[0].type == "text"
    assert raw.headers["x-llmroute-provider"] in {"openai", "deepseek"}
    async with (
        hint,
        client.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=100,
            messages=[{"role": "user", "content": "Classify: refund"}],
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert final.stop_reason == "end_turn"
    assert anthropic_fake.calls == []
    assert len(_records(engine)) == 2


@pytest.mark.anyio
async def test_plain_async_httpx_stream_is_incremental() -> None:
    engine = _engine()
    network, _, _ = _caller_network()
    transport = AsyncRoutingTransport(network.async_transport(), engine=engine)
    async with (
        httpx.AsyncClient(transport=transport) as client,
        route_hint(tier=1),
        client.stream("POST", CHAT_URL, json=_chat_body(stream=True)) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        parts = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert parts[-1] == "data: [DONE]"
    assert len(parts) > 3
    [record] = _records(engine)
    assert record.streamed


# ----------------------------------------------------------------------------- per client


def test_instrument_client_is_idempotent_and_reversible() -> None:
    engine = _engine()
    network, _, _ = _caller_network()
    inner = network.transport("httpx2")
    mounted = network.transport("httpx2")
    client = httpx2.Client(transport=inner, mounts={"all://api.anthropic.com": mounted})
    assert instrument_client(client, engine=engine) is client
    instrument_client(client, engine=engine)
    assert isinstance(client._transport, RoutingTransport)
    assert client._transport.inner is inner
    assert all(isinstance(t, RoutingTransport) for t in client._mounts.values())
    sdk = openai.OpenAI(api_key=CALLER_KEY, http_client=client, max_retries=0)
    with route_hint(tier=1):
        raw = sdk.chat.completions.with_raw_response.create(
            model=PREMIUM, messages=[{"role": "user", "content": "hi"}]
        )
    assert raw.headers["x-llmroute-model"] != f"openai/{PREMIUM}"
    uninstrument_client(client)
    assert client._transport is inner
    assert list(client._mounts.values()) == [mounted]


def test_uninstrumenting_a_client_made_with_a_bare_routing_transport_leaves_it_working() -> None:
    """A ``RoutingTransport()`` makes its inner transport on first use; undone before
    that, the client gets the library's default transport, not ``None``."""
    sync_client = httpx.Client(transport=RoutingTransport())
    async_client = httpx2.AsyncClient(
        transport=AsyncRoutingTransport(), mounts={"all://example.com": AsyncRoutingTransport()}
    )
    uninstrument_client(sync_client)
    uninstrument_client(async_client)
    assert type(sync_client._transport) is httpx.HTTPTransport
    assert type(async_client._transport) is httpx2.AsyncHTTPTransport
    mounted = [t for p, t in async_client._mounts.items() if p.pattern == "all://example.com"]
    assert [type(t) for t in mounted] == [httpx2.AsyncHTTPTransport]


@pytest.mark.anyio
async def test_instrument_client_async_httpx() -> None:
    engine = _engine()
    network, _, _ = _caller_network()
    client = instrument_client(
        httpx.AsyncClient(transport=network.async_transport()), engine=engine
    )
    assert isinstance(client._transport, AsyncRoutingTransport)
    async with route_hint(tier=1):
        response = await client.post(CHAT_URL, json=_chat_body())
    assert response.headers["x-llmroute-model"] != f"openai/{PREMIUM}"
    await client.aclose()
    with pytest.raises(TypeError, match="not an httpx"):
        instrument_client(object())


def test_set_engine_is_the_default() -> None:
    engine = _engine()
    set_engine(engine)
    try:
        assert get_engine() is engine
        network, _, _ = _caller_network()
        transport = RoutingTransport(network.transport())
        with httpx.Client(transport=transport) as client, route_hint(tier=1):
            client.post(CHAT_URL, json=_chat_body())
        assert len(_records(engine)) == 1
    finally:
        set_engine(None)


# ----------------------------------------------------------------------------- never break


class _Broken(Exception):
    pass


def _break_router(engine: LLMRoute) -> None:
    def decide(*args: Any, **kwargs: Any) -> Any:
        raise _Broken("router bug")

    engine.router.decide = decide  # type: ignore[method-assign]


def test_fail_open_sends_the_original_request_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    engine = _engine()
    _break_router(engine)
    network, caller_fake, _ = _caller_network()
    http = httpx2.Client(transport=RoutingTransport(network.transport("httpx2"), engine=engine))
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
    with caplog.at_level(logging.ERROR, logger="llmroute.transport"):
        completion = client.chat.completions.create(
            model=PREMIUM, messages=[{"role": "user", "content": "hi"}], temperature=0.25
        )
    assert completion.model == PREMIUM
    [call] = caller_fake.calls
    assert call.model == PREMIUM
    assert call.api_key == CALLER_KEY
    assert call.body["temperature"] == 0.25
    assert any("sending it unchanged" in r.getMessage() for r in caplog.records)
    assert CALLER_KEY not in caplog.text
    assert _offline_fake(engine, "api.openai.com").calls == []


@pytest.mark.parametrize("is_async", [False, True])
def test_a_failure_after_the_routed_call_went_out_is_not_sent_again(
    is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Failing open then would run (and bill) the call twice: once routed, once as
    the original. The caller gets a 500 in its dialect instead."""
    engine = _engine()
    complete, acomplete = engine.complete, engine.acomplete

    def broken(*args: Any, **kwargs: Any) -> Any:
        complete(*args, **kwargs)  # the routed call goes out
        raise _Broken("bug after the upstream answered")

    async def abroken(*args: Any, **kwargs: Any) -> Any:
        await acomplete(*args, **kwargs)
        raise _Broken("bug after the upstream answered")

    engine.complete, engine.acomplete = broken, abroken  # type: ignore[method-assign]
    network, caller_fake, _ = _caller_network()
    messages = [{"role": "user", "content": "hi"}]
    with caplog.at_level(logging.ERROR, logger="llmroute.transport"):
        if is_async:

            async def call() -> None:
                transport = AsyncRoutingTransport(network.async_transport("httpx2"), engine=engine)
                async with httpx2.AsyncClient(transport=transport) as http:
                    client = openai.AsyncOpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
                    await client.chat.completions.create(model=PREMIUM, messages=messages)

            with pytest.raises(openai.InternalServerError) as caught:
                anyio.run(call)
        else:
            http = httpx2.Client(
                transport=RoutingTransport(network.transport("httpx2"), engine=engine)
            )
            client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(model=PREMIUM, messages=messages)
    assert "not sent again" in caught.value.message
    assert caller_fake.calls == []  # the original was not sent as well
    assert [r.status for r in _records(engine)] == ["ok"]  # the routed call, answered
    assert any("may have reached an upstream" in r.getMessage() for r in caplog.records)


def test_fail_closed_answers_with_a_clean_error_in_the_callers_dialect() -> None:
    engine = _engine(fail_open=False)
    _break_router(engine)
    network, caller_fake, anthropic_fake = _caller_network()
    http = httpx2.Client(transport=RoutingTransport(network.transport("httpx2"), engine=engine))
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=PREMIUM, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 500
    assert "fail_open" in caught.value.message
    claude = anthropic.Anthropic(api_key="sk-ant-caller", http_client=http, max_retries=0)
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert caller_fake.calls == []
    assert anthropic_fake.calls == []


class _SourceFailed(Exception):
    pass


def _failing_body() -> Iterator[bytes]:
    yield b'{"model": "gpt-4o-mini", "messa'
    raise _SourceFailed("the caller's own body source failed")


async def _afailing_body() -> Any:
    for chunk in _failing_body():
        yield chunk


@pytest.mark.anyio
async def test_an_error_of_the_callers_own_body_reaches_it_as_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body generator that raises fails the call with its own error, as without
    llmroute: not reported as llmroute's failure, nothing sent."""
    sent: list[Any] = []

    def upstream(request: Any) -> Any:
        sent.append(request)
        return httpx.Response(200)

    engine = _engine()
    sync_client = httpx.Client(
        transport=RoutingTransport(httpx.MockTransport(upstream), engine=engine)
    )
    async_client = httpx.AsyncClient(
        transport=AsyncRoutingTransport(httpx.MockTransport(upstream), engine=engine)
    )
    with caplog.at_level(logging.WARNING, logger="llmroute"):
        with sync_client, pytest.raises(_SourceFailed):
            sync_client.post(CHAT_URL, content=_failing_body())
        async with async_client:
            with pytest.raises(_SourceFailed):
                await async_client.post(CHAT_URL, content=_afailing_body())
    assert sent == []
    assert caplog.records == []
    assert _records(engine) == []


def test_unreadable_request_goes_to_the_provider_as_sent() -> None:
    engine = _engine()
    network, caller_fake, _ = _caller_network()
    with httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)) as client:
        response = client.post(CHAT_URL, content=b'{"model": "gpt-4o-mini"}')
    # the provider's own judgement of the request, not ours
    [call] = caller_fake.calls
    assert response.status_code == call.status
    assert "x-llmroute-model" not in response.headers
    # still metered: it named a model, so it costs what the provider answered
    [record] = _records(engine)
    assert record.requested_model == "openai/gpt-4o-mini"
    assert record.status == ("ok" if call.status < 400 else "error")


def test_unreadable_request_without_a_model_is_sent_unmetered() -> None:
    engine = _engine()
    network, caller_fake, _ = _caller_network()
    with httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)) as client:
        client.post(CHAT_URL, content=b"not json at all")
    assert len(caller_fake.calls) == 1
    assert _records(engine) == []


def test_upstream_errors_reach_the_caller_in_its_dialect() -> None:
    engine = _engine(retry={"max_retries": 0})
    upstream = _offline_fake(engine, "api.openai.com")
    from routing_middleware.testing import Failure

    upstream.add_model(FakeModel("gpt-4o-mini"))
    upstream.inject("gpt-4o-mini", always=Failure.insufficient_quota())
    network, _, _ = _caller_network()
    http = httpx2.Client(transport=RoutingTransport(network.transport("httpx2"), engine=engine))
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
    with (
        route_hint(allow_models=["openai/gpt-4o-mini"]),
        pytest.raises(openai.APIStatusError) as caught,
    ):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 429
    assert caught.value.code == "insufficient_quota"


# ----------------------------------------------------------------------------- keys


def test_the_callers_key_never_reaches_another_provider(caplog: pytest.LogCaptureFixture) -> None:
    engine = _engine()
    network, _, _ = _caller_network()
    http = httpx2.Client(transport=RoutingTransport(network.transport("httpx2"), engine=engine))
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
    with caplog.at_level(logging.DEBUG), route_hint(allow_providers=["anthropic"], tier=1):
        raw = client.chat.completions.with_raw_response.create(
            model=PREMIUM, messages=[{"role": "user", "content": "hi"}]
        )
    assert raw.headers["x-llmroute-provider"] == "anthropic"
    calls = _offline_fake(engine, "api.anthropic.com").calls
    assert len(calls) == 1
    seen = json.dumps([c.api_key for c in calls]) + json.dumps([dict(c.headers) for c in calls])
    assert CALLER_KEY not in seen
    assert CALLER_KEY not in repr(_records(engine)) + caplog.text
    assert CALLER_KEY not in repr(http._transport)


# ----------------------------------------------------------------------------- observe


def test_observe_mode_sends_the_original_and_meters_it() -> None:
    engine = _engine(mode="observe", offline="auto")
    network, caller_fake, _ = _caller_network()
    http = httpx2.Client(transport=RoutingTransport(network.transport("httpx2"), engine=engine))
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
    with route_hint(tier=1):
        raw = client.chat.completions.with_raw_response.create(
            model=PREMIUM, messages=[{"role": "user", "content": "hi"}]
        )
    completion = raw.parse()
    assert completion.model == PREMIUM
    assert raw.headers["x-llmroute-mode"] == "observe"
    [call] = caller_fake.calls
    assert call.api_key == CALLER_KEY
    [record] = _records(engine)
    assert record.mode == "observe"
    assert record.chosen_model == record.requested_model == f"openai/{PREMIUM}"
    assert completion.usage is not None
    assert record.usage.output_tokens == completion.usage.completion_tokens
    assert record.cost > 0
    assert record.requested_cost == record.cost
    assert "observe" in dict(record.reasons)
    assert record.extra["routed_model"] != record.chosen_model
    # What the same usage would have cost where routing would have sent it: the
    # saving observe mode reports before anything is rerouted.
    from routing_middleware.pricing import cost_of

    routed = cost_of(record.usage, record.extra["routed_model"], catalog=engine.catalog)
    assert Decimal(record.extra["routed_cost"]) == routed
    assert routed < record.cost


_READ_REPLY = {
    "id": "chatcmpl-read",
    "object": "chat.completion",
    "created": 0,
    "model": PREMIUM,
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37},
}


def _read_reply(request: Any) -> Any:
    """An answer made with its body already read, as httpx.MockTransport, respx or a
    cache hand one over: its stream is never iterated nor closed by the client."""
    lib = httpx2 if type(request).__module__.startswith("httpx2") else httpx
    return lib.Response(200, json=_READ_REPLY)


@pytest.mark.anyio
@pytest.mark.parametrize("lib", [httpx, httpx2], ids=["httpx", "httpx2"])
async def test_observed_answers_whose_body_the_transport_already_read_are_metered(lib: Any) -> None:
    body = _chat_body()
    sync_engine = _engine(mode="observe", offline="auto")
    async_engine = _engine(mode="observe", offline="auto")
    sync_client = lib.Client(
        transport=RoutingTransport(lib.MockTransport(_read_reply), engine=sync_engine)
    )
    async_client = lib.AsyncClient(
        transport=AsyncRoutingTransport(lib.MockTransport(_read_reply), engine=async_engine)
    )
    with sync_client:
        answer = sync_client.post(CHAT_URL, json=body, headers={"authorization": "Bearer sk-c"})
    async with async_client:
        aanswer = await async_client.post(
            CHAT_URL, json=body, headers={"authorization": "Bearer sk-c"}
        )
    assert answer.json() == aanswer.json() == _READ_REPLY
    for engine in (sync_engine, async_engine):
        [record] = _records(engine)
        assert record.mode == "observe"
        assert (record.usage.input_tokens, record.usage.output_tokens) == (30, 7)
        assert not record.usage.estimated
        assert record.cost > 0
        assert "closed_early" not in record.extra


@pytest.mark.anyio
@pytest.mark.parametrize("include_usage", [True, False])
async def test_observe_mode_meters_streams(include_usage: bool) -> None:
    engine = _engine(mode="observe", offline="auto")
    network, caller_fake, _ = _caller_network()
    transport = AsyncRoutingTransport(network.async_transport("httpx2"), engine=engine)
    client = openai.AsyncOpenAI(
        api_key=CALLER_KEY, http_client=httpx2.AsyncClient(transport=transport), max_retries=0
    )
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await client.chat.completions.create(
        model=PREMIUM, messages=[{"role": "user", "content": "hi"}], stream=True, **extra
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text
    assert len(caller_fake.calls) == 1
    [record] = _records(engine)
    assert record.streamed
    assert record.mode == "observe"
    assert record.usage.output_tokens > 0
    assert record.usage.estimated is (not include_usage)
    assert record.ttft_ms is not None


def test_unknown_model_in_enforce_mode_passes_through_metered() -> None:
    engine = _engine()
    network, caller_fake, _ = _caller_network()
    with httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)) as client:
        response = client.post(CHAT_URL, json=_chat_body("gpt-brand-new"))
    assert response.status_code == 200
    assert response.json()["model"] == "gpt-brand-new"
    assert len(caller_fake.calls) == 1
    [record] = _records(engine)
    assert record.chosen_model == "gpt-brand-new"


# ----------------------------------------------------------------------------- hygiene


def test_importing_the_module_imports_no_http_library() -> None:
    code = (
        "import sys, routing_middleware.transport as t; "
        "print(sorted(m for m in ('httpx', 'httpx2', 'openai') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_public_names() -> None:
    import routing_middleware.transport as transport

    assert transport.__all__ == sorted(transport.__all__)
    assert set(transport.__all__) == {
        "AsyncRoutingTransport",
        "RoutingTransport",
        "get_engine",
        "instrument",
        "instrument_client",
        "is_instrumented",
        "set_engine",
        "suppress_interception",
        "uninstrument",
        "uninstrument_client",
    }


# ----------------------------------------------------------------------------- gemini

GEMINI = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro"
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Summarize: hi"}]}]}


def test_gemini_generate_content_is_routed_and_answered_in_gemini_shape() -> None:
    engine = _engine()
    fake = FakeProvider(default_model=FakeModel("default", output_tokens=12))
    network = FakeNetwork({"generativelanguage.googleapis.com": fake})
    transport = RoutingTransport(network.transport(), engine=engine)
    with (
        httpx.Client(transport=transport) as client,
        route_hint(tier=1, allow_providers=["openai", "deepseek"]),
    ):
        response = client.post(f"{GEMINI}:generateContent", json=GEMINI_BODY)
        with client.stream(
            "POST", f"{GEMINI}:streamGenerateContent", params={"alt": "sse"}, json=GEMINI_BODY
        ) as streamed:
            events = [line for line in streamed.iter_lines() if line.startswith("data:")]
    assert response.status_code == 200
    assert response.json()["candidates"][0]["content"]["parts"][0]["text"]
    assert response.headers["x-llmroute-provider"] in {"openai", "deepseek"}
    assert json.loads(events[-1][5:])["usageMetadata"]["candidatesTokenCount"] > 0
    assert fake.calls == []
    assert len(_records(engine)) == 2


def test_gemini_observe_mode_is_metered_in_gemini_terms() -> None:
    engine = _engine(mode="observe", offline="auto")
    fake = FakeProvider(default_model=FakeModel("default", output_tokens=12))
    network = FakeNetwork({"generativelanguage.googleapis.com": fake})
    transport = RoutingTransport(network.transport(), engine=engine)
    with httpx.Client(transport=transport) as client:
        response = client.post(f"{GEMINI}:generateContent", json=GEMINI_BODY)
        with client.stream(
            "POST", f"{GEMINI}:streamGenerateContent", params={"alt": "sse"}, json=GEMINI_BODY
        ) as streamed:
            streamed.read()
    assert response.status_code == 200
    assert len(fake.calls) == 2
    records = _records(engine)
    assert [r.streamed for r in records] == [False, True]
    for record, call in zip(records, fake.calls, strict=True):
        assert record.provider == "gemini"
        assert record.mode == "observe"
        assert call.usage is not None
        assert record.usage.output_tokens == call.usage.output_tokens
        assert not record.usage.estimated
        assert record.cost > 0


# ----------------------------------------------------------------------------- more edges


@pytest.mark.anyio
async def test_async_fail_open_sends_the_original_request() -> None:
    engine = _engine()
    _break_router(engine)
    network, caller_fake, _ = _caller_network()
    transport = AsyncRoutingTransport(network.async_transport("httpx2"), engine=engine)
    client = anthropic.AsyncAnthropic(
        api_key="sk-ant-caller", http_client=httpx2.AsyncClient(transport=transport), max_retries=0
    )
    message = await client.messages.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    assert message.model == "claude-sonnet-4-6"
    assert caller_fake.calls == []
    anthropic_fake = network.providers["api.anthropic.com"]
    assert [c.api_key for c in anthropic_fake.calls] == ["sk-ant-caller"]


def test_a_responses_stream_closed_early_is_recorded_once_as_such() -> None:
    engine = _engine()
    network, caller_fake, _ = _caller_network()
    http = httpx2.Client(transport=RoutingTransport(network.transport("httpx2"), engine=engine))
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
    stream = client.responses.create(model="gpt-4o-mini", input="hi", stream=True)
    for _ in stream:
        break
    stream.close()
    [record] = _records(engine)
    assert record.endpoint == "responses"
    assert record.extra.get("closed_early") is True
    assert len(caller_fake.calls) == 1


def test_other_endpoints_of_a_provider_are_untouched() -> None:
    engine = _engine()
    network, caller_fake, _ = _caller_network()
    http = httpx2.Client(transport=RoutingTransport(network.transport("httpx2"), engine=engine))
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
    client.models.list()
    assert [c.endpoint for c in caller_fake.calls] == ["models"]
    assert _records(engine) == []


def test_counting_input_tokens_is_not_metered_as_a_paid_call() -> None:
    def upstream(request: Any) -> Any:
        return httpx2.Response(200, json={"object": "response.input_tokens", "input_tokens": 11})

    engine = _engine()
    http = httpx2.Client(transport=RoutingTransport(httpx2.MockTransport(upstream), engine=engine))
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
    counted = client.responses.input_tokens.count(model="gpt-5", input="Summarize: hi")
    assert counted.input_tokens == 11
    assert _records(engine) == []


def test_observe_mode_with_the_anthropic_sdk_meters_in_anthropic_terms() -> None:
    engine = _engine(mode="observe", offline="auto")
    network, _, anthropic_fake = _caller_network()
    http = httpx2.Client(transport=RoutingTransport(network.transport("httpx2"), engine=engine))
    client = anthropic.Anthropic(api_key="sk-ant-caller", http_client=http, max_retries=0)
    message = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert message.model == final.model == "claude-sonnet-4-6"
    assert [c.api_key for c in anthropic_fake.calls] == ["sk-ant-caller"] * 2
    records = _records(engine)
    assert [r.streamed for r in records] == [False, True]
    for record in records:
        assert record.provider == "anthropic"
        assert record.chosen_model == "anthropic/claude-sonnet-4-6"
        assert record.usage.output_tokens == message.usage.output_tokens
        assert not record.usage.estimated


# ----------------------------------------------------------------------------- no fake answers


def test_a_keyed_call_is_never_answered_by_the_fake_unless_offline_is_always() -> None:
    """llmroute holds no OpenAI key (offline: auto) but the caller's SDK carries one:
    the original request goes where the code sent it, and is metered."""
    engine = _engine(offline="auto")
    network, caller_fake, _ = _caller_network()
    http = httpx2.Client(transport=RoutingTransport(network.transport("httpx2"), engine=engine))
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
    with route_hint(tier=1):
        completion = client.chat.completions.create(
            model=PREMIUM, messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.model == PREMIUM
    [call] = caller_fake.calls
    assert call.api_key == CALLER_KEY
    assert _offline_fake(engine, "api.openai.com").calls == []
    [record] = _records(engine)
    assert record.chosen_model == f"openai/{PREMIUM}"
    assert record.cost > 0


def test_a_gemini_key_in_the_query_string_counts_as_the_callers_own() -> None:
    """Gemini's REST API takes the key as ``?key=``: such a call is keyed too, so with
    no Gemini key of llmroute's it goes where the code sent it, never to a fake."""
    engine = _engine(offline="auto")
    fake = FakeProvider(default_model=FakeModel("default", output_tokens=12))
    network = FakeNetwork({"generativelanguage.googleapis.com": fake})
    caller_key = "AIzaSy-caller-gemini-0123456789"
    with httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)) as client:
        keyed = client.post(
            f"{GEMINI}:generateContent", params={"alt": "json", "key": caller_key}, json=GEMINI_BODY
        )
        assert [call.api_key for call in fake.calls] == [caller_key]
        keyless = client.post(f"{GEMINI}:generateContent?alt=json&key=", json=GEMINI_BODY)
    assert keyed.status_code == keyless.status_code == 200
    assert keyed.headers["x-llmroute-provider"] == "gemini"
    assert len(fake.calls) == 1  # the keyless call was routed, as calls without a key are


def test_offline_always_lets_the_fake_answer_observed_calls() -> None:
    engine = _engine(mode="observe", offline="always")
    network, caller_fake, _ = _caller_network()
    http = httpx2.Client(transport=RoutingTransport(network.transport("httpx2"), engine=engine))
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=http, max_retries=0)
    completion = client.chat.completions.create(
        model=PREMIUM, messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content
    assert caller_fake.calls == []
    assert len(_offline_fake(engine, "api.openai.com").calls) == 1
    [record] = _records(engine)
    assert record.mode == "observe"


@pytest.mark.parametrize("lib_name", ["httpx", "httpx2"])
def test_a_relayed_answers_headers_are_made_once_as_ascii(lib_name: str) -> None:
    import importlib

    from routing_middleware._intercept import kit_for
    from routing_middleware.relay import RelayResponse

    lib: Any = importlib.import_module(lib_name)
    kit = kit_for(lib.Request("POST", "https://api.openai.com/v1/chat/completions"))
    headers = {"content-type": "application/json", "x-llmroute-model": "openai/gpt-a"}
    response = kit.relay_response(RelayResponse(200, headers, b'{"id":"x"}'))
    expected = lib.Response(200, headers=[*headers.items(), ("content-length", "10")])
    assert response.headers.raw == expected.headers.raw
    assert response.headers.encoding == expected.headers.encoding == "ascii"
    assert response.read() == b'{"id":"x"}'

    def chunks() -> Iterator[bytes]:
        yield b"data: [DONE]\n\n"

    streamed = kit.relay_response(RelayResponse(200, headers, stream=chunks()))
    assert streamed.headers.raw == lib.Response(200, headers=headers).headers.raw
    assert streamed.read() == b"data: [DONE]\n\n"
    with pytest.raises(UnicodeEncodeError):
        kit.relay_response(RelayResponse(200, {"x-llmroute-model": "modèle"}, b""))
