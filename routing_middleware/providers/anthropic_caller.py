"""The caller side of the Anthropic dialect: read a Messages request, answer in kind."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ValidationError

from ..schema import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    ImagePart,
    InvalidRequest,
    LLMError,
    Message,
    ResponseFormat,
    StreamChunk,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)
from ._json import compact as _dumps
from .anthropic_cache import CACHE_MARKERS_KEY, cache_markers
from .anthropic_errors import encode_error
from .anthropic_request import SERVER_TOOLS_KEY, TOOL_ERRORS_KEY
from .anthropic_wire import (
    anthropic_stop_reason,
    anthropic_usage,
    tool_use_id,
)
from .sse import encode_sse

__all__ = ["AnthropicStreamEncoder", "encode_response", "parse_request"]

_KNOWN = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
        "output_config",
    }
)
_ChoiceMode = Literal["auto", "none", "required", "tool"]
_CHOICES: dict[str, _ChoiceMode] = {
    "auto": "auto",
    "any": "required",
    "none": "none",
    "tool": "tool",
}


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


#: A text delta event as :meth:`AnthropicStreamEncoder._delta` encodes one, filled
#: with the block index and the text as a JSON string.
_TEXT_DELTA = (
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":%d,'
    '"delta":{"type":"text_delta","text":%s}}\n\n'
)
_json_string = json.encoder.encode_basestring


# ----------------------------------------------------------------------------- requests


def parse_request(body: bytes) -> ChatRequest:
    """An inbound Messages request as a :class:`ChatRequest`.

    Fields without a normalized home stay in ``extra`` (``thinking``,
    ``cache_control``, ``service_tier``…), server tools under
    ``extra["anthropic_server_tools"]``, prompt-cache breakpoints on blocks under
    ``extra["anthropic_cache_control"]``, the ids of tool results marked
    ``is_error`` under ``extra["anthropic_tool_errors"]``. Bad input raises
    InvalidRequest naming the field.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _bad("request body is not valid JSON", "body") from None
    if not isinstance(data, dict):
        raise _bad("request body must be a JSON object", "body")
    if not isinstance(data.get("model"), str) or not data["model"]:
        raise _bad("'model' is required and must be a string", "model")
    max_tokens = data.get("max_tokens")
    if max_tokens is None:
        raise _bad("'max_tokens' is required by the Messages API", "max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise _bad("'max_tokens' must be a non-negative integer", "max_tokens")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("'messages' must be a non-empty list", "messages")

    messages = _system(data.get("system"))
    for index, raw in enumerate(raw_messages):
        messages.extend(_message(raw, index))
    fields: dict[str, Any] = {"model": data["model"], "max_tokens": max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        if data.get(name) is not None:
            fields[name] = data[name]
    stop = data.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("'stop_sequences' must be a list of strings", "stop_sequences")
        fields["stop"] = stop
    if "stream" in data:
        if not isinstance(data["stream"], bool):
            raise _bad("'stream' must be a boolean", "stream")
        fields["stream"] = data["stream"]
    extra = {k: v for k, v in data.items() if k not in _KNOWN}
    _tools(data, fields, extra)
    metadata = data.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("'metadata' must be an object", "metadata")
        if isinstance(metadata.get("user_id"), str):
            fields["user"] = metadata["user_id"]
    _output_config(data.get("output_config"), fields, extra)
    markers = cache_markers(data)
    if markers is not None:
        extra[CACHE_MARKERS_KEY] = markers
    failed = [
        block["tool_use_id"]
        for raw in raw_messages
        if isinstance(raw["content"], list)
        for block in raw["content"]
        if block.get("type") == "tool_result" and block.get("is_error") is True
    ]
    if failed:
        extra[TOOL_ERRORS_KEY] = failed
    fields["extra"] = extra
    try:
        return ChatRequest(messages=messages, **fields)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise _bad(f"invalid '{where}': {first['msg']}", where) from None


def _system(system: Any) -> list[Message]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [Message(role="system", content=system)]
    if not isinstance(system, list):
        raise _bad("'system' must be a string or a list of text blocks", "system")
    parts: list[TextPart | ImagePart] = []
    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad("'system' blocks must be text blocks", f"system[{index}]")
        parts.append(_text_part(block, f"system[{index}]"))
    return [Message(role="system", content=parts)]


def _text_part(block: dict[str, Any], where: str) -> TextPart:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"'{where}.text' must be a string", f"{where}.text")
    return TextPart.model_construct(text=text)


def _image_part(block: dict[str, Any], where: str) -> ImagePart:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"'{where}.source' must be an object", f"{where}.source")
    kind = source.get("type")
    try:
        if kind == "base64":
            return ImagePart(data=source.get("data"), media_type=source.get("media_type"))
        if kind == "url":
            return ImagePart(url=source.get("url"))
    except ValidationError:
        pass
    raise _bad(
        f"'{where}.source' must be a url or base64 image source", f"{where}.source"
    ) from None


def _message(raw: Any, index: int) -> list[Message]:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise _bad(f"'{where}' must be an object", where)
    role = raw.get("role")
    if role not in ("user", "assistant"):
        raise _bad(f"'{where}.role' must be 'user' or 'assistant'", f"{where}.role")
    content = raw.get("content")
    if isinstance(content, str):
        return [Message(role=role, content=content)]
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or a list", f"{where}.content")
    parts: list[TextPart | ImagePart] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    reasoning: list[str] = []
    for position, block in enumerate(content):
        at = f"{where}.content[{position}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_call(block, at))
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, at))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            if kind == "thinking" and isinstance(block.get("thinking"), str):
                reasoning.append(block["thinking"])
        else:
            raise _bad(f"'{at}': block type {kind!r} is not supported in a {role} turn", at)
    messages = results
    if parts or calls or not results:
        messages.append(
            Message(
                role=role,
                content=parts if parts or not calls else None,
                tool_calls=calls or None,
                reasoning="".join(reasoning) if reasoning else None,
            )
        )
    return messages


def _tool_call(block: dict[str, Any], where: str) -> ToolCall:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise _bad(f"'{where}' needs string 'id' and 'name'", where)
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise _bad(f"'{where}.input' must be an object", f"{where}.input")
    return ToolCall(id=block["id"], name=block["name"], arguments=_dumps(arguments))


def _tool_result(block: dict[str, Any], where: str) -> Message:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise _bad(f"'{where}.tool_use_id' must be a string", f"{where}.tool_use_id")
    content = block.get("content")
    parts: str | list[TextPart | ImagePart] | None
    if content is None or isinstance(content, str):
        parts = content
    elif isinstance(content, list):
        parts = []
        for position, inner in enumerate(content):
            at = f"{where}.content[{position}]"
            kind = inner.get("type") if isinstance(inner, dict) else None
            if kind == "text":
                parts.append(_text_part(inner, at))
            elif kind == "image":
                parts.append(_image_part(inner, at))
            else:
                raise _bad(f"'{at}': block type {kind!r} is not supported in a tool result", at)
    else:
        raise _bad(f"'{where}.content' must be a string or a list", f"{where}.content")
    return Message(role="tool", tool_call_id=call_id, content=parts)


def _tools(data: dict[str, Any], fields: dict[str, Any], extra: dict[str, Any]) -> None:
    raw_tools = data.get("tools")
    if raw_tools is not None:
        if not isinstance(raw_tools, list):
            raise _bad("'tools' must be a list", "tools")
        tools: list[Tool] = []
        server: list[Any] = []
        for index, tool in enumerate(raw_tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise _bad(f"'tools[{index}]' needs a string 'name'", f"tools[{index}]")
            if tool.get("type") not in (None, "custom"):
                server.append(tool)
                continue
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise _bad(
                    f"'tools[{index}].input_schema' must be an object",
                    f"tools[{index}].input_schema",
                )
            description = tool.get("description")
            strict = tool.get("strict")
            tools.append(
                Tool(
                    name=tool["name"],
                    description=description if isinstance(description, str) else None,
                    parameters=schema,
                    strict=strict if isinstance(strict, bool) else None,
                )
            )
        if tools:
            fields["tools"] = tools
        if server:
            extra[SERVER_TOOLS_KEY] = server
    choice = data.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in _CHOICES:
        raise _bad("'tool_choice.type' must be auto, any, tool or none", "tool_choice.type")
    mode = _CHOICES[choice["type"]]
    name = choice.get("name") if mode == "tool" else None
    if mode == "tool" and not isinstance(name, str):
        raise _bad("'tool_choice.name' is required for type 'tool'", "tool_choice.name")
    fields["tool_choice"] = ToolChoice(mode=mode, name=name)
    if choice.get("disable_parallel_tool_use") is True:
        fields["parallel_tool_calls"] = False


def _output_config(config: Any, fields: dict[str, Any], extra: dict[str, Any]) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise _bad("'output_config' must be an object", "output_config")
    rest = dict(config)
    fmt = rest.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise _bad("'output_config.format.schema' must be an object", "output_config.format")
        fields["response_format"] = ResponseFormat(type="json_schema", json_schema=fmt["schema"])
        del rest["format"]  # rebuilt from response_format, whichever dialect answers
    effort = rest.get("effort")
    if isinstance(effort, str):
        # Kept in ``extra`` as well: an Anthropic upstream gets the caller's own words.
        fields["reasoning_effort"] = effort
    if rest:
        extra["output_config"] = rest


# ---------------------------------------------------------------------------- responses


def _message_id(response_id: str) -> str:
    if response_id.startswith("msg_"):
        return response_id
    return "msg_" + tool_use_id(response_id, "response").removeprefix("toolu_")


def _tool_input(arguments: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        value = None
    # Anthropic's input must be an object; keep whatever the model wrote rather than lose it.
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def encode_response(response: ChatResponse, model: str) -> dict[str, Any]:
    """The ``message`` body for ``response``; reasoning is not echoed (see the module notes)."""
    content: list[dict[str, Any]] = []
    finish: FinishReason | None = None
    native: str | None = None
    calls: list[ToolCall] = []
    if response.choices:
        choice = response.choices[0]
        finish, native = choice.finish_reason, choice.native_finish_reason
        text = choice.message.text or choice.message.refusal
        if text:
            content.append({"type": "text", "text": text})
        calls = choice.message.tool_calls or []
    for call in calls:
        content.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call.id),
                "name": call.name,
                "input": _tool_input(call.arguments),
            }
        )
    return {
        "id": _message_id(response.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": anthropic_stop_reason(finish, native, bool(calls)),
        "stop_sequence": None,
        "usage": anthropic_usage(response.usage),
    }


class AnthropicStreamEncoder:
    """Re-encodes normalized stream chunks as Anthropic's named SSE events.

    Text and each tool call get their own content block; usage, which arrives
    last, goes into ``message_delta`` as cumulative totals.
    """

    __slots__ = ("_blocks", "_finish", "_id", "_model", "_native", "_open", "_tools", "_usage")

    def __init__(self, model: str, response_id: str) -> None:
        self._model = model
        self._id = _message_id(response_id)
        self._blocks = 0
        self._open: int | None = None  # index of the open block
        self._tools: dict[int, int] = {}  # tool-call index -> block index
        self._finish: FinishReason | None = None
        self._native: str | None = None
        self._usage: Usage | None = None

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return encode_sse(_dumps({"type": "message_start", "message": message}), "message_start")

    def chunk(self, chunk: StreamChunk) -> bytes:
        out: list[bytes] = []
        if chunk.text:
            if self._open is None or self._open in self._tools.values():
                self._begin(out, {"type": "text", "text": ""})
            text = (_TEXT_DELTA % (self._open, _json_string(chunk.text))).encode()
            if not (out or chunk.tool_calls or chunk.finish_reason or chunk.usage):
                return text  # the common event: one text delta
            out.append(text)
        for call in chunk.tool_calls or ():
            block = self._tools.get(call.index)
            if block is None:
                # The same ids as a non-streamed answer; a missing one is made per message.
                call_id = tool_use_id(call.id or None, f"{self._id}/{call.index}")
                tool = {"type": "tool_use", "id": call_id, "name": call.name or "", "input": {}}
                block = self._begin(out, tool)
                self._tools[call.index] = block
            if call.arguments:
                delta = {"type": "input_json_delta", "partial_json": call.arguments}
                out.append(self._delta(block, delta))
        if chunk.finish_reason is not None:
            self._finish, self._native = chunk.finish_reason, chunk.native_finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage
        return b"".join(out)

    def finish(self, usage: Usage | None) -> bytes:
        out: list[bytes] = []
        self._close(out)
        usage = usage or self._usage
        stop = anthropic_stop_reason(self._finish, self._native, bool(self._tools))
        delta = {"stop_reason": stop, "stop_sequence": None}
        event = {"type": "message_delta", "delta": delta, "usage": anthropic_usage(usage)}
        out.append(encode_sse(_dumps(event), "message_delta"))
        out.append(encode_sse('{"type":"message_stop"}', "message_stop"))
        return b"".join(out)

    def error(self, error: LLMError) -> bytes:
        _, _, body = encode_error(error)
        return encode_sse(body.decode(), "error")

    def _begin(self, out: list[bytes], block: dict[str, Any]) -> int:
        self._close(out)
        index = self._blocks
        self._blocks += 1
        self._open = index
        event = {"type": "content_block_start", "index": index, "content_block": block}
        out.append(encode_sse(_dumps(event), "content_block_start"))
        return index

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            event = _dumps({"type": "content_block_stop", "index": self._open})
            out.append(encode_sse(event, "content_block_stop"))
            self._open = None

    @staticmethod
    def _delta(index: int | None, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": index, "delta": delta}
        return encode_sse(_dumps(event), "content_block_delta")
