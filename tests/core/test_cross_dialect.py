"""Every caller dialect against every provider dialect, through the whole relay.

A request in the caller's dialect A is parsed, encoded for provider dialect B, answered
by FakeProvider (an independent server speaking B), decoded, re-encoded for A, and then
read back the way A's client would: with A's own upstream decoder as a stand-in for
its SDK, and with the real openai / anthropic SDKs where they exist. Text, tool calls
(names and parsed arguments), finish reasons and usage totals must survive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from routing_middleware.providers.anthropic import ANTHROPIC_CALLER, ANTHROPIC_DIALECT
from routing_middleware.providers.base import CallerDialect, Dialect, ProviderConfig
from routing_middleware.providers.gemini import GEMINI_CALLER, GEMINI_DIALECT
from routing_middleware.providers.openai import OPENAI_DIALECT
from routing_middleware.providers.openai_caller import OPENAI_CALLER, wants_stream_usage
from routing_middleware.providers.registry import provider_config
from routing_middleware.schema import ChatRequest, FinishReason, LLMError, RateLimited, Usage
from routing_middleware.testing import Failure, FakeModel, FakeProvider, FakeToolCall
from tests.core.sdk_helpers import sdk

DIALECTS = ("openai", "anthropic", "gemini")
PAIRS = [(a, b) for a in DIALECTS for b in DIALECTS]
UPSTREAM: dict[str, Dialect] = {
    "openai": OPENAI_DIALECT,
    "anthropic": ANTHROPIC_DIALECT,
    "gemini": GEMINI_DIALECT,
}
CALLERS: dict[str, CallerDialect] = {
    "openai": OPENAI_CALLER,
    "anthropic": ANTHROPIC_CALLER,
    "gemini": GEMINI_CALLER,
}
#: The upstream model each provider dialect is asked for.
UPSTREAM_MODEL = {"openai": "gpt-up", "anthropic": "claude-up", "gemini": "gemini-up"}
CALLER_MODEL = "caller-model"
FAKE_BASE = {
    "openai": "https://fake.invalid/v1",
    "anthropic": "https://fake.invalid",
    "gemini": "https://fake.invalid/v1beta",
}
ASK = "Weather in Paris?"
SYSTEM = "Answer briefly."
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}


def provider(name: str) -> ProviderConfig:
    return provider_config(name, api_key=f"{name}-test-key", base_url=FAKE_BASE[name])


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """What the fake upstream answers, and what must reach the caller."""

    name: str
    model: dict[str, Any]
    text: str
    calls: tuple[tuple[str, dict[str, Any]], ...]
    finish: FinishReason


SCENARIOS = [
    Scenario(
        "text",
        {
            "content": "Sunny, 21 °C ☀",
            "input_tokens": 60,
            "cached_tokens": 40,
            "reasoning_tokens": 9,
        },
        "Sunny, 21 °C ☀",
        (),
        FinishReason.STOP,
    ),
    Scenario(
        "tools",
        {
            "content": "Let me check.",
            "input_tokens": 80,
            "tool_calls": (
                FakeToolCall("get_weather", {"city": "Paris", "days": 2}),
                FakeToolCall("get_weather", {"city": "Lyon"}),
            ),
        },
        "Let me check.",
        (("get_weather", {"city": "Paris", "days": 2}), ("get_weather", {"city": "Lyon"})),
        FinishReason.TOOL_CALLS,
    ),
    Scenario(
        "length",
        {"content": "It is sunny and", "input_tokens": 30, "finish": "length"},
        "It is sunny and",
        (),
        FinishReason.LENGTH,
    ),
]


def fake_for(scenario: Scenario) -> FakeProvider:
    return FakeProvider([FakeModel(name, **scenario.model) for name in UPSTREAM_MODEL.values()])


# --------------------------------------------------------------------------- caller requests


def caller_request(caller: str, stream: bool) -> tuple[bytes, str]:
    """A request as caller ``caller``'s client would send it: body and URL path."""
    if caller == "openai":
        body: dict[str, Any] = {
            "model": CALLER_MODEL,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Forecast",
                        "parameters": WEATHER_SCHEMA,
                    },
                }
            ],
            "max_completion_tokens": 200,
        }
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return json.dumps(body).encode(), "/v1/chat/completions"
    if caller == "anthropic":
        body = {
            "model": CALLER_MODEL,
            "max_tokens": 200,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": ASK}],
            "tools": [
                {"name": "get_weather", "description": "Forecast", "input_schema": WEATHER_SCHEMA}
            ],
        }
        if stream:
            body["stream"] = True
        return json.dumps(body).encode(), "/v1/messages"
    body = {
        "systemInstruction": {"parts": [{"text": SYSTEM}]},
        "contents": [{"role": "user", "parts": [{"text": ASK}]}],
        "tools": [
            {
                "functionDeclarations": [
                    {"name": "get_weather", "description": "Forecast", "parameters": WEATHER_SCHEMA}
                ]
            }
        ],
        "generationConfig": {"maxOutputTokens": 200},
    }
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return json.dumps(body).encode(), f"/v1beta/models/{CALLER_MODEL}:{method}"


# --------------------------------------------------------------------------- the relay


@dataclass
class Relayed:
    request: ChatRequest
    upstream_body: dict[str, Any]
    status: int
    headers: dict[str, str]
    body: bytes


def relay(caller: str, upstream: str, body: bytes, path: str, fake: FakeProvider) -> Relayed:
    """What the routing transport does, minus routing: A in, B upstream, A out."""
    a, b, config = CALLERS[caller], UPSTREAM[upstream], provider(upstream)
    request = a.parse_request(body, path)
    encoded = b.encode_request(request, config, UPSTREAM_MODEL[upstream])
    url = httpx.URL(encoded.url)
    status, raw_headers, raw = fake.handle(
        "POST",
        url.path,
        headers=encoded.headers,
        query=dict(url.params),
        body=json.dumps(encoded.json).encode(),
    )
    if status >= 400:
        error = b.decode_error(status, dict(raw_headers), raw, config)
        out_status, out_headers, out = a.encode_error(error)
        return Relayed(request, encoded.json, out_status, out_headers, out)
    if not request.stream:
        response = b.decode_response(raw, config)
        out = json.dumps(a.encode_response(response, request.model)).encode()
        return Relayed(request, encoded.json, 200, {"content-type": "application/json"}, out)
    decoder = b.stream_decoder(config, request)
    if a is OPENAI_CALLER:
        encoder = OPENAI_CALLER.stream_encoder(
            request.model, "resp-relay", include_usage=wants_stream_usage(request)
        )
    else:
        encoder = a.stream_encoder(request.model, "resp-relay")
    parts = [encoder.start()]
    try:
        for i in range(0, len(raw), 5):  # small reads: events and characters split anywhere
            parts += [encoder.chunk(chunk) for chunk in decoder.feed(raw[i : i + 5])]
        parts += [encoder.chunk(chunk) for chunk in decoder.close()]
    except LLMError as error:  # a broken upstream stream must reach the caller as broken
        parts.append(encoder.error(error))
    else:
        parts.append(encoder.finish(decoder.usage))
    return Relayed(
        request, encoded.json, 200, {"content-type": "text/event-stream"}, b"".join(parts)
    )


# --------------------------------------------------------------------------- A's reading


@dataclass
class Outcome:
    text: str
    calls: list[tuple[str, dict[str, Any]]]
    finish: FinishReason | None
    usage: Usage | None
    model: str | None


def caller_side(caller: str) -> ProviderConfig:
    return provider(caller)


def read_response(caller: str, body: bytes) -> Outcome:
    """A's own upstream decoder reads what we answered, as A's SDK would."""
    response = UPSTREAM[caller].decode_response(body, caller_side(caller))
    choice = response.choices[0]
    calls = [(c.name, json.loads(c.arguments)) for c in choice.message.tool_calls or ()]
    return Outcome(choice.message.text, calls, choice.finish_reason, response.usage, response.model)


def read_stream(caller: str, body: bytes, request: ChatRequest) -> Outcome:
    decoder = UPSTREAM[caller].stream_decoder(caller_side(caller), request)
    chunks = []
    for i in range(0, len(body), 3):
        chunks += decoder.feed(body[i : i + 3])
    chunks += decoder.close()
    text = "".join(c.text or "" for c in chunks)
    slots: dict[int, list[str]] = {}
    for chunk in chunks:
        for delta in chunk.tool_calls or ():
            slot = slots.setdefault(delta.index, ["", ""])
            slot[0] = delta.name or slot[0]
            slot[1] += delta.arguments
    calls = [(name, json.loads(args or "{}")) for name, args in (slots[i] for i in sorted(slots))]
    finishes = [c.finish_reason for c in chunks if c.finish_reason is not None]
    models = [c.model for c in chunks if c.model]
    return Outcome(
        text,
        calls,
        finishes[-1] if finishes else None,
        decoder.usage,
        models[0] if models else None,
    )


def same_totals(seen: Usage | None, billed: Usage | None) -> None:
    assert seen is not None
    assert billed is not None
    assert not seen.estimated
    got = (seen.input_tokens, seen.cached_input_tokens, seen.output_tokens, seen.reasoning_tokens)
    want = (
        billed.input_tokens,
        billed.cached_input_tokens,
        billed.output_tokens,
        billed.reasoning_tokens,
    )
    assert got == want


def check(outcome: Outcome, scenario: Scenario, fake: FakeProvider) -> None:
    assert outcome.text == scenario.text
    assert outcome.calls == list(scenario.calls)
    assert outcome.finish is scenario.finish
    same_totals(outcome.usage, fake.calls[-1].usage)


def check_upstream_body(upstream: str, body: dict[str, Any]) -> None:
    """The upstream request carries the system prompt, the question and the tool, in B's shape."""
    if upstream == "openai":
        assert body["messages"] == [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": ASK},
        ]
        assert body["tools"][0]["function"]["name"] == "get_weather"
        assert body["tools"][0]["function"]["parameters"]["properties"]["city"] == {
            "type": "string"
        }
    elif upstream == "anthropic":
        system = body["system"]
        assert (system if isinstance(system, str) else system[0]["text"]) == SYSTEM
        assert body["messages"][0]["role"] == "user"
        assert ASK in json.dumps(body["messages"][0], ensure_ascii=False)
        assert body["tools"][0]["name"] == "get_weather"
        assert body["tools"][0]["input_schema"]["required"] == ["city"]
    else:
        assert body["systemInstruction"] == {"parts": [{"text": SYSTEM}]}
        assert body["contents"] == [{"role": "user", "parts": [{"text": ASK}]}]
        declaration = body["tools"][0]["functionDeclarations"][0]
        assert declaration["name"] == "get_weather"
        assert declaration["parameters"]["required"] == ["city"]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
@pytest.mark.parametrize(("caller", "upstream"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_response_survives_the_relay(caller: str, upstream: str, scenario: Scenario) -> None:
    fake = fake_for(scenario)
    body, path = caller_request(caller, stream=False)
    relayed = relay(caller, upstream, body, path, fake)
    assert relayed.status == 200
    assert fake.calls[-1].dialect == upstream
    assert fake.calls[-1].model == UPSTREAM_MODEL[upstream]
    check_upstream_body(upstream, relayed.upstream_body)
    outcome = read_response(caller, relayed.body)
    check(outcome, scenario, fake)
    assert outcome.model == CALLER_MODEL


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
@pytest.mark.parametrize(("caller", "upstream"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_stream_survives_the_relay(caller: str, upstream: str, scenario: Scenario) -> None:
    fake = fake_for(scenario)
    body, path = caller_request(caller, stream=True)
    relayed = relay(caller, upstream, body, path, fake)
    assert relayed.request.stream
    assert fake.calls[-1].stream
    outcome = read_stream(caller, relayed.body, relayed.request)
    check(outcome, scenario, fake)


@pytest.mark.parametrize(("caller", "upstream"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_rate_limit_reaches_the_caller_in_its_dialect(caller: str, upstream: str) -> None:
    fake = fake_for(SCENARIOS[0])
    fake.inject(UPSTREAM_MODEL[upstream], Failure.rate_limit(retry_after=7))
    body, path = caller_request(caller, stream=False)
    relayed = relay(caller, upstream, body, path, fake)
    assert relayed.status == 429
    # A's own decoder reads our error body back as the same kind of error
    error = UPSTREAM[caller].decode_error(
        relayed.status, relayed.headers, relayed.body, caller_side(caller)
    )
    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0


# --------------------------------------------------------------------------- real SDKs


def sdk_handler(caller: str, upstream: str, fake: FakeProvider) -> Any:
    def handle(request: httpx2.Request) -> httpx2.Response:
        relayed = relay(caller, upstream, request.content, request.url.path, fake)
        return httpx2.Response(relayed.status, headers=relayed.headers, content=relayed.body)

    return handle


UPSTREAMS = list(DIALECTS)
TOOLS_SCENARIO = SCENARIOS[1]
TEXT_SCENARIO = SCENARIOS[0]


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("scenario", [TEXT_SCENARIO, TOOLS_SCENARIO], ids=lambda s: s.name)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_openai_sdk_reads_any_provider(upstream: str, scenario: Scenario, stream: bool) -> None:
    fake = fake_for(scenario)
    client = sdk(
        openai.OpenAI,
        sdk_handler("openai", upstream, fake),
        api_key="caller-key",
        base_url="https://gateway.test/v1",
    )
    kwargs: Any = {
        "model": CALLER_MODEL,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}],
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA},
            }
        ],
    }
    billed_finish = {FinishReason.STOP: "stop", FinishReason.TOOL_CALLS: "tool_calls"}[
        scenario.finish
    ]
    if not stream:
        result = client.chat.completions.create(**kwargs)
        message = result.choices[0].message
        text = message.content or ""
        calls = [
            (c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or ()
        ]
        finish = result.choices[0].finish_reason
        usage = result.usage
    else:
        text, finish, usage = "", None, None
        slots: dict[int, list[str]] = {}
        for chunk in client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        ):
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or ():
                    slot = slots.setdefault(call.index, ["", ""])
                    slot[0] = (call.function.name if call.function else None) or slot[0]
                    slot[1] += (call.function.arguments if call.function else None) or ""
        calls = [(n, json.loads(a)) for n, a in (slots[i] for i in sorted(slots))]
    assert text == scenario.text
    assert calls == list(scenario.calls)
    assert finish == billed_finish
    billed = fake.calls[-1].usage
    assert usage is not None
    assert billed is not None
    assert usage.prompt_tokens == billed.input_tokens
    assert usage.completion_tokens == billed.output_tokens
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    assert (cached or 0) == billed.cached_input_tokens
    reasoning = (
        usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0
    )
    assert (reasoning or 0) == billed.reasoning_tokens


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("scenario", [TEXT_SCENARIO, TOOLS_SCENARIO], ids=lambda s: s.name)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_sdk_reads_any_provider(upstream: str, scenario: Scenario, stream: bool) -> None:
    fake = fake_for(scenario)
    client = sdk(
        anthropic.Anthropic,
        sdk_handler("anthropic", upstream, fake),
        api_key="caller-key",
        base_url="https://gateway.test",
    )
    kwargs: Any = {
        "model": CALLER_MODEL,
        "max_tokens": 200,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": ASK}],
        "tools": [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
    }
    if stream:
        with client.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    text = "".join(block.text for block in message.content if block.type == "text")
    calls = [(b.name, b.input) for b in message.content if b.type == "tool_use"]
    assert text == scenario.text
    assert calls == list(scenario.calls)
    assert (
        message.stop_reason
        == {FinishReason.STOP: "end_turn", FinishReason.TOOL_CALLS: "tool_use"}[scenario.finish]
    )
    billed = fake.calls[-1].usage
    assert billed is not None
    usage = message.usage
    # Anthropic reports cache reads and writes outside input_tokens: add them back
    total_input = (
        usage.input_tokens
        + (usage.cache_read_input_tokens or 0)
        + (usage.cache_creation_input_tokens or 0)
    )
    assert total_input == billed.input_tokens
    assert (usage.cache_read_input_tokens or 0) == billed.cached_input_tokens
    assert usage.output_tokens == billed.output_tokens


# --------------------------------------------------------------------------- tool histories


def caller_history(caller: str, call_id: str = "call_1", stream: bool = False) -> tuple[bytes, str]:
    """A second turn: the model called get_weather(Paris), the caller answers "21 C"."""
    body, path = caller_request(caller, stream)
    data = json.loads(body)
    if caller == "openai":
        data["messages"] += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "21 C"},
        ]
    elif caller == "anthropic":
        data["messages"] += [
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": call_id,
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "21 C"}],
            },
        ]
    else:
        data["contents"] += [
            {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {
                            "name": "get_weather",
                            "args": {"city": "Paris"},
                            "id": call_id,
                        }
                    }
                ],
            },
            {
                "role": "user",
                "parts": [
                    {
                        "functionResponse": {
                            "name": "get_weather",
                            "response": {"output": "21 C"},
                            "id": call_id,
                        }
                    }
                ],
            },
        ]
    return json.dumps(data).encode(), path


def upstream_pairs(upstream: str, body: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(call name, call key, answer key) per tool call in B's body; keys must match."""
    pairs: list[tuple[str, str, str]] = []
    if upstream == "openai":
        answers = [m for m in body["messages"] if m["role"] == "tool"]
        calls = [c for m in body["messages"] for c in m.get("tool_calls") or ()]
        for call, answer in zip(calls, answers, strict=True):
            assert "21 C" in answer["content"]
            pairs.append((call["function"]["name"], call["id"], answer["tool_call_id"]))
    elif upstream == "anthropic":
        blocks = [
            b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]
        ]
        uses = [b for b in blocks if b["type"] == "tool_use"]
        results = [b for b in blocks if b["type"] == "tool_result"]
        for use, result in zip(uses, results, strict=True):
            assert "21 C" in json.dumps(result["content"])
            assert use["input"] == {"city": "Paris"}
            pairs.append((use["name"], use["id"], result["tool_use_id"]))
    else:
        parts = [p for c in body["contents"] for p in c["parts"]]
        calls = [p["functionCall"] for p in parts if "functionCall" in p]
        answers = [p["functionResponse"] for p in parts if "functionResponse" in p]
        for call, answer in zip(calls, answers, strict=True):
            assert "21 C" in json.dumps(answer["response"])
            assert call["args"] == {"city": "Paris"}
            pairs.append((call["name"], call["name"], answer["name"]))
    return pairs


@pytest.mark.parametrize(("caller", "upstream"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_tool_results_stay_paired_with_their_calls(caller: str, upstream: str) -> None:
    fake = fake_for(TEXT_SCENARIO)
    body, path = caller_history(caller)
    relayed = relay(caller, upstream, body, path, fake)
    assert relayed.status == 200
    pairs = upstream_pairs(upstream, relayed.upstream_body)
    assert len(pairs) == 1
    name, call_key, answer_key = pairs[0]
    assert name == "get_weather"
    assert call_key == answer_key
    check(read_response(caller, relayed.body), TEXT_SCENARIO, fake)


# --------------------------------------------------------------------------- thought signatures


SIGNED_ANSWER = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "Cp4BAb/+sig=",
                    }
                ],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 5, "thoughtsTokenCount": 40},
    "responseId": "r-signed",
}


@pytest.mark.parametrize("caller", DIALECTS)
def test_gemini_thought_signature_survives_a_round_trip_through_any_caller(caller: str) -> None:
    # Gemini 3 rejects a follow-up without the signature it put on its function call
    # (MISSING_THOUGHT_SIGNATURE); a caller of another dialect must carry it unknowingly.
    a = CALLERS[caller]
    response = GEMINI_DIALECT.decode_response(
        json.dumps(SIGNED_ANSWER).encode(), provider("gemini")
    )
    answer = json.dumps(a.encode_response(response, CALLER_MODEL)).encode()
    seen = UPSTREAM[caller].decode_response(answer, caller_side(caller))
    (call,) = seen.choices[0].message.tool_calls or ()
    assert seen.usage is not None
    # 5 visible + 40 thinking = 45 output tokens, wherever they are reported
    assert (seen.usage.output_tokens, seen.usage.reasoning_tokens) == (45, 40)
    body, path = caller_history(caller, call_id=call.id)
    request = a.parse_request(body, path)
    encoded = GEMINI_DIALECT.encode_request(request, provider("gemini"), "gemini-3-pro")
    model_turn = encoded.json["contents"][1]
    assert model_turn["role"] == "model"
    assert model_turn["parts"][0]["thoughtSignature"] == "Cp4BAb/+sig="
    assert encoded.json["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"


# --------------------------------------------------------------------------- dialect-only fields


#: Fields only the caller's own dialect understands, and the top-level keys they use.
NATIVE_ONLY: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "openai": ({"logprobs": True, "service_tier": "flex"}, ("logprobs", "service_tier")),
    "anthropic": (
        {
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
        ("thinking", "anthropic_server_tools", "web_search"),
    ),
    "gemini": (
        {"safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]},
        ("gemini", "safetySettings"),
    ),
}


@pytest.mark.parametrize(("caller", "upstream"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_dialect_only_fields_stay_home(caller: str, upstream: str) -> None:
    fields, words = NATIVE_ONLY[caller]
    body = json.loads(caller_request(caller, stream=False)[0])
    body.update(fields)
    path = caller_request(caller, stream=False)[1]
    request = CALLERS[caller].parse_request(json.dumps(body).encode(), path)
    encoded = UPSTREAM[upstream].encode_request(
        request, provider(upstream), UPSTREAM_MODEL[upstream]
    )
    flat = json.dumps(encoded.json)
    if caller == upstream:  # the caller's own provider gets them back
        assert all(
            f'"{word}' in flat for word in words if word not in ("gemini", "anthropic_server_tools")
        )
    else:
        assert not [word for word in words if f'"{word}"' in flat]


# --------------------------------------------------------------------------- broken streams


@pytest.mark.parametrize("kind", ["cut", "in-band-error"])
@pytest.mark.parametrize(("caller", "upstream"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_broken_stream_never_looks_like_a_clean_end(caller: str, upstream: str, kind: str) -> None:
    failure = Failure.cut(after=1) if kind == "cut" else Failure.stream_error(after=1)
    fake = fake_for(TEXT_SCENARIO)
    fake.inject(UPSTREAM_MODEL[upstream], failure)
    body, path = caller_request(caller, stream=True)
    relayed = relay(caller, upstream, body, path, fake)
    assert relayed.status == 200  # the stream had started: the failure travels in-band
    with pytest.raises(LLMError):
        read_stream(caller, relayed.body, relayed.request)


@pytest.mark.parametrize("upstream", DIALECTS)
def test_end_marker_without_a_finish_reason_is_a_cut(upstream: str) -> None:
    # The stream stops after its first event but still sends the end marker ([DONE],
    # message_stop; Gemini has none): complete-looking, with no finish and no usage.
    fake = fake_for(TEXT_SCENARIO)
    fake.inject(UPSTREAM_MODEL[upstream], Failure.cut(after=1, terminal=True))
    request = CALLERS[upstream].parse_request(*caller_request(upstream, stream=True))
    encoded = UPSTREAM[upstream].encode_request(
        request, provider(upstream), UPSTREAM_MODEL[upstream]
    )
    url = httpx.URL(encoded.url)
    _, _, raw = fake.handle(
        "POST",
        url.path,
        headers=encoded.headers,
        query=dict(url.params),
        body=json.dumps(encoded.json).encode(),
    )
    decoder = UPSTREAM[upstream].stream_decoder(provider(upstream), request)
    with pytest.raises(LLMError):
        drain(decoder, raw)


def drain(decoder: Any, raw: bytes) -> None:
    decoder.feed(raw)
    decoder.close()
