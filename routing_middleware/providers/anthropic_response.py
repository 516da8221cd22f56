"""Decode Anthropic Messages answers: a full response, a stream, an error."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ..schema import (
    ChatRequest,
    ChatResponse,
    Choice,
    FinishReason,
    Message,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    UpstreamProtocolError,
    Usage,
)
from ..tokens import estimate_request_tokens, estimate_text_tokens
from ._json import compact as _dumps
from .anthropic_errors import error_from_payload
from .anthropic_wire import STOP_REASONS, as_int, usage_from_anthropic
from .errors import parse_json_body
from .sse import SSEDecoder

__all__ = ["AnthropicStreamDecoder", "decode_response"]


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _finish(stop_reason: Any) -> FinishReason:
    if isinstance(stop_reason, str):
        return STOP_REASONS.get(stop_reason, FinishReason.STOP)
    return FinishReason.STOP


def decode_response(body: bytes, provider: str | None = None) -> ChatResponse:
    """A ``message`` body as a :class:`ChatResponse`; anything else is a protocol error.

    An error object sent with a 2xx status (some proxies do) raises its LLMError.
    """
    data = parse_json_body(body, provider)
    if (
        isinstance(data, dict)
        and data.get("type") == "error"
        and isinstance(data.get("error"), dict)
    ):
        raise error_from_payload(data, provider=provider)
    if not isinstance(data, dict) or not isinstance(data.get("content"), list):
        raise UpstreamProtocolError("Anthropic answer is not a message object", provider=provider)
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    for block in data["content"]:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append(
                ToolCall(
                    id=str(block.get("id", "")),
                    name=str(block.get("name", "")),
                    arguments=_dumps(block.get("input") or {}),
                )
            )
        elif kind == "thinking":
            thinking.append(str(block.get("thinking", "")))
    text = "".join(texts)
    message = Message(
        role="assistant",
        content=text if texts or not calls else None,
        tool_calls=calls or None,
        reasoning="".join(thinking) if thinking else None,
    )
    stop_reason = data.get("stop_reason")
    usage = data.get("usage")
    return ChatResponse(
        id=str(data.get("id", "")),
        model=str(data.get("model", "")),
        provider=provider,
        choices=[
            Choice(
                message=message,
                finish_reason=_finish(stop_reason),
                native_finish_reason=stop_reason if isinstance(stop_reason, str) else None,
            )
        ],
        usage=usage_from_anthropic(usage) if isinstance(usage, dict) else None,
    )


class AnthropicStreamDecoder:
    """Turns one Anthropic SSE stream into :class:`StreamChunk` objects.

    Usage in ``message_delta`` is cumulative: the last value of each field wins,
    nothing is summed. Without any reported usage the figures are estimated
    (``estimated=True``); a stream cut before ``message_stop`` also marks its
    usage estimated, with output at least what was seen generated.
    """

    __slots__ = (
        "_blocks",
        "_done",
        "_empty_tools",
        "_generated",
        "_id",
        "_model",
        "_provider",
        "_raw_usage",
        "_request",
        "_seen",
        "_sse",
        "_stopped",
        "_tally",
    )

    def __init__(self, request: ChatRequest | None = None, provider: str | None = None) -> None:
        self._sse = SSEDecoder()
        self._request = request
        self._provider = provider
        self._id: str | None = None
        self._model: str | None = None
        self._blocks: dict[int, tuple[str, int]] = {}  # block index -> (kind, tool ordinal)
        self._empty_tools: set[int] = set()  # tool_use blocks with no arguments yet
        self._raw_usage: dict[str, Any] = {}
        self._generated: list[str] = []
        self._seen = False
        self._done = False
        self._stopped = False  # a stop_reason arrived (in message_delta)
        self._tally = False  # a message_delta carried the final output count

    def feed(self, data: bytes) -> list[StreamChunk]:
        """Chunks completed by ``data``; an ``error`` event raises its LLMError."""
        chunks: list[StreamChunk] = []
        for event in self._sse.feed(data):
            self._checked_event(event.event, event.data, chunks)
        return chunks

    def close(self) -> list[StreamChunk]:
        """Flush the input; UpstreamProtocolError if the stream did not end properly.

        Properly is a ``message_delta`` with a ``stop_reason``, then ``message_stop``:
        a proxy that cuts a stream may still send the terminal event.
        """
        chunks: list[StreamChunk] = []
        for event in self._sse.close():
            self._checked_event(event.event, event.data, chunks)
        if not self._done:
            raise UpstreamProtocolError(
                "Anthropic stream ended before message_stop", provider=self._provider
            )
        if not self._stopped:
            raise UpstreamProtocolError(
                "Anthropic stream reached message_stop without a stop_reason: it was cut short",
                provider=self._provider,
            )
        return chunks

    @property
    def usage(self) -> Usage | None:
        """The usage so far, in our convention; estimated where the stream did not say."""
        if not self._seen:
            return None
        raw = self._raw_usage
        has_input = "input_tokens" in raw
        # message_start's output count is a placeholder: only message_delta's is final.
        has_output = self._tally
        complete = self._done and self._stopped
        if complete and has_input and has_output:
            return usage_from_anthropic(raw)
        usage = usage_from_anthropic(raw)
        generated = estimate_text_tokens("".join(self._generated))
        # A cut stream's last output count is stale: what was seen generated is a floor.
        output = usage.output_tokens if complete and has_output else generated
        update: dict[str, Any] = {
            "output_tokens": max(usage.output_tokens, output),
            "estimated": True,
        }
        if not has_input and self._request is not None:
            update["input_tokens"] = usage.input_tokens + estimate_request_tokens(self._request)
        if update["output_tokens"] < usage.reasoning_tokens:
            update["reasoning_tokens"] = update["output_tokens"]
        return usage.model_copy(update=update)

    def _checked_event(self, name: str | None, data: str, out: list[StreamChunk]) -> None:
        try:
            self._event(name, data, out)
        except ValidationError as error:  # a field of the wrong type in an event
            raise UpstreamProtocolError(
                f"Anthropic stream sent a malformed {name} event", provider=self._provider
            ) from error

    def _event(self, name: str | None, data: str, out: list[StreamChunk]) -> None:
        if name == "ping" or self._done:
            return
        try:
            payload = json.loads(data) if data else {}
        except ValueError as error:
            raise UpstreamProtocolError(
                f"Anthropic stream sent a {name} event that is not JSON", provider=self._provider
            ) from error
        if not isinstance(payload, dict):
            raise UpstreamProtocolError("Anthropic stream event is not an object")
        kind = name or payload.get("type")
        self._seen = True
        if kind == "content_block_delta":
            self._delta(payload, out)
        elif kind == "content_block_stop":
            index = as_int(payload.get("index"))
            if index in self._empty_tools:
                # A tool without parameters streams its input as "" (no JSON at all);
                # callers parse the joined arguments, so they get the empty object.
                self._empty_tools.discard(index)
                call = ToolCallDelta(index=self._blocks[index][1], arguments="{}")
                self._emit(out, "", tool_calls=[call])
        elif kind == "content_block_start":
            self._block_start(payload, out)
        elif kind == "message_start":
            message = _obj(payload.get("message"))
            self._id = _str_or_none(message.get("id"))
            self._model = _str_or_none(message.get("model"))
            self._take_usage(message.get("usage"))
            out.append(StreamChunk(id=self._id, model=self._model, role="assistant"))
        elif kind == "message_delta":
            usage = payload.get("usage")
            self._take_usage(usage)
            if isinstance(usage, dict) and usage.get("output_tokens") is not None:
                self._tally = True
            stop = _obj(payload.get("delta")).get("stop_reason")
            if stop:
                self._stopped = True
                out.append(
                    StreamChunk(id=self._id, finish_reason=_finish(stop), native_finish_reason=stop)
                )
        elif kind == "message_stop":
            self._done = True
            out.append(StreamChunk(id=self._id, usage=self.usage))
        elif kind == "error":
            raise error_from_payload(payload, provider=self._provider)

    def _block_start(self, payload: dict[str, Any], out: list[StreamChunk]) -> None:
        block = _obj(payload.get("content_block"))
        index = as_int(payload.get("index"))
        kind = block.get("type")
        if kind == "tool_use":
            ordinal = sum(1 for k, _ in self._blocks.values() if k == "tool_use")
            preset = block.get("input")
            delta = ToolCallDelta(
                index=ordinal,
                id=_str_or_none(block.get("id")),
                name=_str_or_none(block.get("name")),
                arguments=_dumps(preset) if preset else "",
            )
            self._blocks[index] = ("tool_use", ordinal)
            if not delta.arguments:
                self._empty_tools.add(index)
            self._emit(out, (delta.name or "") + delta.arguments, tool_calls=[delta])
            return
        self._blocks[index] = (str(kind), 0)
        if kind == "text" and block.get("text"):
            self._emit(out, block["text"], text=block["text"])
        elif kind == "thinking" and block.get("thinking"):
            self._emit(out, block["thinking"], reasoning=block["thinking"])

    def _delta(self, payload: dict[str, Any], out: list[StreamChunk]) -> None:
        delta = _obj(payload.get("delta"))
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text") or ""
            self._emit(out, text, text=text)
        elif kind == "input_json_delta":
            fragment = delta.get("partial_json") or ""
            index = as_int(payload.get("index"))
            block = self._blocks.get(index)
            if not fragment or block is None or block[0] != "tool_use":
                return
            self._empty_tools.discard(index)
            call = ToolCallDelta(index=block[1], arguments=fragment)
            self._emit(out, call.arguments, tool_calls=[call])
        elif kind == "thinking_delta":
            text = delta.get("thinking") or ""
            self._emit(out, text, reasoning=text)

    def _emit(self, out: list[StreamChunk], generated: str, **fields: Any) -> None:
        chunk = StreamChunk(id=self._id, **fields)  # validated first: a bad type never lands
        self._generated.append(generated)
        out.append(chunk)

    def _take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            # Cumulative: a later value replaces an earlier one; absent fields keep theirs.
            self._raw_usage.update((k, v) for k, v in usage.items() if v is not None)
