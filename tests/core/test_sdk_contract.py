"""The official SDKs judge FakeProvider: what it sends must parse into complete objects.

Each test drives the real ``openai`` / ``anthropic`` SDK over a real httpx2 client,
in-process through the fake's transport, or over a socket through uvicorn.
Raw bodies are re-validated with the SDKs' own pydantic models, which fail on
missing required fields (the SDK itself only constructs, never validates).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import Message as AnthropicMessage
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response as OpenAIResponse

from routing_middleware.testing import Failure, FakeModel, FakeProvider, FakeToolCall
from tests.core.sdk_helpers import sdk

BASE = "https://fake.invalid"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PARALLEL = (
    FakeToolCall("get_weather", {"city": "Paris"}),
    FakeToolCall("get_weather", {"city": "Lyon", "days": [1, 2, 3]}),
)


def models() -> list[FakeModel]:
    return [
        FakeModel(
            "gpt-test",
            content="Sunny, 21 degrees, light breeze from the west.",
            cached_tokens=64,
            cache_write_tokens=32,
            cache_write_long_tokens=8,
            reasoning_tokens=16,
            input_tokens=400,
        ),
        FakeModel("gpt-tools", tool_calls=PARALLEL),
        FakeModel("gpt-long", output_tokens=200),
        FakeModel("gpt-filter", content="I started to", finish="content_filter"),
        FakeModel("gpt-refuse", finish="refusal"),
        FakeModel("emb", embedding_dimensions=12),
        FakeModel(
            "claude-test",
            content="Here you go.",
            input_tokens=1000,
            cached_tokens=600,
            cache_write_tokens=200,
            cache_write_long_tokens=50,
            reasoning_tokens=20,
            reasoning="Consider the forecast.",
        ),
    ]


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider(models(), require_key="sk-test")


def oai(fake: FakeProvider, **kw: Any) -> openai.OpenAI:
    transport = fake.transport(lib="httpx2")
    return sdk(openai.OpenAI, transport=transport, api_key="sk-test", base_url=f"{BASE}/v1", **kw)


def aoai(fake: FakeProvider, **kw: Any) -> openai.AsyncOpenAI:
    transport = fake.async_transport(lib="httpx2")
    return sdk(
        openai.AsyncOpenAI, transport=transport, api_key="sk-test", base_url=f"{BASE}/v1", **kw
    )


def ant(fake: FakeProvider, **kw: Any) -> anthropic.Anthropic:
    transport = fake.transport(lib="httpx2")
    return sdk(anthropic.Anthropic, transport=transport, api_key="sk-test", base_url=BASE, **kw)


def aant(fake: FakeProvider, **kw: Any) -> anthropic.AsyncAnthropic:
    transport = fake.async_transport(lib="httpx2")
    return sdk(
        anthropic.AsyncAnthropic, transport=transport, api_key="sk-test", base_url=BASE, **kw
    )


# --------------------------------------------------------------------------- chat completions


def test_chat_completion_is_complete_and_carries_usage(fake: FakeProvider) -> None:
    raw = oai(fake).chat.completions.with_raw_response.create(model="gpt-test", messages=USER)
    strict = ChatCompletion.model_validate(raw.http_response.json())
    completion = raw.parse()
    assert completion == strict
    assert completion.choices[0].message.content == "Sunny, 21 degrees, light breeze from the west."
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == 400
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 64
    assert usage.prompt_tokens_details.cache_write_tokens == 32
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 16
    billed = fake.calls[-1].usage
    assert billed is not None
    assert billed.output_tokens == usage.completion_tokens
    assert fake.calls[-1].headers["authorization"] == "Bearer sk-test"


@pytest.mark.anyio
async def test_async_chat_stream_with_usage(fake: FakeProvider) -> None:
    client = aoai(fake)
    stream = await client.chat.completions.create(
        model="gpt-test", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    text = ""
    chunks = []
    async for chunk in stream:
        chunks.append(ChatCompletionChunk.model_validate(chunk.to_dict()))
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == "Sunny, 21 degrees, light breeze from the west."
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == fake.calls[-1].usage.output_tokens  # type: ignore[union-attr]
    assert chunks[-2].choices[0].finish_reason == "stop"
    await client.close()


def test_streamed_parallel_tool_calls_assemble(fake: FakeProvider) -> None:
    with oai(fake).chat.completions.stream(
        model="gpt-tools",
        messages=USER,
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        fragments = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        {"city": "Paris"},
        {"city": "Lyon", "days": [1, 2, 3]},
    ]
    assert len({c.id for c in calls}) == 2
    assert len(fragments) > 2
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.anyio
async def test_async_tool_calls_not_streamed(fake: FakeProvider) -> None:
    client = aoai(fake)
    completion = await client.chat.completions.create(
        model="gpt-tools",
        messages=USER,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    ChatCompletion.model_validate(completion.to_dict())
    calls = completion.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]  # type: ignore[union-attr]
    await client.close()


@pytest.mark.parametrize(
    ("model", "finish", "refusal"),
    [
        ("gpt-long", "length", False),
        ("gpt-filter", "content_filter", False),
        ("gpt-refuse", "stop", True),
    ],
)
def test_finish_reasons(fake: FakeProvider, model: str, finish: str, refusal: bool) -> None:
    completion = oai(fake).chat.completions.create(
        model=model, messages=USER, max_completion_tokens=50
    )
    choice = completion.choices[0]
    assert choice.finish_reason == finish
    assert (choice.message.refusal is not None) == refusal
    if finish == "length":
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 50


@pytest.mark.parametrize("flavor", ["azure", "deepseek", "mistral", "openrouter", "groq", "qwen"])
def test_flavored_streams_parse(flavor: str) -> None:
    fake = FakeProvider(
        [FakeModel("m", content="a b c d", reasoning="hmm", cached_tokens=2)], flavor=flavor
    )
    with oai(fake).chat.completions.stream(model="m", messages=USER) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "a b c d"


def test_openrouter_midstream_error_raises(fake: FakeProvider) -> None:
    router = FakeProvider(
        [
            FakeModel(
                "m",
                output_tokens=8,
                failures=(Failure.stream_error(after=3, message="upstream died"),),
            )
        ],
        flavor="openrouter",
    )
    stream = oai(router).chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(openai.APIError, match="upstream died"):
        for _ in stream:
            pass


# --------------------------------------------------------------------------- Responses and more


def test_responses_create(fake: FakeProvider) -> None:
    raw = oai(fake).responses.with_raw_response.create(model="gpt-test", input="Weather?")
    response = OpenAIResponse.model_validate(raw.http_response.json())
    assert response.output_text == "Sunny, 21 degrees, light breeze from the west."
    assert response.status == "completed"
    assert response.usage is not None
    details = response.usage.input_tokens_details
    assert (details.cached_tokens, details.cache_write_tokens) == (64, 32)
    assert details.cache_write_tokens_details is not None
    assert details.cache_write_tokens_details.ttl_12h_tokens == 8
    assert response.usage.output_tokens_details.reasoning_tokens == 16


def test_responses_function_calls(fake: FakeProvider) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": WEATHER["function"]["parameters"],
    }  # type: ignore[index]
    response = oai(fake).responses.create(model="gpt-tools", input="Weather?", tools=[tool])  # type: ignore[list-item]
    OpenAIResponse.model_validate(response.to_dict())
    calls = [item for item in response.output if item.type == "function_call"]
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Lyon"]  # type: ignore[union-attr]


def test_responses_stream_helper(fake: FakeProvider) -> None:
    with oai(fake).responses.stream(model="gpt-test", input="Weather?") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Sunny, 21 degrees, light breeze from the west."
    assert final.usage is not None
    assert final.usage.input_tokens == 400


@pytest.mark.anyio
async def test_async_responses_stream_incomplete(fake: FakeProvider) -> None:
    client = aoai(fake)
    stream = await client.responses.create(
        model="gpt-long", input="Long please", stream=True, max_output_tokens=20
    )
    kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.incomplete"
    await client.close()


def test_embeddings_default_encoding_matches_float(fake: FakeProvider) -> None:
    client = oai(fake)
    default = client.embeddings.create(model="emb", input=["alpha", "beta"])
    floats = client.embeddings.create(model="emb", input=["alpha", "beta"], encoding_format="float")
    CreateEmbeddingResponse.model_validate(floats.to_dict())
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert len(default.data[0].embedding) == 12
    assert default.usage.prompt_tokens == fake.calls[-1].usage.input_tokens  # type: ignore[union-attr]


def test_models_list_and_retrieve(fake: FakeProvider) -> None:
    client = oai(fake)
    assert "gpt-test" in [m.id for m in client.models.list()]
    assert client.models.retrieve("emb").id == "emb"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("missing")


# --------------------------------------------------------------------------- OpenAI errors


def test_rate_limit_retry_after_is_honoured(fake: FakeProvider) -> None:
    fake.inject("gpt-test", Failure.rate_limit(retry_after_ms=700))
    client = oai(fake, max_retries=1)
    client.chat.completions.create(model="gpt-test", messages=USER)
    first, second = fake.calls[-2:]
    assert (first.status, second.status) == (429, 200)
    # The SDK's own first backoff is at most 0.5 s; the header asks for 0.7 s.
    assert second.received_at - first.received_at >= 0.7


def test_rate_limit_error_class_and_body(fake: FakeProvider) -> None:
    fake.inject("gpt-test", Failure.insufficient_quota())
    with pytest.raises(openai.RateLimitError) as caught:
        oai(fake).chat.completions.create(model="gpt-test", messages=USER)
    assert caught.value.code == "insufficient_quota"
    assert caught.value.status_code == 429


def test_529_and_503_are_status_errors(fake: FakeProvider) -> None:
    fake.inject("gpt-test", Failure.overloaded(), Failure.unavailable())
    for status in (529, 503):
        with pytest.raises(openai.APIStatusError) as caught:
            oai(fake).chat.completions.create(model="gpt-test", messages=USER)
        assert caught.value.status_code == status


def test_authentication_error(fake: FakeProvider) -> None:
    client = openai.OpenAI(
        api_key="sk-wrong",
        base_url=f"{BASE}/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=fake.transport(lib="httpx2")),
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-test", messages=USER)
    assert "sk-wrong" not in str(caught.value)


def test_unknown_model(fake: FakeProvider) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        oai(fake).chat.completions.create(model="gpt-nope", messages=USER)
    assert caught.value.code == "model_not_found"


def test_timeout_and_reset(fake: FakeProvider) -> None:
    fake.inject("gpt-test", Failure.timeout(hang=60), Failure.reset())
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        oai(fake, timeout=0.2).chat.completions.create(model="gpt-test", messages=USER)
    assert time.monotonic() - started < 2
    with pytest.raises(openai.APIConnectionError):
        oai(fake).chat.completions.create(model="gpt-test", messages=USER)


@pytest.mark.anyio
async def test_async_retries_connection_errors(fake: FakeProvider) -> None:
    fake.inject("gpt-test", Failure.reset())
    client = aoai(fake, max_retries=1)
    completion = await client.chat.completions.create(model="gpt-test", messages=USER)
    assert completion.choices[0].message.content
    assert [c.status for c in fake.calls] == [0, 200]
    await client.close()


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_message_with_cache_usage(fake: FakeProvider) -> None:
    raw = ant(fake).messages.with_raw_response.create(
        model="claude-test",
        max_tokens=1024,
        messages=USER,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 512},
    )
    message = AnthropicMessage.model_validate(raw.http_response.json())
    assert [b.type for b in message.content] == ["thinking", "text"]
    usage = message.usage
    assert usage.input_tokens == 200
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (600, 200)
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_1h_input_tokens == 50
    assert usage.output_tokens_details is not None
    assert usage.output_tokens_details.thinking_tokens == 20
    call = fake.calls[-1]
    assert call.headers["authorization"] == "Bearer sk-test"
    assert call.usage is not None
    assert call.usage.input_tokens == 1000


def test_anthropic_stream_tool_use(fake: FakeProvider) -> None:
    tool = {"name": "get_weather", "input_schema": {"type": "object"}}
    with ant(fake).messages.stream(
        model="gpt-tools",
        max_tokens=256,
        messages=USER,
        tools=[tool],  # type: ignore[arg-type,list-item]
    ) as stream:
        json_deltas = [
            e
            for e in stream
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        ]
        final = stream.get_final_message()
    AnthropicMessage.model_validate(final.to_dict())
    assert [b.input for b in final.content if b.type == "tool_use"] == [  # type: ignore[union-attr]
        {"city": "Paris"},
        {"city": "Lyon", "days": [1, 2, 3]},
    ]
    assert final.stop_reason == "tool_use"
    assert len(json_deltas) >= 3


@pytest.mark.anyio
async def test_async_anthropic_stream_text_and_usage(fake: FakeProvider) -> None:
    client = aant(fake)
    async with client.messages.stream(
        model="claude-test",
        max_tokens=256,
        messages=USER,  # type: ignore[arg-type]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Here you go."
    assert final.usage.cache_read_input_tokens == 600
    assert final.usage.output_tokens == fake.calls[-1].usage.output_tokens  # type: ignore[union-attr]
    await client.close()


def test_anthropic_errors(fake: FakeProvider) -> None:
    fake.inject("claude-test", Failure.overloaded(), Failure.rate_limit(retry_after_ms=50))
    with pytest.raises(anthropic.OverloadedError):
        ant(fake).messages.create(model="claude-test", max_tokens=10, messages=USER)  # type: ignore[arg-type]
    with pytest.raises(anthropic.RateLimitError):
        ant(fake).messages.create(model="claude-test", max_tokens=10, messages=USER)  # type: ignore[arg-type]
    bad = anthropic.Anthropic(
        api_key="nope",
        base_url=BASE,
        max_retries=0,
        http_client=httpx2.Client(transport=fake.transport(lib="httpx2")),
    )
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude-test", max_tokens=10, messages=USER)  # type: ignore[arg-type]
    with pytest.raises(anthropic.NotFoundError):
        ant(fake).messages.create(model="claude-nope", max_tokens=10, messages=USER)  # type: ignore[arg-type]


def test_anthropic_retries_529_then_succeeds(fake: FakeProvider) -> None:
    fake.inject("claude-test", Failure.overloaded(retry_after_ms=10))
    message = ant(fake, max_retries=2).messages.create(
        model="claude-test",
        max_tokens=10,
        messages=USER,  # type: ignore[arg-type]
    )
    assert message.content
    assert [c.status for c in fake.calls] == [529, 200]


def test_anthropic_midstream_overloaded(fake: FakeProvider) -> None:
    fake.inject("claude-test", Failure.stream_error(after=4))

    def consume() -> None:
        with ant(fake).messages.stream(
            model="claude-test",
            max_tokens=256,
            messages=USER,  # type: ignore[arg-type]
        ) as stream:
            for _ in stream:
                pass

    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        consume()


# --------------------------------------------------------------------------- over a real socket


@pytest.fixture
def served() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(models(), require_key="sk-test")
    with fake.serve() as url:
        yield fake, url


def test_uvicorn_openai_stream_and_anthropic(served: tuple[FakeProvider, str]) -> None:
    fake, url = served
    assert url.startswith("http://127.0.0.1:")
    client = openai.OpenAI(api_key="sk-test", base_url=f"{url}/v1", max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-test", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(
        "Sunny"
    )
    assert chunks[-1].usage is not None
    message = anthropic.Anthropic(api_key="sk-test", base_url=url, max_retries=0).messages.create(
        model="claude-test",
        max_tokens=100,
        messages=USER,  # type: ignore[arg-type]
    )
    assert message.usage.cache_read_input_tokens == 600
    assert [c.endpoint for c in fake.calls] == ["chat.completions", "messages"]


@pytest.mark.anyio
async def test_uvicorn_async_stream_is_paced() -> None:
    fake = FakeProvider([FakeModel("slow", output_tokens=4, ttft=0.1, token_delay=0.05)])
    with fake.serve() as url:
        client = openai.AsyncOpenAI(api_key="k", base_url=f"{url}/v1", max_retries=0)
        started = time.monotonic()
        arrivals = []
        stream = await client.chat.completions.create(model="slow", messages=USER, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - started)
        await client.close()
    assert len(arrivals) == 4
    # Load can only make chunks arrive later, so the bounds are on the earliest each
    # can come: the first after the TTFT, the last after three more token delays.
    assert arrivals[0] >= 0.1
    assert arrivals[-1] >= 0.1 + 3 * 0.05 - 0.01


def test_uvicorn_timeout_and_cut(served: tuple[FakeProvider, str]) -> None:
    fake, url = served
    fake.inject("gpt-test", Failure.timeout(hang=30), Failure.cut(after=2, abort=True))
    client = openai.OpenAI(api_key="sk-test", base_url=f"{url}/v1", max_retries=0, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-test", messages=USER)
    assert time.monotonic() - started < 2
    stream = client.chat.completions.create(model="gpt-test", messages=USER, stream=True)
    with pytest.raises(openai.APIConnectionError):
        for _ in stream:
            pass


def test_uvicorn_gemini_with_plain_httpx(served: tuple[FakeProvider, str]) -> None:
    fake, url = served
    with httpx2.Client(base_url=url) as client:
        r = client.post(
            "/v1beta/models/claude-test:streamGenerateContent",
            params={"alt": "sse"},
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": "sk-test"},
        )
    frames = [json.loads(line[6:]) for line in r.text.split("\r\n") if line.startswith("data: ")]
    assert frames[-1]["usageMetadata"]["promptTokenCount"] == 1000
    assert frames[-1]["usageMetadata"]["cachedContentTokenCount"] == 600
    assert fake.calls[-1].api_key == "sk-test"


def test_uvicorn_reset_and_malformed(served: tuple[FakeProvider, str]) -> None:
    fake, url = served
    fake.inject("gpt-test", Failure.reset(), Failure.malformed())
    client = openai.OpenAI(api_key="sk-test", base_url=f"{url}/v1", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-test", messages=USER)
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model="gpt-test", messages=USER)
    assert client.chat.completions.create(model="gpt-test", messages=USER).choices


def test_uvicorn_stall_times_out_and_the_server_stops_promptly() -> None:
    fake = FakeProvider([FakeModel("m", output_tokens=6, failures=(Failure.stall(after=3),))])
    started = time.monotonic()
    with fake.serve() as url:
        client = openai.OpenAI(api_key="k", base_url=f"{url}/v1", max_retries=0, timeout=0.3)
        stream = client.chat.completions.create(model="m", messages=USER, stream=True)
        seen: list[Any] = []
        with pytest.raises(openai.APITimeoutError):
            seen.extend(stream)
        assert len(seen) == 3
    assert time.monotonic() - started < 5
