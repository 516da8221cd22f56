"""Every OpenAI-compatible provider in the registry, with its quirks on the wire.

First a sweep over all of them (encode, decode, stream, error), then one test group
per provider for what makes it different. Fixtures are hand-written from each
provider's documented shapes.
"""

from __future__ import annotations

import json
from decimal import Decimal

import httpx2
import pytest

from routing_middleware.providers.base import ProviderConfig
from routing_middleware.providers.openai import OPENAI_DIALECT, mistral_tool_call_id
from routing_middleware.providers.registry import PROVIDERS, provider_config
from routing_middleware.schema import (
    AuthenticationFailed,
    ChatRequest,
    ContentFiltered,
    ContextWindowExceeded,
    FinishReason,
    InsufficientQuota,
    InvalidRequest,
    LLMError,
    Message,
    Overloaded,
    RateLimited,
    StreamChunk,
    Tool,
    ToolCall,
    ToolChoice,
    UpstreamProtocolError,
    UpstreamUnavailable,
    Usage,
)
from routing_middleware.testing import FLAVORS, Failure, FakeModel, FakeProvider
from tests.core.fixtures.openai.wire import DONE, chunk, completion, hello_request, sse

KEY = "sk-compat-KEY-42"

#: provider -> (chat completions URL, auth header name, auth value, max-tokens field)
EXPECTED = {
    "openai": ("https://api.openai.com/v1/chat/completions", "authorization", f"Bearer {KEY}",
               "max_completion_tokens"),
    "azure": ("https://res1.openai.azure.com/openai/v1/chat/completions", "api-key", KEY,
              "max_completion_tokens"),
    "deepseek": ("https://api.deepseek.com/chat/completions", "authorization", f"Bearer {KEY}",
                 "max_completion_tokens"),
    "qwen": ("https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions",
             "authorization", f"Bearer {KEY}", "max_completion_tokens"),
    "mistral": ("https://api.mistral.ai/v1/chat/completions", "authorization", f"Bearer {KEY}",
                "max_tokens"),
    "xai": ("https://api.x.ai/v1/chat/completions", "authorization", f"Bearer {KEY}",
            "max_completion_tokens"),
    "groq": ("https://api.groq.com/openai/v1/chat/completions", "authorization", f"Bearer {KEY}",
             "max_completion_tokens"),
    "together": ("https://api.together.xyz/v1/chat/completions", "authorization", f"Bearer {KEY}",
                 "max_tokens"),
    "fireworks": ("https://api.fireworks.ai/inference/v1/chat/completions", "authorization",
                  f"Bearer {KEY}", "max_tokens"),
    "openrouter": ("https://openrouter.ai/api/v1/chat/completions", "authorization",
                   f"Bearer {KEY}", "max_completion_tokens"),
    "cerebras": ("https://api.cerebras.ai/v1/chat/completions", "authorization", f"Bearer {KEY}",
                 "max_completion_tokens"),
    "deepinfra": ("https://api.deepinfra.com/v1/openai/chat/completions", "authorization",
                  f"Bearer {KEY}", "max_tokens"),
    "moonshot": ("https://api.moonshot.ai/v1/chat/completions", "authorization", f"Bearer {KEY}",
                 "max_tokens"),
    "zai": ("https://api.z.ai/api/paas/v4/chat/completions", "authorization", f"Bearer {KEY}",
            "max_tokens"),
    "minimax": ("https://api.minimax.io/v1/chat/completions", "authorization", f"Bearer {KEY}",
                "max_tokens"),
    "perplexity": ("https://api.perplexity.ai/chat/completions", "authorization", f"Bearer {KEY}",
                   "max_tokens"),
    "cohere": ("https://api.cohere.ai/compatibility/v1/chat/completions", "authorization",
               f"Bearer {KEY}", "max_tokens"),
    "vllm": ("http://localhost:8000/v1/chat/completions", "authorization", f"Bearer {KEY}",
             "max_tokens"),
    "ollama": ("http://localhost:11434/v1/chat/completions", "authorization", f"Bearer {KEY}",
               "max_tokens"),
}  # fmt: skip

COMPATIBLE = sorted(EXPECTED)


def config(name: str, **options: object) -> ProviderConfig:
    if name == "azure":
        options.setdefault("resource", "res1")
    return provider_config(name, api_key=KEY, **options)  # type: ignore[arg-type]


def run_stream(provider: ProviderConfig, body: bytes, request: ChatRequest | None = None):
    decoder = OPENAI_DIALECT.stream_decoder(provider, request or hello_request(stream=True))
    chunks: list[StreamChunk] = decoder.feed(body)
    chunks += decoder.close()
    return chunks, decoder


def text_of(chunks: list[StreamChunk]) -> str:
    return "".join(c.text or "" for c in chunks)


def error_of(provider: ProviderConfig, status: int, body: object, headers=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return OPENAI_DIALECT.decode_error(status, headers or {}, raw, provider)


USAGE = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}


# --------------------------------------------------------------------------- sweep


def test_every_openai_compatible_provider_is_covered() -> None:
    table = {name for name, spec in PROVIDERS.items() if spec.dialect == "openai"}
    assert table == set(EXPECTED)


@pytest.mark.parametrize("name", COMPATIBLE)
def test_sweep_encode(name: str) -> None:
    url, header, value, field = EXPECTED[name]
    encoded = OPENAI_DIALECT.encode_request(
        hello_request(max_tokens=33), config(name), "some-model"
    )
    assert encoded.url == url
    assert encoded.headers[header] == value
    assert encoded.json[field] == 33
    other = {"max_tokens", "max_completion_tokens"} - {field}
    assert not other & encoded.json.keys()
    assert encoded.json["model"] == "some-model"


@pytest.mark.parametrize("name", COMPATIBLE)
def test_sweep_decode(name: str) -> None:
    response = OPENAI_DIALECT.decode_response(
        completion({"content": "ok"}, usage=USAGE), config(name)
    )
    assert response.text == "ok"
    assert response.provider == name
    assert response.usage == Usage(input_tokens=20, output_tokens=5)


@pytest.mark.parametrize("name", COMPATIBLE)
def test_sweep_stream(name: str) -> None:
    body = sse(
        chunk({"role": "assistant", "content": "o"}),
        chunk({"content": "k"}, finish="stop"),
        chunk(None, usage=USAGE),
        DONE,
    )
    chunks, decoder = run_stream(config(name), body)
    assert text_of(chunks) == "ok"
    assert decoder.usage == Usage(input_tokens=20, output_tokens=5)


@pytest.mark.parametrize("name", COMPATIBLE)
def test_sweep_error(name: str) -> None:
    error = error_of(
        config(name), 401, {"error": {"message": "bad key", "code": "invalid_api_key"}}
    )
    assert type(error) is AuthenticationFailed
    assert error.provider == name


# --------------------------------------------------------------------------- per provider


class TestOpenAI:
    def test_encode_keeps_developer_role(self) -> None:
        request = ChatRequest(model="m", messages=[Message(role="developer", content="x")])
        body = OPENAI_DIALECT.encode_request(request, config("openai"), "gpt-x").json
        assert body["messages"][0]["role"] == "developer"

    def test_decode_cache_writes(self) -> None:
        usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 12}}
        response = OPENAI_DIALECT.decode_response(
            completion({"content": "x"}, usage=usage), config("openai")
        )
        assert response.usage == Usage(
            input_tokens=20, output_tokens=5, cached_input_tokens=8, cache_write_tokens=12
        )

    def test_stream_usage_only_in_the_extra_chunk(self) -> None:
        body = sse(
            chunk({"content": "a"}, usage=None),
            chunk({}, finish="length"),
            chunk(None, usage=USAGE),
            DONE,
        )
        chunks, _ = run_stream(config("openai"), body)
        assert [c.usage is not None for c in chunks] == [False, False, True]
        assert chunks[1].finish_reason is FinishReason.LENGTH

    def test_error_quota_vs_rate(self) -> None:
        quota = error_of(
            config("openai"),
            429,
            {"error": {"message": "q", "type": "insufficient_quota", "code": "insufficient_quota"}},
        )
        assert type(quota) is InsufficientQuota


class TestAzure:
    def test_encode_v1_and_legacy(self) -> None:
        legacy = config("azure", azure_api_version="2025-04-01-preview")
        encoded = OPENAI_DIALECT.encode_request(hello_request(), legacy, "my-deploy")
        assert encoded.url == (
            "https://res1.openai.azure.com/openai/deployments/my-deploy/chat/completions"
            "?api-version=2025-04-01-preview"
        )
        assert encoded.headers["api-key"] == KEY

    def test_decode_output_content_filter(self) -> None:
        body = json.loads(completion({"content": None}, finish="content_filter"))
        body["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": {}}]
        response = OPENAI_DIALECT.decode_response(json.dumps(body).encode(), config("azure"))
        assert response.choices[0].finish_reason is FinishReason.CONTENT_FILTER

    def test_stream_first_chunk_has_empty_choices(self) -> None:
        body = sse(
            {"id": "", "object": "", "created": 0, "model": "", "choices": [],
             "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]},
            chunk({"role": "assistant", "content": "hi"}),
            chunk({}, finish="stop"),
            chunk(None, usage=USAGE),
            DONE,
        )  # fmt: skip
        chunks, decoder = run_stream(config("azure"), body)
        assert text_of(chunks) == "hi"
        assert decoder.usage is not None
        assert not decoder.usage.estimated

    def test_error_prompt_content_filter_and_retry_after(self) -> None:
        body = {
            "error": {
                "message": "The response was filtered due to the prompt triggering a content policy.",  # noqa: E501
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
                "innererror": {"code": "ResponsibleAIPolicyViolation"},
            }
        }
        error = error_of(config("azure"), 400, body)
        assert type(error) is ContentFiltered
        assert error.param == "prompt"
        limited = error_of(
            config("azure"),
            429,
            {
                "error": {
                    "code": "429",
                    "message": "Requests to the ChatCompletions_Create Operation have exceeded call rate limit",  # noqa: E501
                }
            },
            {"retry-after-ms": "250", "retry-after": "1"},
        )
        assert type(limited) is RateLimited
        assert limited.retry_after == 0.25


class TestDeepSeek:
    def test_encode_developer_becomes_system(self) -> None:
        request = ChatRequest(model="m", messages=[Message(role="developer", content="x")])
        body = OPENAI_DIALECT.encode_request(request, config("deepseek"), "deepseek-chat").json
        assert body["messages"][0]["role"] == "system"

    def test_decode_reasoning_and_cache_hit_miss(self) -> None:
        usage = {
            "prompt_tokens": 1000,
            "completion_tokens": 300,
            "total_tokens": 1300,
            "prompt_cache_hit_tokens": 800,
            "prompt_cache_miss_tokens": 200,
            "completion_tokens_details": {"reasoning_tokens": 250},
        }
        body = completion({"content": "42", "reasoning_content": "think..."}, usage=usage)
        response = OPENAI_DIALECT.decode_response(body, config("deepseek"))
        assert response.choices[0].message.reasoning == "think..."
        assert response.usage == Usage(
            input_tokens=1000, output_tokens=300, cached_input_tokens=800, reasoning_tokens=250
        )

    def test_stream_reasoning_deltas_between_keepalives(self) -> None:
        body = sse(
            ": keep-alive",
            "",
            chunk({"role": "assistant", "content": None, "reasoning_content": "Let me"}),
            ": keep-alive",
            "",
            chunk({"content": None, "reasoning_content": " think"}),
            chunk({"content": "Done"}, finish="stop"),
            chunk(
                None, usage={**USAGE, "prompt_cache_hit_tokens": 16, "prompt_cache_miss_tokens": 4}
            ),
            DONE,
        )
        chunks, decoder = run_stream(config("deepseek"), body)
        assert "".join(c.reasoning or "" for c in chunks) == "Let me think"
        assert text_of(chunks) == "Done"
        assert decoder.usage == Usage(input_tokens=20, output_tokens=5, cached_input_tokens=16)

    def test_errors_402_and_503(self) -> None:
        assert (
            type(error_of(config("deepseek"), 402, {"error": {"message": "Insufficient Balance"}}))
            is InsufficientQuota
        )
        busy = error_of(config("deepseek"), 503, {"error": {"message": "Server overloaded"}})
        assert type(busy) is Overloaded
        assert busy.retryable

    def test_insufficient_system_resource_is_an_error_finish(self) -> None:
        body = completion({"content": ""}, finish="insufficient_system_resource")
        choice = OPENAI_DIALECT.decode_response(body, config("deepseek")).choices[0]
        assert choice.finish_reason is FinishReason.ERROR
        assert choice.native_finish_reason == "insufficient_system_resource"


class TestQwen:
    @pytest.mark.parametrize(
        ("region", "host"),
        [("intl", "dashscope-intl"), ("us", "dashscope-us"), ("cn", "dashscope")],
    )
    def test_encode_regional_base_urls(self, region: str, host: str) -> None:
        encoded = OPENAI_DIALECT.encode_request(
            hello_request(), config("qwen", region=region), "qwen-plus"
        )
        assert encoded.url == f"https://{host}.aliyuncs.com/compatible-mode/v1/chat/completions"

    def test_encode_passes_thinking_switches_through_extra(self) -> None:
        request = hello_request(
            stream=True, extra={"enable_thinking": True, "thinking_budget": 512}
        )
        body = OPENAI_DIALECT.encode_request(request, config("qwen"), "qwen3-max").json
        assert (body["enable_thinking"], body["thinking_budget"]) == (True, 512)
        assert body["stream_options"] == {"include_usage": True}

    def test_decode_cached_tokens(self) -> None:
        usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 10}}
        response = OPENAI_DIALECT.decode_response(
            completion({"content": "x"}, usage=usage), config("qwen")
        )
        assert response.usage is not None
        assert response.usage.cached_input_tokens == 10

    def test_stream_reasoning_then_answer(self) -> None:
        body = sse(
            chunk({"content": "", "reasoning_content": "hmm", "role": "assistant"}),
            chunk({"content": "yes", "reasoning_content": None}),
            chunk({"content": ""}, finish="stop"),
            chunk(None, usage=USAGE),
            DONE,
        )
        chunks, _ = run_stream(config("qwen"), body)
        assert (text_of(chunks), chunks[0].reasoning) == ("yes", "hmm")

    def test_errors_moderation_and_arrears(self) -> None:
        flagged = error_of(
            config("qwen"),
            400,
            {
                "error": {
                    "code": "data_inspection_failed",
                    "message": "Input data may contain inappropriate content.",
                    "type": "data_inspection_failed",
                }
            },
        )
        assert type(flagged) is ContentFiltered
        arrears = error_of(
            config("qwen"),
            400,
            {
                "error": {
                    "code": "Arrearage",
                    "message": "Access denied, please make sure your account is in good standing.",
                }
            },
        )
        assert type(arrears) is InsufficientQuota


class TestMistral:
    def test_encode_quirks(self) -> None:
        request = ChatRequest(
            model="m",
            messages=[
                Message(role="user", content="weather?"),
                Message(role="assistant", tool_calls=[ToolCall(id="toolu_01XYZ", name="w")]),
                Message(role="tool", tool_call_id="toolu_01XYZ", content="sunny"),
            ],
            max_tokens=100,
            seed=5,
            user="someone",
            tools=[Tool(name="w")],
            tool_choice=ToolChoice(mode="required"),
        )
        body = OPENAI_DIALECT.encode_request(
            request, config("mistral"), "mistral-small-latest"
        ).json
        assert body["max_tokens"] == 100
        assert body["random_seed"] == 5
        assert "seed" not in body
        assert "user" not in body
        assert body["tool_choice"] == "any"
        issued = mistral_tool_call_id("toolu_01XYZ")
        assert body["messages"][1]["tool_calls"][0]["id"] == issued
        assert body["messages"][2]["tool_call_id"] == issued
        assert len(issued) == 9

    def test_encode_stream_without_stream_options(self) -> None:
        request = hello_request(stream=True)
        body = OPENAI_DIALECT.encode_request(request, config("mistral"), "mistral-large-4").json
        assert body["stream"] is True
        assert "stream_options" not in body

    def test_decode_model_length_and_thinking_parts(self) -> None:
        content = [
            {"type": "thinking", "thinking": [{"type": "text", "text": "step 1"}]},
            {"type": "text", "text": "answer"},
        ]
        body = completion({"content": content}, finish="model_length", usage=USAGE)
        choice = OPENAI_DIALECT.decode_response(body, config("mistral")).choices[0]
        assert choice.message.content == "answer"
        assert choice.message.reasoning == "step 1"
        assert choice.finish_reason is FinishReason.LENGTH
        assert choice.native_finish_reason == "model_length"

    def test_stream_usage_on_final_chunk_and_ids_mapped_back(self) -> None:
        request = ChatRequest(
            model="m",
            stream=True,
            messages=[
                Message(role="assistant", tool_calls=[ToolCall(id="call_old", name="w")]),
                Message(role="tool", tool_call_id="call_old", content="1"),
            ],
        )
        echoed = mistral_tool_call_id("call_old")
        body = sse(
            chunk({"role": "assistant", "content": ""}),
            chunk({"tool_calls": [
                {"id": echoed, "function": {"name": "w", "arguments": "{}"}, "index": 0},
                {"id": "AbCdE1234", "function": {"name": "v", "arguments": '{"a":1}'}, "index": 1},
            ]}),
            chunk({"content": ""}, finish="tool_calls", usage=USAGE),
            DONE,
        )  # fmt: skip
        chunks, decoder = run_stream(config("mistral"), body, request)
        ids = [d.id for c in chunks for d in c.tool_calls or ()]
        assert ids == ["call_old", "AbCdE1234"]
        assert chunks[-1].finish_reason is FinishReason.TOOL_CALLS
        assert chunks[-1].usage == Usage(input_tokens=20, output_tokens=5)
        assert decoder.usage == chunks[-1].usage

    def test_errors_flat_and_fastapi_shapes(self) -> None:
        flat = error_of(
            config("mistral"),
            400,
            {
                "object": "error",
                "message": "Invalid model: x",
                "type": "invalid_model",
                "param": None,
                "code": "1500",
            },
        )
        assert type(flat) is InvalidRequest
        assert flat.message == "Invalid model: x"
        detail = [
            {
                "loc": ["body", "random_seed"],
                "msg": "Input should be a valid integer",
                "type": "int_parsing",
            }
        ]
        validation = error_of(config("mistral"), 422, {"detail": detail})
        assert type(validation) is InvalidRequest
        assert validation.status_code == 422
        assert "random_seed" in validation.message


class TestXAI:
    def test_encode_plain_bearer(self) -> None:
        encoded = OPENAI_DIALECT.encode_request(hello_request(), config("xai"), "grok-4.5")
        assert encoded.json["messages"] == [{"role": "user", "content": "hello"}]

    def test_decode_reasoning_outside_completion_tokens(self) -> None:
        # total 200 > 50 + 30: output = 200 - 50 = 150; reasoning (reported) = 120
        usage = {
            "prompt_tokens": 50,
            "completion_tokens": 30,
            "total_tokens": 200,
            "prompt_tokens_details": {"cached_tokens": 40, "text_tokens": 50},
            "completion_tokens_details": {"reasoning_tokens": 120},
        }
        response = OPENAI_DIALECT.decode_response(
            completion({"content": "x"}, usage=usage), config("xai")
        )
        assert response.usage == Usage(
            input_tokens=50, output_tokens=150, cached_input_tokens=40, reasoning_tokens=120
        )

    def test_stream_reasoning_usage(self) -> None:
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 40,
                 "completion_tokens_details": {"reasoning_tokens": 28}}  # fmt: skip
        body = sse(chunk({"content": "hi"}, finish="stop"), chunk(None, usage=usage), DONE)
        _, decoder = run_stream(config("xai"), body)
        # 40 - 10 = 30 output tokens, 28 of them reasoning
        assert decoder.usage == Usage(input_tokens=10, output_tokens=30, reasoning_tokens=28)

    def test_error_rate_limit(self) -> None:
        error = error_of(
            config("xai"),
            429,
            {"code": "Some resource has been exhausted", "error": "Too many requests"},
            {"retry-after": "3"},
        )
        assert type(error) is RateLimited
        assert error.message == "Too many requests"
        assert error.retry_after == 3.0


class TestGroq:
    def test_encode_developer_becomes_system(self) -> None:
        request = ChatRequest(model="m", messages=[Message(role="developer", content="x")])
        body = OPENAI_DIALECT.encode_request(request, config("groq"), "openai/gpt-oss-20b").json
        assert body["messages"][0]["role"] == "system"

    def test_decode_timing_fields_ignored(self) -> None:
        usage = {
            **USAGE,
            "queue_time": 0.01,
            "prompt_time": 0.002,
            "completion_time": 0.1,
            "total_time": 0.11,
        }
        response = OPENAI_DIALECT.decode_response(
            completion({"content": "x"}, usage=usage), config("groq")
        )
        assert response.usage == Usage(input_tokens=20, output_tokens=5)

    def test_stream_usage_from_x_groq(self) -> None:
        body = sse(
            chunk({"role": "assistant", "content": "fast"}),
            chunk({}, finish="stop", x_groq={"id": "req_1", "usage": {**USAGE, "queue_time": 0.1}}),
            DONE,
        )
        chunks, decoder = run_stream(config("groq"), body)
        assert decoder.usage == Usage(input_tokens=20, output_tokens=5)
        assert chunks[-1].usage == decoder.usage

    def test_error_rate_limit_retry_after(self) -> None:
        error = error_of(
            config("groq"),
            429,
            {
                "error": {
                    "message": "Rate limit reached for model",
                    "type": "tokens",
                    "code": "rate_limit_exceeded",
                }
            },
            {"retry-after": "2"},
        )
        assert (type(error), error.retry_after) == (RateLimited, 2.0)


class TestTogether:
    def test_encode_max_tokens(self) -> None:
        body = OPENAI_DIALECT.encode_request(
            hello_request(max_tokens=7), config("together"), "x"
        ).json
        assert body["max_tokens"] == 7

    def test_decode(self) -> None:
        body = completion({"content": "t"}, finish="eos", usage=USAGE)
        choice = OPENAI_DIALECT.decode_response(body, config("together")).choices[0]
        assert (choice.finish_reason, choice.native_finish_reason) == (FinishReason.STOP, "eos")

    def test_stream_usage_on_last_content_chunk(self) -> None:
        body = sse(
            chunk({"content": "t"}), chunk({"content": ""}, finish="stop", usage=USAGE), DONE
        )
        _, decoder = run_stream(config("together"), body)
        assert decoder.usage == Usage(input_tokens=20, output_tokens=5)

    def test_error(self) -> None:
        error = error_of(
            config("together"), 500, {"error": {"message": "internal", "type": "server_error"}}
        )
        assert type(error) is UpstreamUnavailable


class TestFireworks:
    def test_encode(self) -> None:
        encoded = OPENAI_DIALECT.encode_request(
            hello_request(max_tokens=9), config("fireworks"), "accounts/fireworks/models/llama4"
        )
        assert encoded.json["model"] == "accounts/fireworks/models/llama4"
        assert encoded.json["max_tokens"] == 9

    def test_decode(self) -> None:
        response = OPENAI_DIALECT.decode_response(
            completion({"content": "f"}, usage=USAGE), config("fireworks")
        )
        assert response.usage == Usage(input_tokens=20, output_tokens=5)

    def test_stream_cut_raises(self) -> None:
        decoder = OPENAI_DIALECT.stream_decoder(config("fireworks"), hello_request(stream=True))
        decoder.feed(sse(chunk({"content": "f"})))
        with pytest.raises(UpstreamProtocolError):
            decoder.close()

    def test_error_context(self) -> None:
        error = error_of(
            config("fireworks"),
            400,
            {
                "error": {
                    "message": "The prompt is too long: 140000, model maximum context length: 131072",  # noqa: E501
                    "type": "invalid_request_error",
                }
            },
        )
        assert type(error) is ContextWindowExceeded


class TestOpenRouter:
    def test_encode_attribution_headers(self) -> None:
        provider = config("openrouter", referer="https://app.test", title="My App")
        encoded = OPENAI_DIALECT.encode_request(
            hello_request(extra={"models": ["a/b", "c/d"], "provider": {"sort": "price"}}),
            provider,
            "anthropic/claude-sonnet-4.5",
        )
        assert encoded.headers["HTTP-Referer"] == "https://app.test"
        assert encoded.headers["X-OpenRouter-Title"] == "My App"
        assert encoded.json["models"] == ["a/b", "c/d"]
        assert encoded.json["provider"] == {"sort": "price"}

    def test_decode_cost_and_cache(self) -> None:
        usage = {
            **USAGE,
            "cost": 0.0001725,
            "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 6},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
        response = OPENAI_DIALECT.decode_response(
            completion({"content": "x", "reasoning": "why"}, usage=usage), config("openrouter")
        )
        assert response.choices[0].message.reasoning == "why"
        assert response.usage == Usage(
            input_tokens=20,
            output_tokens=5,
            cached_input_tokens=4,
            cache_write_tokens=6,
            reasoning_tokens=2,
            provider_cost=Decimal("0.0001725"),
        )

    def test_stream_processing_comments_and_mid_stream_error(self) -> None:
        decoder = OPENAI_DIALECT.stream_decoder(config("openrouter"), hello_request(stream=True))
        first = decoder.feed(
            sse(
                ": OPENROUTER PROCESSING",
                "",
                ": OPENROUTER PROCESSING",
                "",
                chunk({"content": "par"}),
            )
        )
        assert text_of(first) == "par"
        failure = {
            "id": "gen-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "x",
            "provider": "SomeUpstream",
            "error": {"code": 502, "message": "Provider disconnected"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
        with pytest.raises(UpstreamUnavailable, match="Provider disconnected") as raised:
            decoder.feed(sse(failure))
        assert raised.value.status_code == 502
        assert decoder.usage is not None
        assert decoder.usage.estimated

    def test_stream_cost_in_final_usage(self) -> None:
        body = sse(
            chunk({"content": "x"}, finish="stop"),
            chunk(None, usage={**USAGE, "cost": "0.002"}),
            DONE,
        )
        _, decoder = run_stream(config("openrouter"), body)
        assert decoder.usage is not None
        assert decoder.usage.provider_cost == Decimal("0.002")

    def test_errors_credits_and_moderation(self) -> None:
        credits = error_of(
            config("openrouter"), 402, {"error": {"code": 402, "message": "Insufficient credits"}}
        )
        assert type(credits) is InsufficientQuota
        assert not credits.retryable
        flagged = error_of(
            config("openrouter"),
            403,
            {
                "error": {
                    "code": 403,
                    "message": "Input was flagged",
                    "metadata": {"reasons": ["violence"], "flagged_input": "..."},
                }
            },
        )
        assert type(flagged) is ContentFiltered
        no_provider = error_of(
            config("openrouter"), 503, {"error": {"code": 503, "message": "No available provider"}}
        )
        assert type(no_provider) is Overloaded


class TestCerebras:
    def test_encode(self) -> None:
        request = ChatRequest(
            model="m", messages=[Message(role="developer", content="x")], max_tokens=3
        )
        body = OPENAI_DIALECT.encode_request(request, config("cerebras"), "gpt-oss-120b").json
        assert (body["messages"][0]["role"], body["max_completion_tokens"]) == ("system", 3)

    def test_decode(self) -> None:
        body = json.loads(completion({"content": "c"}, usage=USAGE))
        body["time_info"] = {"queue_time": 0.0001}
        response = OPENAI_DIALECT.decode_response(json.dumps(body).encode(), config("cerebras"))
        assert response.usage == Usage(input_tokens=20, output_tokens=5)

    def test_stream(self) -> None:
        body = sse(chunk({"content": "c"}, finish="stop"), chunk(None, usage=USAGE), DONE)
        chunks, _ = run_stream(config("cerebras"), body)
        assert text_of(chunks) == "c"

    def test_error(self) -> None:
        error = error_of(
            config("cerebras"),
            429,
            {
                "message": "Requests per minute limit exceeded",
                "type": "too_many_requests_error",
                "param": "quota",
                "code": "request_quota_exceeded",
            },
        )
        assert type(error) is RateLimited
        assert error.message == "Requests per minute limit exceeded"


class TestDeepInfra:
    def test_encode(self) -> None:
        body = OPENAI_DIALECT.encode_request(
            hello_request(max_tokens=4), config("deepinfra"), "meta-llama/Llama-4"
        ).json
        assert body["max_tokens"] == 4

    def test_decode_estimated_cost_field_is_not_provider_billing(self) -> None:
        usage = {**USAGE, "estimated_cost": 0.00001}
        response = OPENAI_DIALECT.decode_response(
            completion({"content": "d"}, usage=usage), config("deepinfra")
        )
        assert response.usage is not None
        assert response.usage.provider_cost is None

    def test_stream(self) -> None:
        body = sse(
            chunk({"content": "d"}), chunk({}, finish="stop"), chunk(None, usage=USAGE), DONE
        )
        _, decoder = run_stream(config("deepinfra"), body)
        assert decoder.usage == Usage(input_tokens=20, output_tokens=5)

    def test_error(self) -> None:
        error = error_of(config("deepinfra"), 422, {"detail": {"error": "bad"}})
        assert type(error) is InvalidRequest


class TestMoonshot:
    def test_encode(self) -> None:
        encoded = OPENAI_DIALECT.encode_request(
            hello_request(max_tokens=2), config("moonshot"), "kimi-k2.6"
        )
        assert encoded.json["max_tokens"] == 2

    def test_decode_top_level_cached_tokens(self) -> None:
        usage = {**USAGE, "cached_tokens": 16}
        response = OPENAI_DIALECT.decode_response(
            completion({"content": "k"}, usage=usage), config("moonshot")
        )
        assert response.usage == Usage(input_tokens=20, output_tokens=5, cached_input_tokens=16)

    def test_stream_usage_inside_choice_chunk(self) -> None:
        body = sse(
            chunk({"content": "k"}),
            chunk({}, finish="stop", usage={**USAGE, "cached_tokens": 3}),
            DONE,
        )
        _, decoder = run_stream(config("moonshot"), body)
        assert decoder.usage == Usage(input_tokens=20, output_tokens=5, cached_input_tokens=3)

    def test_error(self) -> None:
        error = error_of(
            config("moonshot"),
            429,
            {
                "error": {
                    "message": "Your account is suspended due to insufficient balance",
                    "type": "exceeded_current_quota_error",
                }
            },
        )
        assert type(error) is InsufficientQuota


class TestZai:
    def test_encode(self) -> None:
        encoded = OPENAI_DIALECT.encode_request(hello_request(), config("zai"), "glm-4.7")
        assert encoded.url.endswith("/api/paas/v4/chat/completions")

    def test_decode_sensitive_is_content_filter(self) -> None:
        body = completion(
            {"content": "", "reasoning_content": "r"}, finish="sensitive", usage=USAGE
        )
        choice = OPENAI_DIALECT.decode_response(body, config("zai")).choices[0]
        assert choice.finish_reason is FinishReason.CONTENT_FILTER
        assert choice.native_finish_reason == "sensitive"

    def test_stream(self) -> None:
        body = sse(
            chunk({"reasoning_content": "r"}),
            chunk({"content": "z"}, finish="stop", usage=USAGE),
            DONE,
        )
        chunks, _ = run_stream(config("zai"), body)
        assert (chunks[0].reasoning, text_of(chunks)) == ("r", "z")

    def test_error(self) -> None:
        error = error_of(
            config("zai"),
            429,
            {"error": {"code": "1113", "message": "Insufficient balance or no resource package"}},
        )
        assert type(error) is InsufficientQuota


class TestMiniMax:
    def test_encode(self) -> None:
        encoded = OPENAI_DIALECT.encode_request(
            hello_request(max_tokens=5), config("minimax"), "MiniMax-M3"
        )
        assert encoded.json["max_tokens"] == 5

    def test_decode_think_inline_is_kept_as_text(self) -> None:
        body = completion({"content": "<think>a</think>b"}, usage=USAGE)
        response = OPENAI_DIALECT.decode_response(body, config("minimax"))
        assert response.text == "<think>a</think>b"

    def test_stream(self) -> None:
        body = sse(chunk({"content": "m"}, finish="stop"), chunk(None, usage=USAGE), DONE)
        chunks, _ = run_stream(config("minimax"), body)
        assert text_of(chunks) == "m"

    def test_error(self) -> None:
        error = error_of(config("minimax"), 500, b"upstream timeout")
        assert type(error) is UpstreamUnavailable
        assert error.message == "upstream timeout"


class TestPerplexity:
    def test_encode_no_v1_prefix(self) -> None:
        encoded = OPENAI_DIALECT.encode_request(hello_request(), config("perplexity"), "sonar-pro")
        assert encoded.url == "https://api.perplexity.ai/chat/completions"

    def test_decode_citations_do_not_break_decoding(self) -> None:
        body = json.loads(
            completion({"content": "p [1]"}, usage={**USAGE, "search_context_size": "low"})
        )
        body["citations"] = ["https://a.test"]
        response = OPENAI_DIALECT.decode_response(json.dumps(body).encode(), config("perplexity"))
        assert response.text == "p [1]"

    def test_stream(self) -> None:
        body = sse(chunk({"content": "p"}, finish="stop", usage=USAGE), DONE)
        _, decoder = run_stream(config("perplexity"), body)
        assert decoder.usage == Usage(input_tokens=20, output_tokens=5)

    def test_error(self) -> None:
        error = error_of(
            config("perplexity"),
            400,
            {"error": {"message": "Invalid model 'x'", "type": "invalid_model", "code": 400}},
        )
        assert type(error) is InvalidRequest


class TestCohere:
    def test_encode(self) -> None:
        encoded = OPENAI_DIALECT.encode_request(
            hello_request(max_tokens=3), config("cohere"), "command-a-03-2025"
        )
        assert encoded.json["max_tokens"] == 3

    def test_decode(self) -> None:
        response = OPENAI_DIALECT.decode_response(
            completion({"content": "c"}, usage=USAGE), config("cohere")
        )
        assert response.text == "c"

    def test_stream(self) -> None:
        body = sse(chunk({"content": "c"}, finish="stop"), chunk(None, usage=USAGE), DONE)
        chunks, _ = run_stream(config("cohere"), body)
        assert text_of(chunks) == "c"

    def test_error(self) -> None:
        error = error_of(config("cohere"), 429, {"message": "You are using a Trial key"})
        assert type(error) is RateLimited


class TestVLLM:
    def test_encode_without_key_sends_no_auth(self) -> None:
        provider = provider_config("vllm", base_url="http://gpu-1:8000/v1")
        encoded = OPENAI_DIALECT.encode_request(hello_request(top_k=20), provider, "Qwen/Qwen3-8B")
        assert encoded.url == "http://gpu-1:8000/v1/chat/completions"
        assert "authorization" not in encoded.headers
        assert encoded.json["top_k"] == 20

    def test_decode_reasoning_field(self) -> None:
        body = completion({"content": "v", "reasoning": "newer vllm"}, usage=USAGE)
        response = OPENAI_DIALECT.decode_response(body, config("vllm"))
        assert response.choices[0].message.reasoning == "newer vllm"

    def test_stream_reasoning_field(self) -> None:
        body = sse(
            chunk({"reasoning": "r1"}),
            chunk({"content": "v"}, finish="stop"),
            chunk(None, usage=USAGE),
            DONE,
        )
        chunks, _ = run_stream(config("vllm"), body)
        assert [c.reasoning for c in chunks if c.reasoning] == ["r1"]

    def test_error_context_overflow(self) -> None:
        body = {
            "object": "error",
            "message": "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",  # noqa: E501
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
        assert type(error_of(config("vllm"), 400, body)) is ContextWindowExceeded


class TestOllama:
    def test_encode_local_without_key(self) -> None:
        encoded = OPENAI_DIALECT.encode_request(
            hello_request(), provider_config("ollama"), "llama3.2"
        )
        assert encoded.url == "http://localhost:11434/v1/chat/completions"
        assert "authorization" not in encoded.headers

    def test_decode_object_arguments(self) -> None:
        calls = [
            {"id": "call_x", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
        ]
        body = completion({"content": "", "tool_calls": calls}, finish="tool_calls")
        message = OPENAI_DIALECT.decode_response(body, config("ollama")).choices[0].message
        assert message.tool_calls == [ToolCall(id="call_x", name="f", arguments='{"a":1}')]

    def test_stream_without_usage_is_estimated(self) -> None:
        body = sse(chunk({"content": "Local answer"}), chunk({}, finish="stop"), DONE)
        chunks, decoder = run_stream(config("ollama"), body)
        # input 9 (see the OpenAI tests); "Local answer" = 12 ASCII chars -> 3
        assert decoder.usage == Usage(input_tokens=9, output_tokens=3, estimated=True)
        assert chunks[-1].usage == decoder.usage

    def test_error_model_missing(self) -> None:
        error = error_of(
            config("ollama"),
            404,
            {
                "error": {
                    "message": 'model "llama9" not found, try pulling it first',
                    "type": "api_error",
                }
            },
        )
        assert type(error) is InvalidRequest
        assert error.status_code == 404


# --------------------------------------------------------------------------- FakeProvider
# An independent server side: the fake builds its answers without our dialect code.


def fake_call(flavor: str, request: ChatRequest, *failures: Failure):
    fake = FakeProvider(
        [
            FakeModel(
                "m1",
                content="Hello there",
                input_tokens=30,
                output_tokens=4,
                reasoning_tokens=2,
                cached_tokens=10,
            )
        ],
        flavor=flavor,
    )
    if failures:
        fake.inject("m1", *failures)
    provider = provider_config(flavor, api_key="k", base_url="https://fake.invalid/v1")
    encoded = OPENAI_DIALECT.encode_request(request, provider, "m1")
    with httpx2.Client(transport=fake.transport("httpx2")) as client:
        response = client.request(
            encoded.method, encoded.url, headers=encoded.headers, json=encoded.json
        )
    return provider, response


@pytest.mark.parametrize("flavor", FLAVORS)
def test_fake_provider_stream_and_json_meter_the_same(flavor: str) -> None:
    provider, plain = fake_call(flavor, hello_request())
    assert plain.status_code == 200
    decoded = OPENAI_DIALECT.decode_response(plain.content, provider)
    assert decoded.text == "Hello there"
    assert decoded.usage is not None
    # 4 visible output tokens + 2 reasoning tokens, however the flavor reports them
    assert (decoded.usage.input_tokens, decoded.usage.output_tokens) == (30, 6)
    assert not decoded.usage.estimated

    request = hello_request(stream=True)
    provider, streamed = fake_call(flavor, request)
    decoder = OPENAI_DIALECT.stream_decoder(provider, request)
    chunks = []
    for start in range(0, len(streamed.content), 7):  # odd-sized network reads
        chunks += decoder.feed(streamed.content[start : start + 7])
    chunks += decoder.close()
    assert text_of(chunks) == "Hello there"
    assert decoder.usage == decoded.usage  # a streamed call costs what a plain one does


@pytest.mark.parametrize("flavor", ["openai", "deepseek", "mistral", "openrouter", "vllm"])
def test_fake_provider_cut_stream_is_never_clean(flavor: str) -> None:
    request = hello_request(stream=True)
    provider, response = fake_call(flavor, request, Failure(kind="cut", after=2))
    decoder = OPENAI_DIALECT.stream_decoder(provider, request)
    decoder.feed(response.content)
    with pytest.raises(UpstreamProtocolError):
        decoder.close()
    assert decoder.usage is not None
    assert decoder.usage.estimated
    assert decoder.usage.input_tokens > 0


@pytest.mark.parametrize("flavor", ["openai", "groq", "qwen"])
def test_fake_provider_done_marker_after_a_cut_is_still_a_cut(flavor: str) -> None:
    request = hello_request(stream=True)
    cut = Failure(kind="cut", after=2, terminal=True)
    provider, response = fake_call(flavor, request, cut)
    assert response.content.rstrip().endswith(b"data: [DONE]")
    decoder = OPENAI_DIALECT.stream_decoder(provider, request)
    decoder.feed(response.content)
    with pytest.raises(UpstreamProtocolError):
        decoder.close()


def test_fake_provider_stream_without_usage_is_estimated() -> None:
    request = hello_request(stream=True)
    provider, response = fake_call("ollama", request, Failure(kind="no_usage"))
    decoder = OPENAI_DIALECT.stream_decoder(provider, request)
    chunks = decoder.feed(response.content) + decoder.close()
    assert text_of(chunks) == "Hello there"
    # input 9 (one "hello" message); "Hello there" = 11 ASCII chars -> (11 + 3) // 4 = 3
    assert decoder.usage == Usage(input_tokens=9, output_tokens=3, estimated=True)


def test_fake_provider_openrouter_mid_stream_error_raises() -> None:
    request = hello_request(stream=True)
    provider, response = fake_call("openrouter", request, Failure(kind="stream_error", after=1))
    decoder = OPENAI_DIALECT.stream_decoder(provider, request)
    with pytest.raises(LLMError) as raised:
        decoder.feed(response.content)
    assert not isinstance(raised.value, UpstreamProtocolError)
    assert raised.value.provider == "openrouter"


@pytest.mark.parametrize(
    ("flavor", "failure", "kind"),
    [
        ("openai", Failure(status=429, code="insufficient_quota"), InsufficientQuota),
        ("openai", Failure(status=429, retry_after_ms=1500), RateLimited),
        ("azure", Failure(status=400, code="content_filter"), ContentFiltered),
        ("deepseek", Failure(status=402), InsufficientQuota),
        ("deepseek", Failure(status=503), Overloaded),
        ("openrouter", Failure(status=402), InsufficientQuota),
        ("mistral", Failure(status=401), AuthenticationFailed),
        ("groq", Failure(status=500), UpstreamUnavailable),
    ],
)
def test_fake_provider_errors_map(flavor: str, failure: Failure, kind: type) -> None:
    provider, response = fake_call(flavor, hello_request(), failure)
    assert response.status_code == failure.status
    error = OPENAI_DIALECT.decode_error(
        response.status_code, response.headers, response.content, provider
    )
    assert type(error) is kind
    if failure.retry_after_ms:
        assert error.retry_after == 1.5, dict(response.headers)


def test_fake_provider_malformed_body() -> None:
    provider, response = fake_call("openai", hello_request(), Failure(kind="malformed"))
    with pytest.raises(UpstreamProtocolError):
        OPENAI_DIALECT.decode_response(response.content, provider)
