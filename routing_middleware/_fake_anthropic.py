"""The fake's Anthropic side: messages (plain and streamed), token counting, errors."""

from __future__ import annotations

import json
from typing import Any

from ._fake_config import Failure, FakeModel
from ._fake_gen import Generation
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
)
from .schema import Usage

__all__ = ["billed", "error_reply", "models_reply", "render"]

_STOP = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "refusal": "refusal",
}
_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES = {
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit.",
    "overloaded_error": "Overloaded",
    "api_error": "Internal server error",
    "not_found_error": "Not found",
}


def billed(gen: Generation) -> Usage:
    """Anthropic reports every prompt and output split; the normalized sum is exact."""
    return Usage(
        input_tokens=gen.input_tokens,
        output_tokens=gen.total_output_tokens,
        cached_input_tokens=gen.cached_tokens,
        cache_write_tokens=gen.cache_write_tokens,
        cache_write_long_tokens=gen.cache_write_long_tokens,
        reasoning_tokens=gen.reasoning_tokens,
    )


def _input_usage(gen: Generation) -> dict[str, Any]:
    long = gen.cache_write_long_tokens
    return {
        "input_tokens": gen.uncached_input_tokens,
        "cache_creation_input_tokens": gen.cache_write_tokens,
        "cache_read_input_tokens": gen.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": gen.cache_write_tokens - long,
            "ephemeral_1h_input_tokens": long,
        },
    }


def _usage(gen: Generation) -> dict[str, Any]:
    return _input_usage(gen) | {
        "output_tokens": gen.total_output_tokens,
        "output_tokens_details": {"thinking_tokens": gen.reasoning_tokens},
        "service_tier": "standard",
    }


def _thinking_on(ctx: Ctx) -> bool:
    thinking = ctx.body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _input_of(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {"value": value}


def _blocks(ctx: Ctx) -> list[dict[str, Any]]:
    gen = ctx.gen
    blocks: list[dict[str, Any]] = []
    if gen.reasoning and _thinking_on(ctx):
        blocks.append({"type": "thinking", "thinking": gen.reasoning, "signature": _sig(ctx)})
    text = gen.refusal or gen.text
    if text or not gen.tool_calls:
        blocks.append({"type": "text", "text": text})
    for i, (name, args) in enumerate(gen.tool_calls):
        blocks.append(
            {"type": "tool_use", "id": _tool_id(ctx, i), "name": name, "input": _input_of(args)}
        )
    return blocks


def _sig(ctx: Ctx) -> str:
    return f"EqFakeSignature{ctx.response_id[-8:]}"


def _tool_id(ctx: Ctx, index: int) -> str:
    return f"toolu_{ctx.response_id[-8:]}{index:02d}"


def _message(ctx: Ctx, *, done: bool) -> dict[str, Any]:
    gen = ctx.gen
    body: dict[str, Any] = {
        "id": ctx.response_id,
        "type": "message",
        "role": "assistant",
        "model": ctx.model.name,
        "content": _blocks(ctx) if done else [],
        "stop_reason": _STOP[gen.finish] if done else None,
        "stop_sequence": gen.stop_sequence if done else None,
    }
    if not ctx.usage_off:
        body["usage"] = _usage(gen) if done else _input_usage(gen) | {"output_tokens": 1}
    return body


def _headers(ctx: Ctx) -> list[tuple[str, str]]:
    return [("request-id", f"req_{ctx.response_id[-12:]}")]


def _stream(ctx: Ctx) -> Reply:
    gen = ctx.gen
    events: list[Piece] = []

    def emit(kind: str, token: bool = False, **data: Any) -> None:
        events.append(sse({"type": kind, **data}, kind, token=token))

    emit("message_start", message=_message(ctx, done=False))
    emit("ping")
    for index, block in enumerate(_blocks(ctx)):
        kind = block["type"]
        if kind == "thinking":
            emit(
                "content_block_start",
                index=index,
                content_block=block | {"thinking": "", "signature": ""},
            )
            for piece in gen.reasoning_pieces:
                delta = {"type": "thinking_delta", "thinking": piece}
                emit("content_block_delta", token=True, index=index, delta=delta)
            delta = {"type": "signature_delta", "signature": block["signature"]}
            emit("content_block_delta", index=index, delta=delta)
        elif kind == "text":
            emit("content_block_start", index=index, content_block={"type": "text", "text": ""})
            pieces = [gen.refusal] if gen.refusal else gen.pieces
            for piece in pieces:
                delta = {"type": "text_delta", "text": piece}
                emit("content_block_delta", token=True, index=index, delta=delta)
        else:
            emit("content_block_start", index=index, content_block=block | {"input": {}})
            args = json.dumps(block["input"], separators=(",", ":"))
            for i in range(0, len(args), 10):
                delta = {"type": "input_json_delta", "partial_json": args[i : i + 10]}
                emit("content_block_delta", token=True, index=index, delta=delta)
        emit("content_block_stop", index=index)
    final: dict[str, Any] = {"stop_reason": _STOP[gen.finish], "stop_sequence": gen.stop_sequence}
    usage_fields: dict[str, Any] = {} if ctx.usage_off else {"usage": _usage(gen)}
    emit("message_delta", delta=final, **usage_fields)
    message = (ctx.failure.message if ctx.failure else None) or "Overloaded"
    error = {
        "type": "error",
        "error": {"type": "overloaded_error", "message": message},
        "request_id": f"req_{ctx.response_id[-12:]}",
    }
    headers = [("content-type", "text/event-stream; charset=utf-8"), *_headers(ctx)]
    plan = StreamPlan(
        events, sse({"type": "message_stop"}, "message_stop"), sse(error, "error"), headers
    )
    return finish_stream(plan, ctx)


def render(ctx: Ctx) -> Reply:
    """Answer a successful ``/v1/messages`` (or ``count_tokens``) call."""
    if ctx.endpoint == "count_tokens":
        return json_reply(200, {"input_tokens": ctx.gen.input_tokens}, _headers(ctx))
    if ctx.stream:
        return _stream(ctx)
    return finish_json(json_reply(200, _message(ctx, done=True), _headers(ctx)), ctx)


def models_reply(models: list[FakeModel]) -> Reply:
    data = [
        {
            "type": "model",
            "id": m.name,
            "display_name": m.name,
            "created_at": "2026-01-01T00:00:00Z",
        }
        for m in models
    ]
    body = {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
    return json_reply(200, body)


def error_reply(
    status: int,
    *,
    code: str | None = None,
    message: str | None = None,
    failure: Failure | None = None,
) -> Reply:
    """An Anthropic error body: ``{"type": "error", "error": {...}, "request_id"}``."""
    if code == "insufficient_quota":
        status = 402
    err_type = _ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    error: dict[str, Any] = {
        "type": err_type,
        "message": message or _MESSAGES.get(err_type, "Invalid request"),
    }
    if code and code != "insufficient_quota":
        error["details"] = {"error_code": code}
    body = {"type": "error", "error": error, "request_id": "req_fake_error"}
    headers = [("request-id", "req_fake_error"), *retry_headers(failure)]
    return json_reply(status, body, headers)
