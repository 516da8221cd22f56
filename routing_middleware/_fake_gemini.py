"""The fake's Gemini side: generateContent, streamGenerateContent, Google RPC errors."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ._fake_config import Failure, FakeModel
from ._fake_gen import Generation
from ._fake_wire import (
    Ctx,
    Piece,
    Reply,
    StreamPlan,
    dumps,
    finish_json,
    finish_stream,
    json_reply,
    retry_headers,
)
from .schema import Usage

__all__ = ["billed", "error_reply", "models_reply", "render"]

_FINISH = {
    "stop": "STOP",
    "stop_sequence": "STOP",
    "length": "MAX_TOKENS",
    "tool_calls": "STOP",
    "content_filter": "SAFETY",
    "refusal": "SAFETY",
}
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    "RESOURCE_EXHAUSTED": "You exceeded your current quota, please check your plan and billing "
    "details.",
    "UNAVAILABLE": "The model is overloaded. Please try again later.",
    "INTERNAL": "An internal error has occurred.",
    "DEADLINE_EXCEEDED": "The request timed out. Please try again.",
}
_API = "type.googleapis.com/google.rpc."
_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_requests"


def billed(gen: Generation) -> Usage:
    """Gemini reports cache reads (inside the prompt count) and thoughts, never writes."""
    return Usage(
        input_tokens=gen.input_tokens,
        output_tokens=gen.total_output_tokens,
        cached_input_tokens=gen.cached_tokens,
        reasoning_tokens=gen.reasoning_tokens,
    )


def _usage(gen: Generation, candidates: int | None = None) -> dict[str, Any]:
    shown = gen.output_tokens if candidates is None else candidates
    thoughts = gen.reasoning_tokens if candidates is None else 0
    usage: dict[str, Any] = {
        "promptTokenCount": gen.input_tokens,
        "candidatesTokenCount": shown,
        "totalTokenCount": gen.input_tokens + shown + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": gen.input_tokens}],
    }
    if gen.cached_tokens:
        usage["cachedContentTokenCount"] = gen.cached_tokens
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": gen.cached_tokens}]
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _thoughts_on(ctx: Ctx) -> bool:
    config = ctx.body.get("generationConfig") or {}
    thinking = config.get("thinkingConfig") or {}
    return bool(thinking.get("includeThoughts"))


def _args(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {"value": value}


def _chunk(ctx: Ctx, parts: list[dict[str, Any]], finish: str | None, usage: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {"candidates": [candidate]}
    if usage is not None and not ctx.usage_off:
        body["usageMetadata"] = usage
    body["modelVersion"] = ctx.model.name
    body["responseId"] = ctx.response_id
    return body


def _parts(ctx: Ctx) -> list[dict[str, Any]]:
    gen = ctx.gen
    parts: list[dict[str, Any]] = []
    if gen.reasoning and _thoughts_on(ctx):
        parts.append({"text": gen.reasoning, "thought": True})
    if gen.text:
        parts.append({"text": gen.text})
    parts += [{"functionCall": {"name": n, "args": _args(a)}} for n, a in gen.tool_calls]
    return parts


def _event(body: Any, token: bool = False) -> Piece:
    # Google's SSE frames end lines with CRLF.
    return Piece(f"data: {dumps(body)}\r\n\r\n".encode(), token=token)


def _stream(ctx: Ctx, sse_mode: bool) -> Reply:
    gen = ctx.gen
    chunks: list[tuple[dict[str, Any], bool]] = []
    if gen.reasoning and _thoughts_on(ctx):
        for piece in gen.reasoning_pieces:
            chunks.append(
                (_chunk(ctx, [{"text": piece, "thought": True}], None, _usage(gen, 0)), True)
            )
    pieces = gen.pieces or ([""] if not gen.tool_calls else [])
    seen = 0
    for i, piece in enumerate(pieces):
        seen = gen.output_tokens * (i + 1) // max(len(pieces), 1)
        chunks.append((_chunk(ctx, [{"text": piece}], None, _usage(gen, seen)), True))
    for name, args in gen.tool_calls:
        part = {"functionCall": {"name": name, "args": _args(args)}}
        chunks.append((_chunk(ctx, [part], None, _usage(gen, seen)), True))
    if chunks:
        last = chunks[-1][0]
        last["candidates"][0]["finishReason"] = _FINISH[gen.finish]
        if not ctx.usage_off:
            last["usageMetadata"] = _usage(gen)
    message = (ctx.failure.message if ctx.failure else None) or _MESSAGES["UNAVAILABLE"]
    error = {"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}}
    if sse_mode:
        headers = [("content-type", "text/event-stream")]
        events = [_event(c, t) for c, t in chunks]
        return finish_stream(StreamPlan(events, None, _event(error), headers), ctx)
    # Without alt=sse the stream is one JSON array, written element by element.
    headers = [("content-type", "application/json; charset=UTF-8")]
    events = [
        Piece((("[" if i == 0 else ",\r\n") + dumps(c)).encode(), token=t)
        for i, (c, t) in enumerate(chunks)
    ]
    end = Piece(b"]", counts=False)
    return finish_stream(
        StreamPlan(events, end, Piece(("," + dumps(error) + "]").encode()), headers), ctx
    )


def render(ctx: Ctx, *, sse_mode: bool = True) -> Reply:
    """Answer ``:generateContent`` / ``:streamGenerateContent`` / ``:countTokens``."""
    if ctx.endpoint == "countTokens":
        return json_reply(200, {"totalTokens": ctx.gen.input_tokens})
    if ctx.stream:
        return _stream(ctx, sse_mode)
    body = _chunk(ctx, _parts(ctx), _FINISH[ctx.gen.finish], _usage(ctx.gen))
    return finish_json(json_reply(200, body), ctx)


def models_reply(models: list[FakeModel]) -> Reply:
    data = [
        {
            "name": f"models/{m.name}",
            "displayName": m.name,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        }
        for m in models
    ]
    return json_reply(200, {"models": data})


def error_reply(
    status: int,
    *,
    code: str | None = None,
    message: str | None = None,
    model: str | None = None,
    failure: Failure | None = None,
) -> Reply:
    """A Google RPC error; a 429 carries QuotaFailure and (when asked) RetryInfo details."""
    rpc = _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    details: list[dict[str, Any]] = []
    if code == "API_KEY_INVALID":
        details.append(
            {
                "@type": _API + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        )
    if status == 429:
        details.append(
            {
                "@type": _API + "QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": _QUOTA_METRIC,
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                        "quotaDimensions": {"location": "global", "model": model or ""},
                        "quotaValue": "15",
                    }
                ],
            }
        )
        if failure is not None and failure.retry_after is not None and code != "insufficient_quota":
            details.append({"@type": _API + "RetryInfo", "retryDelay": f"{failure.retry_after:g}s"})
    error: dict[str, Any] = {
        "code": status,
        "message": message or _MESSAGES.get(rpc, "Request contains an invalid argument."),
        "status": rpc,
    }
    if details:
        error["details"] = details
    header_failure = dataclasses.replace(failure, retry_after=None) if failure else None
    return json_reply(status, {"error": error}, retry_headers(header_failure))
