"""The OpenAI chat-completions dialect: upstream encode/decode/stream/errors."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_middleware.providers.base import ProviderConfig
from routing_middleware.providers.openai import (
    OPENAI_DIALECT,
    ToolCallAssembler,
    mistral_tool_call_id,
    restore_tool_call_ids,
)
from routing_middleware.providers.openai_caller import OPENAI_CALLER, wants_stream_usage
from routing_middleware.schema import (
    AuthenticationFailed,
    ChatRequest,
    ChatResponse,
    Choice,
    ContentFiltered,
    ContextWindowExceeded,
    FinishReason,
    ImagePart,
    InsufficientQuota,
    InvalidRequest,
    Message,
    Overloaded,
    RateLimited,
    ResponseFormat,
    StreamChunk,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    UpstreamProtocolError,
    UpstreamUnavailable,
    Usage,
)
from tests.core.fixtures.openai.wire import DONE, chunk, completion, hello_request, sse
from tests.core.sdk_helpers import feed
from tests.core.sdk_helpers import sdk as make_sdk

KEY = "sk-test-SECRET-123"
OPENAI = ProviderConfig(
    name="openai", dialect="openai", base_url="https://api.openai.com/v1", api_key=KEY
)


def decode_stream(body: bytes, request: ChatRequest | None = None, step: int = 0):
    decoder = OPENAI_DIALECT.stream_decoder(OPENAI, request or hello_request(stream=True))
    return feed(decoder, body, step), decoder


# ------------------------------------------------------------------------- encode


def test_encode_maps_every_supported_field() -> None:
    request = ChatRequest(
        model="ignored",
        messages=[
            Message(role="developer", content="be brief"),
            Message(
                role="user",
                content=[
                    TextPart(text="what is this?"),
                    ImagePart(url="https://x.test/cat.png", detail="low"),
                    ImagePart(data="AAAA", media_type="image/png"),
                ],
            ),
            Message(
                role="assistant",
                content=None,
                reasoning="thinking it over",
                tool_calls=[ToolCall(id="call_1", name="look", arguments='{"q":1}')],
            ),
            Message(role="tool", tool_call_id="call_1", content="a cat"),
        ],
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        seed=7,
        tools=[Tool(name="look", description="look it up", parameters={"type": "object"})],
        tool_choice=ToolChoice(mode="tool", name="look"),
        parallel_tool_calls=False,
        response_format=ResponseFormat(
            type="json_schema", name="out", json_schema={"type": "object"}, strict=True
        ),
        user="u-1",
        extra={"service_tier": "flex"},
    )
    encoded = OPENAI_DIALECT.encode_request(request, OPENAI, "gpt-x")
    assert encoded.method == "POST"
    assert encoded.url == "https://api.openai.com/v1/chat/completions"
    assert encoded.headers["authorization"] == f"Bearer {KEY}"
    body = encoded.json
    assert body["model"] == "gpt-x"
    assert body["max_completion_tokens"] == 50
    assert "max_tokens" not in body
    assert body["messages"] == [
        {"role": "developer", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://x.test/cat.png", "detail": "low"},
                },
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            # reasoning from an earlier turn is never sent back
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "look", "arguments": '{"q":1}'},
                }
            ],
        },
        {"role": "tool", "content": "a cat", "tool_call_id": "call_1"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "look",
                "description": "look it up",
                "parameters": {"type": "object"},
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "look"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }
    assert body["parallel_tool_calls"] is False
    assert body["stop"] == ["END"]
    assert (body["seed"], body["temperature"], body["top_p"]) == (7, 0.2, 0.9)
    assert body["user"] == "u-1"
    assert body["service_tier"] == "flex"
    assert "stream" not in body
    assert "stream_options" not in body


def test_streaming_always_asks_for_usage_and_extra_cannot_override() -> None:
    request = hello_request(
        stream=True,
        extra={
            "model": "evil",
            "stream": False,
            "stream_options": {"include_usage": False, "continuous_usage_stats": True},
            "max_tokens": 1,
            "prompt_cache_key": "k1",
        },
        max_tokens=10,
    )
    body = OPENAI_DIALECT.encode_request(request, OPENAI, "gpt-x").json
    assert body["model"] == "gpt-x"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert body["max_completion_tokens"] == 10
    assert "max_tokens" not in body
    assert body["prompt_cache_key"] == "k1"


def test_fields_openai_would_reject_are_left_out() -> None:
    request = hello_request(top_k=40, parallel_tool_calls=True)
    body = OPENAI_DIALECT.encode_request(request, OPENAI, "m").json
    assert "top_k" not in body
    assert "parallel_tool_calls" not in body  # only allowed with tools
    with_tools = hello_request(parallel_tool_calls=True, tools=[Tool(name="f")])
    assert OPENAI_DIALECT.encode_request(with_tools, OPENAI, "m").json["parallel_tool_calls"]


def test_extra_from_other_dialects_is_not_forwarded() -> None:
    extra = {"thinking": {"type": "enabled"}, "stop_sequences": ["x"], "gemini": {"a": 1}}
    body = OPENAI_DIALECT.encode_request(hello_request(extra=extra), OPENAI, "m").json
    assert not extra.keys() & body.keys()


def test_openai_only_extra_goes_to_openai_only() -> None:
    extra = {"service_tier": "flex", "store": True, "enable_thinking": True}
    to_openai = OPENAI_DIALECT.encode_request(hello_request(extra=extra), OPENAI, "m").json
    assert (to_openai["service_tier"], to_openai["store"]) == ("flex", True)
    groq = ProviderConfig(name="groq", dialect="openai", base_url="https://g.test/v1")
    to_groq = OPENAI_DIALECT.encode_request(hello_request(extra=extra), groq, "m").json
    assert "service_tier" not in to_groq
    assert "store" not in to_groq
    assert to_groq["enable_thinking"] is True  # a compatible host's own switch still passes


def test_tool_choice_words() -> None:
    for mode in ("auto", "none", "required"):
        request = hello_request(tool_choice=ToolChoice(mode=mode), tools=[Tool(name="f")])
        assert OPENAI_DIALECT.encode_request(request, OPENAI, "m").json["tool_choice"] == mode


def test_azure_legacy_deployment_url() -> None:
    azure = ProviderConfig(
        name="azure",
        dialect="openai",
        base_url="https://res.openai.azure.com/openai/v1",
        api_key=KEY,
        auth_header="api-key",
        auth_scheme=None,
        options={"azure_api_version": "2024-10-21", "azure_deployment": "prod-4o"},
    )
    encoded = OPENAI_DIALECT.encode_request(hello_request(), azure, "gpt-4o")
    assert encoded.url == (
        "https://res.openai.azure.com/openai/deployments/prod-4o/chat/completions"
        "?api-version=2024-10-21"
    )
    assert encoded.headers["api-key"] == KEY
    assert "authorization" not in encoded.headers


def test_encoded_request_repr_hides_the_key() -> None:
    encoded = OPENAI_DIALECT.encode_request(hello_request(), OPENAI, "m")
    assert KEY not in repr(encoded)
    assert KEY not in repr(OPENAI)


# ------------------------------------------------------------------------- decode


def test_decode_usage_with_cache_and_reasoning() -> None:
    body = completion(
        {"content": "hi"},
        usage={
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 200},
        },
    )
    response = OPENAI_DIALECT.decode_response(body, OPENAI)
    assert response.text == "hi"
    assert response.provider == "openai"
    assert response.created == 1700000000
    assert response.usage == Usage(
        input_tokens=1200,
        output_tokens=300,
        cached_input_tokens=1000,
        cache_write_tokens=100,
        reasoning_tokens=200,
    )


def test_decode_thinking_left_out_of_completion_tokens() -> None:
    # Gemini's compat endpoint: 758 + 102 != 1725; output = 1725 - 758 = 967,
    # of which 967 - 102 = 865 were thinking tokens.
    usage = {"prompt_tokens": 758, "completion_tokens": 102, "total_tokens": 1725}
    response = OPENAI_DIALECT.decode_response(completion({"content": "x"}, usage=usage), OPENAI)
    assert response.usage is not None
    assert (response.usage.output_tokens, response.usage.reasoning_tokens) == (967, 865)


def test_decode_tool_calls_refusal_and_reasoning() -> None:
    body = completion(
        {
            "content": None,
            "refusal": "I can't help with that.",
            "reasoning_content": "hmm",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "a", "arguments": '{"x":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "b", "arguments": {"y": 2}}},
            ],
        },
        finish="tool_calls",
    )
    message = OPENAI_DIALECT.decode_response(body, OPENAI).choices[0].message
    assert message.refusal == "I can't help with that."
    assert message.reasoning == "hmm"
    assert message.tool_calls == [
        ToolCall(id="c1", name="a", arguments='{"x":1}'),
        ToolCall(id="c2", name="b", arguments='{"y":2}'),
    ]


@pytest.mark.parametrize(
    ("raw", "mapped", "native"),
    [
        ("stop", FinishReason.STOP, None),
        ("length", FinishReason.LENGTH, None),
        ("model_length", FinishReason.LENGTH, "model_length"),
        ("tool_calls", FinishReason.TOOL_CALLS, None),
        ("content_filter", FinishReason.CONTENT_FILTER, None),
        ("error", FinishReason.ERROR, None),
        ("eos_token", FinishReason.STOP, "eos_token"),
    ],
)
def test_finish_reasons(raw: str, mapped: FinishReason, native: str | None) -> None:
    choice = OPENAI_DIALECT.decode_response(
        completion({"content": "x"}, finish=raw), OPENAI
    ).choices[0]
    assert (choice.finish_reason, choice.native_finish_reason) == (mapped, native)


def test_decode_empty_answers_without_crashing() -> None:
    no_choices = json.dumps({"id": "x", "model": "m", "choices": []}).encode()
    response = OPENAI_DIALECT.decode_response(no_choices, OPENAI)
    assert (response.choices, response.text, response.usage) == ([], "", None)
    empty = OPENAI_DIALECT.decode_response(completion({"content": ""}, finish=None), OPENAI)
    assert empty.text == ""
    assert empty.choices[0].finish_reason is FinishReason.STOP


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"", b"[1, 2]", b'{"choices": '])
def test_decode_malformed_body_raises_protocol_error(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        OPENAI_DIALECT.decode_response(body, OPENAI)


def test_decode_error_object_in_a_200_body_raises() -> None:
    body = json.dumps({"error": {"message": "upstream died", "code": 502}}).encode()
    with pytest.raises(UpstreamUnavailable, match="upstream died"):
        OPENAI_DIALECT.decode_response(body, OPENAI)


def test_provider_cost_is_an_exact_decimal() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "cost": 0.000123}
    response = OPENAI_DIALECT.decode_response(completion({"content": "x"}, usage=usage), OPENAI)
    assert response.usage is not None
    assert response.usage.provider_cost == Decimal("0.000123")


def test_inconsistent_cache_counts_are_clamped_not_fatal() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 50},
    }
    response = OPENAI_DIALECT.decode_response(completion({"content": "x"}, usage=usage), OPENAI)
    assert response.usage is not None
    assert response.usage.cached_input_tokens == 10


# ------------------------------------------------------------------------- stream


@pytest.mark.parametrize("junk", ["Infinity", "-Infinity", "NaN"])
def test_usage_counts_that_are_not_finite_numbers_decode_as_zero(junk: str) -> None:
    # Python's JSON parser accepts these words; a count made of one must not crash.
    body = completion({"content": "hi"}, usage={"prompt_tokens": 7, "completion_tokens": 2})
    body = body.replace(b'"prompt_tokens": 7', b'"prompt_tokens": ' + junk.encode())
    assert junk.encode() in body
    response = OPENAI_DIALECT.decode_response(body, OPENAI)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (0, 2)


def test_stream_text_with_usage_chunk() -> None:
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, finish="stop"),
        chunk(
            None,
            usage={
                "prompt_tokens": 9,
                "completion_tokens": 2,
                "total_tokens": 11,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        ),
        DONE,
    )
    chunks, decoder = decode_stream(body)
    assert "".join(c.text or "" for c in chunks) == "Hello"
    assert chunks[0].role == "assistant"
    assert [c.finish_reason for c in chunks if c.finish_reason] == [FinishReason.STOP]
    expected = Usage(input_tokens=9, output_tokens=2, cached_input_tokens=4)
    assert decoder.usage == expected
    assert chunks[-1].usage == expected


def test_decoded_chunks_are_ordinary_models() -> None:
    # chunks are built without validation on the hot path; they must still be whole models
    body = sse(chunk({"content": "hi"}, finish="length"), chunk(None, usage=USAGE_WIRE), DONE)
    chunks, _ = decode_stream(body)
    assert chunks[0] == StreamChunk(
        id="chatcmpl-1", model="m", text="hi", finish_reason=FinishReason.LENGTH
    )
    assert chunks[0].model_dump()["text"] == "hi"
    assert StreamChunk.model_validate(chunks[1].model_dump()) == chunks[1]
    assert chunks[1].model_copy(update={"index": 2}).index == 2


USAGE_WIRE = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


def test_stream_multibyte_utf8_split_at_every_byte() -> None:
    text = "héllo — 猫 🐈"
    body = sse(chunk({"content": text}), chunk({}, finish="stop"), DONE)
    chunks, _ = decode_stream(body, step=1)
    assert "".join(c.text or "" for c in chunks) == text


def test_stream_parallel_tool_calls_reassemble() -> None:
    body = sse(
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ],
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "time", "arguments": "{}"},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, finish="tool_calls"),
        DONE,
    )
    chunks, _ = decode_stream(body)
    assembler = ToolCallAssembler()
    for item in chunks:
        assembler.feed(item)
    assert assembler.tool_calls() == [
        ToolCall(id="c1", name="weather", arguments='{"city":"Paris"}'),
        ToolCall(id="c2", name="time", arguments="{}"),
    ]
    assert chunks[-2].finish_reason is FinishReason.TOOL_CALLS


def test_stream_reused_index_for_a_new_call_gets_a_new_slot() -> None:
    # Some servers emit each complete call with index 0; the id tells them apart.
    body = sse(
        chunk(
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}
        ),
        chunk(
            {"tool_calls": [{"index": 0, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}
        ),
        chunk({}, finish="tool_calls"),
        DONE,
    )
    chunks, _ = decode_stream(body)
    indexes = [d.index for c in chunks for d in c.tool_calls or ()]
    assert indexes == [0, 1]


def test_stream_keepalives_and_empty_first_chunk_are_ignored() -> None:
    body = sse(
        ": keep-alive",
        "",
        {"id": "", "choices": [], "prompt_filter_results": [{"prompt_index": 0}]},
        chunk({"content": "ok"}),
        chunk({}, finish="stop"),
        DONE,
    )
    chunks, _ = decode_stream(body)
    assert [c.text for c in chunks if c.text] == ["ok"]


def test_stream_without_usage_is_estimated_never_zero() -> None:
    body = sse(chunk({"content": "Hello world!"}), chunk({}, finish="stop"), DONE)
    chunks, decoder = decode_stream(body)
    # input: 3 (reply primer) + 4 (message framing) + ceil(5 chars / 4) = 2  -> 9
    # output: "Hello world!" is 12 ASCII chars -> (12 + 3) // 4 = 3
    assert decoder.usage == Usage(input_tokens=9, output_tokens=3, estimated=True)
    assert chunks[-1].usage == decoder.usage


def test_stream_cut_before_done_raises_with_estimated_usage() -> None:
    decoder = OPENAI_DIALECT.stream_decoder(OPENAI, hello_request(stream=True))
    decoder.feed(sse(chunk({"content": "partial answ"})))
    with pytest.raises(UpstreamProtocolError, match="DONE"):
        decoder.close()
    # output: 12 ASCII chars -> 3 tokens; a cut stream is still metered
    assert decoder.usage == Usage(input_tokens=9, output_tokens=3, estimated=True)


def test_stream_done_without_finish_reason_is_cut() -> None:
    decoder = OPENAI_DIALECT.stream_decoder(OPENAI, hello_request(stream=True))
    decoder.feed(sse(chunk({"content": "half an ans"}), DONE))
    with pytest.raises(UpstreamProtocolError, match="finish reason"):
        decoder.close()
    assert decoder.usage is not None
    assert decoder.usage.estimated


def test_stream_finish_without_done_is_still_cut() -> None:
    decoder = OPENAI_DIALECT.stream_decoder(OPENAI, hello_request(stream=True))
    decoder.feed(sse(chunk({"content": "x"}, finish="stop")))
    with pytest.raises(UpstreamProtocolError):
        decoder.close()


def test_stream_error_chunk_raises_mapped_error() -> None:
    decoder = OPENAI_DIALECT.stream_decoder(OPENAI, hello_request(stream=True))
    decoder.feed(sse(chunk({"content": "so far"})))
    with pytest.raises(RateLimited, match="slow down"):
        decoder.feed(sse({"error": {"message": "slow down", "code": 429}}))
    assert decoder.usage is not None
    assert decoder.usage.estimated


def test_stream_garbage_event_is_a_protocol_error() -> None:
    decoder = OPENAI_DIALECT.stream_decoder(OPENAI, hello_request(stream=True))
    with pytest.raises(UpstreamProtocolError):
        decoder.feed(b"data: {not json\n\n")


def test_stream_nothing_after_done_counts() -> None:
    body = sse(chunk({"content": "a"}, finish="stop"), DONE, chunk({"content": "b"}))
    chunks, _ = decode_stream(body)
    assert [c.text for c in chunks if c.text] == ["a"]


# ------------------------------------------------------------------------- errors


def err(status: int, body: object, headers: dict[str, str] | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return OPENAI_DIALECT.decode_error(status, headers or {}, raw, OPENAI)


def oai(message: str, code: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def test_insufficient_quota_is_not_a_rate_limit() -> None:
    error = err(
        429, oai("You exceeded your current quota", "insufficient_quota", "insufficient_quota")
    )
    assert type(error) is InsufficientQuota
    assert not error.retryable
    assert error.status_code == 429


def test_rate_limit_reads_retry_after_ms_first() -> None:
    error = err(
        429,
        oai("Rate limit reached", "rate_limit_exceeded", "requests"),
        {"retry-after-ms": "1500", "retry-after": "9"},
    )
    assert type(error) is RateLimited
    assert error.retryable
    assert error.retry_after == 1.5


def test_rate_limit_retry_after_seconds() -> None:
    assert err(429, oai("slow"), {"Retry-After": "7"}).retry_after == 7.0


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            400,
            oai("This model's maximum context length is 128000 tokens", "context_length_exceeded"),
            ContextWindowExceeded,
        ),
        (
            400,
            {
                "error": {
                    "message": "The response was filtered",
                    "code": "content_filter",
                    "innererror": {"code": "ResponsibleAIPolicyViolation"},
                }
            },
            ContentFiltered,
        ),
        (401, oai("Incorrect API key provided", "invalid_api_key"), AuthenticationFailed),
        (404, oai("The model `x` does not exist", "model_not_found"), InvalidRequest),
        (503, oai("Slow down", None, "server_error"), Overloaded),
        (500, oai("The server had an error", None, "server_error"), UpstreamUnavailable),
        (502, b"<html>Bad gateway</html>", UpstreamUnavailable),
        (429, b"", RateLimited),
        (401, b"not json", AuthenticationFailed),
    ],
)
def test_error_classes(status: int, body: object, kind: type) -> None:
    error = err(status, body)
    assert type(error) is kind
    assert error.provider == "openai"
    assert error.message


def test_x_should_retry_false_makes_errors_non_retryable() -> None:
    error = err(500, oai("boom"), {"x-should-retry": "false"})
    assert type(error) is UpstreamUnavailable
    assert error.retryable is False
    assert UpstreamUnavailable.retryable is True  # the class default is untouched


def test_in_stream_error_never_echoes_the_key() -> None:
    decoder = OPENAI_DIALECT.stream_decoder(OPENAI, hello_request(stream=True))
    with pytest.raises(UpstreamUnavailable) as raised:
        decoder.feed(sse({"error": {"message": f"bad key {KEY}", "type": "auth"}}))
    assert KEY not in raised.value.message
    assert KEY not in json.dumps(raised.value.raw)


def test_error_messages_never_echo_the_key() -> None:
    error = err(401, oai(f"Incorrect API key provided: {KEY}.", "invalid_api_key"))
    assert KEY not in error.message
    assert KEY not in repr(error)
    assert KEY not in json.dumps(error.raw)


# ------------------------------------------------------------------------- mistral ids


def test_mistral_ids_are_stable_nine_char_alphanumerics() -> None:
    issued = mistral_tool_call_id("toolu_01ABCdef")
    assert len(issued) == 9
    assert issued.isalnum()
    assert issued.isascii()
    assert issued == mistral_tool_call_id("toolu_01ABCdef")
    assert issued != mistral_tool_call_id("toolu_01ABCdeg")
    assert mistral_tool_call_id("Ab3dE6gH9") == "Ab3dE6gH9"


def test_restore_tool_call_ids_maps_back_only_known_ids() -> None:
    request = ChatRequest(
        model="m",
        messages=[
            Message(role="assistant", tool_calls=[ToolCall(id="call_abc", name="f")]),
            Message(role="tool", tool_call_id="call_abc", content="1"),
        ],
    )
    reissued = mistral_tool_call_id("call_abc")
    response = ChatResponse(
        id="r",
        model="m",
        choices=[
            Choice(
                message=Message(
                    role="assistant",
                    tool_calls=[
                        ToolCall(id=reissued, name="f"),
                        ToolCall(id="NewOne123", name="g"),
                    ],
                )
            )
        ],
    )
    calls = restore_tool_call_ids(response, request).choices[0].message.tool_calls or []
    assert [c.id for c in calls] == ["call_abc", "NewOne123"]


def test_tool_call_assembler_tolerates_repeated_ids_and_names() -> None:
    assembler = ToolCallAssembler()
    assembler.add([ToolCallDelta(index=0, id="c", name="f", arguments='{"a"')])
    assembler.add([ToolCallDelta(index=0, id="c", name="f", arguments=":1}")])
    assembler.add([ToolCallDelta(index=1, name="g")])
    assert assembler.tool_calls() == [
        ToolCall(id="c", name="f", arguments='{"a":1}'),
        ToolCall(id="call_1", name="g", arguments="{}"),
    ]


# ------------------------------------------------------------------------- caller side
# The real openai SDK is the judge: our bytes go through httpx2.MockTransport.

CALLER = OPENAI_CALLER
USAGE = Usage(input_tokens=120, output_tokens=40, cached_input_tokens=100, reasoning_tokens=10)


def sdk(handler, *, retries: int = 0) -> openai.OpenAI:
    return make_sdk(
        openai.OpenAI, handler, api_key="k", base_url="https://llm.test/v1", max_retries=retries
    )


def async_sdk(handler) -> openai.AsyncOpenAI:
    return make_sdk(openai.AsyncOpenAI, handler, api_key="k", base_url="https://llm.test/v1")


def answer(body: bytes, status: int = 200, headers: dict[str, str] | None = None):
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            status, headers=headers or {"content-type": "application/json"}, content=body
        )

    return handler


def tool_response() -> ChatResponse:
    return ChatResponse(
        id="chatcmpl-abc",
        model="upstream-model",
        created=1700000001,
        choices=[
            Choice(
                message=Message(
                    role="assistant",
                    content="calling",
                    tool_calls=[
                        ToolCall(id="c1", name="weather", arguments='{"city":"Oslo"}'),
                        ToolCall(id="c2", name="time", arguments="{}"),
                    ],
                ),
                finish_reason=FinishReason.TOOL_CALLS,
            )
        ],
        usage=USAGE,
    )


def streamed_body(include_usage: bool) -> bytes:
    encoder = CALLER.stream_encoder("gpt-caller", "chatcmpl-s", include_usage=include_usage)
    parts = [
        encoder.start(),
        encoder.chunk(StreamChunk(text="Bon")),
        encoder.chunk(StreamChunk(text="jour")),
        encoder.chunk(
            StreamChunk(
                tool_calls=[ToolCallDelta(index=0, id="c1", name="weather", arguments='{"ci')]
            )
        ),
        encoder.chunk(
            StreamChunk(tool_calls=[ToolCallDelta(index=1, id="c2", name="time", arguments="{}")])
        ),
        encoder.chunk(StreamChunk(tool_calls=[ToolCallDelta(index=0, arguments='ty":"Oslo"}')])),
        encoder.chunk(StreamChunk(finish_reason=FinishReason.TOOL_CALLS)),
        encoder.finish(USAGE),
    ]
    return b"".join(parts)


def sse_answer(body: bytes):
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return handler


MESSAGES = [{"role": "user", "content": "hi"}]


def test_sdk_parses_our_completion() -> None:
    body = json.dumps(CALLER.encode_response(tool_response(), "gpt-caller")).encode()
    result = sdk(answer(body)).chat.completions.create(model="gpt-caller", messages=MESSAGES)
    assert result.model == "gpt-caller"
    assert result.id == "chatcmpl-abc"
    assert result.created == 1700000001
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "calling"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("c1", "weather", '{"city":"Oslo"}'),
        ("c2", "time", "{}"),
    ]
    assert result.usage is not None
    assert (
        result.usage.prompt_tokens,
        result.usage.completion_tokens,
        result.usage.total_tokens,
    ) == (
        120,
        40,
        160,
    )
    assert result.usage.prompt_tokens_details is not None
    assert result.usage.prompt_tokens_details.cached_tokens == 100
    assert result.usage.completion_tokens_details is not None
    assert result.usage.completion_tokens_details.reasoning_tokens == 10


@pytest.mark.anyio
async def test_async_sdk_parses_our_completion() -> None:
    body = json.dumps(CALLER.encode_response(tool_response(), "gpt-caller")).encode()
    result = await async_sdk(answer(body)).chat.completions.create(
        model="gpt-caller", messages=MESSAGES
    )
    assert result.choices[0].message.content == "calling"
    assert result.usage is not None
    assert result.usage.total_tokens == 160


def check_stream(chunks: list, include_usage: bool) -> None:
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Bonjour"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == "chatcmpl-s" and c.model == "gpt-caller" for c in chunks)
    calls: dict[int, list[str]] = {}
    for c in chunks:
        for delta in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            slot = calls.setdefault(delta.index, ["", "", ""])
            slot[0] = delta.id or slot[0]
            slot[1] = (delta.function.name if delta.function else None) or slot[1]
            slot[2] += (delta.function.arguments if delta.function else None) or ""
    assert calls == {0: ["c1", "weather", '{"city":"Oslo"}'], 1: ["c2", "time", "{}"]}
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["tool_calls"]
    usage_chunks = [c for c in chunks if not c.choices]
    if include_usage:
        assert len(usage_chunks) == 1
        assert usage_chunks[0].usage is not None
        assert usage_chunks[0].usage.prompt_tokens == 120
        assert usage_chunks[0].usage.completion_tokens == 40
    else:
        assert usage_chunks == []
        assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("include_usage", [True, False])
def test_sdk_streams_our_chunks(include_usage: bool) -> None:
    client = sdk(sse_answer(streamed_body(include_usage)))
    stream = client.chat.completions.create(
        model="gpt-caller",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    check_stream(list(stream), include_usage)


@pytest.mark.anyio
async def test_async_sdk_streams_our_chunks() -> None:
    client = async_sdk(sse_answer(streamed_body(True)))
    stream = await client.chat.completions.create(
        model="gpt-caller", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    check_stream([c async for c in stream], True)


def test_sdk_stream_helper_accumulates_our_chunks() -> None:
    # The helper's accumulator is the strictest consumer of tool-call fragments.
    client = sdk(sse_answer(streamed_body(True)))
    with client.chat.completions.stream(
        model="gpt-caller", messages=MESSAGES, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Bonjour"
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []] == [
        ("c1", "weather", '{"city":"Oslo"}'),
        ("c2", "time", "{}"),
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None
    assert final.usage.total_tokens == 160


def test_sdk_raises_on_our_in_stream_error() -> None:
    encoder = CALLER.stream_encoder("m", "chatcmpl-e")
    body = (
        encoder.start()
        + encoder.chunk(StreamChunk(text="par"))
        + encoder.error(Overloaded("the upstream is overloaded", retry_after=2))
    )
    stream = sdk(sse_answer(body)).chat.completions.create(
        model="m", messages=MESSAGES, stream=True
    )
    iterator = iter(stream)
    assert next(iterator).choices[0].delta.role == "assistant"
    assert next(iterator).choices[0].delta.content == "par"
    with pytest.raises(openai.APIError, match="the upstream is overloaded") as raised:
        next(iterator)
    assert raised.value.body == {
        "message": "the upstream is overloaded",
        "type": "server_error",
        "param": None,
        "code": "overloaded",
    }


@pytest.mark.parametrize(
    ("error", "sdk_error", "status"),
    [
        (InvalidRequest("bad temperature", param="temperature"), openai.BadRequestError, 400),
        (AuthenticationFailed("no key"), openai.AuthenticationError, 401),
        (RateLimited("slow down", retry_after=3.2), openai.RateLimitError, 429),
        (InsufficientQuota("out of credit"), openai.RateLimitError, 429),
        (Overloaded("busy"), openai.InternalServerError, 529),
        (ContextWindowExceeded("too long"), openai.BadRequestError, 400),
    ],
)
def test_sdk_raises_the_right_class_on_our_errors(error, sdk_error, status) -> None:
    status_code, headers, body = CALLER.encode_error(error)
    assert status_code == status
    with pytest.raises(sdk_error) as raised:
        sdk(answer(body, status_code, headers)).chat.completions.create(
            model="m", messages=MESSAGES
        )
    assert raised.value.status_code == status
    assert error.message in raised.value.message
    assert raised.value.code == error.code
    assert raised.value.param == error.param


def test_error_headers_carry_retry_hints() -> None:
    _, headers, _ = CALLER.encode_error(RateLimited("slow", retry_after=3.2))
    # ceil(3.2) = 4 seconds; 3.2 s = 3200 ms
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("4", "3200")
    assert "x-should-retry" not in headers
    _, headers, _ = CALLER.encode_error(InsufficientQuota("out"))
    assert headers["x-should-retry"] == "false"
    assert "retry-after" not in headers


def test_sdk_does_not_retry_a_non_retryable_429() -> None:
    calls = []
    status, headers, body = CALLER.encode_error(InsufficientQuota("out of credit"))

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        return httpx2.Response(status, headers=headers, content=body)

    with pytest.raises(openai.RateLimitError):
        sdk(handler, retries=2).chat.completions.create(model="m", messages=MESSAGES)
    assert len(calls) == 1


# -- parse_request


def parse(body: object) -> ChatRequest:
    return CALLER.parse_request(json.dumps(body).encode())


def test_parse_full_request() -> None:
    request = parse(
        {
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "sys"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/jpeg;base64,/9j/", "detail": "high"},
                        },
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "done"},
            ],
            "max_tokens": 64,
            "stop": "END",
            "stream": True,
            "stream_options": {"include_usage": True},
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "response_format": {"type": "json_object"},
            "service_tier": "flex",
            "n": 1,
        }
    )
    assert request.max_tokens == 64
    assert request.stop == ["END"]
    assert request.stream is True
    assert request.tool_choice == ToolChoice(mode="tool", name="f")
    assert request.response_format == ResponseFormat(type="json_object")
    assert request.extra == {
        "stream_options": {"include_usage": True},
        "service_tier": "flex",
        "n": 1,
    }
    assert wants_stream_usage(request)
    user = request.messages[1].content
    assert isinstance(user, list)
    assert user[1] == ImagePart(data="/9j/", media_type="image/jpeg", detail="high")
    assert user[2] == ImagePart(url="https://x.test/a.png")
    assert request.messages[2].tool_calls == [ToolCall(id="c1", name="f", arguments="{}")]
    assert request.messages[3].tool_call_id == "c1"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"messages": MESSAGES}, "model"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": 3, "messages": MESSAGES}, "model"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        ({"model": "m", "messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"model": "m", "messages": MESSAGES, "max_tokens": -1}, "max_completion_tokens"),
        ({"model": "m", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": MESSAGES, "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"model": "m", "messages": MESSAGES, "tools": [{"type": "function"}]},
            "tools[0].function",
        ),
        (
            {"model": "m", "messages": MESSAGES, "response_format": {"type": "xml"}},
            "response_format.type",
        ),
    ],
)
def test_parse_errors_name_the_field(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(body)
    assert raised.value.param == param
    assert raised.value.status_code == 400
    assert param.split("[")[0].split(".")[0] in raised.value.message


@pytest.mark.parametrize("body", [b"{nope", b"[]", b"\xff\xfe"])
def test_parse_rejects_non_objects(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        CALLER.parse_request(body)


def test_azure_deployment_path_supplies_a_missing_model() -> None:
    body = json.dumps({"messages": MESSAGES}).encode()
    path = "/openai/deployments/prod-4o/chat/completions"
    assert CALLER.parse_request(body, path).model == "prod-4o"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    request = parse(
        {"model": "m", "messages": MESSAGES, "max_tokens": 5, "max_completion_tokens": 9}
    )
    assert request.max_tokens == 9


# ------------------------------------------------------------------------- round trip
# OpenAI caller body -> ChatRequest -> OpenAI upstream body loses nothing we support.

_text = st.text(max_size=12)
_name = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_b64 = st.from_regex(r"[A-Za-z0-9+/]{4,16}={0,2}", fullmatch=True)
_image = st.one_of(
    st.builds(lambda u: {"url": f"https://img.test/{u}.png"}, _name),
    st.builds(
        lambda d, mt: {"url": f"data:{mt};base64,{d}"},
        _b64,
        st.sampled_from(["image/png", "image/jpeg"]),
    ),
).flatmap(
    lambda image: st.one_of(
        st.just(image),
        st.sampled_from(["auto", "low", "high"]).map(lambda d: {**image, "detail": d}),
    )
)
_part = st.one_of(
    _text.map(lambda t: {"type": "text", "text": t}),
    _image.map(lambda i: {"type": "image_url", "image_url": i}),
)
_call = st.builds(
    lambda i, n, a: {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": n, "arguments": a},
    },
    _name,
    _name,
    st.sampled_from(["{}", '{"a":1}', '{"q":"x y"}']),
)
_message = st.one_of(
    st.builds(lambda c: {"role": "system", "content": c}, _text),
    st.builds(lambda c: {"role": "developer", "content": c}, _text),
    st.builds(
        lambda c: {"role": "user", "content": c},
        st.one_of(_text, st.lists(_part, min_size=1, max_size=3)),
    ),
    st.builds(
        lambda c, calls: {"role": "assistant", "content": c, "tool_calls": calls},
        st.none() | _text,
        st.lists(_call, min_size=1, max_size=2),
    ),
    st.builds(lambda c: {"role": "assistant", "content": c}, _text),
    st.builds(
        lambda i, c: {"role": "tool", "content": c, "tool_call_id": f"call_{i}"}, _name, _text
    ),
)
_tool = st.builds(
    lambda n, d, strict: {
        "type": "function",
        "function": {
            "name": n,
            **({"description": d} if d is not None else {}),
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
            **({"strict": strict} if strict is not None else {}),
        },
    },
    _name,
    st.none() | _text,
    st.none() | st.booleans(),
)
_format = st.one_of(
    st.just({"type": "text"}),
    st.just({"type": "json_object"}),
    st.builds(
        lambda n, strict: {
            "type": "json_schema",
            "json_schema": {
                "name": n,
                "schema": {"type": "object"},
                **({"strict": strict} if strict is not None else {}),
            },
        },
        _name,
        st.none() | st.booleans(),
    ),
)
_optional = st.fixed_dictionaries(
    {},
    optional={
        "tools": st.lists(_tool, min_size=1, max_size=2),
        "tool_choice": st.one_of(
            st.sampled_from(["auto", "none", "required"]),
            _name.map(lambda n: {"type": "function", "function": {"name": n}}),
        ),
        "parallel_tool_calls": st.booleans(),
        "response_format": _format,
        "stop": st.lists(_text, min_size=1, max_size=3),
        "max_completion_tokens": st.integers(0, 100_000),
        "temperature": st.floats(0, 2, allow_nan=False),
        "top_p": st.floats(0, 1, allow_nan=False),
        "seed": st.integers(-(2**31), 2**31),
        "stream": st.booleans(),
        "user": _name,
    },
)


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(_message, min_size=1, max_size=5), fields=_optional)
def test_openai_body_round_trips_losslessly(messages: list[dict], fields: dict) -> None:
    original = {"model": "gpt-x", "messages": messages, **fields}
    request = CALLER.parse_request(json.dumps(original).encode())
    upstream = OPENAI_DIALECT.encode_request(request, OPENAI, "gpt-x").json
    expected = json.loads(json.dumps(original))
    if "tools" not in expected:
        expected.pop("parallel_tool_calls", None)  # OpenAI rejects it without tools
    if expected.get("stream") is False:
        del expected["stream"]  # the default, not sent
    elif expected.get("stream"):
        expected["stream_options"] = {"include_usage": True}  # added so usage always arrives
    assert upstream == expected


def test_relay_upstream_stream_to_the_sdk() -> None:
    # upstream chunks -> our decoder -> our caller encoder -> the real SDK
    upstream = sse(
        ": keep-alive",
        "",
        chunk({"role": "assistant", "content": "", "reasoning_content": "Think"}),
        chunk({"content": "Héllo"}),
        chunk(
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}
        ),
        chunk(
            {"tool_calls": [{"index": 0, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}
        ),
        chunk({}, finish="tool_calls"),
        chunk(None, usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}),
        DONE,
    )
    request = CALLER.parse_request(
        json.dumps(
            {
                "model": "m",
                "messages": MESSAGES,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()
    )
    decoder = OPENAI_DIALECT.stream_decoder(OPENAI, request)
    encoder = CALLER.stream_encoder("m", "chatcmpl-r", include_usage=wants_stream_usage(request))
    out = encoder.start()
    for start in range(0, len(upstream), 5):
        for item in decoder.feed(upstream[start : start + 5]):
            out += encoder.chunk(item)
    for item in decoder.close():
        out += encoder.chunk(item)
    out += encoder.finish(decoder.usage)

    with sdk(sse_answer(out)).chat.completions.stream(
        model="m", messages=MESSAGES, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Héllo"
    assert [(c.id, c.function.name) for c in message.tool_calls or []] == [("a", "f"), ("b", "g")]
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (11, 7)


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1), index=st.integers(min_value=0, max_value=3))
def test_text_chunks_encode_as_the_general_path_would(text: str, index: int) -> None:
    """The text-only shortcut of the caller's stream encoder says what the general
    path says: same JSON, parsed back to the same text by the openai SDK's model."""
    from openai.types.chat import ChatCompletionChunk

    encoder = OPENAI_CALLER.stream_encoder("m", "chatcmpl-1")
    encoder.start()
    fast = encoder.chunk(StreamChunk(text=text, index=index))
    # The same chunk through the general path: a reasoning-free tool-less delta
    # with a finish reason of None is what it builds, as a dict.
    general = {
        "index": index,
        "delta": {"content": text},
        "logprobs": None,
        "finish_reason": None,
    }
    payload = json.loads(fast.removeprefix(b"data: ").strip())
    assert payload["choices"] == [general]
    parsed = ChatCompletionChunk.model_validate(payload)
    assert parsed.choices[0].delta.content == text
    assert parsed.choices[0].index == index


_EVENTS: list[bytes] = [
    sse(chunk({"role": "assistant", "content": ""})),
    sse(chunk({"content": 'héllo "q" \\ 猫'})),
    b": keep-alive\n\n",
    sse(chunk({"content": " two"}, finish=None)),
    b"event: note\ndata: " + json.dumps(chunk({"content": " named"})).encode() + b"\n\n",
    b"data: " + json.dumps(chunk({"content": " crlf"})).encode() + b"\r\n\r\n",
    b"data:" + json.dumps(chunk({"content": " tight"})).encode() + b"\n\n",
    sse(chunk({}, finish="stop")),
    sse(chunk(None, usage=USAGE_WIRE)),
    DONE.encode(),
    sse(chunk({"content": "after done"})),
]


@given(
    picks=st.lists(st.integers(0, len(_EVENTS) - 4), min_size=1, max_size=8),
    cuts=st.lists(st.integers(1, 400), max_size=6),
    per_event=st.booleans(),
)
@settings(max_examples=150)
def test_whole_event_reads_decode_as_any_split_does(
    picks: list[int], cuts: list[int], per_event: bool
) -> None:
    """Reads of whole one-line events skip the SSE parser; what they decode to must be
    what the same bytes give in any other split, comments, named, CRLF and tight
    events mixed in (which hand the rest of the stream to the parser)."""
    events = [_EVENTS[i] for i in picks] + _EVENTS[-4:]
    body = b"".join(events)
    reference = OPENAI_DIALECT.stream_decoder(OPENAI, hello_request(stream=True))
    expected = feed(reference, body, step=1)
    decoder = OPENAI_DIALECT.stream_decoder(OPENAI, hello_request(stream=True))
    if per_event:
        reads = events
    else:
        bounds = sorted({0, len(body), *(c % len(body) for c in cuts)})
        reads = [body[a:b] for a, b in itertools.pairwise(bounds)]
    got = [c for read in reads for c in decoder.feed(read)] + decoder.close()
    assert got == expected
    assert decoder.usage == reference.usage
