"""The fake's OpenAI Responses API and embeddings endpoints."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

from ._fake_flavors import Flavor, fragments, request_ids, tool_call_id
from ._fake_wire import Ctx, Piece, Reply, StreamPlan, finish_json, finish_stream, json_reply, sse

__all__ = ["embedding_inputs", "render_embeddings", "render_responses"]


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
                "call_id": tool_call_id(ctx, i),
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
                for frag in fragments(part["refusal"], 6):
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
            for frag in fragments(item["arguments"]):
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


def render_embeddings(ctx: Ctx) -> Reply:
    """Answer ``POST /embeddings`` with deterministic unit vectors."""
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
    return finish_json(json_reply(200, body, request_ids(ctx)), ctx)


def render_responses(ctx: Ctx, flavor: Flavor) -> Reply:
    """Answer ``POST /responses``, streamed or not."""
    if ctx.stream:
        headers = [("content-type", "text/event-stream; charset=utf-8"), *request_ids(ctx)]
        return _responses_stream(ctx, flavor, headers)
    body = _response_object(ctx, flavor, done=True)
    return finish_json(json_reply(200, body, request_ids(ctx)), ctx)
