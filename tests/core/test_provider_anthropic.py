"""The Anthropic Messages dialect: upstream encode/decode, streams, errors, caller side.

Wire fixtures are written by hand from the documented shapes; the caller side is
judged by the real ``anthropic`` SDK reading our bytes through a mock transport.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_middleware.providers.anthropic import (
    ANTHROPIC_CALLER,
    ANTHROPIC_DIALECT,
    AnthropicStreamDecoder,
)
from routing_middleware.providers.anthropic_request import (
    JSON_OBJECT_INSTRUCTION,
    LEADING_USER_TEXT,
    build_body,
)
from routing_middleware.providers.anthropic_wire import tool_use_id
from routing_middleware.providers.base import ProviderConfig
from routing_middleware.providers.sse import SSEDecoder
from routing_middleware.schema import (
    AuthenticationFailed,
    BudgetExceeded,
    ChatRequest,
    ChatResponse,
    Choice,
    ContextWindowExceeded,
    FinishReason,
    ImagePart,
    InsufficientQuota,
    InvalidRequest,
    LLMError,
    Message,
    NoRouteAvailable,
    Overloaded,
    RateLimited,
    ResponseFormat,
    StreamChunk,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    UnknownModel,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
    Usage,
)
from routing_middleware.testing import Failure, FakeModel, FakeProvider, FakeToolCall
from routing_middleware.tokens import estimate_request_tokens, estimate_text_tokens
from tests.core.sdk_helpers import Handler
from tests.core.sdk_helpers import sdk as make_sdk

SECRET = "sk-ant-test_SECRET_0123456789"


def provider(**options: Any) -> ProviderConfig:
    return ProviderConfig(
        name="anthropic",
        dialect="anthropic",
        base_url="https://api.anthropic.com",
        api_key=SECRET,
        auth_header="x-api-key",
        auth_scheme=None,
        options=options,
    )


def request(*messages: Message, **fields: Any) -> ChatRequest:
    return ChatRequest(model="claude-x", messages=list(messages), **fields)


def user(content: Any = "hi") -> Message:
    return Message(role="user", content=content)


# ------------------------------------------------------------------ upstream: requests


def test_request_url_headers_and_required_max_tokens() -> None:
    encoded = ANTHROPIC_DIALECT.encode_request(request(user()), provider(), "claude-sonnet")
    assert encoded.method == "POST"
    assert encoded.url == "https://api.anthropic.com/v1/messages"
    assert encoded.headers["x-api-key"] == SECRET
    assert "authorization" not in {k.lower() for k in encoded.headers}
    assert encoded.headers["anthropic-version"] == "2026-10-21"
    assert encoded.headers["content-type"] == "application/json"
    assert encoded.json == {
        "model": "claude-sonnet",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert SECRET not in repr(encoded)


def test_max_tokens_from_request_or_option_and_base_url_with_v1() -> None:
    config = ProviderConfig(
        name="proxy",
        dialect="anthropic",
        base_url="https://proxy.example/v1/",
        options={"default_max_tokens": 777},
        headers={"anthropic-beta": "fast-mode"},
    )
    encoded = ANTHROPIC_DIALECT.encode_request(request(user()), config, "m")
    assert encoded.url == "https://proxy.example/v1/messages"
    assert encoded.json["max_tokens"] == 777
    assert encoded.headers["anthropic-beta"] == "fast-mode"
    assert "x-api-key" not in encoded.headers  # no key configured, none sent
    zero = ANTHROPIC_DIALECT.encode_request(request(user(), max_tokens=0), config, "m")
    assert zero.json["max_tokens"] == 0  # 0 is a valid value (cache pre-warming), not "unset"


def test_system_and_developer_messages_become_top_level_system() -> None:
    body = build_body(
        request(
            Message(role="system", content="Be terse."),
            user("a"),
            Message(role="developer", content=[TextPart(text="Use SI units.")]),
        ),
        "m",
        {},
    )
    assert body["system"] == [
        {"type": "text", "text": "Be terse."},
        {"type": "text", "text": "Use SI units."},
    ]
    assert body["messages"] == [{"role": "user", "content": "a"}]
    single = build_body(request(Message(role="system", content="Only."), user()), "m", {})
    assert single["system"] == "Only."


def test_roles_merged_to_alternate_and_leading_assistant_gets_a_user_turn() -> None:
    body = build_body(
        request(
            Message(role="assistant", content="Earlier answer."),
            user("one"),
            user([TextPart(text="two"), ImagePart(url="https://img.example/a.png")]),
            Message(role="assistant", content="ok"),
            Message(role="assistant", content=""),  # empty turns are not sent
        ),
        "m",
        {},
    )
    assert body["messages"] == [
        {"role": "user", "content": LEADING_USER_TEXT},
        {"role": "assistant", "content": "Earlier answer."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "one"},
                {"type": "text", "text": "two"},
                {"type": "image", "source": {"type": "url", "url": "https://img.example/a.png"}},
            ],
        },
        {"role": "assistant", "content": "ok"},
    ]


def test_tool_calls_and_consecutive_tool_results_in_one_user_turn() -> None:
    body = build_body(
        request(
            user("weather in Paris and Rome?"),
            Message(
                role="assistant",
                content="Checking.",
                tool_calls=[
                    ToolCall(id="call_1", name="weather", arguments='{"city": "Paris"}'),
                    ToolCall(id="call 2!", name="weather", arguments=""),
                ],
            ),
            Message(role="tool", tool_call_id="call_1", content="18C"),
            Message(role="tool", tool_call_id="call 2!", content=[TextPart(text="21C")]),
            user("thanks"),
        ),
        "m",
        {},
    )
    reissued = tool_use_id("call 2!")
    assert reissued.startswith("toolu_")
    assert reissued == tool_use_id("call 2!")  # deterministic: call and result stay paired
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": reissued, "name": "weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": reissued,
                    "content": [{"type": "text", "text": "21C"}],
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_malformed_tool_arguments_name_the_message(arguments: str) -> None:
    call = ToolCall(id="c1", name="f", arguments=arguments)
    bad = request(user(), Message(role="assistant", tool_calls=[call]))
    with pytest.raises(InvalidRequest) as caught:
        build_body(bad, "m", {})
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"
    assert "messages[1]" in caught.value.message


def test_only_system_messages_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequest) as caught:
        build_body(request(Message(role="system", content="x")), "m", {})
    assert caught.value.param == "messages"


def test_images_url_base64_and_data_url() -> None:
    body = build_body(
        request(
            user(
                [
                    ImagePart(url="https://img.example/cat.jpg", detail="high"),
                    ImagePart(data="iVBORw0KGgo=", media_type="image/png"),
                    ImagePart(url="data:image/webp;base64,UklGRg=="),
                ]
            )
        ),
        "m",
        {},
    )
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": "https://img.example/cat.jpg"}},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/webp", "data": "UklGRg=="},
        },
    ]


WEATHER = Tool(
    name="weather",
    description="Weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    strict=True,
)


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        (ToolChoice(mode="auto"), None, {"type": "auto"}),
        (ToolChoice(mode="required"), None, {"type": "any"}),
        (ToolChoice(mode="none"), None, {"type": "none"}),
        (
            ToolChoice(mode="tool", name="weather"),
            False,
            {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_tools_and_tool_choice(
    choice: ToolChoice | None, parallel: bool | None, expected: dict[str, Any] | None
) -> None:
    bare = Tool(name="noop", parameters={})
    body = build_body(
        request(user(), tools=[WEATHER, bare], tool_choice=choice, parallel_tool_calls=parallel),
        "m",
        {},
    )
    assert body["tools"] == [
        {
            "name": "weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
        },
        {"name": "noop", "input_schema": {"type": "object"}},
    ]
    assert body.get("tool_choice") == expected


def test_tool_choice_without_tools_is_not_sent() -> None:
    body = build_body(request(user(), tool_choice=ToolChoice(mode="required")), "m", {})
    assert "tools" not in body
    assert "tool_choice" not in body


def test_stop_stream_user_and_dropped_fields() -> None:
    body = build_body(
        request(user(), stop=["END"], stream=True, user="u-42", seed=7, metadata={"k": "v"}),
        "m",
        {},
    )
    assert body["stop_sequences"] == ["END"]
    assert body["stream"] is True
    assert body["metadata"] == {"user_id": "u-42"}
    assert "seed" not in body
    encoded = ANTHROPIC_DIALECT.encode_request(request(user(), stream=True), provider(), "m")
    assert encoded.headers["accept"] == "text/event-stream"


@pytest.mark.parametrize(
    ("options", "fields", "version", "kept"),
    [
        ({}, {}, "2026-10-21", {}),
        ({}, {"temperature": 0.2}, "2023-06-01", {"temperature": 0.2}),
        ({"sampling_params": "pin"}, {"top_k": 5}, "2023-06-01", {"top_k": 5}),
        ({"sampling_params": "drop"}, {"temperature": 0.2, "top_p": 0.9}, "2026-10-21", {}),
        ({"anthropic_version": "2023-06-01"}, {}, "2023-06-01", {}),
        (
            {"anthropic_version": "2023-06-01", "sampling_params": "drop"},
            {"top_p": 0.5},
            "2023-06-01",
            {"top_p": 0.5},
        ),
    ],
)
def test_version_and_sampling_parameters(
    options: dict[str, Any], fields: dict[str, Any], version: str, kept: dict[str, Any]
) -> None:
    encoded = ANTHROPIC_DIALECT.encode_request(request(user(), **fields), provider(**options), "m")
    assert encoded.headers["anthropic-version"] == version
    sent = {k: encoded.json[k] for k in ("temperature", "top_p", "top_k") if k in encoded.json}
    assert sent == kept


@pytest.mark.parametrize(
    ("option", "max_tokens", "thinking", "output_config"),
    [
        (None, 4096, None, None),
        ("thinking", 20000, {"type": "enabled", "budget_tokens": 16384}, None),
        # budget capped below max_tokens: 4096 - 1 = 4095
        ("thinking", 4096, {"type": "enabled", "budget_tokens": 4095}, None),
        ("thinking", 1000, None, None),  # under the API's 1,024 floor: left off
        ("effort", 4096, None, {"effort": "high"}),
        ("adaptive", 4096, {"type": "adaptive"}, {"effort": "high"}),
    ],
)
def test_reasoning_effort_only_when_an_option_enables_it(
    option: str | None, max_tokens: int, thinking: Any, output_config: Any
) -> None:
    options = {"reasoning": option} if option else {}
    body = build_body(request(user(), reasoning_effort="high", max_tokens=max_tokens), "m", options)
    assert body.get("thinking") == thinking
    assert body.get("output_config") == output_config


def test_thinking_we_turn_on_drops_sampling_but_the_callers_own_is_kept() -> None:
    openai_style = request(user(), reasoning_effort="medium", temperature=0.2, top_k=5)
    body = build_body(openai_style, "m", {"reasoning": "thinking"})
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4095}  # 4096 - 1
    assert "temperature" not in body
    assert "top_k" not in body
    own = {"type": "enabled", "budget_tokens": 1500}
    explicit = request(user(), reasoning_effort="high", temperature=1.0, extra={"thinking": own})
    body = build_body(explicit, "m", {"reasoning": "thinking"})
    assert body["thinking"] == own
    assert body["temperature"] == 1.0


def test_response_format_json_schema_and_json_object() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = ResponseFormat(type="json_schema", name="r", json_schema=schema)
    body = build_body(request(user(), response_format=fmt), "m", {})
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "system" not in body
    loose = build_body(
        request(
            Message(role="system", content="Be terse."),
            user(),
            response_format=ResponseFormat(type="json_object"),
        ),
        "m",
        {},
    )
    assert loose["system"] == [
        {"type": "text", "text": "Be terse."},
        {"type": "text", "text": JSON_OBJECT_INSTRUCTION},
    ]
    assert "output_config" not in loose


def test_anthropic_only_extras_pass_through_and_others_do_not() -> None:
    extra = {
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "cache_control": {"type": "ephemeral"},
        "service_tier": "standard_only",
        "anthropic_server_tools": [{"type": "web_search_20250305", "name": "web_search"}],
        "logprobs": True,  # an OpenAI caller's field: never sent to Anthropic
        "output_config": {"effort": "low"},
    }
    fmt = ResponseFormat(type="json_schema", json_schema={"type": "object"})
    body = build_body(request(user(), extra=extra, response_format=fmt), "m", {})
    assert body["thinking"] == extra["thinking"]
    assert body["cache_control"] == {"type": "ephemeral"}
    assert body["service_tier"] == "standard_only"
    assert body["tools"] == [{"type": "web_search_20250305", "name": "web_search"}]
    assert "logprobs" not in body
    assert body["output_config"] == {
        "effort": "low",
        "format": {"type": "json_schema", "schema": {"type": "object"}},
    }
    openai_tier = build_body(request(user(), extra={"service_tier": "flex"}), "m", {})
    assert "service_tier" not in openai_tier


# ----------------------------------------------------------------- upstream: responses

MESSAGE = {
    "id": "msg_01XYZ",
    "type": "message",
    "role": "assistant",
    "model": "claude-test-model",
    "content": [
        {"type": "thinking", "thinking": "User wants weather.", "signature": "sig"},
        {"type": "text", "text": "Let me "},
        {"type": "text", "text": "check."},
        {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Zürich"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 120,
        "cache_read_input_tokens": 3000,
        "cache_creation_input_tokens": 500,
        "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 200},
        "output_tokens": 90,
        "output_tokens_details": {"thinking_tokens": 40},
        "service_tier": "standard",
    },
}


def test_decode_response_blocks_and_usage_in_our_convention() -> None:
    response = ANTHROPIC_DIALECT.decode_response(json.dumps(MESSAGE).encode(), provider())
    assert response.id == "msg_01XYZ"
    assert response.model == "claude-test-model"
    assert response.provider == "anthropic"
    choice = response.choices[0]
    assert choice.message.content == "Let me check."
    assert choice.message.reasoning == "User wants weather."
    assert choice.message.tool_calls == [
        ToolCall(id="toolu_01", name="weather", arguments='{"city":"Zürich"}')
    ]
    assert choice.finish_reason == FinishReason.TOOL_CALLS
    assert choice.native_finish_reason == "tool_use"
    # input = 120 uncached + 3000 cache reads + 500 cache writes = 3620
    assert response.usage == Usage(
        input_tokens=3620,
        output_tokens=90,
        cached_input_tokens=3000,
        cache_write_tokens=500,
        cache_write_long_tokens=200,
        reasoning_tokens=40,
    )


def test_decode_response_tool_only_and_minimal_usage() -> None:
    body = {
        "id": "msg_2",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }
    response = ANTHROPIC_DIALECT.decode_response(json.dumps(body).encode(), provider())
    assert response.choices[0].message.content is None
    assert response.choices[0].message.tool_calls == [ToolCall(id="t", name="f", arguments="{}")]
    assert response.usage == Usage(input_tokens=7, output_tokens=3)


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("model_context_window_exceeded", FinishReason.LENGTH),
        ("pause_turn", FinishReason.LENGTH),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("some_future_reason", FinishReason.STOP),
    ],
)
def test_stop_reason_mapping_keeps_the_native_word(stop_reason: str, finish: FinishReason) -> None:
    body = {**MESSAGE, "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}
    choice = ANTHROPIC_DIALECT.decode_response(json.dumps(body).encode(), provider()).choices[0]
    assert choice.finish_reason == finish
    assert choice.native_finish_reason == stop_reason


@pytest.mark.parametrize("body", [b"<html>502</html>", b'{"type": "error"}', b"[]"])
def test_decode_response_garbage_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        ANTHROPIC_DIALECT.decode_response(body, provider())


# ------------------------------------------------------------------- upstream: streams


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def stream_wire(*, stop: bool = True, final_usage: dict[str, Any] | None = None) -> bytes:
    """A documented-shape stream: thinking, text (with non-ASCII), one tool call."""
    usage = final_usage or {
        "output_tokens": 57,
        "input_tokens": 25,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 0,
        "output_tokens_details": {"thinking_tokens": 12},
    }
    events = [
        sse_event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_S1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-test-model",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 25,
                        "cache_read_input_tokens": 1000,
                        "cache_creation_input_tokens": 0,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        b'event: ping\ndata: {"type": "ping"}\n\n',
        sse_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
        ),
        sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Hmm, "},
            },
        ),
        sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"},
            },
        ),
        sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "Grüße aus 東京 "},
            },
        ),
        sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "🌧"},
            },
        ),
        sse_event("content_block_stop", {"type": "content_block_stop", "index": 1}),
        sse_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_9",
                    "name": "weather",
                    "input": {},
                },
            },
        ),
        sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
        ),
        sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": "T'},
            },
        ),
        sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": 'okyo"}'},
            },
        ),
        sse_event("content_block_stop", {"type": "content_block_stop", "index": 2}),
        sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": usage,
            },
        ),
    ]
    if stop:
        events.append(sse_event("message_stop", {"type": "message_stop"}))
    return b"".join(events)


def decode_stream(pieces: list[bytes], request_: ChatRequest | None = None) -> list[StreamChunk]:
    decoder = ANTHROPIC_DIALECT.stream_decoder(provider(), request_ or request(user()))
    chunks: list[StreamChunk] = []
    for piece in pieces:
        chunks.extend(decoder.feed(piece))
    chunks.extend(decoder.close())
    return chunks


def summarize(chunks: list[StreamChunk]) -> dict[str, Any]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.tool_calls or ():
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += delta.name or ""
            call["arguments"] += delta.arguments
    finishes = [(c.finish_reason, c.native_finish_reason) for c in chunks if c.finish_reason]
    return {
        "text": "".join(c.text or "" for c in chunks),
        "reasoning": "".join(c.reasoning or "" for c in chunks),
        "calls": calls,
        "finishes": finishes,
        "usages": [c.usage for c in chunks if c.usage is not None],
    }


EXPECTED_STREAM_USAGE = Usage(
    input_tokens=1025,  # 25 uncached + 1000 cache reads
    output_tokens=57,  # cumulative: the last value, not 1 + 57
    cached_input_tokens=1000,
    reasoning_tokens=12,
)


def test_stream_decodes_text_reasoning_tool_call_finish_and_usage() -> None:
    chunks = decode_stream([stream_wire()])
    assert chunks[0].role == "assistant"
    assert chunks[0].id == "msg_S1"
    assert chunks[0].model == "claude-test-model"
    assert summarize(chunks) == {
        "text": "Grüße aus 東京 🌧",
        "reasoning": "Hmm, ",
        "calls": {0: {"id": "toolu_9", "name": "weather", "arguments": '{"city": "Tokyo"}'}},
        "finishes": [(FinishReason.TOOL_CALLS, "tool_use")],
        "usages": [EXPECTED_STREAM_USAGE],
    }


def test_stream_split_into_single_bytes_gives_the_same_chunks() -> None:
    wire = stream_wire()
    whole = decode_stream([wire])
    bytewise = decode_stream([wire[i : i + 1] for i in range(len(wire))])
    assert bytewise == whole


@given(cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12))
def test_stream_any_split_gives_the_same_result(cuts: list[int]) -> None:
    wire = stream_wire()
    points = sorted({min(c, len(wire)) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    assert summarize(decode_stream(pieces)) == summarize(decode_stream([wire]))


def test_tool_calls_numbered_by_order_not_block_index() -> None:
    def start(index: int, block: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_start", "index": index, "content_block": block}
        return sse_event("content_block_start", payload)

    def args(index: int, fragment: str) -> bytes:
        delta = {"type": "input_json_delta", "partial_json": fragment}
        payload = {"type": "content_block_delta", "index": index, "delta": delta}
        return sse_event("content_block_delta", payload)

    wire = (
        sse_event("message_start", {"type": "message_start", "message": {"id": "m", "usage": {}}})
        + start(0, {"type": "text", "text": "Both: "})
        + start(1, {"type": "tool_use", "id": "a", "name": "f", "input": {}})
        + args(1, '{"x":1}')
        + start(2, {"type": "tool_use", "id": "b", "name": "g", "input": {}})
        + args(2, '{"y":2}')
        + sse_event(
            "message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}}
        )
        + sse_event("message_stop", {"type": "message_stop"})
    )
    summary = summarize(decode_stream([wire]))
    assert summary["text"] == "Both: "
    assert summary["calls"] == {
        0: {"id": "a", "name": "f", "arguments": '{"x":1}'},
        1: {"id": "b", "name": "g", "arguments": '{"y":2}'},
    }


def test_stream_error_event_raises_the_mapped_error() -> None:
    decoder = AnthropicStreamDecoder(request(user()))
    head = stream_wire().split(b"event: content_block_start")[0]
    assert decoder.feed(head)
    error = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
    error += b'"message": "Overloaded"}}\n\n'
    with pytest.raises(Overloaded) as caught:
        decoder.feed(error)
    assert caught.value.status_code == 529
    assert caught.value.retryable


def test_stream_without_message_stop_raises_and_usage_is_estimated() -> None:
    wire = stream_wire(stop=False)
    cut = wire.index(b"event: message_delta")
    decoder = ANTHROPIC_DIALECT.stream_decoder(provider(), request(user()))
    decoder.feed(wire[:cut])
    with pytest.raises(UpstreamProtocolError):
        decoder.close()
    usage = decoder.usage
    assert usage is not None
    assert usage.estimated
    assert usage.input_tokens == 1025  # reported by message_start
    # message_start said output 1; the text seen is worth more and wins
    generated = "Hmm, " + "Grüße aus 東京 " + "🌧" + "weather" + '{"city": "Tokyo"}'
    assert usage.output_tokens == estimate_text_tokens(generated) > 1


def test_message_stop_without_a_stop_reason_is_a_cut_not_a_clean_end() -> None:
    wire = stream_wire(stop=False)
    cut = wire.index(b"event: message_delta")
    decoder = ANTHROPIC_DIALECT.stream_decoder(provider(), request(user()))
    chunks = decoder.feed(wire[:cut] + sse_event("message_stop", {"type": "message_stop"}))
    assert not [c for c in chunks if c.finish_reason]
    with pytest.raises(UpstreamProtocolError, match="stop_reason"):
        decoder.close()
    usage = decoder.usage
    assert usage is not None
    assert usage.estimated
    assert usage.output_tokens > 1  # not message_start's placeholder count


def test_stream_with_no_usage_at_all_is_estimated_never_zero() -> None:
    req = request(user("What is the capital of France?"))
    wire = (
        sse_event("message_start", {"type": "message_start", "message": {"id": "m"}})
        + sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Paris."},
            },
        )
        + sse_event(
            "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
        )
        + sse_event("message_stop", {"type": "message_stop"})
    )
    usage = summarize(decode_stream([wire], req))["usages"][-1]
    assert usage == Usage(
        input_tokens=estimate_request_tokens(req),
        output_tokens=estimate_text_tokens("Paris."),  # (6 + 3) // 4 = 2
        estimated=True,
    )
    assert usage.output_tokens == 2


def test_final_usage_stripped_from_message_delta_is_not_taken_as_one_token() -> None:
    wire = stream_wire()
    start = wire.index(b"event: message_delta")
    end = wire.index(b"event: message_stop")
    delta = {"type": "message_delta", "delta": {"stop_reason": "tool_use"}}  # no usage
    stripped = wire[:start] + sse_event("message_delta", delta) + wire[end:]
    (usage,) = summarize(decode_stream([stripped]))["usages"]
    generated = "Hmm, " + "Grüße aus 東京 " + "🌧" + "weather" + '{"city": "Tokyo"}'
    # input 25 + 1000 cache reads from message_start; output estimated, not its placeholder 1
    assert usage == Usage(
        input_tokens=1025,
        cached_input_tokens=1000,
        output_tokens=estimate_text_tokens(generated),
        estimated=True,
    )
    assert usage.output_tokens > 1


def test_cumulative_usage_takes_the_last_value_of_each_field() -> None:
    start = {
        "type": "message_start",
        "message": {
            "id": "m",
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 50,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 20,
                    "ephemeral_1h_input_tokens": 30,
                },
                "output_tokens": 1,
            },
        },
    }
    first = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 40}}
    second = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 45, "input_tokens": 12},
    }
    wire = (
        sse_event("message_start", start)
        + sse_event("message_delta", first)
        + sse_event("message_delta", second)
        + sse_event("message_stop", {"type": "message_stop"})
    )
    # input 12 (last) + 50 cache writes = 62; output 45 (last), not 1 + 40 + 45
    assert summarize(decode_stream([wire]))["usages"] == [
        Usage(input_tokens=62, output_tokens=45, cache_write_tokens=50, cache_write_long_tokens=30)
    ]


def test_stream_garbage_event_is_a_protocol_error() -> None:
    decoder = AnthropicStreamDecoder()
    with pytest.raises(UpstreamProtocolError):
        decoder.feed(b"event: content_block_delta\ndata: {oops\n\n")
    assert AnthropicStreamDecoder().usage is None


# -------------------------------------------------------------------- upstream: errors


def error_body(kind: str, message: str, **extra: Any) -> bytes:
    return json.dumps(
        {"type": "error", "error": {"type": kind, "message": message, **extra}}
    ).encode()


@pytest.mark.parametrize(
    ("status", "kind", "message", "expected", "expected_status"),
    [
        (400, "invalid_request_error", "messages: roles must alternate", InvalidRequest, 400),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            ContextWindowExceeded,
            400,
        ),
        (
            400,
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000, "
            "decrease input length or `max_tokens` and try again",
            ContextWindowExceeded,
            400,
        ),
        (
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API.",
            InsufficientQuota,
            400,
        ),
        (401, "authentication_error", "invalid x-api-key", AuthenticationFailed, 401),
        (403, "permission_error", "no access", AuthenticationFailed, 403),
        (402, "billing_error", "credit balance too low", InsufficientQuota, 402),
        (404, "not_found_error", "not found", InvalidRequest, 404),
        (413, "request_too_large", "Request exceeds the maximum size", InvalidRequest, 413),
        (429, "rate_limit_error", "slow down", RateLimited, 429),
        (500, "api_error", "Internal server error", UpstreamUnavailable, 500),
        (504, "timeout_error", "timeout", UpstreamTimeout, 504),
        (529, "overloaded_error", "Overloaded", Overloaded, 529),
        (409, "conflict_error", "conflict", UpstreamUnavailable, 409),
    ],
)
def test_error_types_map_to_the_family(
    status: int, kind: str, message: str, expected: type[LLMError], expected_status: int
) -> None:
    error = ANTHROPIC_DIALECT.decode_error(status, {}, error_body(kind, message), provider())
    assert type(error) is expected
    assert error.status_code == expected_status
    assert error.message == message
    assert error.provider == "anthropic"


def test_rate_limit_carries_retry_after_and_is_retryable() -> None:
    error = ANTHROPIC_DIALECT.decode_error(
        429, {"retry-after": "17"}, error_body("rate_limit_error", "slow"), provider()
    )
    assert isinstance(error, RateLimited)
    assert error.retry_after == 17.0
    assert error.retryable


def test_spend_limit_429_is_quota_not_retryable() -> None:
    body = error_body(
        "rate_limit_error",
        "monthly spend limit reached",
        details={"error_code": "enforced_spend_limit_reached"},
    )
    error = ANTHROPIC_DIALECT.decode_error(429, {"retry-after": "60"}, body, provider())
    assert type(error) is InsufficientQuota
    assert not error.retryable
    assert error.code == "enforced_spend_limit_reached"


def test_unknown_model_404() -> None:
    body = error_body("not_found_error", "model: claude-nope")
    error = ANTHROPIC_DIALECT.decode_error(404, {}, body, provider())
    assert isinstance(error, UnknownModel)
    assert error.model == "claude-nope"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (529, Overloaded),
        (500, UpstreamUnavailable),
        (429, RateLimited),
        (401, AuthenticationFailed),
        (400, InvalidRequest),
    ],
)
@pytest.mark.parametrize("body", [b"", b"<html>bad gateway</html>", b"\xff\xfe", b"[1]"])
def test_garbage_error_bodies_map_by_status(
    status: int, expected: type[LLMError], body: bytes
) -> None:
    error = ANTHROPIC_DIALECT.decode_error(status, {"retry-after": "2"}, body, provider())
    assert type(error) is expected
    assert error.status_code == status


def test_errors_never_carry_the_key() -> None:
    error = ANTHROPIC_DIALECT.decode_error(
        401, {}, error_body("authentication_error", "invalid x-api-key"), provider()
    )
    assert SECRET not in repr(error)
    assert SECRET not in str(error)
    assert SECRET not in json.dumps(error.raw)


# ------------------------------------------------------------------ caller: requests

CALLER_BODY: dict[str, Any] = {
    "model": "claude-test-model",
    "max_tokens": 1024,
    "system": [{"type": "text", "text": "You are terse."}],
    "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Call the tool.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                },
                {"type": "text", "text": "And this picture?"},
            ],
        },
    ],
    "tools": [
        {
            "name": "weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
    ],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "stop_sequences": ["###"],
    "temperature": 0.3,
    "top_k": 40,
    "metadata": {"user_id": "user-7"},
    "stream": True,
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
}


def test_parse_request_maps_every_field() -> None:
    parsed = ANTHROPIC_CALLER.parse_request(json.dumps(CALLER_BODY).encode(), "/v1/messages")
    assert parsed.model == "claude-test-model"
    assert parsed.max_tokens == 1024
    assert parsed.messages == [
        Message(role="system", content=[TextPart(text="You are terse.")]),
        Message(role="user", content="Weather in Oslo?"),
        Message(
            role="assistant",
            content=[TextPart(text="Checking.")],
            tool_calls=[ToolCall(id="toolu_1", name="weather", arguments='{"city":"Oslo"}')],
            reasoning="Call the tool.",
        ),
        Message(role="tool", tool_call_id="toolu_1", content="-3C"),
        Message(
            role="user",
            content=[
                ImagePart(data="AAAA", media_type="image/png"),
                TextPart(text="And this picture?"),
            ],
        ),
    ]
    assert parsed.tools == [
        Tool(
            name="weather",
            description="Current weather",
            parameters={"type": "object", "properties": {"city": {"type": "string"}}},
        )
    ]
    assert parsed.tool_choice == ToolChoice(mode="required")
    assert parsed.parallel_tool_calls is False
    assert parsed.stop == ["###"]
    assert parsed.temperature == 0.3
    assert parsed.top_k == 40
    assert parsed.user == "user-7"
    assert parsed.stream is True
    assert parsed.response_format == ResponseFormat(
        type="json_schema", json_schema={"type": "object"}
    )
    assert parsed.extra == {
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "anthropic_server_tools": [
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
        ],
    }


def test_parsed_request_reaches_anthropic_upstream_with_its_extras() -> None:
    parsed = ANTHROPIC_CALLER.parse_request(json.dumps(CALLER_BODY).encode())
    encoded = ANTHROPIC_DIALECT.encode_request(parsed, provider(), "claude-test-model")
    body = encoded.json
    assert encoded.headers["anthropic-version"] == "2023-06-01"  # temperature pinned it
    # the last assistant turn used a tool and its signed thinking block cannot be
    # carried, so thinking is left off for this call (see the dialect notes)
    assert "thinking" not in body
    assert body["tools"] == CALLER_BODY["tools"]
    assert body["output_config"] == CALLER_BODY["output_config"]
    assert body["messages"][2]["content"] == CALLER_BODY["messages"][2]["content"]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"model": None}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}
                ]
            },
            "messages[0].content[0].source",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": []}],
                    }
                ]
            },
            "messages[0].content[0].input",
        ),
        ({"system": 3}, "system"),
        ({"system": [{"type": "image"}]}, "system[0]"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"stop_sequences": "###"}, "stop_sequences"),
        ({"stream": "yes"}, "stream"),
        ({"metadata": "u"}, "metadata"),
        ({"temperature": 7}, "temperature"),
    ],
)
def test_parse_request_bad_fields_are_named(change: dict[str, Any], param: str) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(InvalidRequest) as caught:
        ANTHROPIC_CALLER.parse_request(json.dumps(body).encode())
    assert caught.value.param == param
    assert caught.value.status_code == 400


@pytest.mark.parametrize("raw", [b"{nope", b"[1, 2]", b"\xff"])
def test_parse_request_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ANTHROPIC_CALLER.parse_request(raw)
    assert caught.value.param == "body"


def test_missing_max_tokens_message_is_clear() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(InvalidRequest, match="max_tokens"):
        ANTHROPIC_CALLER.parse_request(json.dumps(body).encode())


# ----------------------------------------------------------------- caller: responses

OURS = Usage(
    input_tokens=3620,
    output_tokens=90,
    cached_input_tokens=3000,
    cache_write_tokens=500,
    cache_write_long_tokens=200,
    reasoning_tokens=40,
)


def chat_response(
    *,
    text: str | None = "Hello!",
    calls: list[ToolCall] | None = None,
    finish: FinishReason = FinishReason.STOP,
    native: str | None = None,
    usage: Usage | None = OURS,
    response_id: str = "chatcmpl-abc123",
) -> ChatResponse:
    message = Message(role="assistant", content=text, tool_calls=calls, reasoning="secret")
    choice = Choice(message=message, finish_reason=finish, native_finish_reason=native)
    return ChatResponse(id=response_id, model="gpt-x", choices=[choice], usage=usage)


def test_encode_response_shape_ids_and_usage_in_anthropic_convention() -> None:
    calls = [
        ToolCall(id="call_ok-1", name="f", arguments='{"a": [1, 2]}'),
        ToolCall(id="fc/1:bad id", name="g", arguments=""),
        ToolCall(id="x", name="h", arguments="{broken"),
    ]
    body = ANTHROPIC_CALLER.encode_response(
        chat_response(calls=calls, finish=FinishReason.TOOL_CALLS, native="tool_calls"), "claude-x"
    )
    assert body["id"].startswith("msg_")
    assert body["id"] == ANTHROPIC_CALLER.encode_response(chat_response(), "m")["id"]
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == "claude-x"
    assert body["content"] == [
        {"type": "text", "text": "Hello!"},
        {"type": "tool_use", "id": "call_ok-1", "name": "f", "input": {"a": [1, 2]}},
        {"type": "tool_use", "id": tool_use_id("fc/1:bad id"), "name": "g", "input": {}},
        {"type": "tool_use", "id": "x", "name": "h", "input": {"_raw_arguments": "{broken"}},
    ]
    assert body["stop_reason"] == "tool_use"
    assert body["usage"] == {
        "input_tokens": 120,  # 3620 - 3000 cached - 500 written
        "output_tokens": 90,
        "cache_read_input_tokens": 3000,
        "cache_creation_input_tokens": 500,
        "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 200},
        "output_tokens_details": {"thinking_tokens": 40},
    }
    assert "secret" not in json.dumps(body)  # reasoning is not echoed


@pytest.mark.parametrize(
    ("finish", "native", "calls", "expected"),
    [
        (FinishReason.STOP, None, False, "end_turn"),
        (FinishReason.STOP, "stop_sequence", False, "stop_sequence"),
        (FinishReason.STOP, "STOP", True, "tool_use"),  # Gemini says STOP for function calls
        (FinishReason.LENGTH, "length", False, "max_tokens"),
        (FinishReason.LENGTH, "pause_turn", False, "pause_turn"),
        (FinishReason.CONTENT_FILTER, "SAFETY", False, "refusal"),
        (FinishReason.TOOL_CALLS, None, True, "tool_use"),
        (FinishReason.STOP, "tool_use", False, "end_turn"),  # native disagrees: ours wins
    ],
)
def test_encode_response_stop_reason(
    finish: FinishReason, native: str | None, calls: bool, expected: str
) -> None:
    tool_calls = [ToolCall(id="t", name="f")] if calls else None
    response = chat_response(calls=tool_calls, finish=finish, native=native)
    assert ANTHROPIC_CALLER.encode_response(response, "m")["stop_reason"] == expected


def test_encode_response_round_trips_through_the_upstream_decoder() -> None:
    calls = [ToolCall(id="toolu_1", name="f", arguments='{"a":1}')]
    original = chat_response(calls=calls, finish=FinishReason.TOOL_CALLS)
    body = json.dumps(ANTHROPIC_CALLER.encode_response(original, "m")).encode()
    decoded = ANTHROPIC_DIALECT.decode_response(body, provider())
    assert decoded.usage == OURS
    assert decoded.choices[0].message.tool_calls == calls
    assert decoded.choices[0].message.content == "Hello!"


# --------------------------------------------------- caller: the real SDK as the judge


def gateway(
    response: ChatResponse | None = None,
    chunks: list[StreamChunk] | None = None,
    error: LLMError | None = None,
    mid_stream_error: LLMError | None = None,
    seen: list[ChatRequest] | None = None,
) -> Handler:
    """A minimal server: parses the SDK's request with our caller dialect, answers with it."""

    def handle(http_request: httpx2.Request) -> httpx2.Response:
        assert http_request.url.path == "/v1/messages"
        parsed = ANTHROPIC_CALLER.parse_request(http_request.content, http_request.url.path)
        if seen is not None:
            seen.append(parsed)
        if error is not None:
            status, headers, body = ANTHROPIC_CALLER.encode_error(error)
            return httpx2.Response(status, headers=headers, content=body)
        if not parsed.stream:
            assert response is not None
            body = json.dumps(ANTHROPIC_CALLER.encode_response(response, parsed.model))
            return httpx2.Response(
                200, headers={"content-type": "application/json"}, content=body.encode()
            )
        encoder = ANTHROPIC_CALLER.stream_encoder(parsed.model, "chatcmpl-s1")
        parts = [encoder.start()]
        parts += [encoder.chunk(c) for c in chunks or ()]
        if mid_stream_error is not None:
            parts.append(encoder.error(mid_stream_error))
        else:
            parts.append(encoder.finish(None))
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(parts)
        )

    return handle


def sdk(handler: Handler, max_retries: int = 0) -> anthropic.Anthropic:
    return make_sdk(
        anthropic.Anthropic,
        handler,
        api_key="test-key",
        base_url="http://gateway.test",
        max_retries=max_retries,
    )


def async_sdk(handler: Handler) -> anthropic.AsyncAnthropic:
    return make_sdk(
        anthropic.AsyncAnthropic, handler, api_key="test-key", base_url="http://gateway.test"
    )


TOOLS: Any = [
    {
        "name": "weather",
        "description": "Current weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
ASK: Any = [{"role": "user", "content": "Weather in Oslo?"}]

STREAM = [
    StreamChunk(role="assistant"),
    StreamChunk(reasoning="thinking is not echoed"),
    StreamChunk(text="Let me "),
    StreamChunk(text="check ☁."),
    StreamChunk(tool_calls=[ToolCallDelta(index=0, id="call_a", name="weather", arguments="")]),
    StreamChunk(tool_calls=[ToolCallDelta(index=0, arguments='{"city": ')]),
    StreamChunk(tool_calls=[ToolCallDelta(index=0, arguments='"Oslo"}')]),
    StreamChunk(tool_calls=[ToolCallDelta(index=1, name="weather", arguments='{"city":"Rome"}')]),
    StreamChunk(finish_reason=FinishReason.TOOL_CALLS, native_finish_reason="tool_calls"),
    StreamChunk(usage=OURS),
]
ROME_ID = tool_use_id(
    None,
    f"{ANTHROPIC_CALLER.encode_response(chat_response(response_id='chatcmpl-s1'), 'm')['id']}/1",
)


def check_message(message: Any, *, streamed: bool) -> None:
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == "claude-test-model"
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == ("Let me check ☁." if streamed else "Hello!")
    assert message.content[1].input == {"city": "Oslo"}
    assert message.content[1].name == "weather"
    assert message.content[2].input == {"city": "Rome"}
    assert message.stop_reason == "tool_use"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (120, 90)
    assert usage.cache_read_input_tokens == 3000
    assert usage.cache_creation_input_tokens == 500
    assert usage.output_tokens_details.thinking_tokens == 40


NON_STREAM_RESPONSE = chat_response(
    calls=[
        ToolCall(id="call_a", name="weather", arguments='{"city": "Oslo"}'),
        ToolCall(id="call_b", name="weather", arguments='{"city":"Rome"}'),
    ],
    finish=FinishReason.TOOL_CALLS,
)


def test_sdk_sync_create() -> None:
    seen: list[ChatRequest] = []
    client = sdk(gateway(NON_STREAM_RESPONSE, seen=seen))
    message = client.messages.create(
        model="claude-test-model", max_tokens=256, messages=ASK, tools=TOOLS, system="Be brief."
    )
    check_message(message, streamed=False)
    assert message.content[1].id == "call_a"
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 200
    # the SDK's own request parsed cleanly
    assert seen[0].max_tokens == 256
    assert seen[0].system_text == "Be brief."
    assert seen[0].tools is not None
    assert seen[0].tools[0].name == "weather"


@pytest.mark.anyio
async def test_sdk_async_create() -> None:
    client = async_sdk(gateway(NON_STREAM_RESPONSE))
    message = await client.messages.create(
        model="claude-test-model", max_tokens=256, messages=ASK, tools=TOOLS
    )
    check_message(message, streamed=False)


def test_sdk_sync_create_stream_events() -> None:
    client = sdk(gateway(chunks=STREAM))
    events = list(
        client.messages.create(
            model="claude-test-model", max_tokens=256, messages=ASK, tools=TOOLS, stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["text", "tool_use", "tool_use"]
    assert kinds.count("content_block_stop") == 3
    delta = events[-2]
    assert delta.delta.stop_reason == "tool_use"
    assert delta.usage.output_tokens == 90
    assert delta.usage.input_tokens == 120
    assert delta.usage.cache_read_input_tokens == 3000
    tool_ids = [
        e.content_block.id
        for e in events
        if e.type == "content_block_start" and e.content_block.type == "tool_use"
    ]
    assert tool_ids == ["call_a", ROME_ID]


def test_sdk_sync_stream_helper() -> None:
    client = sdk(gateway(chunks=STREAM))
    with client.messages.stream(
        model="claude-test-model", max_tokens=256, messages=ASK, tools=TOOLS
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == "Let me check ☁."
    check_message(message, streamed=True)


@pytest.mark.anyio
async def test_sdk_async_stream_helper_and_create_stream() -> None:
    client = async_sdk(gateway(chunks=STREAM))
    async with client.messages.stream(
        model="claude-test-model", max_tokens=256, messages=ASK, tools=TOOLS
    ) as stream:
        message = await stream.get_final_message()
    check_message(message, streamed=True)
    raw = await client.messages.create(
        model="claude-test-model", max_tokens=256, messages=ASK, stream=True
    )
    kinds = [event.type async for event in raw]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"


def test_sdk_stream_with_text_only_and_no_usage() -> None:
    client = sdk(
        gateway(chunks=[StreamChunk(text="Hi"), StreamChunk(finish_reason=FinishReason.STOP)])
    )
    with client.messages.stream(model="claude-x", max_tokens=5, messages=ASK) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hi"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 0


@pytest.mark.parametrize(
    ("error", "sdk_error", "status", "kind"),
    [
        (Overloaded("busy", status_code=503), anthropic.OverloadedError, 529, "overloaded_error"),
        (RateLimited("slow", retry_after=2.5), anthropic.RateLimitError, 429, "rate_limit_error"),
        (InsufficientQuota("no credit"), anthropic.PaymentRequiredError, 402, "billing_error"),
        (BudgetExceeded("team budget spent"), anthropic.PaymentRequiredError, 402, "billing_error"),
        (
            InsufficientQuota("spend limit", code="enforced_spend_limit_reached"),
            anthropic.RateLimitError,
            429,
            "rate_limit_error",
        ),
        (InvalidRequest("bad", param="x"), anthropic.BadRequestError, 400, "invalid_request_error"),
        (
            ContextWindowExceeded("too long"),
            anthropic.BadRequestError,
            400,
            "invalid_request_error",
        ),
        (AuthenticationFailed("who?"), anthropic.AuthenticationError, 401, "authentication_error"),
        (
            AuthenticationFailed("no", status_code=403),
            anthropic.PermissionDeniedError,
            403,
            "permission_error",
        ),
        (UnknownModel("claude-nope"), anthropic.NotFoundError, 404, "not_found_error"),
        (UpstreamTimeout("late"), anthropic.GatewayTimeoutError, 504, "timeout_error"),
        (UpstreamUnavailable("down"), anthropic.ServiceUnavailableError, 503, "api_error"),
        (UpstreamProtocolError("cut"), anthropic.InternalServerError, 502, "api_error"),
    ],
)
def test_sdk_raises_the_right_class_for_our_errors(
    error: LLMError, sdk_error: type[Exception], status: int, kind: str
) -> None:
    client = sdk(gateway(error=error))
    with pytest.raises(sdk_error) as caught:
        client.messages.create(model="claude-x", max_tokens=5, messages=ASK)
    raised: Any = caught.value
    assert raised.status_code == status
    assert raised.type == kind
    assert raised.api_message == error.message


def test_encode_error_headers() -> None:
    status, headers, body = ANTHROPIC_CALLER.encode_error(RateLimited("slow", retry_after=2.5))
    assert status == 429
    assert headers["retry-after"] == "3"  # ceil(2.5)
    assert headers["retry-after-ms"] == "2500"
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow"},
    }
    _, quota_headers, quota_body = ANTHROPIC_CALLER.encode_error(
        InsufficientQuota("limit", code="enforced_spend_limit_reached")
    )
    assert quota_headers["x-should-retry"] == "false"
    assert json.loads(quota_body)["error"]["details"] == {
        "error_code": "enforced_spend_limit_reached"
    }


def test_sdk_does_not_retry_quota_but_does_retry_overload() -> None:
    calls: list[ChatRequest] = []
    quota = InsufficientQuota("limit", code="enforced_spend_limit_reached")
    with pytest.raises(anthropic.RateLimitError) as caught:
        sdk(gateway(error=quota, seen=calls), max_retries=2).messages.create(
            model="m", max_tokens=5, messages=ASK
        )
    assert caught.value.error_code == "enforced_spend_limit_reached"
    assert len(calls) == 1
    calls.clear()
    busy = Overloaded("busy", retry_after=0)
    with pytest.raises(anthropic.OverloadedError):
        sdk(gateway(error=busy, seen=calls), max_retries=2).messages.create(
            model="m", max_tokens=5, messages=ASK
        )
    assert len(calls) == 3  # the first try and two retries
    calls.clear()
    with pytest.raises(anthropic.ServiceUnavailableError):
        sdk(gateway(error=NoRouteAvailable("all open"), seen=calls), max_retries=2).messages.create(
            model="m", max_tokens=5, messages=ASK
        )
    assert len(calls) == 1  # not retryable: the SDK is told so


def test_sdk_raises_on_a_mid_stream_error_event() -> None:
    client = sdk(gateway(chunks=STREAM[:4], mid_stream_error=Overloaded("Overloaded")))
    seen_text: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model="m", max_tokens=5, messages=ASK) as stream,
    ):
        seen_text.extend(stream.text_stream)
    assert seen_text == ["Let me ", "check ☁."]
    assert caught.value.type == "overloaded_error"


@pytest.mark.anyio
async def test_async_sdk_raises_on_a_mid_stream_error_event() -> None:
    client = async_sdk(gateway(chunks=STREAM[:3], mid_stream_error=RateLimited("slow")))
    raw = await client.messages.create(model="m", max_tokens=5, messages=ASK, stream=True)
    with pytest.raises(anthropic.APIStatusError) as caught:
        async for _ in raw:
            pass
    assert caught.value.type == "rate_limit_error"


def test_upstream_stream_reencoded_for_the_caller_is_read_by_the_sdk() -> None:
    """Anthropic upstream stream -> our chunks -> Anthropic caller stream -> SDK."""
    chunks = decode_stream([stream_wire()])

    def handle(http_request: httpx2.Request) -> httpx2.Response:
        encoder = ANTHROPIC_CALLER.stream_encoder("claude-test-model", "msg_S1")
        wire = encoder.start() + b"".join(encoder.chunk(c) for c in chunks) + encoder.finish(None)
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=wire)

    with sdk(handle).messages.stream(model="m", max_tokens=5, messages=ASK) as stream:
        message = stream.get_final_message()
    assert message.id == "msg_S1"
    assert message.content[0].text == "Grüße aus 東京 🌧"
    assert message.content[1].input == {"city": "Tokyo"}
    assert message.content[1].id == "toolu_9"
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (25, 1000)
    assert message.usage.output_tokens == 57


# --------------------------------------------- property: caller body -> upstream body

_text = st.text(min_size=1, max_size=12)
_ids = st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_CACHE = st.sampled_from([None, None, {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])


def _cached(blocks: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Blocks that sometimes carry a prompt-cache breakpoint."""
    return st.builds(
        lambda block, control: block if control is None else {**block, "cache_control": control},
        blocks,
        _CACHE,
    )


_text_block = _cached(st.builds(lambda t: {"type": "text", "text": t}, _text))
_image_block = _cached(
    st.builds(
        lambda u: {"type": "image", "source": {"type": "url", "url": f"https://img.test/{u}.png"}},
        _ids,
    )
    | st.builds(
        lambda mt, d: {"type": "image", "source": {"type": "base64", "media_type": mt, "data": d}},
        st.sampled_from(["image/png", "image/jpeg", "image/webp"]),
        st.from_regex(r"[A-Za-z0-9+/]{4,16}={0,2}", fullmatch=True),
    )
)


@st.composite
def _tool_result(draw: st.DrawFn) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": draw(_ids)}
    content = draw(st.none() | _text | st.lists(_text_block | _image_block, min_size=1, max_size=2))
    if content is not None:
        block["content"] = content
    if draw(st.booleans()):
        block["is_error"] = True
    control = draw(_CACHE)
    if control is not None:
        block["cache_control"] = control
    return block


@st.composite
def _user_turn(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"role": "user", "content": draw(_text)}
    results = draw(st.lists(_tool_result(), max_size=2))
    parts = draw(st.lists(_text_block | _image_block, min_size=0 if results else 1, max_size=3))
    return {"role": "user", "content": results + parts}


@st.composite
def _assistant_turn(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"role": "assistant", "content": draw(_text)}
    texts = draw(st.lists(_text_block, max_size=2))
    uses = draw(
        st.lists(
            _cached(
                st.builds(
                    lambda i, n, a: {"type": "tool_use", "id": i, "name": n, "input": a},
                    _ids,
                    _ids,
                    st.dictionaries(st.text(max_size=6), _json_value, max_size=3),
                )
            ),
            min_size=0 if texts else 1,
            max_size=2,
        )
    )
    return {"role": "assistant", "content": texts + uses}


@st.composite
def caller_bodies(draw: st.DrawFn) -> dict[str, Any]:
    turns = draw(st.integers(min_value=1, max_value=6))
    messages = [draw(_user_turn() if i % 2 == 0 else _assistant_turn()) for i in range(turns)]
    results = [b for m in messages if isinstance(m["content"], list) for b in m["content"]]
    for n, block in enumerate(b for b in results if b["type"] == "tool_result"):
        block["tool_use_id"] += f"-{n}"  # ids are unique in a real conversation
    body: dict[str, Any] = {
        "model": "claude-test-model",
        "max_tokens": draw(st.integers(min_value=0, max_value=200_000)),
        "messages": messages,
    }
    system = draw(st.none() | _text | st.lists(_text_block, min_size=1, max_size=2))
    if system is not None:
        body["system"] = system
    names = draw(st.lists(_ids, max_size=3, unique=True))
    if names:
        tools = []
        for name in names:
            tool: dict[str, Any] = {
                "name": name,
                "input_schema": {
                    "type": "object",
                    "properties": draw(
                        st.dictionaries(_ids, st.just({"type": "string"}), max_size=2)
                    ),
                },
            }
            if draw(st.booleans()):
                tool["description"] = draw(_text)
            if draw(st.booleans()):
                tool["strict"] = draw(st.booleans())
            control = draw(_CACHE)
            if control is not None:
                tool["cache_control"] = control
            tools.append(tool)
        body["tools"] = tools
        kind = draw(st.sampled_from([None, "auto", "any", "none", "tool"]))
        if kind is not None:
            choice: dict[str, Any] = {"type": kind}
            if kind == "tool":
                choice["name"] = draw(st.sampled_from(names))
            if kind != "none" and draw(st.booleans()):
                choice["disable_parallel_tool_use"] = True
            body["tool_choice"] = choice
    stops = draw(st.lists(_text, max_size=3))
    if stops:
        body["stop_sequences"] = stops
    if draw(st.booleans()):
        body["stream"] = True
    if draw(st.booleans()):
        body["metadata"] = {"user_id": draw(_ids)}
    for name, values in (
        ("temperature", st.floats(min_value=0, max_value=1)),
        ("top_p", st.floats(min_value=0, max_value=1)),
        ("top_k", st.integers(min_value=0, max_value=500)),
    ):
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            body[name] = draw(values)
    output_config: dict[str, Any] = {}
    if draw(st.booleans()):
        output_config["format"] = {"type": "json_schema", "schema": {"type": "object"}}
    if draw(st.booleans()):
        output_config["effort"] = draw(st.sampled_from(["low", "medium", "high", "max"]))
    if output_config:
        body["output_config"] = output_config
    if draw(st.booleans()):
        body["thinking"] = {"type": "enabled", "budget_tokens": draw(st.integers(1024, 9999))}
    if draw(st.booleans()):
        body["cache_control"] = {"type": "ephemeral", "ttl": draw(st.sampled_from(["5m", "1h"]))}
    return body


@settings(max_examples=300, deadline=None)
@given(body=caller_bodies(), reasoning=st.sampled_from([None, "effort", "thinking", "adaptive"]))
def test_caller_to_upstream_is_lossless(body: dict[str, Any], reasoning: str | None) -> None:
    parsed = ANTHROPIC_CALLER.parse_request(json.dumps(body).encode())
    options = {"reasoning": reasoning} if reasoning else {}
    encoded = ANTHROPIC_DIALECT.encode_request(parsed, provider(**options), "claude-test-model")
    # The option only derives thinking/effort from a bare reasoning_effort; what the
    # caller said in Anthropic's own terms goes through untouched, except thinking on
    # a tool-use continuation, whose signed thinking block cannot be carried.
    expected = dict(body)
    assistants = [m for m in body["messages"] if m["role"] == "assistant"]
    last = assistants[-1]["content"] if assistants else ""
    if isinstance(last, list) and any(b["type"] == "tool_use" for b in last):
        expected.pop("thinking", None)
    assert encoded.json == expected
    sampling = any(k in body for k in ("temperature", "top_p", "top_k"))
    assert encoded.headers["anthropic-version"] == ("2023-06-01" if sampling else "2026-10-21")


# -------------------------------------------- against FakeProvider, an independent server


def fake_call(
    fake: FakeProvider, req: ChatRequest, config: ProviderConfig | None = None
) -> tuple[int, dict[str, str], bytes]:
    encoded = ANTHROPIC_DIALECT.encode_request(req, config or provider(), req.model)
    path = encoded.url.removeprefix("https://api.anthropic.com")
    status, headers, body = fake.handle(
        "POST", path, headers=encoded.headers, body=json.dumps(encoded.json).encode()
    )
    return status, dict(headers), body


FAKE_MODEL = FakeModel(
    "claude-fake",
    content="Bonjour, ça va? 日本",
    input_tokens=900,
    cached_tokens=600,
    cache_write_tokens=200,
    cache_write_long_tokens=50,
    reasoning_tokens=30,
    reasoning="Let me think.",
)


def test_fake_provider_plain_answer_decodes_to_what_it_billed() -> None:
    fake = FakeProvider([FAKE_MODEL], require_key=SECRET)
    req = ChatRequest(model="claude-fake", messages=[user()], temperature=0.5)
    status, _, body = fake_call(fake, req)
    assert status == 200  # temperature pinned the version the fake accepts it under
    response = ANTHROPIC_DIALECT.decode_response(body, provider())
    assert response.text == "Bonjour, ça va? 日本"
    billed = fake.calls[-1].usage
    assert billed is not None
    assert response.usage == billed
    assert (billed.input_tokens, billed.cached_input_tokens) == (900, 600)


@pytest.mark.parametrize("sampling", ["pin", "drop"])
def test_fake_provider_accepts_both_sampling_policies(sampling: str) -> None:
    fake = FakeProvider([FAKE_MODEL])
    req = ChatRequest(model="claude-fake", messages=[user()], top_p=0.9, top_k=3)
    status, _, _ = fake_call(fake, req, provider(sampling_params=sampling))
    assert status == 200


def test_fake_provider_stream_usage_equals_billed_and_text_matches() -> None:
    model = FakeModel(
        "claude-tools",
        content="Calling.",
        cached_tokens=10,
        cache_write_tokens=4,
        tool_calls=(FakeToolCall("weather", {"city": "Zürich", "days": [1, 2, 3]}),),
    )
    fake = FakeProvider([model])
    req = ChatRequest(
        model="claude-tools", messages=[user("weather?")], stream=True, tools=[WEATHER]
    )
    status, headers, body = fake_call(fake, req)
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    chunks = decode_stream([body[i : i + 7] for i in range(0, len(body), 7)], req)
    summary = summarize(chunks)
    assert summary["text"] == "Calling."
    assert json.loads(summary["calls"][0]["arguments"]) == {"city": "Zürich", "days": [1, 2, 3]}
    assert summary["finishes"] == [(FinishReason.TOOL_CALLS, "tool_use")]
    assert summary["usages"] == [fake.calls[-1].usage]
    assert not summary["usages"][0].estimated


def test_fake_provider_cut_stream_is_an_error_not_a_clean_end() -> None:
    fake = FakeProvider([FakeModel("claude-fake", content="one two three four five six")])
    fake.inject("claude-fake", Failure.cut(after=4))
    req = ChatRequest(model="claude-fake", messages=[user()], stream=True)
    status, _, body = fake_call(fake, req)
    assert status == 200
    decoder = ANTHROPIC_DIALECT.stream_decoder(provider(), req)
    decoder.feed(body)
    with pytest.raises(UpstreamProtocolError):
        decoder.close()
    assert decoder.usage is not None
    assert decoder.usage.estimated
    assert decoder.usage.input_tokens > 0


def test_fake_provider_in_band_stream_error_is_overloaded() -> None:
    fake = FakeProvider([FakeModel("claude-fake", content="one two three")])
    fake.inject("claude-fake", Failure.stream_error(after=3))
    req = ChatRequest(model="claude-fake", messages=[user()], stream=True)
    _, _, body = fake_call(fake, req)
    with pytest.raises(Overloaded):
        decode_stream([body], req)


def test_fake_provider_stream_without_usage_is_estimated() -> None:
    fake = FakeProvider([FakeModel("claude-fake", content="Short answer.")])
    fake.inject("claude-fake", Failure.no_usage())
    req = ChatRequest(model="claude-fake", messages=[user("Tell me")], stream=True)
    _, _, body = fake_call(fake, req)
    usage = summarize(decode_stream([body], req))["usages"][-1]
    assert usage == Usage(
        input_tokens=estimate_request_tokens(req),
        output_tokens=estimate_text_tokens("Short answer."),
        estimated=True,
    )


@pytest.mark.parametrize(
    ("failure", "expected", "retry_after"),
    [
        (Failure.overloaded(), Overloaded, None),
        (Failure.rate_limit(retry_after=7), RateLimited, 7.0),
        (Failure.insufficient_quota(), InsufficientQuota, None),
        (Failure(status=429, code="enforced_spend_limit_reached"), InsufficientQuota, None),
        (Failure(status=500), UpstreamUnavailable, None),
        (Failure(status=504), UpstreamTimeout, None),
        (Failure(status=413), InvalidRequest, None),
    ],
)
def test_fake_provider_errors_map_to_the_family(
    failure: Failure, expected: type[LLMError], retry_after: float | None
) -> None:
    fake = FakeProvider([FakeModel("claude-fake")])
    fake.inject("claude-fake", failure)
    status, headers, body = fake_call(fake, ChatRequest(model="claude-fake", messages=[user()]))
    error = ANTHROPIC_DIALECT.decode_error(status, headers, body, provider())
    assert type(error) is expected
    assert error.retry_after == retry_after


def test_fake_provider_wrong_key_and_unknown_model() -> None:
    fake = FakeProvider([FakeModel("claude-fake")], require_key="another-key")
    status, headers, body = fake_call(fake, ChatRequest(model="claude-fake", messages=[user()]))
    error = ANTHROPIC_DIALECT.decode_error(status, headers, body, provider())
    assert type(error) is AuthenticationFailed
    assert SECRET not in repr(error) + str(error.raw)
    open_fake = FakeProvider([FakeModel("claude-fake")])
    status, headers, body = fake_call(open_fake, ChatRequest(model="nope", messages=[user()]))
    missing = ANTHROPIC_DIALECT.decode_error(status, headers, body, provider())
    assert isinstance(missing, UnknownModel)
    assert missing.model == "nope"


def test_fake_provider_thinking_passthrough_gives_reasoning() -> None:
    fake = FakeProvider([FAKE_MODEL])
    thinking = {"type": "enabled", "budget_tokens": 2048}
    req = ChatRequest(model="claude-fake", messages=[user()], extra={"thinking": thinking})
    status, _, body = fake_call(fake, req)
    assert status == 200
    response = ANTHROPIC_DIALECT.decode_response(body, provider())
    assert response.choices[0].message.reasoning == "Let me think."
    assert response.usage is not None
    assert response.usage.reasoning_tokens == 30


def test_an_echoed_key_is_blanked_out_of_errors() -> None:
    body = f"<html>Bad gateway: x-api-key={SECRET}</html>".encode()
    error = ANTHROPIC_DIALECT.decode_error(502, {}, body, provider())
    assert isinstance(error, UpstreamUnavailable)
    assert SECRET not in error.message
    assert "[redacted]" in error.message


def test_error_object_with_a_2xx_status_raises_its_error() -> None:
    with pytest.raises(Overloaded):
        ANTHROPIC_DIALECT.decode_response(error_body("overloaded_error", "Overloaded"), provider())


def test_stream_with_output_but_no_input_usage_estimates_only_the_input() -> None:
    req = request(user("Count to three."))
    wire = (
        sse_event("message_start", {"type": "message_start", "message": {"id": "m"}})
        + sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "1 2 3"},
            },
        )
        + sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 6},
            },
        )
        + sse_event("message_stop", {"type": "message_stop"})
    )
    usage = summarize(decode_stream([wire], req))["usages"][-1]
    assert usage == Usage(
        input_tokens=estimate_request_tokens(req), output_tokens=6, estimated=True
    )


def test_refusal_text_reaches_an_anthropic_caller() -> None:
    message = Message(role="assistant", content=None, refusal="I can't help with that.")
    response = ChatResponse(
        id="r",
        model="m",
        choices=[Choice(message=message, finish_reason=FinishReason.CONTENT_FILTER)],
    )
    body = ANTHROPIC_CALLER.encode_response(response, "m")
    assert body["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert body["stop_reason"] == "refusal"


# ------------------------------------------- robustness: garbage never escapes the family

_any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "index",
                    "delta",
                    "text",
                    "partial_json",
                    "content_block",
                    "message",
                    "id",
                    "usage",
                    "input_tokens",
                    "output_tokens",
                    "stop_reason",
                    "error",
                    "content",
                    "name",
                    "input",
                    "role",
                    "messages",
                    "max_tokens",
                    "model",
                    "source",
                    "tools",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)
_event_names = st.sampled_from(
    [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
        "something_new",
    ]
)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.tuples(_event_names, _any_json), max_size=8))
def test_stream_decoder_raises_only_llm_errors_on_garbage(events: list[tuple[str, Any]]) -> None:
    decoder = AnthropicStreamDecoder(request(user()))
    wire = b"".join(sse_event(name, payload) for name, payload in events)
    try:
        decoder.feed(wire)
        decoder.close()
    except LLMError:
        pass
    usage = decoder.usage  # readable whatever happened, for metering
    assert usage is None or usage.input_tokens >= 0


@settings(max_examples=300, deadline=None)
@given(payload=_any_json)
def test_decoders_and_parser_raise_only_llm_errors_on_garbage(payload: Any) -> None:
    raw = json.dumps(payload).encode()
    outcomes: list[object] = []
    for attempt in (
        lambda: ANTHROPIC_DIALECT.decode_response(raw, provider()),
        lambda: ANTHROPIC_CALLER.parse_request(raw),
        lambda: ANTHROPIC_DIALECT.decode_error(500, {}, raw, provider()),
    ):
        try:
            outcomes.append(attempt())
        except LLMError as error:  # anything else escapes and fails the test
            outcomes.append(error)
    assert isinstance(outcomes[2], LLMError)  # an error answer always maps to one
    assert len(outcomes) == 3


# ------------------------------------------------------------- prompt-cache breakpoints

EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}


def round_trip(body: dict[str, Any], **options: Any) -> dict[str, Any]:
    parsed = ANTHROPIC_CALLER.parse_request(json.dumps(body).encode())
    return ANTHROPIC_DIALECT.encode_request(parsed, provider(**options), "m").json


def test_cache_breakpoints_follow_blocks_that_move_upstream() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "long rules", "cache_control": HOUR}],
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hidden", "signature": "s"},
                    {
                        "type": "tool_use",
                        "id": "t1",
                        "name": "f",
                        "input": {},
                        "cache_control": EPHEMERAL,
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and", "cache_control": EPHEMERAL},
                    {"type": "tool_result", "tool_use_id": "t1", "content": "r"},
                ],
            },
        ],
        "tools": [
            {"type": "web_search_20250305", "name": "web_search"},
            {"name": "f", "input_schema": {"type": "object"}, "cache_control": HOUR},
        ],
    }
    sent = round_trip(body)
    assert sent["system"] == [{"type": "text", "text": "long rules", "cache_control": HOUR}]
    # the thinking block is not sent, so the tool_use moves to index 0 and keeps its marker
    assert sent["messages"][1]["content"] == [
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}, "cache_control": EPHEMERAL}
    ]
    # tool results go first upstream; the marker stays on the text block
    assert sent["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "r"},
        {"type": "text", "text": "and", "cache_control": EPHEMERAL},
    ]
    assert sent["tools"] == [
        {"name": "f", "input_schema": {"type": "object"}, "cache_control": HOUR},
        {"type": "web_search_20250305", "name": "web_search"},
    ]


def test_failed_tool_results_stay_failed_for_an_anthropic_upstream() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                    {"type": "tool_use", "id": "t2", "name": "f", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": "boom",
                        "is_error": True,
                    },
                    {"type": "tool_result", "tool_use_id": "t2", "content": "ok"},
                ],
            },
        ],
    }
    parsed = ANTHROPIC_CALLER.parse_request(json.dumps(body).encode())
    assert parsed.extra == {"anthropic_tool_errors": ["t1"]}
    sent = ANTHROPIC_DIALECT.encode_request(parsed, provider(), "m").json
    assert sent["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True},
        {"type": "tool_result", "tool_use_id": "t2", "content": "ok"},
    ]


@pytest.mark.parametrize("kind", ["enabled", "adaptive"])
def test_thinking_is_left_off_for_a_tool_use_continuation(kind: str) -> None:
    thinking = {"type": kind, "budget_tokens": 2048} if kind == "enabled" else {"type": kind}
    call = ToolCall(id="t1", name="f")
    loop = request(
        user("go"),
        Message(role="assistant", tool_calls=[call], reasoning="unsigned, not sent"),
        Message(role="tool", tool_call_id="t1", content="done"),
        extra={"thinking": thinking},
    )
    body = build_body(loop, "m", {})
    assert "thinking" not in body
    assert "unsigned" not in json.dumps(body)
    chat = request(
        user("hi"),
        Message(role="assistant", content="hello"),
        user("again"),
        extra={"thinking": thinking},
    )
    assert build_body(chat, "m", {})["thinking"] == thinking


def test_cache_breakpoints_with_a_leading_assistant_turn() -> None:
    cached = [{"type": "text", "text": "earlier", "cache_control": EPHEMERAL}]
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "assistant", "content": cached}, {"role": "user", "content": "go"}],
    }
    sent = round_trip(body)
    assert sent["messages"][0] == {"role": "user", "content": LEADING_USER_TEXT}
    assert sent["messages"][1] == {"role": "assistant", "content": cached}


def test_cache_breakpoints_are_dropped_rather_than_misplaced() -> None:
    def turn(role: str, text: str, cached: bool = False) -> dict[str, Any]:
        block: dict[str, Any] = {"type": "text", "text": text}
        if cached:
            block["cache_control"] = EPHEMERAL
        return {"role": role, "content": [block]}

    body = {
        "model": "m",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "rules", "cache_control": EPHEMERAL}],
        "messages": [
            turn("user", "a"),
            turn("user", "b", cached=True),
            turn("assistant", "x"),
            turn("user", "y"),
        ],
    }
    sent = round_trip(body)
    # the two user turns merged, so upstream turn 1 is now the assistant's: the marker
    # recorded for caller turn 1 is left out instead of landing on "x"
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "x"}]},
        {"role": "user", "content": [{"type": "text", "text": "y"}]},
    ]
    assert sent["system"][0]["cache_control"] == EPHEMERAL  # the system marker still fits


@pytest.mark.parametrize(
    "markers",
    [
        "nonsense",
        {"marks": "x"},
        {"messages": 1, "marks": [None, 3, {"at": "messages"}, {"at": [], "cache_control": {}}]},
        {"messages": 1, "marks": [{"at": ["messages", "0", "content"], "cache_control": {}}]},
        {"messages": 1, "marks": [{"at": ["messages", 0, "content", 9], "cache_control": {}}]},
        {"messages": 1, "marks": [{"at": ["system", 0], "type": "text", "cache_control": 5}]},
        {"messages": 1, "marks": [{"at": ["tools", "nope"], "cache_control": {}}]},
    ],
)
def test_foreign_or_broken_markers_are_ignored(markers: Any) -> None:
    req = request(user([TextPart(text="x")]), extra={"anthropic_cache_control": markers})
    body = build_body(req, "m", {})
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    assert "anthropic_cache_control" not in json.dumps(body)


def test_reissued_tool_ids_match_between_streamed_and_plain_answers() -> None:
    bad = "fc/1:bad id"
    plain = ANTHROPIC_CALLER.encode_response(
        chat_response(calls=[ToolCall(id=bad, name="f")], finish=FinishReason.TOOL_CALLS), "m"
    )
    encoder = ANTHROPIC_CALLER.stream_encoder("m", "r1")
    wire = encoder.start() + encoder.chunk(
        StreamChunk(tool_calls=[ToolCallDelta(index=0, id=bad, name="f")])
    )
    wire += encoder.finish(None)
    events = SSEDecoder().feed(wire)
    starts = [json.loads(e.data) for e in events if e.event == "content_block_start"]
    assert starts[0]["content_block"]["id"] == plain["content"][1]["id"] == tool_use_id(bad)
    # and the upstream encoder re-issues the caller's copy of it the same way
    history = request(user(), Message(role="assistant", tool_calls=[ToolCall(id=bad, name="f")]))
    assert build_body(history, "m", {})["messages"][1]["content"][0]["id"] == tool_use_id(bad)


@given(texts=st.lists(st.text(min_size=1), min_size=1, max_size=4), tool_first=st.booleans())
def test_streamed_text_deltas_are_the_events_a_generic_encoding_gives(
    texts: list[str], tool_first: bool
) -> None:
    """Text deltas are written from a template; each must be the event JSON-encoding
    its fields gives, whatever the text holds (quotes, escapes, newlines, non-ASCII)."""
    encoder = ANTHROPIC_CALLER.stream_encoder("claude-test-model", "msg_T1")
    encoder.start()
    if tool_first:
        encoder.chunk(StreamChunk(tool_calls=[ToolCallDelta(index=0, id="t", name="f")]))
    block = 1 if tool_first else 0
    for n, text in enumerate(texts):
        events = list(SSEDecoder().feed(encoder.chunk(StreamChunk(text=text))))
        if n == 0:  # the text block opens first (closing a tool block before it)
            assert [e.event for e in events[:-1]] == ["content_block_stop"] * tool_first + [
                "content_block_start"
            ]
        delta = events[-1]
        assert delta.event == "content_block_delta"
        assert delta.data == json.dumps(
            {
                "type": "content_block_delta",
                "index": block,
                "delta": {"type": "text_delta", "text": text},
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
