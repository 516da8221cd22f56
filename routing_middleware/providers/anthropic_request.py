"""Encode a normalized :class:`ChatRequest` as an Anthropic Messages request body.

See :mod:`routing_middleware.providers.anthropic` for the options and choices.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..schema import ChatRequest, ImagePart, InvalidRequest, Message, TextPart
from .anthropic_cache import CACHE_MARKERS_KEY, apply_cache_markers
from .anthropic_wire import NEWEST_VERSION, PINNED_VERSION, tool_use_id
from .base import EncodedRequest, ProviderConfig

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "JSON_OBJECT_INSTRUCTION",
    "LEADING_USER_TEXT",
    "PASSTHROUGH_FIELDS",
    "SERVER_TOOLS_KEY",
    "THINKING_BUDGETS",
    "TOOL_ERRORS_KEY",
    "build_body",
    "encode_request",
]

DEFAULT_MAX_TOKENS = 4096
#: Anthropic wants the first turn to be the user's; a leading assistant turn gets this before it.
LEADING_USER_TEXT = "(continue)"
#: Anthropic has no "any JSON object" mode; this instruction is appended to ``system``.
JSON_OBJECT_INSTRUCTION = "Respond with a single JSON object and nothing else."
#: ``thinking.budget_tokens`` per reasoning effort when the ``reasoning`` option is "thinking".
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
_EFFORTS = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "max",
}
#: Anthropic-only top-level fields an Anthropic caller sent, passed through from ``extra``.
PASSTHROUGH_FIELDS = frozenset(
    {
        "thinking",
        "cache_control",
        "output_config",
        "container",
        "context_management",
        "inference_geo",
        "speed",
        "mcp_servers",
        "diagnostics",
    }
)
_SERVICE_TIERS = frozenset({"auto", "standard_only"})
#: Where an Anthropic caller's server tools (web search, code execution…) wait in ``extra``.
SERVER_TOOLS_KEY = "anthropic_server_tools"
#: Where the ids of an Anthropic caller's failed tool results (``is_error``) wait.
TOOL_ERRORS_KEY = "anthropic_tool_errors"


def encode_request(request: ChatRequest, provider: ProviderConfig, model: str) -> EncodedRequest:
    """The ``POST /v1/messages`` request for ``model`` at ``provider``."""
    options = provider.options
    body = build_body(request, model, options)
    version = str(options.get("anthropic_version") or NEWEST_VERSION)
    sampling = [k for k in ("temperature", "top_p", "top_k") if k in body]
    if sampling and version >= NEWEST_VERSION:
        if options.get("sampling_params", "pin") == "drop":
            for key in sampling:
                del body[key]
        else:
            version = PINNED_VERSION
    headers = {
        "content-type": "application/json",
        "anthropic-version": version,
        **provider.headers,
        **provider.auth_headers(),
    }
    if request.stream:
        headers["accept"] = "text/event-stream"
    base = provider.base_url.rstrip("/")
    url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
    return EncodedRequest(method="POST", url=url, headers=headers, json=body)


def build_body(request: ChatRequest, model: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body; sampling parameters are all kept (the version logic sorts them out)."""
    max_tokens = request.max_tokens
    if max_tokens is None:
        max_tokens = int(options.get("default_max_tokens", DEFAULT_MAX_TOKENS))
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    system = _system(request)
    failed = request.extra.get(TOOL_ERRORS_KEY)
    failed_ids = (
        frozenset(f for f in failed if isinstance(f, str))
        if isinstance(failed, list)
        else frozenset()
    )
    body["messages"] = _messages(request.messages, failed_ids)
    if system is not None:
        body["system"] = system
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.temperature is not None and request.temperature > 1:
        # OpenAI and Gemini take up to 2, Anthropic answers above 1 with a 400: a caller
        # routed here gets Anthropic's most random setting instead of a failure.
        body["temperature"] = 1.0
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.stream:
        body["stream"] = True
    if request.user:
        body["metadata"] = {"user_id": request.user}
    _tools(request, body)
    extra = request.extra
    if CACHE_MARKERS_KEY in extra:
        first = next((m for m in request.messages if m.role not in ("system", "developer")), None)
        shift = 1 if first is not None and first.role == "assistant" else 0
        apply_cache_markers(body, extra[CACHE_MARKERS_KEY], shift)
    for key in sorted(PASSTHROUGH_FIELDS.intersection(extra)):
        body[key] = extra[key]
    if extra.get("service_tier") in _SERVICE_TIERS:
        body["service_tier"] = extra["service_tier"]
    _output(request, body, options)
    _unsigned_thinking(body)
    return body


def _unsigned_thinking(body: dict[str, Any]) -> None:
    """Turn thinking off for a tool-use continuation we cannot sign.

    With thinking on, Anthropic wants the last assistant turn, when it used a tool,
    to start with its signed thinking block; signatures have no place in the
    normalized schema, so such a turn is sent without one and thinking is left off
    for this call rather than have it fail with a 400.
    """
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive"):
        return
    last = next((t for t in reversed(body["messages"]) if t["role"] == "assistant"), None)
    content = last["content"] if last is not None else None
    if isinstance(content, list) and any(b.get("type") == "tool_use" for b in content):
        del body["thinking"]


def _system(request: ChatRequest) -> str | list[dict[str, Any]] | None:
    parts = [m for m in request.messages if m.role in ("system", "developer")]
    wants_object = request.response_format is not None and request.response_format.type == (
        "json_object"
    )
    if not parts and not wants_object:
        return None
    if len(parts) == 1 and isinstance(parts[0].content, str) and not wants_object:
        return parts[0].content
    blocks = [{"type": "text", "text": text} for m in parts for text in _texts(m) if text]
    if wants_object:
        blocks.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
    return blocks


def _texts(message: Message) -> list[str]:
    if isinstance(message.content, str):
        return [message.content]
    return [p.text for p in message.content or () if isinstance(p, TextPart)]


def _messages(messages: list[Message], failed: frozenset[str]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message.role
        content: str | list[dict[str, Any]]
        if role in ("system", "developer"):
            continue
        if role == "tool":
            role, content = "user", [_tool_result(message, message.tool_call_id in failed)]
        elif role == "assistant":
            content = _assistant_blocks(message, index)
        elif isinstance(message.content, str):
            content = message.content
        else:
            content = [_part(p) for p in message.content or () if _nonempty(p)]
        if not content:
            continue
        if turns and turns[-1]["role"] == role:
            previous = turns[-1]["content"]
            turns[-1]["content"] = _as_blocks(previous) + _as_blocks(content)
        else:
            turns.append({"role": role, "content": content})
    if not turns:
        raise InvalidRequest(
            "Anthropic needs at least one user or assistant message", param="messages"
        )
    if turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": LEADING_USER_TEXT})
    return turns


def _nonempty(part: TextPart | ImagePart) -> bool:
    return not isinstance(part, TextPart) or part.text != ""


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _part(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if part.data is not None:
        source = {"type": "base64", "media_type": part.media_type, "data": part.data}
    elif part.url is not None and part.url.startswith("data:"):
        head, _, data = part.url.partition(",")
        media_type = head[5:].split(";", 1)[0] or "image/png"
        source = {"type": "base64", "media_type": media_type, "data": data}
    else:
        source = {"type": "url", "url": part.url}
    return {"type": "image", "source": source}


def _assistant_blocks(message: Message, index: int) -> str | list[dict[str, Any]]:
    if not message.tool_calls:
        if isinstance(message.content, str):
            return message.content
        return [{"type": "text", "text": t} for t in _texts(message) if t]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": t} for t in _texts(message) if t]
    for position, call in enumerate(message.tool_calls):
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise InvalidRequest(
                f"messages[{index}].tool_calls[{position}] ({call.name!r}): arguments are "
                "not a JSON object",
                param=f"messages[{index}].tool_calls[{position}].function.arguments",
            )
        blocks.append(
            {"type": "tool_use", "id": tool_use_id(call.id), "name": call.name, "input": arguments}
        )
    return blocks


def _tool_result(message: Message, is_error: bool) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": tool_use_id(message.tool_call_id),
    }
    if isinstance(message.content, str):
        if message.content:
            block["content"] = message.content
    elif message.content:
        block["content"] = [_part(p) for p in message.content if _nonempty(p)]
    if is_error:
        block["is_error"] = True
    return block


def _tools(request: ChatRequest, body: dict[str, Any]) -> None:
    tools: list[dict[str, Any]] = []
    for tool in request.tools or ():
        entry: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            entry["description"] = tool.description
        schema = tool.parameters
        entry["input_schema"] = schema if "type" in schema else {"type": "object", **schema}
        if tool.strict is not None:
            entry["strict"] = tool.strict
        tools.append(entry)
    server_tools = request.extra.get(SERVER_TOOLS_KEY)
    if isinstance(server_tools, list):
        tools.extend(server_tools)
    if not tools:
        return
    body["tools"] = tools
    choice = request.tool_choice
    encoded: dict[str, Any] | None = None
    if choice is not None:
        if choice.mode == "tool":
            encoded = {"type": "tool", "name": choice.name}
        else:
            encoded = {"type": {"auto": "auto", "none": "none", "required": "any"}[choice.mode]}
    if request.parallel_tool_calls is False:
        encoded = encoded or {"type": "auto"}
        if encoded["type"] != "none":
            encoded["disable_parallel_tool_use"] = True
    if encoded is not None:
        body["tool_choice"] = encoded


def _output(request: ChatRequest, body: dict[str, Any], options: Mapping[str, Any]) -> None:
    config = dict(body.get("output_config") or {})
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
        config["format"] = {"type": "json_schema", "schema": fmt.json_schema}
    effort = request.reasoning_effort
    mode = options.get("reasoning")
    # What the caller sent in Anthropic's own terms wins over what we would derive.
    if effort and effort != "none" and "thinking" not in body and "effort" not in config:
        thinking: dict[str, Any] | None = None
        if mode in ("effort", "adaptive"):
            config["effort"] = _EFFORTS.get(effort, "medium")
            if mode == "adaptive":
                thinking = {"type": "adaptive"}
        elif mode == "thinking":
            budget = min(THINKING_BUDGETS.get(effort, 8192), body["max_tokens"] - 1)
            if budget >= 1024:  # the API's floor; below it thinking is left off
                thinking = {"type": "enabled", "budget_tokens": budget}
        if thinking is not None:
            body["thinking"] = thinking
            # Thinking rejects temperature/top_k (and most top_p): we turned it on, so
            # the sampling parameters give way rather than make the call fail.
            for name in ("temperature", "top_p", "top_k"):
                body.pop(name, None)
    if config:
        body["output_config"] = config
