"""The Gemini generateContent dialect, both directions, against hand-written wire data."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_middleware.providers.base import ProviderConfig
from routing_middleware.providers.gemini import (
    EXTRA_KEY,
    GEMINI_CALLER,
    GEMINI_DIALECT,
    THOUGHT_SIGNATURE_MARK,
    gemini_schema,
)
from routing_middleware.schema import (
    AuthenticationFailed,
    BudgetExceeded,
    ChatRequest,
    ChatResponse,
    Choice,
    ContextWindowExceeded,
    FinishReason,
    ImagePart,
    InvalidRequest,
    LLMError,
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
    UnknownModel,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
    Usage,
)
from routing_middleware.testing import Failure, FakeModel, FakeProvider, FakeToolCall
from routing_middleware.tokens import estimate_request_tokens
from tests.core.sdk_helpers import feed

KEY = "AIzaSy-test-secret-key"
PROVIDER = ProviderConfig(name="gemini", dialect="gemini", base_url="", api_key=KEY)
SIGNATURE = "CiQB+/thoughtA=="  # standard base64 with '+', '/' and padding


def request(*messages: Message, **fields: Any) -> ChatRequest:
    return ChatRequest(model="gemini-2.5-flash", messages=list(messages), **fields)


def user(text: str) -> Message:
    return Message(role="user", content=text)


def encode(req: ChatRequest, model: str = "gemini-2.5-flash") -> dict[str, Any]:
    return GEMINI_DIALECT.encode_request(req, PROVIDER, model).json


def decode(payload: dict[str, Any]) -> ChatResponse:
    return GEMINI_DIALECT.decode_response(json.dumps(payload).encode(), PROVIDER)


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)


def stream(
    data: bytes, req: ChatRequest | None = None, step: int = 0
) -> tuple[list[StreamChunk], Any]:
    decoder = GEMINI_DIALECT.stream_decoder(PROVIDER, req or request(user("hi"), stream=True))
    return feed(decoder, data, step), decoder


# --------------------------------------------------------------------------- encode: HTTP


def test_url_headers_and_key_only_in_header() -> None:
    encoded = GEMINI_DIALECT.encode_request(request(user("hi")), PROVIDER, "gemini-2.5-flash")
    assert encoded.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert encoded.headers["x-goog-api-key"] == KEY
    assert "authorization" not in encoded.headers
    assert KEY not in encoded.url
    assert KEY not in repr(encoded)
    assert encoded.json == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_stream_url_and_custom_base_with_version() -> None:
    provider = ProviderConfig(
        name="g", dialect="gemini", base_url="https://proxy.example/v1beta/", api_key=KEY
    )
    req = request(user("hi"), stream=True)
    encoded = GEMINI_DIALECT.encode_request(req, provider, "models/gemini-3-pro")
    assert encoded.url == (
        "https://proxy.example/v1beta/models/gemini-3-pro:streamGenerateContent?alt=sse"
    )
    assert encoded.headers["accept"] == "text/event-stream"


def test_bearer_option_uses_provider_auth_headers() -> None:
    provider = ProviderConfig(
        name="vertex", dialect="gemini", base_url="", api_key="tok", options={"auth": "bearer"}
    )
    headers = GEMINI_DIALECT.encode_request(request(user("hi")), provider, "m").headers
    assert headers["authorization"] == "Bearer tok"
    assert "x-goog-api-key" not in headers


# --------------------------------------------------------------------------- encode: contents


def test_system_developer_roles_and_merging() -> None:
    body = encode(
        request(
            Message(role="system", content="Be brief."),
            Message(role="developer", content="Use French."),
            user("one"),
            user("two"),
            Message(role="assistant", content="ok"),
            Message(role="assistant", content=[TextPart(text="a"), TextPart(text="b")]),
            user("three"),
        )
    )
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use French."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "ok"}, {"text": "a"}, {"text": "b"}]},
        {"role": "user", "parts": [{"text": "three"}]},
    ]


def test_tool_calls_and_results_become_function_parts() -> None:
    calls = [
        ToolCall(id="call_a", name="weather", arguments='{"city":"Paris"}'),
        ToolCall(id=f"call_b{THOUGHT_SIGNATURE_MARK}CiQB-_thoughtA", name="time", arguments=""),
    ]
    body = encode(
        request(
            user("weather and time?"),
            Message(role="assistant", content=None, tool_calls=calls),
            Message(role="tool", tool_call_id="call_a", content='{"temp": 21}'),
            Message(role="tool", tool_call_id=calls[1].id, content="12:00"),
        )
    )
    assert body["contents"][1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
            # the signature rides in the id; it goes back in standard base64, padded
            {"functionCall": {"name": "time", "args": {}}, "thoughtSignature": SIGNATURE},
        ],
    }
    # Both results land in one user turn (Gemini wants parallel answers together).
    assert body["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "weather", "response": {"temp": 21}}},
            {"functionResponse": {"name": "time", "response": {"output": "12:00"}}},
        ],
    }


def test_tool_result_json_non_object_is_wrapped() -> None:
    body = encode(
        request(
            user("q"),
            Message(role="assistant", tool_calls=[ToolCall(id="c1", name="f")]),
            Message(role="tool", tool_call_id="c1", content="[1, 2]"),
        )
    )
    part = body["contents"][2]["parts"][0]
    assert part == {"functionResponse": {"name": "f", "response": {"output": [1, 2]}}}


def test_tool_result_without_a_call_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequest) as info:
        encode(request(user("q"), Message(role="tool", tool_call_id="nope", content="x")))
    assert info.value.param == "messages[1].tool_call_id"


def test_tool_call_arguments_must_be_a_json_object() -> None:
    bad = Message(role="assistant", tool_calls=[ToolCall(id="c", name="f", arguments="[1]")])
    with pytest.raises(InvalidRequest) as info:
        encode(request(user("q"), bad))
    assert info.value.param == "messages[1].tool_calls[0].arguments"


def test_images_inline_data_url_and_file_uri() -> None:
    parts = [
        TextPart(text="compare"),
        ImagePart(data="iVBORw0K", media_type="image/png"),
        ImagePart(url="data:image/webp;base64,UklGR"),
        ImagePart(url="https://cdn.example/cat.JPG?sig=abc"),
        ImagePart(url="https://files.example/blob", media_type="image/heic"),
    ]
    body = encode(request(Message(role="user", content=parts)))
    assert body["contents"][0]["parts"] == [
        {"text": "compare"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
        {"inlineData": {"mimeType": "image/webp", "data": "UklGR"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://cdn.example/cat.JPG?sig=abc"}},
        {"fileData": {"mimeType": "image/heic", "fileUri": "https://files.example/blob"}},
    ]


@pytest.mark.parametrize("url", ["https://x.example/image", "https://x.example/a.gif"])
def test_image_url_of_unknown_type_is_rejected_by_name(url: str) -> None:
    message = Message(role="user", content=[TextPart(text="see"), ImagePart(url=url)])
    with pytest.raises(InvalidRequest) as info:
        encode(request(message))
    assert info.value.param == "messages[0].content[1]"
    assert "media_type" in info.value.message


# --------------------------------------------------------------------------- encode: options


def test_schema_is_trimmed_to_what_gemini_accepts() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "unit": {"const": "celsius"},
            "city": {"type": ["string", "null"], "examples": ["Paris"]},
            "when": {"anyOf": [{"$ref": "#/$defs/Day"}, {"type": "null"}]},
            "n": {"oneOf": [{"type": "integer"}, {"type": "string"}], "exclusiveMinimum": 0},
            "node": {"$ref": "#/$defs/Node"},
        },
        "required": ["unit", "ghost"],
        "$defs": {
            "Day": {"type": "string", "enum": ["mon", "tue"], "title": "Day"},
            "Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}},
        },
    }
    assert gemini_schema(schema) == {
        "type": "object",
        "properties": {
            "unit": {"enum": ["celsius"]},
            "city": {"type": "string", "nullable": True},
            "when": {"type": "string", "enum": ["mon", "tue"], "title": "Day", "nullable": True},
            "n": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            # a recursive reference cannot be spelled out: the cycle becomes a bare object
            "node": {"type": "object", "properties": {"next": {"type": "object"}}},
        },
        "required": ["unit"],
    }


def test_tools_and_tool_choice() -> None:
    tools = [
        Tool(name="search", description="Find", parameters={"type": "object", "properties": {}}),
        Tool(name="add", parameters={"type": "object", "properties": {"a": {"type": "number"}}}),
    ]
    body = encode(request(user("q"), tools=tools, tool_choice=ToolChoice(mode="required")))
    assert body["tools"] == [
        {
            "functionDeclarations": [
                # no properties: Gemini rejects an empty OBJECT, so parameters are left out
                {"name": "search", "description": "Find"},
                {
                    "name": "add",
                    "parameters": {"type": "object", "properties": {"a": {"type": "number"}}},
                },
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    named = encode(request(user("q"), tools=tools, tool_choice=ToolChoice(mode="tool", name="add")))
    assert named["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["add"]}
    }
    for mode, word in (("auto", "AUTO"), ("none", "NONE")):
        body = encode(request(user("q"), tools=tools, tool_choice=ToolChoice(mode=mode)))  # type: ignore[arg-type]
        assert body["toolConfig"]["functionCallingConfig"]["mode"] == word


def test_generation_config_and_json_output() -> None:
    body = encode(
        request(
            user("q"),
            max_tokens=256,
            temperature=0.3,
            top_p=0.9,
            top_k=40,
            stop=["END"],
            seed=7,
            response_format=ResponseFormat(
                type="json_schema",
                json_schema={
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "additionalProperties": False,
                },
            ),
        )
    )
    assert body["generationConfig"] == {
        "maxOutputTokens": 256,
        "temperature": 0.3,
        "topP": 0.9,
        "topK": 40,
        "stopSequences": ["END"],
        "seed": 7,
        "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"a": {"type": "string"}}},
    }
    plain_json = encode(request(user("q"), response_format=ResponseFormat(type="json_object")))
    assert plain_json["generationConfig"] == {"responseMimeType": "application/json"}


@pytest.mark.parametrize(
    ("model", "effort", "expected"),
    [
        ("gemini-2.5-flash", "low", {"thinkingBudget": 1024}),
        ("gemini-2.5-flash", "none", {"thinkingBudget": 0}),
        ("gemini-2.5-pro", "none", {"thinkingBudget": 128}),
        ("gemini-3-pro-preview", "high", {"thinkingLevel": "high"}),
        ("gemini-3.8-flash", "minimal", {"thinkingLevel": "minimal"}),
    ],
)
def test_reasoning_effort_to_thinking_config(
    model: str, effort: str, expected: dict[str, Any]
) -> None:
    body = encode(request(user("q"), reasoning_effort=effort), model)
    assert body["generationConfig"]["thinkingConfig"] == expected


def test_unknown_reasoning_effort_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        encode(request(user("q"), reasoning_effort="turbo"))
    assert info.value.param == "reasoning_effort"


def test_gemini_only_extras_are_reapplied() -> None:
    extra = {
        EXTRA_KEY: {
            "safetySettings": [
                {"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}
            ],
            "tools": [{"googleSearch": {}}],
            "generationConfig": {"candidateCount": 1, "thinkingConfig": {"thinkingBudget": -1}},
        }
    }
    body = encode(request(user("q"), reasoning_effort="high", extra=extra))
    assert body["safetySettings"] == extra[EXTRA_KEY]["safetySettings"]
    assert body["tools"] == [{"googleSearch": {}}]
    # the caller's own thinkingConfig wins over one derived from reasoning_effort
    assert body["generationConfig"] == {
        "candidateCount": 1,
        "thinkingConfig": {"thinkingBudget": -1},
    }


# --------------------------------------------------------------------------- decode


def test_decode_text_thoughts_and_usage_convention() -> None:
    response = decode(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "Let me think.", "thought": True},
                            {"text": "Hello "},
                            {"text": "world"},
                        ],
                    },
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 100,
                "cachedContentTokenCount": 60,
                "toolUsePromptTokenCount": 10,
                "candidatesTokenCount": 20,
                "thoughtsTokenCount": 30,
                "totalTokenCount": 160,
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": "resp-1",
        }
    )
    assert response.id == "resp-1"
    assert response.model == "gemini-2.5-flash"
    assert response.provider == "gemini"
    message = response.choices[0].message
    assert message.content == "Hello world"
    assert message.reasoning == "Let me think."
    assert response.choices[0].finish_reason is FinishReason.STOP
    # input 100 + 10 tool-use prompt = 110; the 60 cached are inside the 100, not added;
    # output 20 visible + 30 thoughts = 50
    assert response.usage == Usage(
        input_tokens=110, cached_input_tokens=60, output_tokens=50, reasoning_tokens=30
    )


def test_cache_hits_are_not_double_counted() -> None:
    # The incumbents' 4x overcharge: adding cachedContentTokenCount on top of the prompt.
    response = decode(
        {
            "candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}],
            "usageMetadata": {
                "promptTokenCount": 1000,
                "cachedContentTokenCount": 900,
                "candidatesTokenCount": 1,
            },
        }
    )
    assert response.usage is not None
    assert response.usage.input_tokens == 1000
    assert response.usage.uncached_input_tokens == 100  # 1000 - 900


def test_decode_function_calls_with_stable_ids() -> None:
    payload = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
                        {
                            "functionCall": {"name": "time", "args": {}, "id": "given-7"},
                            "thoughtSignature": SIGNATURE,
                        },
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "responseId": "r-1",
    }
    first = decode(payload)
    again = decode(payload)
    other = decode({**payload, "responseId": "r-2"})
    calls = first.choices[0].message.tool_calls
    assert calls is not None
    assert first.choices[0].finish_reason is FinishReason.TOOL_CALLS
    assert first.choices[0].native_finish_reason == "STOP"
    assert first.choices[0].message.content is None
    assert [c.name for c in calls] == ["weather", "time"]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].id.startswith("call_")
    assert calls[0].id == again.choices[0].message.tool_calls[0].id  # type: ignore[index]
    assert calls[0].id != other.choices[0].message.tool_calls[0].id  # type: ignore[index]
    assert calls[1].id == f"given-7{THOUGHT_SIGNATURE_MARK}CiQB-_thoughtA"
    assert first.usage is None  # no usageMetadata: the dispatcher estimates


@pytest.mark.parametrize(
    ("native", "expected"),
    [
        ("STOP", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("SAFETY", FinishReason.CONTENT_FILTER),
        ("RECITATION", FinishReason.CONTENT_FILTER),
        ("BLOCKLIST", FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("SPII", FinishReason.CONTENT_FILTER),
        ("LANGUAGE", FinishReason.CONTENT_FILTER),
        ("IMAGE_SAFETY", FinishReason.CONTENT_FILTER),
        ("OTHER", FinishReason.CONTENT_FILTER),
        ("MALFORMED_FUNCTION_CALL", FinishReason.ERROR),
        ("UNEXPECTED_TOOL_CALL", FinishReason.ERROR),
        ("MISSING_THOUGHT_SIGNATURE", FinishReason.ERROR),
        ("SOMETHING_NEW", FinishReason.STOP),
    ],
)
def test_finish_reason_mapping(native: str, expected: FinishReason) -> None:
    response = decode(
        {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": native}]}
    )
    assert response.choices[0].finish_reason is expected
    assert response.choices[0].native_finish_reason == native


def test_blocked_prompt_is_a_content_filter_response() -> None:
    response = decode(
        {
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
        }
    )
    choice = response.choices[0]
    assert choice.finish_reason is FinishReason.CONTENT_FILTER
    assert choice.native_finish_reason == "PROMPT_BLOCKED:PROHIBITED_CONTENT"
    assert choice.message.content == ""
    assert response.usage == Usage(input_tokens=12)


@pytest.mark.parametrize("body", [b"not json", b"[1]", b"{}", b'{"candidates": ["x"]}'])
def test_malformed_answers_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        GEMINI_DIALECT.decode_response(body, PROVIDER)


# --------------------------------------------------------------------------- stream


def test_stream_text_with_utf8_split_across_every_byte() -> None:
    data = sse(
        {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": "Grüß "}]}, "index": 0}
            ],
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
            "responseId": "r",
            "modelVersion": "gemini-2.5-flash",
        },
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": "dich 👋"}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 9,
                "candidatesTokenCount": 4,
                "thoughtsTokenCount": 3,
                "totalTokenCount": 16,
            },
            "responseId": "r",
        },
    )
    chunks, decoder = stream(data, step=1)
    assert "".join(c.text or "" for c in chunks) == "Grüß dich 👋"
    assert chunks[0].role == "assistant"
    assert chunks[0].id == "r"
    assert chunks[-1].finish_reason is FinishReason.STOP
    # output 4 + 3 thoughts = 7; the last chunk's counts are the complete ones
    expected = Usage(input_tokens=9, output_tokens=7, reasoning_tokens=3)
    assert chunks[-1].usage == expected
    assert decoder.usage == expected
    assert sum(1 for c in chunks if c.usage is not None) == 1


def test_stream_function_calls_arrive_whole_and_thoughts_as_reasoning() -> None:
    data = sse(
        {
            "candidates": [{"content": {"parts": [{"text": "hmm", "thought": True}]}}],
            "responseId": "r",
        },
        {
            "candidates": [
                {
                    "content": {
                        "parts": [
                            {"functionCall": {"name": "a", "args": {"x": 1}}},
                            {"functionCall": {"name": "b", "args": {}}},
                        ]
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 8},
            "responseId": "r",
        },
    )
    chunks, _ = stream(data)
    assert chunks[0].reasoning == "hmm"
    deltas = chunks[1].tool_calls
    assert deltas is not None
    assert [(d.index, d.name, json.loads(d.arguments)) for d in deltas] == [
        (0, "a", {"x": 1}),
        (1, "b", {}),
    ]
    assert chunks[1].finish_reason is FinishReason.TOOL_CALLS
    whole = decode(
        {
            "candidates": [
                {
                    "content": {
                        "parts": [
                            {"functionCall": {"name": "a", "args": {"x": 1}}},
                            {"functionCall": {"name": "b", "args": {}}},
                        ]
                    },
                    "finishReason": "STOP",
                }
            ],
            "responseId": "r",
        }
    )
    # the same call gets the same id streamed or not
    assert [d.id for d in deltas] == [c.id for c in whole.choices[0].message.tool_calls or ()]


def test_cut_stream_raises_and_leaves_an_estimate() -> None:
    data = sse(
        {
            "candidates": [{"content": {"parts": [{"text": "abcdefgh" * 4}]}}],
            "usageMetadata": {"promptTokenCount": 50, "totalTokenCount": 50},
        }
    )
    decoder = GEMINI_DIALECT.stream_decoder(PROVIDER, request(user("hi"), stream=True))
    assert decoder.feed(data)[0].text == "abcdefgh" * 4
    with pytest.raises(UpstreamProtocolError):
        decoder.close()
    # 32 ASCII characters → (32 + 3) // 4 = 8 tokens; the prompt count was reported
    assert decoder.usage == Usage(input_tokens=50, output_tokens=8, estimated=True)


def test_stream_without_usage_is_estimated_never_zero() -> None:
    req = request(user("How are you today?"), stream=True)
    data = sse(
        {"candidates": [{"content": {"parts": [{"text": "Fine, thanks"}]}, "finishReason": "STOP"}]}
    )
    chunks, decoder = stream(data, req)
    # "Fine, thanks" is 12 ASCII characters → (12 + 3) // 4 = 3
    expected = Usage(input_tokens=estimate_request_tokens(req), output_tokens=3, estimated=True)
    assert chunks[-1].usage == expected
    assert decoder.usage == expected
    assert expected.input_tokens > 0


def test_error_inside_the_stream_raises_the_mapped_error() -> None:
    decoder = GEMINI_DIALECT.stream_decoder(PROVIDER, request(user("hi"), stream=True))
    decoder.feed(sse({"candidates": [{"content": {"parts": [{"text": "a"}]}}]}))
    with pytest.raises(Overloaded) as info:
        decoder.feed(
            sse({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})
        )
    assert info.value.status_code == 503


def test_stream_blocked_prompt_ends_cleanly() -> None:
    data = sse(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}}
    )
    chunks, decoder = stream(data)
    assert chunks[-1].finish_reason is FinishReason.CONTENT_FILTER
    assert chunks[-1].native_finish_reason == "PROMPT_BLOCKED:SAFETY"
    assert decoder.usage == Usage(input_tokens=4)


def test_stream_garbage_event_is_a_protocol_error() -> None:
    decoder = GEMINI_DIALECT.stream_decoder(PROVIDER, request(user("hi"), stream=True))
    with pytest.raises(UpstreamProtocolError):
        decoder.feed(b"data: {oops\r\n\r\n")


# --------------------------------------------------------------------------- errors


def rpc(code: int, status: str, message: str, *details: dict[str, Any]) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return json.dumps({"error": error}).encode()


def decode_error(status: int, body: bytes, headers: dict[str, str] | None = None) -> LLMError:
    return GEMINI_DIALECT.decode_error(status, headers or {}, body, PROVIDER)


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            400,
            rpc(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},
            ),
            AuthenticationFailed,
        ),
        (
            400,
            rpc(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed"
                " (1048576).",
            ),
            ContextWindowExceeded,
        ),
        (400, rpc(400, "INVALID_ARGUMENT", "Invalid value at 'contents[0]'"), InvalidRequest),
        (403, rpc(403, "PERMISSION_DENIED", "Permission denied."), AuthenticationFailed),
        (
            400,
            rpc(400, "FAILED_PRECONDITION", "User location is not supported."),
            AuthenticationFailed,
        ),
        (500, rpc(500, "INTERNAL", "An internal error has occurred."), UpstreamUnavailable),
        (503, rpc(503, "UNAVAILABLE", "The model is overloaded."), Overloaded),
        (504, rpc(504, "DEADLINE_EXCEEDED", "Deadline expired."), UpstreamTimeout),
        (502, b"<html>Bad Gateway</html>", UpstreamUnavailable),
    ],
)
def test_error_mapping(status: int, body: bytes, kind: type[LLMError]) -> None:
    error = decode_error(status, body)
    assert type(error) is kind
    assert error.provider == "gemini"


def test_not_found_names_the_model() -> None:
    error = decode_error(
        404, rpc(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta")
    )
    assert isinstance(error, UnknownModel)
    assert error.model == "gemini-9"
    assert error.status_code == 404


@pytest.mark.parametrize(("delay", "seconds"), [("37s", 37.0), ("1.5s", 1.5), ("0.250s", 0.25)])
def test_rate_limit_retry_after_from_retry_info(delay: str, seconds: float) -> None:
    quota = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}
    body = rpc(429, "RESOURCE_EXHAUSTED", "quota", quota, retry_info(delay))
    error = decode_error(429, body, {"retry-after": "99"})
    assert isinstance(error, RateLimited)
    assert error.retry_after == seconds


def test_rate_limit_retry_after_header_as_fallback() -> None:
    error = decode_error(429, rpc(429, "RESOURCE_EXHAUSTED", "quota"), {"Retry-After": "4"})
    assert isinstance(error, RateLimited)
    assert error.retry_after == 4.0


def test_error_never_carries_the_key() -> None:
    body = rpc(400, "INVALID_ARGUMENT", f"bad key {KEY}")
    error = decode_error(400, body)
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert KEY not in json.dumps(error.raw)


# --------------------------------------------------------------------------- caller: parse


PATH = "/v1beta/models/gemini-2.5-flash:generateContent"


def parse(body: dict[str, Any], path: str = PATH) -> ChatRequest:
    return GEMINI_CALLER.parse_request(json.dumps(body).encode(), path)


def test_parse_full_request() -> None:
    req = parse(
        {
            "system_instruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "What is this?"},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
                    ],
                },
                {
                    "role": "model",
                    "parts": [
                        {"text": "thinking", "thought": True},
                        {"functionCall": {"name": "look", "args": {"q": "cat"}}},
                    ],
                },
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": "look", "response": {"r": 1}}}],
                },
            ],
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "look",
                            "description": "Look it up",
                            "parameters": {
                                "type": "OBJECT",
                                "properties": {"q": {"type": "STRING", "nullable": True}},
                            },
                        }
                    ]
                }
            ],
            "toolConfig": {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["look"]}
            },
            "generationConfig": {
                "maxOutputTokens": 100,
                "temperature": 0.5,
                "stopSequences": ["x"],
                "thinkingConfig": {"thinkingBudget": 2048},
                "candidateCount": 1,
            },
            "safetySettings": [],
        },
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    )
    assert req.model == "gemini-2.5-flash"
    assert req.stream is True
    assert req.messages[0] == Message(role="system", content="Be brief.")
    assert req.messages[1].content == [
        TextPart(text="What is this?"),
        ImagePart(data="iVBOR", media_type="image/png"),
    ]
    assistant = req.messages[2]
    assert assistant.reasoning == "thinking"
    assert assistant.tool_calls is not None
    call = assistant.tool_calls[0]
    assert (call.name, json.loads(call.arguments)) == ("look", {"q": "cat"})
    assert req.messages[3] == Message(
        role="tool", name="look", tool_call_id=call.id, content='{"r":1}'
    )
    assert req.tools == [
        Tool(
            name="look",
            description="Look it up",
            parameters={"type": "object", "properties": {"q": {"type": ["string", "null"]}}},
        )
    ]
    assert req.tool_choice == ToolChoice(mode="tool", name="look")
    assert (req.max_tokens, req.temperature, req.stop) == (100, 0.5, ["x"])
    assert req.reasoning_effort == "medium"  # 1024 < 2048 <= 8192
    assert req.extra == {
        EXTRA_KEY: {
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 2048}, "candidateCount": 1},
            "safetySettings": [],
        }
    }


def test_parse_pairs_responses_with_calls_by_id_then_name() -> None:
    req = parse(
        {
            "contents": [
                {"role": "user", "parts": [{"text": "go"}]},
                {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "f", "args": {}}},
                        {"functionCall": {"name": "f", "args": {"n": 2}}},
                        {"functionCall": {"name": "g", "args": {}, "id": "g-1"}},
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"name": "g", "response": {}, "id": "g-1"}},
                        {"functionResponse": {"name": "f", "response": {"first": True}}},
                        {"functionResponse": {"name": "f", "response": {"second": True}}},
                        {"text": "thanks"},
                    ],
                },
            ]
        }
    )
    calls = req.messages[1].tool_calls or []
    answers = [m.tool_call_id for m in req.messages[2:5]]
    assert answers == [calls[2].id, calls[0].id, calls[1].id]
    assert calls[2].id == "g-1"
    assert len({c.id for c in calls}) == 3
    assert req.messages[5] == Message(role="user", content="thanks")


@pytest.mark.parametrize(
    ("body", "path", "param"),
    [
        ({"contents": []}, PATH, "contents"),
        ({}, PATH, "contents"),
        ({"contents": [{"role": "bot", "parts": [{"text": "x"}]}]}, PATH, "contents[0].role"),
        (
            {"contents": [{"role": "user", "parts": [{"executableCode": {}}]}]},
            PATH,
            "contents[0].parts[0]",
        ),
        (
            {"contents": [{"parts": [{"inlineData": {"mimeType": "audio/mp3", "data": "x"}}]}]},
            PATH,
            "contents[0].parts[0].inlineData.mimeType",
        ),
        (
            {"contents": [{"role": "model", "parts": [{"functionCall": {"args": {}}}]}]},
            PATH,
            "contents[0].parts[0].functionCall.name",
        ),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"temperature": 9}},
            PATH,
            "generationConfig.temperature",
        ),
        ({"contents": [{"parts": [{"text": "x"}]}]}, "/v1beta/whatever", "model"),
    ],
)
def test_parse_errors_name_the_field(body: dict[str, Any], path: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(body, path)
    assert info.value.param == param


def test_parse_rejects_non_json() -> None:
    with pytest.raises(InvalidRequest):
        GEMINI_CALLER.parse_request(b"{nope", PATH)


# --------------------------------------------------------------------------- caller: answer


def test_encode_response_in_gemini_convention() -> None:
    response = ChatResponse(
        id="r-9",
        model="whatever",
        choices=[
            Choice(
                message=Message(
                    role="assistant",
                    content="Hi",
                    reasoning="hmm",
                    tool_calls=[
                        ToolCall(
                            id=f"c1{THOUGHT_SIGNATURE_MARK}CiQB-_thoughtA",
                            name="f",
                            arguments='{"a":1}',
                        )
                    ],
                ),
                finish_reason=FinishReason.TOOL_CALLS,
                native_finish_reason="tool_use",
            )
        ],
        usage=Usage(
            input_tokens=100, cached_input_tokens=40, output_tokens=50, reasoning_tokens=30
        ),
    )
    body = GEMINI_CALLER.encode_response(response, "gemini-2.5-flash")
    assert body == {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "hmm", "thought": True},
                        {"text": "Hi"},
                        {
                            "functionCall": {"name": "f", "args": {"a": 1}, "id": "c1"},
                            "thoughtSignature": SIGNATURE,
                        },
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        # candidates 50 - 30 reasoning = 20; total 100 + 50 = 150
        "usageMetadata": {
            "promptTokenCount": 100,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 30,
            "cachedContentTokenCount": 40,
            "totalTokenCount": 150,
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "r-9",
    }
    # and our own decoder reads it back to the same usage
    again = decode(body)
    assert again.usage == response.usage


def test_encode_response_finish_reasons_and_blocked_prompt() -> None:
    def finish(reason: FinishReason, native: str | None) -> str:
        choice = Choice(
            message=Message(role="assistant", content="x"),
            finish_reason=reason,
            native_finish_reason=native,
        )
        body = GEMINI_CALLER.encode_response(ChatResponse(id="r", model="m", choices=[choice]), "m")
        return str(body["candidates"][0]["finishReason"])

    assert finish(FinishReason.LENGTH, "max_tokens") == "MAX_TOKENS"
    assert finish(FinishReason.CONTENT_FILTER, "refusal") == "SAFETY"
    assert finish(FinishReason.CONTENT_FILTER, "RECITATION") == "RECITATION"
    assert finish(FinishReason.ERROR, "MALFORMED_FUNCTION_CALL") == "MALFORMED_FUNCTION_CALL"
    assert finish(FinishReason.ERROR, None) == "OTHER"
    blocked = decode({"promptFeedback": {"blockReason": "SAFETY"}})
    body = GEMINI_CALLER.encode_response(blocked, "m")
    assert body["promptFeedback"] == {"blockReason": "SAFETY"}
    assert "candidates" not in body


def test_stream_encoder_assembles_tool_calls_and_ends_with_usage() -> None:
    encoder = GEMINI_CALLER.stream_encoder("gemini-x", "resp-1")
    out = encoder.start()
    out += encoder.chunk(StreamChunk(role="assistant", reasoning="plan"))
    out += encoder.chunk(StreamChunk(text="Héllo"))
    out += encoder.chunk(
        StreamChunk(tool_calls=[ToolCallDelta(index=0, id="c1", name="f", arguments='{"a"')])
    )
    assert encoder.chunk(StreamChunk(tool_calls=[ToolCallDelta(index=0, arguments=":1}")])) == b""
    out += encoder.chunk(StreamChunk(finish_reason=FinishReason.TOOL_CALLS))
    usage = Usage(input_tokens=10, output_tokens=7, reasoning_tokens=2)
    out += encoder.finish(usage)
    events = [json.loads(e[len("data: ") :]) for e in out.decode().split("\r\n\r\n") if e]
    assert len(events) == 3
    assert all(e["responseId"] == "resp-1" and e["modelVersion"] == "gemini-x" for e in events)
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "f", "args": {"a": 1}, "id": "c1"}}
    ]
    # 7 output - 2 reasoning = 5 candidates tokens
    assert events[-1]["usageMetadata"] == {
        "promptTokenCount": 10,
        "candidatesTokenCount": 5,
        "thoughtsTokenCount": 2,
        "totalTokenCount": 17,
    }
    chunks, decoder = stream(out, step=3)
    assert "".join(c.text or "" for c in chunks) == "Héllo"
    assert "".join(c.reasoning or "" for c in chunks) == "plan"
    assert chunks[-1].finish_reason is FinishReason.TOOL_CALLS
    assert decoder.usage == usage


def test_caller_errors_in_google_rpc_shape() -> None:
    status, headers, body = GEMINI_CALLER.encode_error(RateLimited("slow down", retry_after=1.5))
    assert status == 429
    assert headers["retry-after"] == "2"
    error = json.loads(body)["error"]
    assert (error["code"], error["status"], error["message"]) == (
        429,
        "RESOURCE_EXHAUSTED",
        "slow down",
    )
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"} in error[
        "details"
    ]
    # our own upstream decoder understands what we send
    again = decode_error(status, body)
    assert isinstance(again, RateLimited)
    assert again.retry_after == 1.5

    status, _, body = GEMINI_CALLER.encode_error(Overloaded("busy"))
    assert (status, json.loads(body)["error"]["status"]) == (503, "UNAVAILABLE")
    status, _, body = GEMINI_CALLER.encode_error(UnknownModel("nope"))
    assert (status, json.loads(body)["error"]["status"]) == (404, "NOT_FOUND")
    status, headers, body = GEMINI_CALLER.encode_error(BudgetExceeded("spent", retry_after=60))
    assert status == 402
    assert "retry-after" not in headers
    assert (
        GEMINI_CALLER.error_payload(InvalidRequest("bad"))["error"]["status"] == "INVALID_ARGUMENT"
    )


def test_stream_encoder_error_event_decodes_as_the_error() -> None:
    encoder = GEMINI_CALLER.stream_encoder("m", "r")
    data = encoder.chunk(StreamChunk(text="a")) + encoder.error(Overloaded("busy"))
    decoder = GEMINI_DIALECT.stream_decoder(PROVIDER, request(user("hi"), stream=True))
    with pytest.raises(Overloaded):
        decoder.feed(data)


# --------------------------------------------------------------------------- FakeProvider


def fake_call(fake: FakeProvider, req: ChatRequest) -> httpx.Response:
    provider = ProviderConfig(
        name="gemini", dialect="gemini", base_url="https://fake.invalid", api_key=KEY
    )
    encoded = GEMINI_DIALECT.encode_request(req, provider, "gemini-2.5-flash")
    with httpx.Client(transport=fake.transport()) as client:
        return client.post(encoded.url, headers=encoded.headers, json=encoded.json)


def test_fake_provider_usage_matches_what_it_billed() -> None:
    fake = FakeProvider(
        [
            FakeModel(
                "gemini-2.5-flash",
                content="Bonjour",
                input_tokens=40,
                cached_tokens=30,
                reasoning_tokens=6,
            )
        ]
    )
    answer = fake_call(fake, request(user("hi")))
    response = GEMINI_DIALECT.decode_response(answer.content, PROVIDER)
    assert response.text == "Bonjour"
    assert response.usage == fake.calls[-1].usage
    chunks, decoder = stream(fake_call(fake, request(user("hi"), stream=True)).content, step=7)
    assert "".join(c.text or "" for c in chunks) == "Bonjour"
    assert decoder.usage == fake.calls[-1].usage


def test_fake_provider_tool_calls_and_cut_stream() -> None:
    fake = FakeProvider(
        [FakeModel("gemini-2.5-flash", tool_calls=(FakeToolCall("weather", {"city": "Oslo"}),))]
    )
    tools = [
        Tool(
            name="weather",
            parameters={"type": "object", "properties": {"city": {"type": "string"}}},
        )
    ]
    response = GEMINI_DIALECT.decode_response(
        fake_call(fake, request(user("q"), tools=tools)).content, PROVIDER
    )
    calls = response.choices[0].message.tool_calls or []
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("weather", {"city": "Oslo"})]
    assert response.choices[0].finish_reason is FinishReason.TOOL_CALLS
    fake.inject("gemini-2.5-flash", Failure.cut(after=1))
    data = fake_call(
        FakeProvider([FakeModel("gemini-2.5-flash", content="a b c d e f")]),
        request(user("q"), stream=True),
    ).content
    assert b"finishReason" in data  # a whole stream first, as a control
    cut = fake_call(fake, request(user("q"), stream=True)).content
    with pytest.raises(UpstreamProtocolError):
        stream(cut)


def test_fake_provider_rate_limit_retry_info() -> None:
    fake = FakeProvider([FakeModel("gemini-2.5-flash")])
    fake.inject("gemini-2.5-flash", Failure.rate_limit(retry_after=37))
    answer = fake_call(fake, request(user("q")))
    error = GEMINI_DIALECT.decode_error(
        answer.status_code, answer.headers, answer.content, PROVIDER
    )
    assert isinstance(error, RateLimited)
    assert error.retry_after == 37.0


# --------------------------------------------------------------------------- property


_names = st.sampled_from(["lookup", "add", "send_mail"])
_text = st.text(min_size=1, max_size=12)
_json_scalar = st.one_of(st.integers(-5, 5), st.booleans(), st.text(max_size=5), st.none())
_json_object = st.dictionaries(st.text(min_size=1, max_size=4), _json_scalar, max_size=3)
_b64 = st.binary(min_size=1, max_size=8).map(lambda b: base64.b64encode(b).decode())
_user_part = st.one_of(
    _text.map(lambda t: {"text": t}),
    _b64.map(lambda d: {"inlineData": {"mimeType": "image/png", "data": d}}),
    st.just({"fileData": {"mimeType": "image/jpeg", "fileUri": "https://x.example/f"}}),
)
_call = st.builds(lambda n, a: {"functionCall": {"name": n, "args": a}}, _names, _json_object)


@st.composite
def _contents(draw: st.DrawFn) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = [
        {"role": "user", "parts": draw(st.lists(_user_part, min_size=1, max_size=3))}
    ]
    for _ in range(draw(st.integers(0, 3))):
        texts = draw(st.lists(_text.map(lambda t: {"text": t}), max_size=2))
        calls = draw(st.lists(_call, max_size=2, min_size=0 if texts else 1))
        turns.append({"role": "model", "parts": texts + calls})
        answers = [
            {
                "functionResponse": {
                    "name": c["functionCall"]["name"],
                    "response": draw(_json_object),
                }
            }
            for c in calls
        ]
        tail = draw(st.lists(_user_part, min_size=0 if answers else 1, max_size=2))
        turns.append({"role": "user", "parts": answers + tail})
    return turns


_prop_schema = st.fixed_dictionaries(
    {"type": st.sampled_from(["string", "integer", "number", "boolean"])},
    optional={"description": _text, "nullable": st.just(True)},
)
_declaration = st.builds(
    lambda name, desc, props: {
        "name": name,
        **({"description": desc} if desc else {}),
        **({"parameters": {"type": "object", "properties": props}} if props else {}),
    },
    _names,
    st.one_of(st.none(), _text),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), _prop_schema, max_size=2),
)
_generation = st.fixed_dictionaries(
    {},
    optional={
        "maxOutputTokens": st.integers(1, 10_000),
        "temperature": st.floats(0, 2),
        "topP": st.floats(0, 1),
        "topK": st.integers(1, 100),
        "stopSequences": st.lists(_text, min_size=1, max_size=2),
        "seed": st.integers(0, 2**31),
        "candidateCount": st.just(1),
        "thinkingConfig": st.one_of(
            st.builds(lambda b: {"thinkingBudget": b}, st.integers(-1, 30_000)),
            st.builds(lambda lv: {"thinkingLevel": lv}, st.sampled_from(["low", "high"])),
        ),
        "responseMimeType": st.just("application/json"),
    },
)


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": draw(_contents())}
    if draw(st.booleans()):
        body["systemInstruction"] = {
            "parts": draw(st.lists(_text.map(lambda t: {"text": t}), min_size=1, max_size=2))
        }
    declarations = draw(st.lists(_declaration, max_size=3, unique_by=lambda d: d["name"]))
    if declarations:
        body["tools"] = [{"functionDeclarations": declarations}]
        config: dict[str, Any] = {"mode": draw(st.sampled_from(["AUTO", "ANY", "NONE"]))}
        if config["mode"] == "ANY" and draw(st.booleans()):
            config["allowedFunctionNames"] = [declarations[0]["name"]]
        if draw(st.booleans()):
            body["toolConfig"] = {"functionCallingConfig": config}
    generation = draw(_generation)
    if generation.get("responseMimeType") and draw(st.booleans()):
        generation["responseSchema"] = {"type": "object", "properties": {"a": draw(_prop_schema)}}
    if generation:
        body["generationConfig"] = generation
    if draw(st.booleans()):
        body["safetySettings"] = [
            {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}
        ]
    return body


@settings(max_examples=150, deadline=None)
@given(_bodies(), st.booleans())
def test_gemini_caller_to_gemini_upstream_is_lossless(body: dict[str, Any], streamed: bool) -> None:
    method = "streamGenerateContent?alt=sse" if streamed else "generateContent"
    req = parse(body, f"/v1beta/models/gemini-2.5-flash:{method}")
    encoded = GEMINI_DIALECT.encode_request(req, PROVIDER, req.model)
    assert encoded.url.endswith(f"models/gemini-2.5-flash:{method}")
    assert encoded.json == body


# --------------------------------------------------------------------------- edge cases


def test_caller_key_in_the_url_is_neither_needed_nor_echoed() -> None:
    secret = "AIzaSy-caller-secret"
    req = parse({"contents": [{"parts": [{"text": "x"}]}]}, f"{PATH}?key={secret}")
    assert req.model == "gemini-2.5-flash"
    with pytest.raises(InvalidRequest) as info:
        parse({"contents": [{"parts": [{"text": "x"}]}]}, f"/v1beta/nothing?key={secret}")
    assert secret not in str(info.value)


def test_caller_native_json_schema_and_tool_config_pass_through() -> None:
    schema = {"type": "object", "additionalProperties": False, "properties": {}}
    body = {
        "contents": [{"parts": [{"text": "x"}]}],
        "tools": [{"functionDeclarations": [{"name": "f"}, {"name": "g"}]}],
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f", "g"]}
        },
        "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": schema},
    }
    req = parse(body)
    assert req.tool_choice == ToolChoice(mode="required")
    assert req.response_format == ResponseFormat(type="json_schema", json_schema=schema)
    encoded = encode(req)
    # Gemini takes full JSON schema in responseJsonSchema: untrimmed, and no responseSchema
    assert encoded["generationConfig"] == body["generationConfig"]
    # two allowed names have no normalized form: the caller's own toolConfig goes out
    assert encoded["toolConfig"] == body["toolConfig"]


def test_stream_ends_only_when_every_candidate_finished() -> None:
    data = sse(
        {
            "candidates": [
                {"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP", "index": 0},
                {"content": {"parts": [{"text": "b"}]}, "index": 1},
            ]
        },
        {
            "candidates": [
                {"content": {"parts": [{"text": "c"}]}, "finishReason": "STOP", "index": 1}
            ],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2},
        },
    )
    chunks, decoder = stream(data)
    assert [(c.index, c.text, c.finish_reason) for c in chunks] == [
        (0, "a", FinishReason.STOP),
        (1, "b", None),
        (1, "c", FinishReason.STOP),
    ]
    assert [c.usage for c in chunks] == [None, None, Usage(input_tokens=3, output_tokens=2)]
    assert decoder.usage == Usage(input_tokens=3, output_tokens=2)


def test_usage_arriving_after_the_end_corrects_the_total() -> None:
    data = sse(
        {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}]},
        {"usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 1}},
    )
    chunks, decoder = stream(data)
    assert chunks[0].usage is not None
    assert chunks[0].usage.estimated
    assert chunks[-1].usage == Usage(input_tokens=7, output_tokens=1)
    assert decoder.usage == Usage(input_tokens=7, output_tokens=1)


def test_error_bodies_as_arrays_and_inside_a_200() -> None:
    array = b'[{"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}]'
    assert isinstance(decode_error(503, array), Overloaded)
    with pytest.raises(RateLimited):
        GEMINI_DIALECT.decode_response(rpc(429, "RESOURCE_EXHAUSTED", "quota"), PROVIDER)


_signature = st.binary(min_size=1, max_size=12).map(lambda b: base64.b64encode(b).decode())
_answer_part = st.one_of(
    _text.map(lambda t: {"text": t}),
    _text.map(lambda t: {"text": t, "thought": True}),
    st.builds(
        lambda call, sig: {**call, **({"thoughtSignature": sig} if sig else {})},
        _call,
        st.one_of(st.none(), _signature),
    ),
)
_answer = st.fixed_dictionaries(
    {
        "candidates": st.lists(_answer_part, min_size=1, max_size=4).map(
            lambda parts: [{"content": {"role": "model", "parts": parts}}]
        ),
        "finish": st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "MALFORMED_FUNCTION_CALL"]),
        "usageMetadata": st.fixed_dictionaries(
            {
                "promptTokenCount": st.integers(0, 10**6),
                "candidatesTokenCount": st.integers(0, 10**5),
            },
            optional={
                "cachedContentTokenCount": st.integers(0, 10**6),
                "thoughtsTokenCount": st.integers(0, 10**5),
            },
        ),
        "responseId": st.text("abcdef0123456789", min_size=1, max_size=10),
    }
)


@settings(max_examples=150, deadline=None)
@given(_answer)
def test_gemini_answer_survives_decode_and_reencode(answer: dict[str, Any]) -> None:
    answer["candidates"][0]["finishReason"] = answer.pop("finish")
    meta = answer["usageMetadata"]
    meta["cachedContentTokenCount"] = min(
        meta.get("cachedContentTokenCount", 0), meta["promptTokenCount"]
    )
    first = decode(answer)
    again = decode(GEMINI_CALLER.encode_response(first, "gemini-relay"))
    assert again.model == "gemini-relay"
    assert again.id == first.id == answer["responseId"]
    assert again.choices == first.choices
    assert again.usage == first.usage


def test_registry_resolves_the_gemini_dialects_and_config() -> None:
    from routing_middleware.providers.registry import caller_dialect, dialect, provider_config

    assert dialect("gemini") is GEMINI_DIALECT
    assert caller_dialect("gemini") is GEMINI_CALLER
    config = provider_config("gemini", api_key=KEY)
    encoded = GEMINI_DIALECT.encode_request(request(user("hi")), config, "gemini-2.5-flash")
    assert encoded.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert encoded.headers["x-goog-api-key"] == KEY


def test_vertex_style_base_url_keeps_its_own_path() -> None:
    base = "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1/publishers/google"
    vertex = ProviderConfig(
        name="vertex", dialect="gemini", base_url=base, api_key="oauth", options={"auth": "bearer"}
    )
    encoded = GEMINI_DIALECT.encode_request(
        request(user("hi"), stream=True), vertex, "gemini-2.5-pro"
    )
    assert encoded.url == f"{base}/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert encoded.headers["authorization"] == "Bearer oauth"


_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 3),
        st.floats(allow_nan=False),
        st.text(max_size=4),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "contents",
                    "role",
                    "parts",
                    "text",
                    "functionCall",
                    "functionResponse",
                    "name",
                    "args",
                    "response",
                    "inlineData",
                    "fileData",
                    "mimeType",
                    "data",
                    "fileUri",
                    "tools",
                    "functionDeclarations",
                    "parameters",
                    "toolConfig",
                    "generationConfig",
                    "functionCallingConfig",
                    "mode",
                    "allowedFunctionNames",
                    "systemInstruction",
                    "temperature",
                    "thinkingConfig",
                    "thinkingBudget",
                    "responseSchema",
                    "type",
                ]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=25,
)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*path, i))
    return found


@st.composite
def _broken_bodies(draw: st.DrawFn) -> Any:
    """A valid request with one node, anywhere, replaced by arbitrary JSON."""
    body = json.loads(json.dumps(draw(_bodies())))  # a copy: strategies share st.just values
    path = draw(st.sampled_from(_paths(body)))
    garbage = draw(_json)
    if not path:
        return garbage
    node = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = garbage
    return body


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json, _broken_bodies()))
def test_any_garbage_is_a_clear_invalid_request(body: Any) -> None:
    # The property: bad input fails only as InvalidRequest (a 400 naming the field),
    # never as a TypeError or KeyError surfacing as a 500.
    try:
        req = GEMINI_CALLER.parse_request(json.dumps(body).encode(), PATH)
    except InvalidRequest:
        return
    with contextlib.suppress(InvalidRequest):
        encode(req)


@pytest.mark.parametrize(
    ("total", "expected_input"),
    [
        (None, 110),  # no total to check against: the tool-use prompt adds to the prompt
        (160, 110),  # 160 = 100 prompt + 10 tool use + 20 candidates + 30 thoughts
        (150, 100),  # 150 = 100 + 20 + 30: the tool-use tokens sit inside the prompt count
    ],
)
def test_tool_use_prompt_is_counted_once(total: int | None, expected_input: int) -> None:
    meta = {
        "promptTokenCount": 100,
        "toolUsePromptTokenCount": 10,
        "candidatesTokenCount": 20,
        "thoughtsTokenCount": 30,
    }
    if total is not None:
        meta["totalTokenCount"] = total
    response = decode(
        {"candidates": [{"content": {"parts": [{"text": "x"}]}}], "usageMetadata": meta}
    )
    assert response.usage is not None
    assert response.usage.input_tokens == expected_input
    assert response.usage.output_tokens == 50
