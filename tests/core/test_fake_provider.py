"""FakeProvider on the wire: paths, flavors, usage conventions, failures, pacing, ledger.

Plain httpx / httpx2 clients here; the official SDKs judge the shapes in
test_sdk_contract.py.
"""

from __future__ import annotations

import base64
import itertools
import json
import struct
import subprocess
import sys
import threading
import time
from decimal import Decimal
from typing import Any

import httpx
import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_middleware.catalog import Price, PriceBand
from routing_middleware.schema import Usage
from routing_middleware.testing import (
    FLAVORS,
    Failure,
    FakeModel,
    FakeNetwork,
    FakeProvider,
    FakeToolCall,
    demo_provider,
)
from routing_middleware.tokens import estimate_text_tokens

BASE = "https://fake.invalid"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hello there"}]}
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "ak"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


def client(fake: FakeProvider, lib: str = "httpx", **kw: Any) -> Any:
    module = httpx if lib == "httpx" else httpx2
    return module.Client(transport=fake.transport(lib=lib), base_url=BASE, **kw)  # type: ignore[arg-type]


def sse_data(text: str) -> list[Any]:
    """The JSON payloads of every ``data:`` line, ``[DONE]`` kept as a string."""
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def sse_events(text: str) -> list[tuple[str | None, Any]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if data is not None:
            events.append((name, data))
    return events


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "prefix",
    ["/v1", "/openai/v1", "/inference/v1", "/api/v1", "/compatible-mode/v1", "/v1beta/openai", ""],
)
def test_openai_paths_match_by_suffix(prefix: str) -> None:
    fake = FakeProvider([FakeModel("m")])
    with client(fake) as c:
        assert c.post(f"{prefix}/chat/completions", json=CHAT).status_code == 200
        assert c.post(f"{prefix}/chat/completions/", json=CHAT).status_code == 200
        assert c.get(f"{prefix}/models").json()["data"][0]["id"] == "m"
    assert [call.endpoint for call in fake.calls] == ["chat.completions"] * 2 + ["models"]


def test_azure_deployment_path_takes_the_model_from_the_url() -> None:
    fake = FakeProvider([FakeModel("my-deploy")], flavor="azure", require_key="az")
    with client(fake) as c:
        body = {"messages": CHAT["messages"]}
        r = c.post(
            "/openai/deployments/my-deploy/chat/completions",
            params={"api-version": "2024-10-21"},
            json=body,
            headers={"api-key": "az"},
        )
    assert r.status_code == 200
    assert r.json()["prompt_filter_results"][0]["prompt_index"] == 0
    call = fake.calls[0]
    assert (call.model, call.api_key, call.headers["api-key"]) == ("my-deploy", "az", "az")


def test_unknown_url_and_method() -> None:
    fake = FakeProvider([FakeModel("m")])
    with client(fake) as c:
        r = c.post("/v1/completions-typo", json=CHAT)
        assert r.status_code == 404
        assert "Unknown request URL" in r.json()["error"]["message"]
        assert c.delete("/v1/chat/completions").status_code == 404
    assert [(call.endpoint, call.status) for call in fake.calls] == [("unknown", 404)] * 2


def test_unknown_model_gets_each_providers_404() -> None:
    fake = FakeProvider([FakeModel("m")])
    with client(fake) as c:
        openai_error = c.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
        anthropic_error = c.post(
            "/v1/messages",
            json={"model": "nope", "max_tokens": 5, "messages": CHAT["messages"]},
            headers=ANTHROPIC_HEADERS,
        )
        gemini_error = c.post("/v1beta/models/nope:generateContent", json={"contents": []})
    assert openai_error.status_code == 404
    assert openai_error.json()["error"]["code"] == "model_not_found"
    assert anthropic_error.status_code == 404
    assert anthropic_error.json()["error"]["type"] == "not_found_error"
    assert anthropic_error.json()["type"] == "error"
    assert gemini_error.status_code == 404
    assert gemini_error.json()["error"]["status"] == "NOT_FOUND"


def test_default_model_serves_any_name() -> None:
    fake = FakeProvider(default_model=FakeModel("x", content="any"))
    with client(fake) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "whatever-1"})
    assert r.json()["model"] == "whatever-1"
    assert r.json()["choices"][0]["message"]["content"] == "any"


def test_bad_json_and_missing_model() -> None:
    fake = FakeProvider([FakeModel("m")])
    with client(fake) as c:
        assert c.post("/v1/chat/completions", content=b"{oops").status_code == 400
        r = c.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "model"


def test_unknown_flavor_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown flavor"):
        FakeProvider(flavor="bogus")


def test_public_flavor_list_matches_the_implementation() -> None:
    from routing_middleware._fake_flavors import FLAVORS as IMPLEMENTED

    assert tuple(sorted(IMPLEMENTED)) == FLAVORS


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/chat/completions", {}, 401),
        ("/v1/chat/completions", {"authorization": "Bearer wrong"}, 401),
        ("/v1/messages", {"anthropic-version": "2023-06-01", "x-api-key": "wrong"}, 401),
        ("/v1beta/models/m:generateContent", {}, 403),
        ("/v1beta/models/m:generateContent", {"x-goog-api-key": "wrong"}, 400),
    ],
)
def test_require_key_rejects_in_each_dialect(
    path: str, headers: dict[str, str], status: int
) -> None:
    fake = FakeProvider([FakeModel("m")], require_key="right")
    body = {"model": "m", "max_tokens": 5, "messages": CHAT["messages"], "contents": []}
    with client(fake) as c:
        r = c.post(path, json=body, headers=headers)
    assert r.status_code == status
    assert "right" not in r.text
    assert "wrong" not in r.text
    if status == 400:
        assert r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize(
    ("path", "headers", "query"),
    [
        ("/v1/chat/completions", {"authorization": "Bearer right"}, {}),
        ("/v1/messages", {"anthropic-version": "2023-06-01", "x-api-key": "right"}, {}),
        ("/v1/messages", {"anthropic-version": "2026-10-21", "authorization": "Bearer right"}, {}),
        ("/v1beta/models/m:generateContent", {"x-goog-api-key": "right"}, {}),
        ("/v1beta/models/m:generateContent", {}, {"key": "right"}),
    ],
)
def test_require_key_accepts_each_dialects_header(
    path: str, headers: dict[str, str], query: dict[str, str]
) -> None:
    fake = FakeProvider([FakeModel("m")], require_key=["other", "right"])
    body = {"model": "m", "max_tokens": 5, "messages": CHAT["messages"], "contents": []}
    with client(fake) as c:
        r = c.post(path, json=body, headers=headers, params=query)
    assert r.status_code == 200, r.text
    assert fake.calls[0].api_key == "right"


def test_keys_are_recorded_per_provider() -> None:
    a = FakeProvider([FakeModel("m")])
    b = FakeProvider([FakeModel("m")])
    with client(a) as ca, client(b) as cb:
        ca.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer key-a"})
        cb.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer key-b"})
    assert a.ledger.api_keys() == {"key-a"}
    assert b.ledger.api_keys() == {"key-b"}
    assert "key-a" not in repr(a.calls[0])


# --------------------------------------------------------------------------- OpenAI chat


def test_chat_usage_follows_openai_conventions() -> None:
    model = FakeModel(
        "m", content="Hi.", cached_tokens=30, cache_write_tokens=20, reasoning_tokens=7
    )
    fake = FakeProvider([model])
    with client(fake) as c:
        body = c.post("/v1/chat/completions", json=CHAT).json()
    usage = body["usage"]
    visible = estimate_text_tokens("Hi.")
    assert usage["completion_tokens"] == visible + 7
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 7
    assert usage["prompt_tokens_details"] == {
        "cached_tokens": 30,
        "cache_write_tokens": 20,
        "audio_tokens": 0,
    }
    assert usage["prompt_tokens"] >= 50
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    billed = fake.calls[0].usage
    assert billed == Usage(
        input_tokens=usage["prompt_tokens"],
        output_tokens=visible + 7,
        cached_input_tokens=30,
        cache_write_tokens=20,
        reasoning_tokens=7,
    )


def test_input_tokens_use_the_package_estimate() -> None:
    from routing_middleware.schema import ChatRequest, Message
    from routing_middleware.tokens import estimate_request_tokens

    fake = FakeProvider([FakeModel("m")])
    text = "Count me, please: " + "word " * 40
    with client(fake) as c:
        body = c.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": text}]},
        ).json()
    expected = estimate_request_tokens(
        ChatRequest(model="m", messages=[Message(role="user", content=text)])
    )
    assert body["usage"]["prompt_tokens"] == expected


def _stream_chat(fake: FakeProvider, **extra: Any) -> str:
    with client(fake) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "stream": True, **extra})
    assert r.headers["content-type"].startswith("text/event-stream")
    return r.text


def test_stream_has_no_usage_unless_asked() -> None:
    fake = FakeProvider([FakeModel("m", content="one two three")])
    chunks = sse_data(_stream_chat(fake))
    assert chunks[-1] == "[DONE]"
    assert all("usage" not in c for c in chunks[:-1])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) == (
        "one two three"
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_stream_usage_comes_in_an_extra_chunk_when_asked() -> None:
    fake = FakeProvider([FakeModel("m", content="one two three", cached_tokens=4)])
    chunks = sse_data(_stream_chat(fake, stream_options={"include_usage": True}))
    assert chunks[-1] == "[DONE]"
    last = chunks[-2]
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
    assert all(c["usage"] is None for c in chunks[:-2])
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"


def test_streamed_parallel_tool_calls_arrive_in_fragments() -> None:
    calls = (
        FakeToolCall("get_weather", {"city": "Paris", "unit": "celsius"}),
        FakeToolCall("get_time", {"timezone": "Europe/Paris"}),
    )
    fake = FakeProvider([FakeModel("m", tool_calls=calls)])
    chunks = sse_data(_stream_chat(fake, tools=TOOLS))[:-1]
    args: dict[int, str] = {}
    names: dict[int, str] = {}
    fragments = 0
    for chunk in chunks:
        for tc in chunk["choices"][0]["delta"].get("tool_calls") or []:
            fn = tc.get("function") or {}
            if "name" in fn:
                names[tc["index"]] = fn["name"]
            args[tc["index"]] = args.get(tc["index"], "") + fn.get("arguments", "")
            fragments += 1
    assert names == {0: "get_weather", 1: "get_time"}
    assert json.loads(args[0]) == {"city": "Paris", "unit": "celsius"}
    assert json.loads(args[1]) == {"timezone": "Europe/Paris"}
    assert fragments > 4
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_calls_only_when_the_request_has_tools() -> None:
    fake = FakeProvider([FakeModel("m", tool_calls=(FakeToolCall("f"),))])
    with client(fake) as c:
        plain = c.post("/v1/chat/completions", json=CHAT).json()
        tooled = c.post("/v1/chat/completions", json={**CHAT, "tools": TOOLS}).json()
    assert plain["choices"][0]["finish_reason"] == "stop"
    assert tooled["choices"][0]["finish_reason"] == "tool_calls"
    assert tooled["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize(
    ("finish", "wire", "anthropic", "gemini"),
    [
        ("stop", "stop", "end_turn", "STOP"),
        ("content_filter", "content_filter", "refusal", "SAFETY"),
        ("refusal", "stop", "refusal", "SAFETY"),
    ],
)
def test_finish_reasons_per_dialect(finish: Any, wire: str, anthropic: str, gemini: str) -> None:
    fake = FakeProvider([FakeModel("m", content="partial answer", finish=finish)])
    with client(fake) as c:
        o = c.post("/v1/chat/completions", json=CHAT).json()
        a = c.post(
            "/v1/messages",
            json={"model": "m", "max_tokens": 50, "messages": CHAT["messages"]},
            headers=ANTHROPIC_HEADERS,
        ).json()
        g = c.post("/v1beta/models/m:generateContent", json={"contents": []}).json()
    assert o["choices"][0]["finish_reason"] == wire
    assert (o["choices"][0]["message"]["refusal"] is not None) == (finish == "refusal")
    assert a["stop_reason"] == anthropic
    assert g["candidates"][0]["finishReason"] == gemini


def test_max_tokens_truncates_with_length() -> None:
    fake = FakeProvider([FakeModel("m", output_tokens=50, reasoning_tokens=10)])
    with client(fake) as c:
        o = c.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": 25}).json()
        a = c.post(
            "/v1/messages",
            json={"model": "m", "max_tokens": 12, "messages": CHAT["messages"]},
            headers=ANTHROPIC_HEADERS,
        ).json()
        g = c.post(
            "/v1beta/models/m:generateContent",
            json={"contents": [], "generationConfig": {"maxOutputTokens": 30}},
        ).json()
    assert o["choices"][0]["finish_reason"] == "length"
    assert o["usage"]["completion_tokens"] == 25
    assert len(o["choices"][0]["message"]["content"].split()) < 50
    assert a["stop_reason"] == "max_tokens"
    assert a["usage"]["output_tokens"] == 12
    assert g["candidates"][0]["finishReason"] == "MAX_TOKENS"
    usage = g["usageMetadata"]
    assert usage["candidatesTokenCount"] + usage["thoughtsTokenCount"] == 30


def test_echo_and_filler() -> None:
    fake = FakeProvider([FakeModel("echo", echo=True), FakeModel("fill", output_tokens=7)])
    with client(fake) as c:
        echoed = c.post("/v1/chat/completions", json={**CHAT, "model": "echo"}).json()
        filled = c.post("/v1/chat/completions", json={**CHAT, "model": "fill"}).json()
    assert echoed["choices"][0]["message"]["content"] == "Hello there"
    assert len(filled["choices"][0]["message"]["content"].split()) == 7
    assert filled["usage"]["completion_tokens"] == 7


def test_answers_are_deterministic() -> None:
    def run() -> list[bytes]:
        fake = FakeProvider([FakeModel("m", output_tokens=12)], created=1_700_000_000)
        with client(fake) as c:
            return [
                c.post("/v1/chat/completions", json=CHAT).content,
                c.post("/v1/chat/completions", json={**CHAT, "stream": True}).content,
                c.post("/v1/embeddings", json={"model": "m", "input": "x"}).content,
            ]

    assert run() == run()


# --------------------------------------------------------------------------- flavors


def test_azure_stream_starts_with_prompt_filter_results() -> None:
    fake = FakeProvider([FakeModel("m")], flavor="azure")
    chunks = sse_data(_stream_chat(fake))
    assert chunks[0]["choices"] == []
    assert "prompt_filter_results" in chunks[0]
    assert chunks[1]["choices"][0]["delta"]["role"] == "assistant"


def test_deepseek_quirks() -> None:
    model = FakeModel("m", content="Answer.", reasoning="Let me think.", cached_tokens=10)
    fake = FakeProvider([model], flavor="deepseek")
    text = _stream_chat(fake, stream_options={"include_usage": True})
    assert text.startswith(": keep-alive\n\n")
    chunks = sse_data(text)
    reasoning = "".join(
        c["choices"][0]["delta"].get("reasoning_content") or ""
        for c in chunks
        if c != "[DONE]" and c["choices"]
    )
    assert reasoning == "Let me think."
    usage = chunks[-2]["usage"]
    assert usage["prompt_cache_hit_tokens"] == 10
    assert (
        usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
        == usage["prompt_tokens"]
    )
    with client(fake) as c:
        body = c.post("/v1/chat/completions", json=CHAT).json()
    assert body["choices"][0]["message"]["reasoning_content"] == "Let me think."


def test_mistral_sends_usage_on_the_final_chunk_unasked() -> None:
    fake = FakeProvider([FakeModel("m")], flavor="mistral")
    chunks = sse_data(_stream_chat(fake))
    final = chunks[-2]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["usage"]["completion_tokens"] > 0
    assert all("usage" not in c for c in chunks[:-2])


def test_openrouter_comments_and_billed_cost() -> None:
    price = Price(input=Decimal(3), output=Decimal(15))
    fake = FakeProvider(
        [FakeModel("m", input_tokens=1000, output_tokens=100, price=price)], flavor="openrouter"
    )
    text = _stream_chat(fake)
    assert text.startswith(": OPENROUTER PROCESSING\n\n")
    chunks = sse_data(text)
    usage = chunks[-2]["usage"]
    assert chunks[-2]["choices"] == []
    expected = (Decimal(1000) * 3 + Decimal(100) * 15) / 1_000_000
    assert Decimal(str(usage["cost"])) == expected
    assert fake.calls[0].cost == expected
    assert fake.calls[0].usage is not None
    assert fake.calls[0].usage.provider_cost == expected


def test_groq_puts_usage_in_x_groq() -> None:
    fake = FakeProvider([FakeModel("m", output_tokens=3)], flavor="groq")
    chunks = sse_data(_stream_chat(fake))
    assert chunks[-2]["x_groq"]["usage"]["completion_tokens"] == 3
    assert "usage" not in chunks[-2]


@pytest.mark.parametrize("flavor", ["together", "fireworks", "cerebras", "vllm", "ollama"])
def test_plain_flavors_report_plain_usage(flavor: str) -> None:
    fake = FakeProvider([FakeModel("m", cached_tokens=5, reasoning_tokens=3)], flavor=flavor)
    with client(fake) as c:
        usage = c.post("/v1/chat/completions", json=CHAT).json()["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    billed = fake.calls[0].usage
    assert billed is not None
    assert (billed.cached_input_tokens, billed.reasoning_tokens) == (0, 0)
    assert billed.output_tokens == usage["completion_tokens"]


def test_mistral_and_openrouter_error_bodies() -> None:
    for flavor, check in (
        ("mistral", lambda b: b["object"] == "error" and b["type"] == "requests"),
        ("openrouter", lambda b: b["error"]["code"] == 429 and "metadata" in b["error"]),
    ):
        fake = FakeProvider([FakeModel("m", failures=(Failure(status=429),))], flavor=flavor)
        with client(fake) as c:
            r = c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 429
        assert check(r.json()), flavor


@pytest.mark.parametrize(
    ("flavor", "status"), [("openai", 429), ("deepseek", 402), ("openrouter", 402)]
)
def test_insufficient_quota_per_flavor(flavor: str, status: int) -> None:
    fake = FakeProvider([FakeModel("m", failures=(Failure.insufficient_quota(),))], flavor=flavor)
    with client(fake) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == status


# --------------------------------------------------------------------------- Responses, embeddings


def test_responses_stream_events_are_typed_and_sequenced() -> None:
    fake = FakeProvider([FakeModel("m", content="a b c", reasoning_tokens=2)])
    with client(fake) as c:
        r = c.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    events = sse_events(r.text)
    names = [n for n, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.completed"
    assert all(n == d["type"] for n, d in events)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    text = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert text == "a b c"
    assert events[-1][1]["response"]["usage"]["output_tokens_details"]["reasoning_tokens"] == 2


def test_embeddings_float_and_base64_agree() -> None:
    fake = FakeProvider([FakeModel("e", embedding_dimensions=16)])
    with client(fake) as c:
        floats = c.post("/v1/embeddings", json={"model": "e", "input": ["a", "b"]}).json()
        b64 = c.post(
            "/v1/embeddings",
            json={"model": "e", "input": ["a", "b"], "encoding_format": "base64"},
        ).json()
        sized = c.post("/v1/embeddings", json={"model": "e", "input": "a", "dimensions": 4}).json()
    decoded = struct.unpack("<16f", base64.b64decode(b64["data"][0]["embedding"]))
    assert list(decoded) == floats["data"][0]["embedding"]
    assert floats["data"][0]["embedding"] != floats["data"][1]["embedding"]
    assert len(sized["data"][0]["embedding"]) == 4
    assert floats["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


# --------------------------------------------------------------------------- Anthropic


def _anthropic(fake: FakeProvider, **extra: Any) -> httpx.Response:
    body = {"model": "m", "max_tokens": 1000, "messages": CHAT["messages"], **extra}
    with client(fake) as c:
        return c.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)


ANTHROPIC_MODEL = FakeModel(
    "m",
    content="Cached answer here.",
    input_tokens=500,
    cached_tokens=300,
    cache_write_tokens=120,
    cache_write_long_tokens=20,
    reasoning_tokens=9,
    reasoning="Thinking hard.",
)


def test_anthropic_usage_excludes_cache_from_input_tokens() -> None:
    fake = FakeProvider([ANTHROPIC_MODEL])
    body = _anthropic(fake, thinking={"type": "enabled", "budget_tokens": 1024}).json()
    usage = body["usage"]
    assert usage["input_tokens"] == 80
    assert usage["cache_read_input_tokens"] == 300
    assert usage["cache_creation_input_tokens"] == 120
    assert usage["cache_creation"] == {
        "ephemeral_5m_input_tokens": 100,
        "ephemeral_1h_input_tokens": 20,
    }
    assert usage["output_tokens_details"]["thinking_tokens"] == 9
    assert body["content"][0]["type"] == "thinking"
    assert fake.calls[0].usage == Usage(
        input_tokens=500,
        output_tokens=usage["output_tokens"],
        cached_input_tokens=300,
        cache_write_tokens=120,
        cache_write_long_tokens=20,
        reasoning_tokens=9,
    )


def test_anthropic_stream_event_order_and_cumulative_usage() -> None:
    fake = FakeProvider([ANTHROPIC_MODEL])
    events = sse_events(_anthropic(fake, stream=True).text)
    names = [n for n, _ in events]
    assert names[0] == "message_start"
    assert "ping" in names
    assert names[-2:] == ["message_delta", "message_stop"]
    start_usage = events[0][1]["message"]["usage"]
    assert start_usage["cache_read_input_tokens"] == 300
    assert start_usage["output_tokens"] == 1
    final = events[-2][1]["usage"]
    assert final["output_tokens"] == _anthropic(fake).json()["usage"]["output_tokens"]
    text = "".join(
        d["delta"]["text"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "text_delta"
    )
    assert text == "Cached answer here."


def test_anthropic_request_validation() -> None:
    fake = FakeProvider([FakeModel("m")])
    with client(fake) as c:
        no_version = c.post(
            "/v1/messages",
            json={"model": "m", "max_tokens": 5, "messages": CHAT["messages"]},
            headers={"x-api-key": "k"},
        )
        no_max = c.post(
            "/v1/messages",
            json={"model": "m", "messages": CHAT["messages"]},
            headers=ANTHROPIC_HEADERS,
        )
        sampled = c.post(
            "/v1/messages",
            json={"model": "m", "max_tokens": 5, "temperature": 0.2, "messages": CHAT["messages"]},
            headers={"anthropic-version": "2026-10-21", "x-api-key": "k"},
        )
    for r, needle in (
        (no_version, "anthropic-version"),
        (no_max, "max_tokens"),
        (sampled, "temperature"),
    ):
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert needle in r.json()["error"]["message"]


def test_anthropic_count_tokens_is_not_billed() -> None:
    fake = FakeProvider([FakeModel("m", input_tokens=77)])
    with client(fake) as c:
        r = c.post(
            "/v1/messages/count_tokens",
            json={"model": "m", "messages": CHAT["messages"]},
            headers=ANTHROPIC_HEADERS,
        )
        models = c.get("/v1/models", headers=ANTHROPIC_HEADERS).json()
    assert r.json() == {"input_tokens": 77}
    assert fake.calls[0].usage is None
    assert models["data"][0]["type"] == "model"


# --------------------------------------------------------------------------- Gemini


GEMINI_MODEL = FakeModel(
    "gem", content="Gemini says hi to you", input_tokens=200, cached_tokens=150, reasoning_tokens=11
)


def test_gemini_generate_content_usage_metadata() -> None:
    fake = FakeProvider([GEMINI_MODEL])
    with client(fake) as c:
        body = c.post(
            "/v1beta/models/gem:generateContent",
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": "g"},
        ).json()
    usage = body["usageMetadata"]
    visible = estimate_text_tokens("Gemini says hi to you")
    assert usage["promptTokenCount"] == 200
    assert usage["cachedContentTokenCount"] == 150
    assert usage["candidatesTokenCount"] == visible
    assert usage["thoughtsTokenCount"] == 11
    assert usage["totalTokenCount"] == 200 + visible + 11
    assert body["candidates"][0]["content"] == {
        "role": "model",
        "parts": [{"text": "Gemini says hi to you"}],
    }
    assert fake.calls[0].usage == Usage(
        input_tokens=200, output_tokens=visible + 11, cached_input_tokens=150, reasoning_tokens=11
    )


def test_gemini_sse_stream_has_crlf_frames_and_full_counts_last() -> None:
    fake = FakeProvider([GEMINI_MODEL])
    with client(fake) as c:
        r = c.post(
            "/v1beta/models/gem:streamGenerateContent", params={"alt": "sse"}, json={"contents": []}
        )
    assert "\r\n\r\n" in r.text
    chunks = [json.loads(line[6:]) for line in r.text.split("\r\n") if line.startswith("data: ")]
    assert len(chunks) > 2
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == (
        "Gemini says hi to you"
    )
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
    assert chunks[-1]["usageMetadata"]["thoughtsTokenCount"] == 11
    assert "[DONE]" not in r.text


def test_gemini_stream_without_sse_is_a_json_array() -> None:
    fake = FakeProvider([GEMINI_MODEL])
    with client(fake) as c:
        r = c.post("/v1beta/models/gem:streamGenerateContent", json={"contents": []})
    items = r.json()
    assert isinstance(items, list)
    assert items[-1]["usageMetadata"]["promptTokenCount"] == 200


def test_gemini_function_calls() -> None:
    model = FakeModel("gem", tool_calls=(FakeToolCall("lookup", {"q": "x"}), FakeToolCall("other")))
    fake = FakeProvider([model])
    tools = [{"functionDeclarations": [{"name": "lookup", "parameters": {"type": "object"}}]}]
    with client(fake) as c:
        body = c.post(
            "/v1beta/models/gem:generateContent", json={"contents": [], "tools": tools}
        ).json()
    parts = body["candidates"][0]["content"]["parts"]
    assert parts == [
        {"functionCall": {"name": "lookup", "args": {"q": "x"}}},
        {"functionCall": {"name": "other", "args": {}}},
    ]
    assert body["candidates"][0]["finishReason"] == "STOP"


def test_gemini_resource_exhausted_carries_retry_info() -> None:
    fake = FakeProvider([FakeModel("gem", failures=(Failure.rate_limit(retry_after=37),))])
    with client(fake) as c:
        r = c.post("/v1beta/models/gem:generateContent", json={"contents": []})
    assert r.status_code == 429
    assert "retry-after" not in r.headers
    error = r.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    retry = [d for d in error["details"] if d["@type"].endswith("RetryInfo")]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]


# --------------------------------------------------------------------------- failures


def test_failures_are_consumed_in_order_then_always() -> None:
    fake = FakeProvider([FakeModel("m", failures=(Failure(status=429), Failure(status=503)))])
    with client(fake) as c:
        statuses = [c.post("/v1/chat/completions", json=CHAT).status_code for _ in range(3)]
        fake.inject("m", Failure(status=500), always=Failure.overloaded())
        statuses += [c.post("/v1/chat/completions", json=CHAT).status_code for _ in range(3)]
        fake.clear_failures("m")
        statuses.append(c.post("/v1/chat/completions", json=CHAT).status_code)
    assert statuses == [429, 503, 200, 500, 529, 529, 200]
    assert [c.failure for c in fake.calls] == ["http"] * 2 + [None] + ["http"] * 3 + [None]
    assert [c.usage is None for c in fake.calls] == [True, True, False, True, True, True, False]


def test_retry_headers() -> None:
    failure = Failure(status=429, retry_after=2, retry_after_ms=1500, should_retry=False)
    fake = FakeProvider([FakeModel("m", failures=(failure, failure))])
    with client(fake) as c:
        o = c.post("/v1/chat/completions", json=CHAT)
        a = c.post(
            "/v1/messages",
            json={"model": "m", "max_tokens": 5, "messages": CHAT["messages"]},
            headers=ANTHROPIC_HEADERS,
        )
    for r in (o, a):
        assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("2", "1500")
        assert r.headers["x-should-retry"] == "false"
    assert a.json()["error"]["type"] == "rate_limit_error"


def test_failure_validation() -> None:
    with pytest.raises(ValueError, match="status"):
        Failure()
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Failure(status=200)
    with pytest.raises(ValueError, match="subset"):
        FakeModel("m", cache_write_tokens=1, cache_write_long_tokens=2)


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_reset_raises_the_librarys_read_error(lib: str) -> None:
    module: Any = httpx if lib == "httpx" else httpx2
    fake = FakeProvider([FakeModel("m", failures=(Failure.reset(),))])
    with client(fake, lib) as c:
        with pytest.raises(module.ReadError):
            c.post("/v1/chat/completions", json=CHAT)
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert fake.calls[0].status == 0


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_timeout_honours_the_client_read_timeout(lib: str) -> None:
    module: Any = httpx if lib == "httpx" else httpx2
    fake = FakeProvider([FakeModel("m", failures=(Failure.timeout(hang=30),))])
    started = time.monotonic()
    with client(fake, lib, timeout=0.1) as c, pytest.raises(module.ReadTimeout):
        c.post("/v1/chat/completions", json=CHAT)
    assert 0.09 <= time.monotonic() - started < 2


def test_short_hang_answers_late() -> None:
    fake = FakeProvider([FakeModel("m", failures=(Failure.timeout(hang=0.15),))])
    started = time.monotonic()
    with client(fake, timeout=5) as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert time.monotonic() - started >= 0.15


def test_cut_without_terminal_event() -> None:
    fake = FakeProvider([FakeModel("m", output_tokens=10, failures=(Failure.cut(after=3),))])
    chunks = sse_data(_stream_chat(fake))
    assert len(chunks) == 3
    assert "[DONE]" not in chunks
    assert fake.calls[0].usage is not None
    assert not fake.calls[0].reported


def test_cut_with_terminal_event_looks_complete_but_lacks_the_end() -> None:
    fake = FakeProvider(
        [FakeModel("m", output_tokens=10, failures=(Failure.cut(after=3, terminal=True),))]
    )
    chunks = sse_data(_stream_chat(fake, stream_options={"include_usage": True}))
    assert chunks[-1] == "[DONE]"
    assert len(chunks) == 4
    assert all(c["usage"] is None and c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_cut_with_abort_drops_the_connection(lib: str) -> None:
    module: Any = httpx if lib == "httpx" else httpx2
    fake = FakeProvider([FakeModel("m", failures=(Failure.cut(after=2, abort=True),))])
    received: list[str] = []

    def read() -> None:
        with (
            client(fake, lib) as c,
            c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r,
        ):
            received.extend(r.iter_lines())

    with pytest.raises(module.RemoteProtocolError):
        read()
    assert sum(1 for line in received if line.startswith("data:")) == 2


def test_malformed_bodies() -> None:
    fake = FakeProvider(
        [FakeModel("m", output_tokens=6, failures=(Failure.malformed(), Failure.malformed()))]
    )
    with client(fake) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
        with pytest.raises(ValueError):
            r.json()
        text = _stream_chat(fake)
    bad = 0
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            try:
                json.loads(line[6:])
            except ValueError:
                bad += 1
    assert bad == 1


def test_no_usage_in_each_dialect() -> None:
    fake = FakeProvider([FakeModel("m", always_fail=Failure.no_usage())])
    with client(fake) as c:
        o = c.post("/v1/chat/completions", json=CHAT).json()
        s = sse_data(_stream_chat(fake, stream_options={"include_usage": True}))
        a = c.post(
            "/v1/messages",
            json={"model": "m", "max_tokens": 50, "messages": CHAT["messages"]},
            headers=ANTHROPIC_HEADERS,
        ).json()
        g = c.post("/v1beta/models/m:generateContent", json={"contents": []}).json()
    assert "usage" not in o
    assert "usage" not in a
    assert "usageMetadata" not in g
    assert all(c == "[DONE]" or "usage" not in c for c in s)
    assert all(call.usage is not None and not call.reported for call in fake.calls)


def test_stream_errors_in_band() -> None:
    fake = FakeProvider(
        [FakeModel("m", output_tokens=8, always_fail=Failure.stream_error(after=3))]
    )
    events = sse_events(_anthropic(fake, stream=True).text)
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": events[-1][1]["request_id"],
        },
    )
    assert len(events) == 4
    router = FakeProvider(
        [FakeModel("m", always_fail=Failure.stream_error(after=2, message="boom"))],
        flavor="openrouter",
    )
    last = sse_data(_stream_chat(router))[-1]
    assert last["error"]["message"] == "boom"
    assert last["choices"][0]["finish_reason"] == "error"


# --------------------------------------------------------------------------- pacing


def test_sync_stream_is_paced() -> None:
    fake = FakeProvider([FakeModel("m", output_tokens=4, ttft=0.15, token_delay=0.05)])
    arrivals = []
    started = time.monotonic()
    with (
        client(fake) as c,
        c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r,
    ):
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    assert arrivals[0] >= 0.15
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(g >= 0.04 for g in gaps)


@pytest.mark.anyio
@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
async def test_async_stream_arrives_incrementally(lib: str) -> None:
    import anyio

    module: Any = httpx if lib == "httpx" else httpx2
    fake = FakeProvider([FakeModel("m", output_tokens=5, ttft=0.1, token_delay=0.06)])
    ticks = 0
    arrivals: list[float] = []
    stop = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await anyio.sleep(0.01)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        transport = fake.async_transport(lib=lib)
        body = {**CHAT, "stream": True}
        async with (
            module.AsyncClient(transport=transport, base_url=BASE) as c,
            c.stream("POST", "/v1/chat/completions", json=body) as r,
        ):
            async for line in r.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    arrivals.append(time.monotonic() - started)
        stop.set()
    assert len(arrivals) == 5
    assert arrivals[0] >= 0.1
    assert arrivals[-1] - arrivals[0] >= 0.2
    assert ticks >= 10  # the event loop kept running while the stream waited


def test_non_stream_waits_for_the_whole_generation() -> None:
    fake = FakeProvider([FakeModel("m", output_tokens=5, ttft=0.05, token_delay=0.03)])
    started = time.monotonic()
    with client(fake) as c:
        c.post("/v1/chat/completions", json=CHAT)
    assert time.monotonic() - started >= 0.05 + 4 * 0.03 - 0.01


# --------------------------------------------------------------------------- ledger


def test_ledger_costs_with_prices_and_bands() -> None:
    price = Price(
        input=Decimal(2),
        output=Decimal(10),
        cached_input=Decimal("0.1"),
        cache_write=Decimal("2.5"),
        cache_write_long=Decimal(4),
        bands=(PriceBand(above_tokens=5000, input=Decimal(4), output=Decimal(20)),),
    )
    small = FakeModel(
        "small",
        input_tokens=1000,
        cached_tokens=400,
        cache_write_tokens=300,
        cache_write_long_tokens=100,
        output_tokens=50,
        reasoning_tokens=30,
        price=price,
    )
    big = FakeModel("big", input_tokens=6000, output_tokens=10, price=price)
    fake = FakeProvider([small, big])
    body = {"model": "small", "max_tokens": 500, "messages": CHAT["messages"]}
    with client(fake) as c:
        c.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
        c.post("/v1/messages", json={**body, "model": "big"}, headers=ANTHROPIC_HEADERS)
    # 300 uncached x 2 + 400 cached x 0.1 + 200 short writes x 2.5 + 100 long x 4
    # + 80 output x 10, per million.
    small_cost = Decimal(600 + 40 + 500 + 400 + 800) / 1_000_000
    big_cost = Decimal(6000 * 4 + 10 * 20) / 1_000_000
    assert fake.ledger.billed_cost("small") == small_cost
    assert fake.ledger.billed_cost() == small_cost + big_cost
    assert fake.ledger.billed_usage().input_tokens == 7000


def test_ledger_is_thread_safe() -> None:
    fake = FakeProvider([FakeModel("m", output_tokens=3)])

    def work() -> None:
        with client(fake) as c:
            for _ in range(25):
                assert c.post("/v1/chat/completions", json=CHAT).status_code == 200

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = fake.calls
    assert len(calls) == 200 == len(fake.ledger)
    assert sorted(c.seq for c in calls) == list(range(1, 201))
    assert fake.ledger.billed_usage().output_tokens == 600
    fake.ledger.clear()
    assert fake.calls == []


def test_handle_direct_call() -> None:
    fake = FakeProvider([FakeModel("m", content="direct")])
    status, headers, body = fake.handle(
        "POST",
        "/v1/chat/completions",
        headers={"Authorization": "Bearer k"},
        body=json.dumps(CHAT).encode(),
    )
    assert status == 200
    assert ("content-type", "application/json") in headers
    assert json.loads(body)["choices"][0]["message"]["content"] == "direct"
    assert fake.calls[0].api_key == "k"


# --------------------------------------------------------------------------- module promises


def test_importing_testing_stays_light() -> None:
    code = (
        "import sys, routing_middleware.testing as t; t.FakeProvider([t.FakeModel('m')]);"
        "print(sorted(m for m in ('httpx2', 'uvicorn', 'starlette', 'django') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_command_line_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "routing_middleware.testing", "--help"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "--port" in out.stdout


def test_demo_provider_serves_known_and_unknown_names() -> None:
    fake = demo_provider(fast=True)
    with client(fake) as c:
        for name in ("gpt-4o-mini", "claude-haiku-4-5", "anything-else"):
            r = c.post("/v1/chat/completions", json={**CHAT, "model": name})
            assert r.status_code == 200
            assert r.json()["model"] == name


def test_public_names_are_pinned() -> None:
    import routing_middleware.testing as testing

    assert testing.__all__ == [
        "FLAVORS",
        "Failure",
        "FailureKind",
        "FakeCall",
        "FakeModel",
        "FakeNetwork",
        "FakeProvider",
        "FakeToolCall",
        "FinishMode",
        "Ledger",
        "demo_provider",
        "main",
    ]
    for name in testing.__all__:
        assert getattr(testing, name) is not None


# --------------------------------------------------------------------------- network


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_network_routes_by_host_and_refuses_the_rest(lib: str) -> None:
    module: Any = httpx if lib == "httpx" else httpx2
    oai = FakeProvider([FakeModel("m")])
    ant = FakeProvider([FakeModel("m")])
    local = FakeProvider([FakeModel("m")], flavor="vllm")
    network = FakeNetwork(
        {"api.openai.com": oai, "api.anthropic.com": ant, "localhost:8000": local}
    )
    with module.Client(transport=network.transport(lib=lib)) as c:
        c.post(
            "https://api.openai.com/v1/chat/completions",
            json=CHAT,
            headers={"authorization": "Bearer sk-openai"},
        )
        c.post(
            "https://api.anthropic.com/v1/messages",
            json={"model": "m", "max_tokens": 5, "messages": CHAT["messages"]},
            headers={"anthropic-version": "2023-06-01", "x-api-key": "sk-ant"},
        )
        c.post("http://localhost:8000/v1/chat/completions", json=CHAT)
        with pytest.raises(module.ConnectError):
            c.post("http://localhost:9000/v1/chat/completions", json=CHAT)
        network.down.add("api.openai.com")
        with pytest.raises(module.ConnectError):
            c.post("https://api.openai.com/v1/chat/completions", json=CHAT)
    assert oai.ledger.api_keys() == {"sk-openai"}
    assert ant.ledger.api_keys() == {"sk-ant"}
    assert [len(oai.calls), len(ant.calls), len(local.calls)] == [1, 1, 1]


@pytest.mark.anyio
async def test_network_async() -> None:
    fake = FakeProvider([FakeModel("m", content="async hi")])
    network = FakeNetwork({"api.openai.com": fake})
    async with httpx2.AsyncClient(transport=network.async_transport(lib="httpx2")) as c:
        r = await c.post("https://api.openai.com/v1/chat/completions", json=CHAT)
        with pytest.raises(httpx2.ConnectError):
            await c.post("https://api.other.invalid/v1/chat/completions", json=CHAT)
    assert r.json()["choices"][0]["message"]["content"] == "async hi"


def test_gemini_model_list_and_count_tokens() -> None:
    fake = FakeProvider([FakeModel("gem", input_tokens=12)])
    with client(fake) as c:
        listed = c.get("/v1beta/models", headers={"x-goog-api-key": "g"}).json()
        counted = c.post("/v1beta/models/gem:countTokens", json={"contents": []}).json()
    assert listed["models"][0]["name"] == "models/gem"
    assert counted == {"totalTokens": 12}
    assert fake.calls[-1].usage is None


def test_stop_sequences_per_dialect() -> None:
    fake = FakeProvider([FakeModel("m", content="First part. END second part.")])
    with client(fake) as c:
        o = c.post("/v1/chat/completions", json={**CHAT, "stop": ["END", "part"]}).json()
        a = c.post(
            "/v1/messages",
            json={
                "model": "m",
                "max_tokens": 100,
                "stop_sequences": ["END"],
                "messages": CHAT["messages"],
            },
            headers=ANTHROPIC_HEADERS,
        ).json()
        g = c.post(
            "/v1beta/models/m:generateContent",
            json={"contents": [], "generationConfig": {"stopSequences": ["second"]}},
        ).json()
    assert o["choices"][0]["message"]["content"] == "First "
    assert o["choices"][0]["finish_reason"] == "stop"
    assert o["usage"]["completion_tokens"] == estimate_text_tokens("First ")
    assert (a["stop_reason"], a["stop_sequence"]) == ("stop_sequence", "END")
    assert a["content"][0]["text"] == "First part. "
    assert g["candidates"][0]["content"]["parts"][0]["text"] == "First part. END "
    assert g["candidates"][0]["finishReason"] == "STOP"


# --------------------------------------------------------------------------- reported == billed


def _normalize_openai(u: dict[str, Any]) -> Usage:
    details = u.get("prompt_tokens_details") or {}
    out = u.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=u["prompt_tokens"],
        output_tokens=u["completion_tokens"],
        cached_input_tokens=details.get("cached_tokens", 0),
        cache_write_tokens=details.get("cache_write_tokens", 0),
        reasoning_tokens=out.get("reasoning_tokens", 0),
    )


def _normalize_responses(u: dict[str, Any]) -> Usage:
    details = u["input_tokens_details"]
    return Usage(
        input_tokens=u["input_tokens"],
        output_tokens=u["output_tokens"],
        cached_input_tokens=details["cached_tokens"],
        cache_write_tokens=details["cache_write_tokens"],
        cache_write_long_tokens=details["cache_write_tokens_details"]["ttl_12h_tokens"],
        reasoning_tokens=u["output_tokens_details"]["reasoning_tokens"],
    )


def _normalize_anthropic(u: dict[str, Any]) -> Usage:
    reads, writes = u["cache_read_input_tokens"], u["cache_creation_input_tokens"]
    return Usage(
        input_tokens=u["input_tokens"] + reads + writes,
        output_tokens=u["output_tokens"],
        cached_input_tokens=reads,
        cache_write_tokens=writes,
        cache_write_long_tokens=u["cache_creation"]["ephemeral_1h_input_tokens"],
        reasoning_tokens=u["output_tokens_details"]["thinking_tokens"],
    )


def _normalize_gemini(u: dict[str, Any]) -> Usage:
    thoughts = u.get("thoughtsTokenCount", 0)
    return Usage(
        input_tokens=u["promptTokenCount"],
        output_tokens=u["candidatesTokenCount"] + thoughts,
        cached_input_tokens=u.get("cachedContentTokenCount", 0),
        reasoning_tokens=thoughts,
    )


def _reported_usage(endpoint: str, stream: bool, text: str) -> Usage:
    if not stream:
        body = json.loads(text)
        return {
            "chat": lambda: _normalize_openai(body["usage"]),
            "responses": lambda: _normalize_responses(body["usage"]),
            "anthropic": lambda: _normalize_anthropic(body["usage"]),
            "gemini": lambda: _normalize_gemini(body["usageMetadata"]),
        }[endpoint]()
    if endpoint == "chat":
        return _normalize_openai(sse_data(text)[-2]["usage"])
    events = sse_events(text)
    if endpoint == "responses":
        return _normalize_responses(events[-1][1]["response"]["usage"])
    if endpoint == "anthropic":
        return _normalize_anthropic(events[0][1]["message"]["usage"] | events[-2][1]["usage"])
    return _normalize_gemini(events[-1][1]["usageMetadata"])


@settings(max_examples=60, deadline=None)
@given(
    endpoint=st.sampled_from(["chat", "responses", "anthropic", "gemini"]),
    stream=st.booleans(),
    cached=st.integers(0, 500),
    writes=st.integers(0, 500),
    long_share=st.floats(0, 1),
    reasoning=st.integers(0, 300),
    output=st.integers(0, 80),
    extra_input=st.integers(0, 2000),
    limit=st.none() | st.integers(1, 400),
)
def test_reported_usage_equals_billed_usage(
    endpoint: str,
    stream: bool,
    cached: int,
    writes: int,
    long_share: float,
    reasoning: int,
    output: int,
    extra_input: int,
    limit: int | None,
) -> None:
    model = FakeModel(
        "m",
        input_tokens=cached + writes + extra_input,
        cached_tokens=cached,
        cache_write_tokens=writes,
        cache_write_long_tokens=int(writes * long_share),
        reasoning_tokens=reasoning,
        output_tokens=output,
    )
    fake = FakeProvider([model])
    path, body, headers = {
        "chat": ("/v1/chat/completions", {**CHAT, "max_completion_tokens": limit}, {}),
        "responses": (
            "/v1/responses",
            {"model": "m", "input": "x", "max_output_tokens": limit},
            {},
        ),
        "anthropic": (
            "/v1/messages",
            {"model": "m", "max_tokens": limit or 10_000, "messages": CHAT["messages"]},
            ANTHROPIC_HEADERS,
        ),
        "gemini": (
            "/v1beta/models/m:streamGenerateContent"
            if stream
            else "/v1beta/models/m:generateContent",
            {"contents": [], "generationConfig": {"maxOutputTokens": limit}},
            {},
        ),
    }[endpoint]
    body = {k: v for k, v in body.items() if v is not None}
    if stream and endpoint != "gemini":
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    if endpoint == "responses":
        body.pop("stream_options", None)
    with client(fake) as c:
        r = c.post(path, json=body, headers=headers, params={"alt": "sse"} if stream else {})
    assert r.status_code == 200, r.text
    billed = fake.calls[0].usage
    assert billed is not None
    assert _reported_usage(endpoint, stream, r.text) == billed
    if limit is not None:
        assert billed.output_tokens <= limit


def test_gemini_openai_endpoint_leaves_thoughts_out_of_completion_tokens() -> None:
    fake = FakeProvider(
        [FakeModel("gemini-2.5-flash", output_tokens=10, reasoning_tokens=25, input_tokens=40)],
        flavor="gemini",
    )
    with client(fake) as c:
        usage = c.post(
            "/v1beta/openai/chat/completions", json={**CHAT, "model": "gemini-2.5-flash"}
        ).json()["usage"]
    assert usage == {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 75}
    billed = fake.calls[0].usage
    assert billed is not None
    assert billed.output_tokens == usage["total_tokens"] - usage["prompt_tokens"]


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_a_stalled_stream_times_out_mid_way(lib: str) -> None:
    module: Any = httpx if lib == "httpx" else httpx2
    fake = FakeProvider([FakeModel("m", output_tokens=6, failures=(Failure.stall(after=3),))])
    received: list[str] = []

    def read() -> None:
        with (
            client(fake, lib, timeout=0.1) as c,
            c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r,
        ):
            received.extend(line for line in r.iter_lines() if line)

    started = time.monotonic()
    with pytest.raises(module.ReadTimeout):
        read()
    assert len(received) == 3
    assert time.monotonic() - started < 2


def test_a_short_stall_only_delays() -> None:
    fake = FakeProvider(
        [FakeModel("m", output_tokens=4, failures=(Failure.stall(after=2, hang=0.2),))]
    )
    started = time.monotonic()
    chunks = sse_data(_stream_chat(fake))
    assert time.monotonic() - started >= 0.2
    assert chunks[-1] == "[DONE]"
    assert fake.calls[0].reported
