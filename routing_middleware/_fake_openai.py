"""The fake's OpenAI side: chat completions in every provider flavor, the model list,
and the error bodies of the OpenAI-compatible family. Responses and embeddings live
in ``_fake_responses``."""

from __future__ import annotations

from typing import Any

from ._fake_config import Failure, FakeModel
from ._fake_flavors import FLAVORS, Flavor, fragments, request_ids, tool_call_id
from ._fake_responses import render_embeddings, render_responses
from ._fake_wire import (
    Ctx,
    Piece,
    Reply,
    StreamPlan,
    finish_json,
    finish_stream,
    json_reply,
    retry_headers,
    sse,
    sse_comment,
)

__all__ = ["error_reply", "model_reply", "models_reply", "render"]

_FINISH = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "refusal": "stop",
}
_SAFE = {"filtered": False, "severity": "safe"}
_FILTERS = dict.fromkeys(("hate", "self_harm", "sexual", "violence"), _SAFE)


# --------------------------------------------------------------------------- chat


def _chat_usage(ctx: Ctx, flavor: Flavor) -> dict[str, Any]:
    gen = ctx.gen
    usage: dict[str, Any] = {
        "prompt_tokens": gen.input_tokens,
        "completion_tokens": gen.total_output_tokens,
        "total_tokens": gen.input_tokens + gen.total_output_tokens,
    }
    if flavor.completion_excludes_reasoning:
        usage["completion_tokens"] = gen.output_tokens
    if flavor.cached:
        details: dict[str, Any] = {"cached_tokens": gen.cached_tokens}
        if flavor.cache_write:
            details["cache_write_tokens"] = gen.cache_write_tokens
        if flavor.name in ("openai", "azure"):
            details["audio_tokens"] = 0
        usage["prompt_tokens_details"] = details
    if flavor.reasoning_tokens:
        completion: dict[str, Any] = {"reasoning_tokens": gen.reasoning_tokens}
        if flavor.name in ("openai", "azure"):
            completion |= {
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            }
        usage["completion_tokens_details"] = completion
    if flavor.deepseek:
        usage["prompt_cache_hit_tokens"] = gen.cached_tokens
        usage["prompt_cache_miss_tokens"] = gen.input_tokens - gen.cached_tokens
    if flavor.groq:
        usage |= {"queue_time": 0.01, "prompt_time": 0.002, "completion_time": 0.05}
        usage["total_time"] = 0.062
    if flavor.cost:
        usage["cost"] = ctx.cost if ctx.cost is not None else 0
        usage["is_byok"] = False
    return usage


def _chat_message(ctx: Ctx, flavor: Flavor) -> dict[str, Any]:
    gen = ctx.gen
    message: dict[str, Any] = {
        "role": "assistant",
        "content": gen.text if gen.text or not (gen.tool_calls or gen.refusal) else None,
        "refusal": gen.refusal,
        "annotations": [],
    }
    if gen.tool_calls:
        message["tool_calls"] = [
            {
                "id": tool_call_id(ctx, i),
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
            for i, (name, args) in enumerate(gen.tool_calls)
        ]
    if flavor.reasoning_field and gen.reasoning:
        message[flavor.reasoning_field] = gen.reasoning
    return message


def _chat_body(ctx: Ctx, flavor: Flavor) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "message": _chat_message(ctx, flavor),
        "logprobs": None,
        "finish_reason": _FINISH[ctx.gen.finish],
    }
    body: dict[str, Any] = {
        "id": ctx.response_id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model.name,
        "choices": [choice],
        "system_fingerprint": "fp_fake",
    }
    if flavor.name == "openai":
        body["service_tier"] = "default"
    if flavor.azure:
        choice["content_filter_results"] = _FILTERS
        body["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _FILTERS}]
    if flavor.name == "openrouter":
        body["provider"] = "Fake"
        choice["native_finish_reason"] = choice["finish_reason"]
    if not ctx.usage_off:
        body["usage"] = _chat_usage(ctx, flavor)
    return body


def _chat_stream(ctx: Ctx, flavor: Flavor, headers: list[tuple[str, str]]) -> Reply:
    gen = ctx.gen
    options = ctx.body.get("stream_options") or {}
    include_usage = bool(options.get("include_usage")) and not ctx.usage_off
    extra_usage = (include_usage or flavor.stream_usage == "extra_chunk") and not ctx.usage_off
    final_usage = flavor.stream_usage == "final_chunk" and not ctx.usage_off

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish,
        }
        if flavor.azure:
            choice["content_filter_results"] = {} if finish else _FILTERS
        body: dict[str, Any] = {
            "id": ctx.response_id,
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.model.name,
            "system_fingerprint": "fp_fake",
            "choices": [choice],
        }
        if include_usage:
            body["usage"] = None
        return body | extra

    events: list[Piece] = [sse_comment(c) for c in flavor.comments]
    if flavor.azure:
        events.append(
            sse(
                {
                    "choices": [],
                    "created": 0,
                    "id": "",
                    "model": "",
                    "object": "",
                    "prompt_filter_results": [
                        {"prompt_index": 0, "content_filter_results": _FILTERS}
                    ],
                }
            )
        )
    first: dict[str, Any] = {"role": "assistant", "content": ""}
    if flavor.name == "openai":
        first["refusal"] = None
    first_extra: dict[str, Any] = {"x_groq": {"id": "req_fake"}} if flavor.groq else {}
    events.append(sse(chunk(first, **first_extra)))
    if flavor.reasoning_field:
        for piece in gen.reasoning_pieces:
            events.append(sse(chunk({flavor.reasoning_field: piece}), token=True))
    field = "refusal" if gen.refusal else "content"
    for piece in fragments(gen.refusal, 6) if gen.refusal else gen.pieces:
        events.append(sse(chunk({field: piece}), token=True))
    for index, (name, args) in enumerate(gen.tool_calls):
        start = {
            "index": index,
            "id": tool_call_id(ctx, index),
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        events.append(sse(chunk({"tool_calls": [start]}), token=True))
        for frag in fragments(args):
            delta = {"tool_calls": [{"index": index, "function": {"arguments": frag}}]}
            events.append(sse(chunk(delta), token=True))
    extra: dict[str, Any] = {}
    if final_usage:
        extra["usage"] = _chat_usage(ctx, flavor)
    if flavor.groq and not ctx.usage_off:
        extra["x_groq"] = {"id": "req_fake", "usage": _chat_usage(ctx, flavor)}
    if flavor.name == "openrouter":
        extra["provider"] = "Fake"
    events.append(sse(chunk({}, _FINISH[gen.finish], **extra)))
    if extra_usage:
        usage_chunk = chunk({})
        usage_chunk["choices"] = []
        usage_chunk["usage"] = _chat_usage(ctx, flavor)
        events.append(sse(usage_chunk))
    message = (ctx.failure.message if ctx.failure else None) or "Upstream provider error"
    if flavor.errors == "openrouter":
        error = chunk({"content": ""}, "error", error={"code": 502, "message": message})
        error["choices"][0]["native_finish_reason"] = "error"
    else:
        error = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    plan = StreamPlan(events, sse("[DONE]"), sse(error), headers)
    return finish_stream(plan, ctx)


# --------------------------------------------------------------------------- shared


def _ids(ctx: Ctx) -> list[tuple[str, str]]:
    return [("x-request-id", f"req_{ctx.response_id[-12:]}")]


def render(ctx: Ctx) -> Reply:
    """Answer a successful call on an OpenAI-compatible endpoint."""
    flavor = FLAVORS[ctx.flavor]
    if ctx.endpoint == "embeddings":
        return render_embeddings(ctx)
    if ctx.endpoint == "responses":
        return render_responses(ctx, flavor)
    if ctx.stream:
        headers = [("content-type", "text/event-stream; charset=utf-8"), *request_ids(ctx)]
        return _chat_stream(ctx, flavor, headers)
    return finish_json(json_reply(200, _chat_body(ctx, flavor), request_ids(ctx)), ctx)


def models_reply(models: list[FakeModel], created: int) -> Reply:
    data = [
        {"id": m.name, "object": "model", "created": created, "owned_by": m.owned_by}
        for m in models
    ]
    return json_reply(200, {"object": "list", "data": data})


def model_reply(model: FakeModel, created: int) -> Reply:
    body = {"id": model.name, "object": "model", "created": created, "owned_by": model.owned_by}
    return json_reply(200, body)


_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    402: ("insufficient_quota", "insufficient_quota", "Insufficient balance."),
    403: ("permission_error", "unsupported_country_region_territory", "Request not allowed."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    408: ("timeout", None, "Request timed out."),
    409: ("conflict", None, "Conflict."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded."),
    504: ("timeout", None, "Gateway timeout."),
    529: ("overloaded_error", "overloaded", "The server is overloaded."),
}


def error_reply(
    flavor_name: str,
    status: int,
    *,
    code: str | None = None,
    message: str | None = None,
    param: str | None = None,
    failure: Failure | None = None,
) -> Reply:
    """An HTTP error in the provider's own shape and headers."""
    flavor = FLAVORS[flavor_name]
    err_type, default_code, default_message = _DEFAULTS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
    )
    if code == "insufficient_quota":
        err_type = "insufficient_quota"
        default_message = "You exceeded your current quota, please check your plan and billing."
        if flavor.name in ("deepseek", "openrouter"):
            status = 402
            default_message = "Insufficient Balance" if flavor.deepseek else "Insufficient credits"
    text = message or default_message
    the_code = code or default_code
    body: dict[str, Any]
    if flavor.errors == "mistral":
        body = {"object": "error", "message": text, "type": err_type, "param": param}
        body["code"] = the_code
    elif flavor.errors == "openrouter":
        body = {"error": {"code": status, "message": text, "metadata": {"provider_name": "Fake"}}}
    else:
        error = {"message": text, "type": err_type, "param": param, "code": the_code}
        body = {"error": error}
    headers = [("x-request-id", "req_fake_error"), *retry_headers(failure)]
    return json_reply(status, body, headers)
