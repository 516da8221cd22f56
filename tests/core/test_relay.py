"""The relay judged by the official SDKs: an SDK talks to a handler that relays."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from routing_middleware.context import route_hint
from routing_middleware.engine import LLMRoute
from routing_middleware.relay import Relay

FAST = {"offline_latency": "none"}


def _handler(relay: Relay, dialect: str, provider: str) -> Callable[[Any], Any]:
    def handle(request: Any) -> Any:
        answer = relay.handle(dialect, request.read(), request.url.path, provider=provider)
        if answer.stream is not None:
            return httpx2.Response(answer.status, headers=answer.headers, content=answer.stream)
        return httpx2.Response(answer.status, headers=answer.headers, content=answer.body)

    return handle


def _openai(relay: Relay) -> openai.OpenAI:
    transport = httpx2.MockTransport(_handler(relay, "openai", "openai"))
    return openai.OpenAI(
        api_key="caller-key", http_client=httpx2.Client(transport=transport), max_retries=0
    )


def test_openai_sdk_call_is_answered_by_a_cheaper_model_in_openai_shape() -> None:
    relay = Relay(LLMRoute(FAST, environ={}))
    client = _openai(relay)
    with route_hint(tier="cheap"):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-5.4", messages=[{"role": "user", "content": "Summarize: printer jams."}]
        )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    served = raw.headers["x-llmroute-model"]
    assert served != "openai/gpt-5.4"
    assert completion.model == served.split("/", 1)[1]
    assert float(raw.headers["x-llmroute-cost-usd"]) > 0
    assert float(raw.headers["x-llmroute-requested-cost-usd"]) > float(
        raw.headers["x-llmroute-cost-usd"]
    )
    assert "hint_tier" in raw.headers["x-llmroute-decision"]


def test_openai_sdk_stream_with_usage() -> None:
    relay = Relay(LLMRoute(FAST, environ={}))
    client = _openai(relay)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_bad_input_gets_an_openai_error_naming_the_field() -> None:
    relay = Relay(LLMRoute(FAST, environ={}))
    answer = relay.handle("openai", b'{"model": "gpt-4o-mini", "messages": "hi"}')
    assert answer.status == 400
    error = json.loads(answer.body)["error"]
    assert error["param"].startswith("messages")
    assert answer.decision is None


def test_anthropic_sdk_routed_to_an_openai_compatible_provider() -> None:
    relay = Relay(LLMRoute(FAST, environ={}))
    transport = httpx2.MockTransport(_handler(relay, "anthropic", "anthropic"))
    client = anthropic.Anthropic(
        api_key="caller-key", http_client=httpx2.Client(transport=transport), max_retries=0
    )
    with route_hint(tier="cheap", allow_providers=["deepseek", "openai"]):
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6",
            max_tokens=200,
            messages=[{"role": "user", "content": "Classify: refund request"}],
        )
    message = raw.parse()
    assert raw.headers["x-llmroute-provider"] in {"deepseek", "openai"}
    assert message.content[0].type == "text"
    assert message.usage.output_tokens > 0
    with (
        route_hint(tier="cheap", allow_providers=["deepseek", "openai"]),
        client.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=200,
            messages=[{"role": "user", "content": "Classify: refund request"}],
        ) as stream,
    ):
        final = stream.get_final_message()
    assert final.content[0].type == "text"
    assert final.stop_reason == "end_turn"


@pytest.mark.anyio
async def test_async_relay_stream_records_on_close() -> None:
    relay = Relay(LLMRoute(FAST, environ={}))
    body = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    answer = await relay.ahandle("openai", body, provider="openai")
    assert answer.astream is not None
    data = b"".join([part async for part in answer.astream])
    assert data.rstrip().endswith(b"data: [DONE]")
    assert len(answer.records) == 1
    assert answer.records[0].streamed


def test_a_provider_rejecting_llmroutes_own_key_is_a_502_not_the_callers_401() -> None:
    import httpx

    from routing_middleware.testing import FakeNetwork, FakeProvider

    upstream = FakeProvider(require_key="the-right-key")
    network = FakeNetwork({"api.openai.com": upstream})
    engine = LLMRoute(
        {**FAST, "providers": {"openai": {"api_key": "a-revoked-key"}}},
        environ={},
        client=httpx.Client(transport=network.transport()),
    )
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    answer = Relay(engine).handle("openai", body.encode(), provider="openai")
    assert answer.status == 502
    error = json.loads(answer.body)["error"]
    assert error["code"] == "upstream_auth_failed"
    assert "a-revoked-key" not in answer.body.decode()
    assert len(upstream.calls) >= 1


def test_a_stream_failing_after_it_started_ends_with_an_error_event() -> None:
    from routing_middleware.providers.registry import caller_dialect
    from routing_middleware.relay import _failure
    from routing_middleware.schema import RateLimited

    encoder = caller_dialect("openai").stream_encoder("m", "chatcmpl-1")
    encoder.start()
    bug = _failure(encoder, RuntimeError("boom")).decode()
    assert "the upstream stream failed" in bug
    assert "boom" not in bug  # internal details stay in the log
    limited = _failure(encoder, RateLimited("slow down")).decode()
    assert "slow down" in limited
