"""Edges of translating between dialects that the scenario matrix does not reach.

Each test feeds one provider's real wire shape through the relay's pieces (decoder
of the upstream dialect, encoder of the caller's) and lets the caller's own SDK
read the result where one exists.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai

from routing_middleware.providers.anthropic import ANTHROPIC_DIALECT
from routing_middleware.providers.openai_caller import OPENAI_CALLER
from routing_middleware.providers.registry import provider_config
from routing_middleware.schema import ChatRequest, Message
from tests.core.sdk_helpers import sdk
from tests.core.test_provider_anthropic import sse_event


def _anthropic_no_argument_tool_stream() -> bytes:
    """What Anthropic streams for a call of a tool without parameters: the input
    arrives as one ``input_json_delta`` whose ``partial_json`` is empty."""
    message: dict[str, Any] = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-up",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    tool = {"type": "tool_use", "id": "toolu_01", "name": "get_time", "input": {}}
    return b"".join(
        [
            sse_event("message_start", {"type": "message_start", "message": message}),
            sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": tool},
            ),
            sse_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": ""},
                },
            ),
            sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            sse_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                    "usage": {"output_tokens": 9},
                },
            ),
            sse_event("message_stop", {"type": "message_stop"}),
        ]
    )


def test_openai_caller_streams_valid_json_for_an_anthropic_call_without_arguments() -> None:
    request = ChatRequest(model="caller-model", messages=[Message(role="user", content="time?")])
    config = provider_config("anthropic", api_key="k", base_url="https://fake.invalid")
    decoder = ANTHROPIC_DIALECT.stream_decoder(config, request)
    encoder = OPENAI_CALLER.stream_encoder("caller-model", "chatcmpl-1")
    raw = _anthropic_no_argument_tool_stream()
    out = [encoder.start()]
    out += [encoder.chunk(c) for c in decoder.feed(raw)]
    out += [encoder.chunk(c) for c in decoder.close()]
    out.append(encoder.finish(decoder.usage))
    body = b"".join(out)

    def handle(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = sdk(openai.OpenAI, handle, api_key="caller-key", base_url="https://gateway.test/v1")
    arguments: dict[int, str] = {}
    names: dict[int, str] = {}
    finish = None
    stream = client.chat.completions.create(
        model="caller-model", messages=[{"role": "user", "content": "time?"}], stream=True
    )
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                function = call.function
                names[call.index] = (function.name if function else None) or names.get(
                    call.index, ""
                )
                arguments[call.index] = arguments.get(call.index, "") + (
                    (function.arguments if function else None) or ""
                )
    assert names == {0: "get_time"}
    # Real OpenAI sends "{}" for a call without arguments; "" is not JSON.
    assert json.loads(arguments[0]) == {}
    assert finish == "tool_calls"


def test_openai_temperature_above_anthropics_range_is_clamped_not_sent() -> None:
    # OpenAI takes temperature up to 2; Anthropic rejects anything above 1 with a 400,
    # so a call routed there must not fail for a value valid in the caller's dialect.
    body = json.dumps(
        {
            "model": "caller-model",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 1.6,
        }
    ).encode()
    request = OPENAI_CALLER.parse_request(body, "/v1/chat/completions")
    config = provider_config("anthropic", api_key="k", base_url="https://fake.invalid")
    encoded = ANTHROPIC_DIALECT.encode_request(request, config, "claude-up")
    assert encoded.json["temperature"] == 1.0


def test_top_reasoning_efforts_of_other_dialects_reach_gemini_2() -> None:
    # "xhigh" is an OpenAI reasoning_effort and "max" an Anthropic output_config.effort;
    # a call routed to a Gemini 2.x model must get a thinking budget, not a 400.
    from routing_middleware.providers.anthropic import ANTHROPIC_CALLER
    from routing_middleware.providers.gemini import GEMINI_DIALECT

    config = provider_config("gemini", api_key="k", base_url="https://fake.invalid/v1beta")
    openai_body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": "xhigh",
    }
    anthropic_body = {
        "model": "m",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"effort": "max"},
    }
    for request in (
        OPENAI_CALLER.parse_request(json.dumps(openai_body).encode()),
        ANTHROPIC_CALLER.parse_request(json.dumps(anthropic_body).encode()),
    ):
        encoded = GEMINI_DIALECT.encode_request(request, config, "gemini-2.5-flash")
        budget = encoded.json["generationConfig"]["thinkingConfig"]["thinkingBudget"]
        assert budget == 24576


def _refusing_openai_upstream() -> Any:
    from routing_middleware.testing import FakeModel, FakeProvider

    return FakeProvider([FakeModel("gpt-up", content="x", input_tokens=10, finish="refusal")])


def _openai_answer(fake: Any, request: ChatRequest) -> bytes:
    from routing_middleware.providers.openai import OPENAI_DIALECT

    config = provider_config("openai", api_key="k", base_url="https://fake.invalid/v1")
    encoded = OPENAI_DIALECT.encode_request(request, config, "gpt-up")
    _, _, raw = fake.handle(
        "POST",
        "/v1/chat/completions",
        headers=encoded.headers,
        query={},
        body=json.dumps(encoded.json).encode(),
    )
    return bytes(raw)


def test_anthropic_sdk_stream_sees_an_openai_refusal() -> None:
    # OpenAI streams a refusal in delta.refusal with null content; an Anthropic caller
    # got an empty message from a stream, while the same answer whole showed the text.
    import anthropic

    from routing_middleware.providers.anthropic import ANTHROPIC_CALLER
    from routing_middleware.providers.openai import OPENAI_DIALECT

    fake = _refusing_openai_upstream()
    config = provider_config("openai", api_key="k", base_url="https://fake.invalid/v1")

    def handle(http: httpx2.Request) -> httpx2.Response:
        request = ANTHROPIC_CALLER.parse_request(http.content)
        raw = _openai_answer(fake, request)
        decoder = OPENAI_DIALECT.stream_decoder(config, request)
        encoder = ANTHROPIC_CALLER.stream_encoder("caller-model", "msg_1")
        out = [encoder.start()]
        out += [encoder.chunk(c) for c in decoder.feed(raw)]
        out += [encoder.chunk(c) for c in decoder.close()]
        out.append(encoder.finish(decoder.usage))
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(out)
        )

    client = sdk(anthropic.Anthropic, handle, api_key="caller-key", base_url="https://gw.test")
    with client.messages.stream(
        model="caller-model", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as events:
        message = events.get_final_message()
    text = "".join(b.text for b in message.content if b.type == "text")
    assert text == "I'm sorry, I can't help with that."


def test_gemini_caller_sees_an_openai_refusal() -> None:
    from routing_middleware.providers.gemini import GEMINI_CALLER
    from routing_middleware.providers.openai import OPENAI_DIALECT

    fake = _refusing_openai_upstream()
    config = provider_config("openai", api_key="k", base_url="https://fake.invalid/v1")
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    request = GEMINI_CALLER.parse_request(
        json.dumps(body).encode(), "/v1beta/models/caller-model:generateContent"
    )
    response = OPENAI_DIALECT.decode_response(_openai_answer(fake, request), config)
    answer = GEMINI_CALLER.encode_response(response, "caller-model")
    parts = answer["candidates"][0]["content"]["parts"]
    assert [p["text"] for p in parts] == ["I'm sorry, I can't help with that."]
