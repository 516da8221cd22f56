"""Metering of calls interception sends on as they are.

Chat calls llmroute cannot read (content parts its schema rejects) or fails on go to
the provider unchanged when failing open, but are still metered and held to budgets.
Answers whose usage cannot be decoded still get a record; early-closed pass-through
streams get an input estimate. Upstreams are FakeProviders behind a FakeNetwork.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from routing_middleware.budgets import MemoryBudgetStore
from routing_middleware.engine import LLMRoute
from routing_middleware.metering import MemorySink, UsageRecord
from routing_middleware.testing import FakeModel, FakeNetwork, FakeProvider
from routing_middleware.transport import AsyncRoutingTransport, RoutingTransport

FAST: dict[str, Any] = {"offline": "always", "offline_latency": "none"}
CHAT_URL = "https://api.openai.com/v1/chat/completions"
MESSAGES_URL = "https://api.anthropic.com/v1/messages"
RESPONSES_URL = "https://api.openai.com/v1/responses"
EMBEDDINGS_URL = "https://api.openai.com/v1/embeddings"
GEMINI = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro"
CALLER_KEY = "sk-caller-openai-0123456789"
MODEL = "gpt-5.4"


def _engine(**config: Any) -> LLMRoute:
    return LLMRoute({**FAST, **config}, sink=MemorySink(), environ={})


def _records(engine: LLMRoute) -> list[UsageRecord]:
    sink = engine.sink
    assert isinstance(sink, MemorySink)
    return sink.records


def _network() -> tuple[FakeNetwork, FakeProvider]:
    fake = FakeProvider(default_model=FakeModel("default", output_tokens=12))
    anthropic_fake = FakeProvider(default_model=FakeModel("default", output_tokens=12))
    gemini_fake = FakeProvider(default_model=FakeModel("default", output_tokens=12))
    network = FakeNetwork(
        {
            "api.openai.com": fake,
            "api.anthropic.com": anthropic_fake,
            "generativelanguage.googleapis.com": gemini_fake,
        }
    )
    return network, fake


def _audio_body(**extra: Any) -> dict[str, Any]:
    """An OpenAI chat body llmroute's schema rejects (an ``input_audio`` part)."""
    return {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Transcribe this and summarize it, please."},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                ],
            }
        ],
        **extra,
    }


def _spent_budget_engine() -> LLMRoute:
    budget = {"name": "tiny", "scope": "global", "limit_usd": "0.000001"}
    engine = _engine(routing={"budgets": [budget]})
    from routing_middleware.budgets import Reservation

    budgets = engine.budgets
    budgets.settle(Reservation(budgets.lines(), 0), Decimal("0.01"))
    return engine


# ----------------------------------------------------------------------------- unreadable chat


def test_unreadable_chat_call_is_sent_as_is_and_metered() -> None:
    engine = _engine()
    network, fake = _network()
    with httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)) as client:
        response = client.post(
            CHAT_URL, json=_audio_body(), headers={"authorization": f"Bearer {CALLER_KEY}"}
        )
    assert response.status_code == 200
    assert response.json()["model"] == MODEL
    assert "x-llmroute-model" not in response.headers
    [call] = fake.calls
    assert call.api_key == CALLER_KEY
    assert call.body["messages"][0]["content"][1]["type"] == "input_audio"
    [record] = _records(engine)
    assert record.endpoint == "chat"
    assert record.provider == "openai"
    assert record.chosen_model == record.requested_model == f"openai/{MODEL}"
    assert call.usage is not None
    assert record.usage.input_tokens == call.usage.input_tokens
    assert record.usage.output_tokens == call.usage.output_tokens == 12
    assert not record.usage.estimated
    assert record.cost > 0
    assert record.status == "ok"


@pytest.mark.anyio
async def test_unreadable_chat_stream_is_metered_async() -> None:
    engine = _engine()
    network, fake = _network()
    body = _audio_body(stream=True, stream_options={"include_usage": True})
    body["messages"][0]["content"][1] = {"type": "file", "file": {"file_id": "file-abc"}}
    transport = AsyncRoutingTransport(network.async_transport(), engine=engine)
    async with (
        httpx.AsyncClient(transport=transport) as client,
        client.stream("POST", CHAT_URL, json=body) as response,
    ):
        lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    [call] = fake.calls
    [record] = _records(engine)
    assert record.streamed
    assert call.usage is not None
    assert record.usage.output_tokens == call.usage.output_tokens
    assert not record.usage.estimated
    assert record.cost > 0


def test_unreadable_chat_stream_without_usage_is_estimated_from_the_body() -> None:
    engine = _engine()
    network, _ = _network()
    transport = RoutingTransport(network.transport(), engine=engine)
    with (
        httpx.Client(transport=transport) as client,
        client.stream("POST", CHAT_URL, json=_audio_body(stream=True)) as response,
    ):
        response.read()
    [record] = _records(engine)
    assert record.usage.estimated
    assert record.usage.input_tokens > 0
    assert record.usage.output_tokens > 0


def test_unreadable_anthropic_call_is_metered_in_anthropic_terms() -> None:
    engine = _engine()
    network, _ = _network()
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": [{"type": "mystery_block", "x": 1}]}],
    }
    with httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)) as client:
        response = client.post(
            MESSAGES_URL,
            json=body,
            headers={"x-api-key": "sk-ant-caller", "anthropic-version": "2023-06-01"},
        )
    anthropic_fake = network.providers["api.anthropic.com"]
    [call] = anthropic_fake.calls
    assert response.status_code == call.status == 200
    [record] = _records(engine)
    assert record.provider == "anthropic"
    assert record.requested_model == "anthropic/claude-sonnet-4-6"
    assert call.usage is not None
    assert record.usage.input_tokens == call.usage.input_tokens
    assert record.usage.output_tokens == call.usage.output_tokens
    assert record.cost > 0


def test_spent_budget_blocks_an_unreadable_call_in_the_callers_dialect() -> None:
    engine = _spent_budget_engine()
    network, fake = _network()
    http = httpx.Client(transport=RoutingTransport(network.transport(), engine=engine))
    response = http.post(CHAT_URL, json=_audio_body())
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert "tiny" in error["message"]
    assert fake.calls == []
    # and the official SDK sees it as an OpenAI API error
    client = openai.OpenAI(
        api_key=CALLER_KEY,
        http_client=httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)),
        max_retries=0,
    )
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=_audio_body()["messages"])
    assert caught.value.status_code == 402
    assert fake.calls == []


@pytest.mark.anyio
async def test_spent_budget_blocks_an_unreadable_call_async() -> None:
    engine = _spent_budget_engine()
    network, fake = _network()
    transport = AsyncRoutingTransport(network.async_transport(), engine=engine)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(CHAT_URL, json=_audio_body())
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "budget_exceeded"
    assert fake.calls == []


def test_a_budget_with_room_lets_the_unreadable_call_through_and_charges_it() -> None:
    budget = {"name": "roomy", "scope": "global", "limit_usd": "100"}
    engine = _engine(routing={"budgets": [budget]})
    network, fake = _network()
    with httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)) as client:
        response = client.post(CHAT_URL, json=_audio_body())
    assert response.status_code == 200
    assert len(fake.calls) == 1
    [record] = _records(engine)
    assert sum(engine.budgets.store.totals(engine.budgets.lines())) > 0
    assert record.cost > 0


class _DownStore(MemoryBudgetStore):
    """A budget store that fails every read and write while ``down``, counting them."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.asked = 0

    def _check(self) -> None:
        if self.down:
            self.asked += 1
            raise ConnectionError("refused")

    def totals(self, lines: Any) -> list[int]:
        self._check()
        return super().totals(lines)

    def settle(self, lines: Any, reserved: int, actual: int, hold: str) -> None:
        self._check()
        super().settle(lines, reserved, actual, hold)

    async def atotals(self, lines: Any) -> list[int]:
        self._check()
        return super().totals(lines)

    async def asettle(self, lines: Any, reserved: int, actual: int, hold: str) -> None:
        self._check()
        super().settle(lines, reserved, actual, hold)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_calls_sent_unchanged_go_on_when_the_budget_store_fails_and_are_charged_later(
    is_async: bool,
) -> None:
    import asyncio

    from routing_middleware import _deferred

    budget = {"name": "roomy", "scope": "global", "limit_usd": "100"}
    store = _DownStore()
    engine = LLMRoute(
        {**FAST, "routing": {"budgets": [budget]}},
        sink=MemorySink(),
        environ={},
        budget_store=store,
    )
    network, fake = _network()

    async def calls_async() -> list[int]:
        transport = AsyncRoutingTransport(network.async_transport(), engine=engine)
        async with httpx.AsyncClient(transport=transport) as client:
            return [(await client.post(CHAT_URL, json=_audio_body())).status_code for _ in "abc"]

    if is_async:
        statuses = asyncio.run(calls_async())
    else:
        with httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)) as c:
            statuses = [c.post(CHAT_URL, json=_audio_body()).status_code for _ in "abc"]
    assert statuses == [200, 200, 200]
    assert len(fake.calls) == 3
    assert store.asked == 1  # the first read failed; the store was left alone after
    cost = sum(record.cost for record in _records(engine))
    assert cost > 0
    store.down = False
    engine.budgets.outage.until = time.monotonic() - 1  # (as if the retry time had come)
    engine.budgets.pressing()  # it answers: the kept charges are applied
    assert _deferred.drain()
    assert sum(store.totals(engine.budgets.lines())) == round(cost * 1_000_000)


@pytest.mark.parametrize(
    ("url", "body"),
    [
        (RESPONSES_URL, {"model": "gpt-4o-mini", "input": "Summarize the ticket."}),
        (EMBEDDINGS_URL, {"model": "text-embedding-3-small", "input": "printer jam"}),
    ],
    ids=["responses", "embeddings"],
)
def test_spent_budget_blocks_metered_calls_too(url: str, body: dict[str, Any]) -> None:
    """Calls llmroute meters without routing are held to budgets like the rest."""
    engine = _spent_budget_engine()
    network, fake = _network()
    with httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)) as client:
        response = client.post(url, json=body)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "budget_exceeded"
    assert fake.calls == []
    assert _records(engine) == []


@pytest.mark.anyio
async def test_spent_budget_blocks_an_embeddings_call_async() -> None:
    engine = _spent_budget_engine()
    network, fake = _network()
    transport = AsyncRoutingTransport(network.async_transport(), engine=engine)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(
            EMBEDDINGS_URL, json={"model": "text-embedding-3-small", "input": "printer jam"}
        )
    assert response.status_code == 402
    assert fake.calls == []


def test_the_official_sdk_sees_a_blocked_responses_call_as_an_api_error() -> None:
    engine = _spent_budget_engine()
    network, fake = _network()
    client = openai.OpenAI(
        api_key=CALLER_KEY,
        http_client=httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)),
        max_retries=0,
    )
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model="gpt-4o-mini", input="Summarize the ticket.")
    assert caught.value.status_code == 402
    assert fake.calls == []


# ----------------------------------------------------------------------------- internal errors


class _Broken(Exception):
    pass


def _break_router(engine: LLMRoute) -> None:
    def decide(*args: Any, **kwargs: Any) -> Any:
        raise _Broken("router bug")

    engine.router.decide = decide  # type: ignore[method-assign]


def test_a_call_sent_on_after_an_internal_error_is_still_metered() -> None:
    engine = _engine()
    _break_router(engine)
    network, fake = _network()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)) as client:
        response = client.post(CHAT_URL, json=body)
    assert response.status_code == 200
    [call] = fake.calls
    [record] = _records(engine)
    assert call.usage is not None
    assert record.usage.output_tokens == call.usage.output_tokens
    assert record.cost > 0


@pytest.mark.anyio
async def test_a_gemini_call_sent_on_after_an_internal_error_is_metered_async() -> None:
    engine = _engine()
    _break_router(engine)
    network, _ = _network()
    body = {"contents": [{"role": "user", "parts": [{"text": "Summarize: hi"}]}]}
    transport = AsyncRoutingTransport(network.async_transport(), engine=engine)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(f"{GEMINI}:generateContent", json=body)
    assert response.status_code == 200
    [call] = network.providers["generativelanguage.googleapis.com"].calls
    [record] = _records(engine)
    assert record.provider == "gemini"
    assert record.requested_model == "gemini/gemini-2.5-pro"
    assert call.usage is not None
    assert record.usage.output_tokens == call.usage.output_tokens


def test_spent_budget_blocks_a_call_after_an_internal_error() -> None:
    engine = _spent_budget_engine()
    _break_router(engine)
    network, fake = _network()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(transport=RoutingTransport(network.transport(), engine=engine)) as client:
        response = client.post(CHAT_URL, json=body)
    assert response.status_code == 402
    assert fake.calls == []


# ----------------------------------------------------------------------------- undecodable answers


class _Rewrite(httpx.BaseTransport):
    """Passes calls to a fake upstream and rewrites its JSON answer (``change`` merged
    into it, or the whole body replaced by ``raw``)."""

    def __init__(
        self, inner: httpx.BaseTransport, change: dict[str, Any], raw: bytes | None = None
    ) -> None:
        self.inner, self.change, self.raw = inner, change, raw

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        body = self.raw
        if body is None:
            body = json.dumps({**response.json(), **self.change}).encode()
        headers = {"content-type": "application/json"}
        return httpx.Response(response.status_code, headers=headers, stream=_Bytes(body))


class _Bytes(httpx.SyncByteStream):
    """A body the client reads as a stream (as from the network)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self) -> Any:
        yield self.body


ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-caller", "anthropic-version": "2023-06-01"}
ANTHROPIC_BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "hi"}],
}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def _observed(
    url: str, body: dict[str, Any], change: dict[str, Any], raw: bytes | None = None
) -> tuple[httpx.Response, LLMRoute]:
    engine = _engine(mode="observe", offline="auto")
    network, _ = _network()
    inner = _Rewrite(network.transport(), change, raw)
    with httpx.Client(transport=RoutingTransport(inner, engine=engine)) as client:
        response = client.post(url, json=body, headers=ANTHROPIC_HEADERS)
        response.read()
    return response, engine


@pytest.mark.parametrize(
    ("url", "body", "change"),
    [
        (
            MESSAGES_URL,
            ANTHROPIC_BODY,
            {"content": None, "usage": {"input_tokens": 1000, "output_tokens": 500}},
        ),
        (
            f"{GEMINI}:generateContent",
            GEMINI_BODY,
            {
                "candidates": None,
                "usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 500},
            },
        ),
    ],
    ids=["anthropic", "gemini"],
)
def test_an_undecodable_answer_is_recorded_from_its_raw_usage(
    url: str, body: dict[str, Any], change: dict[str, Any]
) -> None:
    response, engine = _observed(url, body, change)
    assert response.status_code == 200
    [record] = _records(engine)
    assert (record.usage.input_tokens, record.usage.output_tokens) == (1000, 500)
    assert not record.usage.estimated
    assert record.extra["usage_unreadable"] is True
    assert record.cost > 0
    assert record.mode == "observe"


def test_an_openai_answer_with_null_choices_keeps_its_usage() -> None:
    response, engine = _observed(
        CHAT_URL,
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        {"choices": None, "usage": {"prompt_tokens": 1000, "completion_tokens": 500}},
    )
    assert response.json()["choices"] is None
    [record] = _records(engine)
    assert (record.usage.input_tokens, record.usage.output_tokens) == (1000, 500)
    assert record.cost > 0


def test_an_answer_that_is_not_json_is_recorded_with_an_estimate() -> None:
    response, engine = _observed(MESSAGES_URL, ANTHROPIC_BODY, {}, raw=b"<html>oops</html>")
    assert response.status_code == 200
    [record] = _records(engine)
    assert record.usage.estimated
    assert record.usage.input_tokens > 0
    assert record.extra["usage_unreadable"] is True
    assert record.status == "ok"


# ----------------------------------------------------------------------------- early closes


def test_an_early_closed_responses_stream_estimates_its_input() -> None:
    engine = _engine()
    network, _ = _network()
    text = "Explain the printer jam in detail. " * 20
    body = {"model": "gpt-4o-mini", "input": text, "stream": True}
    transport = RoutingTransport(network.transport(), engine=engine)
    with (
        httpx.Client(transport=transport) as client,
        client.stream("POST", RESPONSES_URL, json=body) as response,
    ):
        next(response.iter_bytes())
    [record] = _records(engine)
    assert record.endpoint == "responses"
    assert record.extra.get("closed_early") is True
    assert record.usage.estimated
    assert record.usage.input_tokens >= len(text) // 4


def test_an_early_closed_responses_stream_counts_message_items() -> None:
    engine = _engine()
    network, _ = _network()
    words = "Explain the printer jam in detail. " * 20
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": words}]},
            {
                "role": "user",
                "content": [{"type": "input_image", "image_url": "data:" + "A" * 9000}],
            },
        ],
    }
    transport = RoutingTransport(network.transport(), engine=engine)
    with (
        httpx.Client(transport=transport) as client,
        client.stream("POST", RESPONSES_URL, json=body) as response,
    ):
        next(response.iter_bytes())
    [record] = _records(engine)
    assert record.usage.estimated
    # the words, not the image's base64
    assert len(words) // 4 <= record.usage.input_tokens < len(words) // 4 + 50


@pytest.mark.parametrize(
    ("given", "tokens"),
    [("abcd" * 40, 40), (["abcd" * 10, "abcd" * 20], 30), ([[1, 2, 3, 4, 5], [6, 7]], 7)],
    ids=["text", "texts", "token-ids"],
)
def test_an_embeddings_answer_closed_unread_estimates_its_input(given: Any, tokens: int) -> None:
    engine = _engine()
    network, fake = _network()
    transport = RoutingTransport(network.transport(), engine=engine)
    body = {"model": "text-embedding-3-small", "input": given}
    with (
        httpx.Client(transport=transport) as client,
        client.stream("POST", EMBEDDINGS_URL, json=body),
    ):
        pass  # closed before its body was read
    assert len(fake.calls) == 1
    [record] = _records(engine)
    assert record.endpoint == "embeddings"
    assert record.extra.get("closed_early") is True
    assert record.usage.estimated
    assert record.usage.input_tokens == tokens


def test_a_gemini_stream_sent_on_after_an_internal_error_is_metered() -> None:
    engine = _engine()
    _break_router(engine)
    network, _ = _network()
    body = {"contents": [{"role": "user", "parts": [{"text": "Summarize: hi"}]}]}
    transport = RoutingTransport(network.transport(), engine=engine)
    with (
        httpx.Client(transport=transport) as client,
        client.stream(
            "POST", f"{GEMINI}:streamGenerateContent", params={"alt": "sse"}, json=body
        ) as response,
    ):
        response.read()
    assert response.status_code == 200
    [call] = network.providers["generativelanguage.googleapis.com"].calls
    [record] = _records(engine)
    assert record.streamed
    assert call.usage is not None
    assert record.usage.output_tokens == call.usage.output_tokens
    assert not record.usage.estimated


def test_a_billed_pass_through_call_shows_no_saving() -> None:
    # The requested model served it: a provider-reported cost is both what it cost
    # and what the requested model would have cost, never a list price beside it.
    import time

    from routing_middleware._intercept_meter import CallInfo, Meter
    from routing_middleware.context import RouteContext

    engine = _engine()
    info = CallInfo(
        engine, RouteContext(), "chat", f"openai/{MODEL}", "openai", False, time.perf_counter()
    )
    meter = Meter(info, 200, "application/json")
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "cost": 0.0123},
    }
    meter.feed(json.dumps(answer).encode())
    meter.finish(True)
    [record] = _records(engine)
    assert record.cost == Decimal("0.0123")
    assert record.requested_cost == record.cost
