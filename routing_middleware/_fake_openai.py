"""The fake's OpenAI side: chat completions (with provider flavors), Responses,
embeddings, the model list and the error bodies of the OpenAI-compatible family."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from dataclasses import dataclass
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
    sse_comment,
)
from .schema import Usage

__all__ = ["FLAVORS", "Flavor", "billed", "error_reply", "models_reply", "render"]


@dataclass(frozen=True, slots=True)
class Flavor:
    """What one OpenAI-compatible provider reports and how its streams look."""

    name: str
    cached: bool = False
    cache_write: bool = False
    reasoning_tokens: bool = False
    reasoning_field: str | None = None
    stream_usage: str = "opt_in"  # opt_in | final_chunk | extra_chunk
    comments: tuple[str, ...] = ()
    azure: bool = False
    deepseek: bool = False
    groq: bool = False
    cost: bool = False
    errors: str = "openai"  # openai | mistral | openrouter


_OPENAI_LIKE: dict[str, Any] = {"cached": True, "cache_write": True, "reasoning_tokens": True}
FLAVORS: dict[str, Flavor] = {
    f.name: f
    for f in (
        Flavor("openai", **_OPENAI_LIKE),
        Flavor("azure", azure=True, **_OPENAI_LIKE),
        Flavor(
            "deepseek",
            cached=True,
            reasoning_tokens=True,
            reasoning_field="reasoning_content",
            comments=("keep-alive", "keep-alive"),
            deepseek=True,
        ),
        Flavor("mistral", stream_usage="final_chunk", errors="mistral"),
        Flavor(
            "openrouter",
            reasoning_field="reasoning",
            stream_usage="extra_chunk",
            comments=("OPENROUTER PROCESSING", "OPENROUTER PROCESSING"),
            cost=True,
            errors="openrouter",
            **_OPENAI_LIKE,
        ),
        Flavor("groq", cached=True, reasoning_tokens=True, groq=True),
        Flavor("qwen", cached=True, reasoning_field="reasoning_content"),
        Flavor("xai", cached=True, reasoning_tokens=True, reasoning_field="reasoning_content"),
        Flavor("together"),
        Flavor("fireworks"),
        Flavor("cerebras"),
        Flavor("vllm"),
        Flavor("ollama"),
    )
}

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


def billed(endpoint: str, flavor: Flavor, gen: Generation) -> Usage:
    """The usage this provider reports for ``gen``, in the normalized convention."""
    responses = endpoint == "responses"
    writes = gen.cache_write_tokens if flavor.cache_write else 0
    return Usage(
        input_tokens=gen.input_tokens,
        output_tokens=gen.total_output_tokens,
        cached_input_tokens=gen.cached_tokens if flavor.cached else 0,
        cache_write_tokens=writes,
        cache_write_long_tokens=gen.cache_write_long_tokens if writes and responses else 0,
        reasoning_tokens=gen.reasoning_tokens if flavor.reasoning_tokens else 0,
    )


# --------------------------------------------------------------------------- chat


def _chat_usage(ctx: Ctx, flavor: Flavor) -> dict[str, Any]:
    gen = ctx.gen
    usage: dict[str, Any] = {
        "prompt_tokens": gen.input_tokens,
        "completion_tokens": gen.total_output_tokens,
        "total_tokens": gen.input_tokens + gen.total_output_tokens,
    }
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


def _tool_call_id(ctx: Ctx, index: int) -> str:
    return f"call_{ctx.response_id[-8:]}{index:02d}"


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
                "id": _tool_call_id(ctx, i),
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


def _fragments(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


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
    for piece in _fragments(gen.refusal, 6) if gen.refusal else gen.pieces:
        events.append(sse(chunk({field: piece}), token=True))
    for index, (name, args) in enumerate(gen.tool_calls):
        start = {
            "index": index,
            "id": _tool_call_id(ctx, index),
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        events.append(sse(chunk({"tool_calls": [start]}), token=True))
        for frag in _fragments(args):
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


# --------------------------------------------------------------------------- responses


def _responses_usage(ctx: Ctx, flavor: Flavor) -> dict[str, Any]:
    gen = ctx.gen
    writes = gen.cache_write_tokens if flavor.cache_write else 0
    long = gen.cache_write_long_tokens if writes else 0
    return {
        "input_tokens": gen.input_tokens,
        "input_tokens_details": {
            "cached_tokens": gen.cached_tokens if flavor.cached else 0,
            "cache_write_tokens": writes,
            "cache_write_tokens_details": {"ttl_30m_tokens": writes - long, "ttl_12h_tokens": long},
        },
        "output_tokens": gen.total_output_tokens,
        "output_tokens_details": {
            "reasoning_tokens": gen.reasoning_tokens if flavor.reasoning_tokens else 0
        },
        "total_tokens": gen.input_tokens + gen.total_output_tokens,
    }


def _responses_items(ctx: Ctx) -> list[dict[str, Any]]:
    gen = ctx.gen
    rid = ctx.response_id.removeprefix("resp_")
    items: list[dict[str, Any]] = []
    if gen.reasoning_tokens:
        items.append({"id": f"rs_{rid}", "type": "reasoning", "summary": []})
    if gen.refusal:
        part: dict[str, Any] = {"type": "refusal", "refusal": gen.refusal}
    else:
        part = {"type": "output_text", "text": gen.text, "annotations": [], "logprobs": []}
    if gen.text or gen.refusal or not gen.tool_calls:
        items.append(
            {
                "id": f"msg_{rid}",
                "type": "message",
                "status": "completed" if gen.finish != "length" else "incomplete",
                "role": "assistant",
                "content": [part],
            }
        )
    for i, (name, args) in enumerate(gen.tool_calls):
        items.append(
            {
                "id": f"fc_{rid}{i:02d}",
                "type": "function_call",
                "status": "completed",
                "call_id": _tool_call_id(ctx, i),
                "name": name,
                "arguments": args,
            }
        )
    return items


def _response_object(ctx: Ctx, flavor: Flavor, *, done: bool) -> dict[str, Any]:
    gen = ctx.gen
    status, incomplete = "completed", None
    if gen.finish == "length":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    elif gen.finish == "content_filter":
        status, incomplete = "incomplete", {"reason": "content_filter"}
    body = ctx.body
    return {
        "id": ctx.response_id,
        "object": "response",
        "created_at": ctx.created,
        "status": status if done else "in_progress",
        "completed_at": ctx.created if done and status == "completed" else None,
        "error": None,
        "incomplete_details": incomplete if done else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": ctx.model.name,
        "output": _responses_items(ctx) if done else [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": _responses_usage(ctx, flavor) if done and not ctx.usage_off else None,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def _responses_stream(ctx: Ctx, flavor: Flavor, headers: list[tuple[str, str]]) -> Reply:
    gen = ctx.gen
    seq = iter(range(1_000_000))
    events: list[Piece] = []

    def emit(kind: str, token: bool = False, **data: Any) -> None:
        events.append(sse({"type": kind, "sequence_number": next(seq), **data}, kind, token=token))

    emit("response.created", response=_response_object(ctx, flavor, done=False))
    emit("response.in_progress", response=_response_object(ctx, flavor, done=False))
    for index, item in enumerate(_responses_items(ctx)):
        item_id = item["id"]
        if item["type"] == "reasoning":
            emit("response.output_item.added", output_index=index, item=item)
            emit("response.output_item.done", output_index=index, item=item)
        elif item["type"] == "message":
            part = item["content"][0]
            refusal = part["type"] == "refusal"
            empty = {"type": "refusal", "refusal": ""} if refusal else part | {"text": ""}
            emit(
                "response.output_item.added",
                output_index=index,
                item=item | {"status": "in_progress", "content": []},
            )
            where = {"item_id": item_id, "output_index": index, "content_index": 0}
            emit("response.content_part.added", part=empty, **where)
            if refusal:
                for frag in _fragments(part["refusal"], 6):
                    emit("response.refusal.delta", delta=frag, token=True, **where)
                emit("response.refusal.done", refusal=part["refusal"], **where)
            else:
                for piece in gen.pieces:
                    emit(
                        "response.output_text.delta", delta=piece, logprobs=[], token=True, **where
                    )
                emit("response.output_text.done", text=part["text"], logprobs=[], **where)
            emit("response.content_part.done", part=part, **where)
            emit("response.output_item.done", output_index=index, item=item)
        else:
            started = item | {"status": "in_progress", "arguments": ""}
            emit("response.output_item.added", output_index=index, item=started)
            for frag in _fragments(item["arguments"]):
                emit(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=index,
                    delta=frag,
                    token=True,
                )
            emit(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
            emit("response.output_item.done", output_index=index, item=item)
    final = _response_object(ctx, flavor, done=True)
    emit(f"response.{final['status']}", response=final)
    message = (ctx.failure.message if ctx.failure else None) or "The server had an error."
    error = {
        "type": "error",
        "code": "server_error",
        "message": message,
        "param": None,
        "sequence_number": next(seq),
    }
    plan = StreamPlan(events, None, sse(error, "error"), headers)
    return finish_stream(plan, ctx)


# --------------------------------------------------------------------------- embeddings


def embedding_inputs(body: dict[str, Any]) -> list[str | list[int]]:
    raw = body.get("input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        return [list(raw)]
    return [x if isinstance(x, str) else list(x) for x in raw or []]


def _vector(item: str | list[int], dims: int) -> list[float]:
    seed = item if isinstance(item, str) else ",".join(map(str, item))
    digest = b""
    counter = 0
    while len(digest) < dims * 2:
        digest += hashlib.sha256(f"{counter}:{seed}".encode()).digest()
        counter += 1
    values = [(int.from_bytes(digest[2 * i : 2 * i + 2], "big") / 32767.5) - 1 for i in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Round through float32 so both encodings carry the same numbers.
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in values]


def _embeddings(ctx: Ctx) -> Reply:
    inputs = embedding_inputs(ctx.body)
    dims = ctx.body.get("dimensions") or ctx.model.embedding_dimensions
    as_base64 = ctx.body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        vector = _vector(item, int(dims))
        encoded: Any = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    body: dict[str, Any] = {"object": "list", "data": data, "model": ctx.model.name}
    if not ctx.usage_off:
        tokens = ctx.gen.input_tokens
        body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return finish_json(json_reply(200, body, _ids(ctx)), ctx)


# --------------------------------------------------------------------------- shared


def _ids(ctx: Ctx) -> list[tuple[str, str]]:
    return [("x-request-id", f"req_{ctx.response_id[-12:]}")]


def render(ctx: Ctx) -> Reply:
    """Answer a successful call on an OpenAI-compatible endpoint."""
    flavor = FLAVORS[ctx.flavor]
    if ctx.endpoint == "embeddings":
        return _embeddings(ctx)
    if ctx.stream:
        headers = [("content-type", "text/event-stream; charset=utf-8"), *_ids(ctx)]
        if ctx.endpoint == "responses":
            return _responses_stream(ctx, flavor, headers)
        return _chat_stream(ctx, flavor, headers)
    if ctx.endpoint == "responses":
        return finish_json(
            json_reply(200, _response_object(ctx, flavor, done=True), _ids(ctx)), ctx
        )
    return finish_json(json_reply(200, _chat_body(ctx, flavor), _ids(ctx)), ctx)


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
