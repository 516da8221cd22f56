"""Decoding ``chat.completion.chunk`` streams, and reassembling streamed tool calls."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..schema import (
    ChatRequest,
    LLMError,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    UpstreamProtocolError,
    Usage,
)
from ..tokens import estimate_request_tokens
from .base import ProviderConfig
from .openai_errors import error_from_stream_payload
from .openai_wire import (
    content_and_thinking,
    decode_usage,
    finish_reason,
    mistral_tool_call_id,
    reasoning_of,
)
from .sse import SSEDecoder, SSEEvent

__all__ = ["OpenAIStreamDecoder", "ToolCallAssembler"]

_CHUNK_DEFAULTS = {
    name: info.get_default(call_default_factory=True)
    for name, info in StreamChunk.model_fields.items()
}
_new = object.__new__
_set = object.__setattr__


def _chunk(values: dict[str, Any]) -> StreamChunk:
    """A StreamChunk from trusted values, without validation.

    What ``model_construct`` does, minus its per-field loop: this runs once per
    stream event, where that loop was the largest single cost.
    """
    chunk = _new(StreamChunk)
    fields = _CHUNK_DEFAULTS.copy()
    fields.update(values)
    _set(chunk, "__dict__", fields)
    _set(chunk, "__pydantic_fields_set__", set(values))
    _set(chunk, "__pydantic_extra__", None)
    _set(chunk, "__pydantic_private__", None)
    return chunk


class ToolCallAssembler:
    """Joins :class:`ToolCallDelta` fragments (keyed by ``index``) into full tool calls.

    Feed it every chunk of one choice; ``tool_calls()`` returns the calls so far in
    index order. Repeated ids or names on later fragments are tolerated.
    """

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, list[Any]] = {}

    def add(self, deltas: Iterable[ToolCallDelta]) -> None:
        """Take the fragments of one chunk."""
        for delta in deltas:
            call = self._calls.get(delta.index)
            if call is None:
                call = self._calls[delta.index] = [delta.id, delta.name, []]
            else:
                if call[0] is None and delta.id:
                    call[0] = delta.id
                if not call[1] and delta.name:
                    call[1] = delta.name
            if delta.arguments:
                call[2].append(delta.arguments)

    def feed(self, chunk: StreamChunk) -> None:
        """Take the tool-call fragments of ``chunk``, if any."""
        if chunk.tool_calls:
            self.add(chunk.tool_calls)

    def tool_calls(self) -> list[ToolCall]:
        """The assembled calls; a call without arguments gets ``"{}"``."""
        return [
            ToolCall(
                id=call[0] or f"call_{index}",
                name=call[1] or "",
                arguments="".join(call[2]) or "{}",
            )
            for index, call in sorted(self._calls.items())
        ]


class _Slot:
    __slots__ = ("id", "index", "named")

    def __init__(self, index: int, call_id: str | None) -> None:
        self.index = index
        self.id = call_id
        self.named = False


def _whole_events(data: bytes) -> list[str] | None:
    """The data of each event in ``data`` when it holds nothing but whole events of
    one ``data: `` line (and comment lines), each ended by a blank line; otherwise
    ``None``, and the SSE parser takes it."""
    if data[-2:] != b"\n\n" or b"\r" in data:
        return None
    found: list[str] = []
    for block in data[:-2].split(b"\n\n"):
        if b"\n" in block:
            return None
        if block[:6] == b"data: ":
            found.append(block[6:].decode("utf-8", "replace"))
        elif block[:1] != b":":
            return None
    return found


class OpenAIStreamDecoder:
    """Incremental decoder of one OpenAI-compatible SSE stream (see ``StreamDecoder``).

    Tool-call fragments get stable indexes per choice even from providers that
    reuse index 0 for parallel calls or omit it. When no usage arrives, usage is
    estimated from the request and the streamed output and marked ``estimated``.
    """

    __slots__ = (
        "_api_key",
        "_ascii",
        "_done",
        "_finished",
        "_id_back",
        "_last_key",
        "_next_index",
        "_other",
        "_provider",
        "_request",
        "_slots",
        "_sse",
        "_usage",
    )

    def __init__(self, provider: ProviderConfig, request: ChatRequest) -> None:
        self._sse: SSEDecoder | None = None  # made on the first feed (see ``event``)
        self._provider = provider.name
        self._api_key = provider.api_key
        self._request = request
        self._done = False
        self._finished = False
        self._usage: Usage | None = None
        self._ascii = 0
        self._other = 0
        self._slots: dict[tuple[int, Any], _Slot] = {}
        self._last_key: dict[int, Any] = {}
        self._next_index: dict[int, int] = {}
        self._id_back: dict[str, str] = {}
        if provider.options.get("tool_call_ids") == "mistral":
            for message in request.messages:
                for call in message.tool_calls or ():
                    issued = mistral_tool_call_id(call.id)
                    if issued != call.id:
                        self._id_back[issued] = call.id

    @property
    def usage(self) -> Usage | None:
        """The last usage reported (or the estimate made at the end)."""
        return self._usage

    @property
    def done(self) -> bool:
        """Whether the terminal ``[DONE]`` arrived."""
        return self._done

    def feed(self, data: bytes) -> list[StreamChunk]:
        """Decode ``data``; raises the mapped LLMError on an in-stream error."""
        sse = self._sse
        if sse is None:
            # Until a read is more than whole one-line events, no SSE parser is needed:
            # nothing is pending between such reads.
            whole = _whole_events(data)
            if whole is not None:
                chunks: list[StreamChunk] = []
                for text in whole:
                    if self._done:
                        break  # anything after [DONE] is not part of the answer
                    self._data(text, chunks)
                return chunks
            sse = self._sse = SSEDecoder()
        return self._events(sse.feed(data))

    def event(self, data: str) -> list[StreamChunk]:
        """Decode the ``data`` of one whole event its caller split off the stream
        itself, as :meth:`feed` would decode that event (do not mix the two while
        ``feed`` holds part of an event)."""
        chunks: list[StreamChunk] = []
        if not self._done:
            self._data(data, chunks)
        return chunks

    def close(self) -> list[StreamChunk]:
        """End of input: a missing ``[DONE]`` or finish reason raises UpstreamProtocolError."""
        chunks = self._events(self._sse.close()) if self._sse is not None else []
        if not self._done:
            self._estimate()
            raise UpstreamProtocolError(
                "the stream ended before its [DONE] marker (cut short)", provider=self._provider
            )
        if not self._finished:
            # Every compatible server sends a finish reason before [DONE]; without
            # one, the answer was cut and the marker papered over it.
            self._estimate()
            raise UpstreamProtocolError(
                "the stream sent [DONE] without a finish reason (cut short)",
                provider=self._provider,
            )
        if self._usage is None:
            usage = self._estimate()
            chunks.append(_chunk({"usage": usage}))
        return chunks

    def _estimate(self) -> Usage:
        if self._usage is None:
            self._usage = Usage.model_construct(
                input_tokens=estimate_request_tokens(self._request),
                # The same heuristic as tokens.estimate_text_tokens, kept as running counts.
                output_tokens=(self._ascii + 3) // 4 + self._other,
                cached_input_tokens=0,
                cache_write_tokens=0,
                cache_write_long_tokens=0,
                reasoning_tokens=0,
                estimated=True,
                provider_cost=None,
            )
        return self._usage

    def _count(self, text: str) -> None:
        ascii_chars = len(text.encode("ascii", "ignore"))
        self._ascii += ascii_chars
        self._other += len(text) - ascii_chars

    def _events(self, events: list[SSEEvent]) -> list[StreamChunk]:
        chunks: list[StreamChunk] = []
        for event in events:
            if self._done:
                break  # anything after [DONE] is not part of the answer
            self._data(event.data, chunks)
        return chunks

    def _data(self, data: str, chunks: list[StreamChunk]) -> None:
        """Decode one event's ``data`` into ``chunks`` (``[DONE]`` ends the stream)."""
        if not data or data.isspace():
            return
        if data == "[DONE]":
            self._done = True
            return
        try:
            payload = json.loads(data)
        except ValueError as error:
            raise self._not_json(data) from error
        if not isinstance(payload, dict):
            raise self._not_object()
        self._payload(payload, chunks)

    def _not_json(self, data: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(
            f"stream event is not JSON: {data[:80]!r}", provider=self._provider
        )

    def _not_object(self) -> UpstreamProtocolError:
        return UpstreamProtocolError("stream event is not a JSON object", provider=self._provider)

    def _payload(self, payload: dict[str, Any], chunks: list[StreamChunk]) -> None:
        if payload.get("error"):
            self._estimate()
            error: LLMError = error_from_stream_payload(payload, self._provider, self._api_key)
            raise error
        chunk_id = payload.get("id")
        model = payload.get("model")
        raw_usage = payload.get("usage")
        if not isinstance(raw_usage, dict):
            groq = payload.get("x_groq")
            raw_usage = groq.get("usage") if isinstance(groq, dict) else None
        usage = None if raw_usage is None else decode_usage(raw_usage)
        if usage is not None:
            self._usage = usage
        start = len(chunks)
        choices = payload.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict):
                chunk = self._choice(choice, chunk_id, model)
                if chunk is not None:
                    chunks.append(chunk)
        if usage is not None:
            if len(chunks) > start:
                chunks[-1].usage = usage
            else:
                chunks.append(_chunk({"id": chunk_id, "model": model, "usage": usage}))

    def _choice(self, choice: dict[str, Any], chunk_id: Any, model: Any) -> StreamChunk | None:
        index = choice.get("index")
        if not isinstance(index, int):
            index = 0
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        content = delta.get("content")
        if content is None:
            # A refusal streams in its own field, content null: it is the answer's text
            # (as a whole answer's refusal is for callers of other dialects).
            refusal = delta.get("refusal")
            if type(refusal) is str:
                content = refusal
        if content is None or type(content) is str:  # the common shape, without a call
            text, thinking = content, None
        else:
            text, thinking = content_and_thinking(content)
        reasoning = reasoning_of(delta) or thinking
        raw_calls = delta.get("tool_calls")
        calls = self._tool_calls(index, raw_calls) if isinstance(raw_calls, list) else None
        raw_finish = choice.get("finish_reason")
        mapped, native = (None, None) if raw_finish is None else finish_reason(raw_finish)
        if mapped is not None:
            self._finished = True
        role = delta.get("role")
        if role != "assistant":
            role = None
        if not text:
            text = None
        else:
            self._count(text)
        if reasoning:
            self._count(reasoning)
        else:
            reasoning = None
        if text is None and reasoning is None and not calls and mapped is None and role is None:
            return None
        return _chunk(
            {
                "id": chunk_id if isinstance(chunk_id, str) else None,
                "model": model if isinstance(model, str) else None,
                "index": index,
                "role": role,
                "text": text,
                "reasoning": reasoning,
                "tool_calls": calls or None,
                "finish_reason": mapped,
                "native_finish_reason": native,
            }
        )

    def _tool_calls(self, choice: int, raw: list[Any]) -> list[ToolCallDelta]:
        deltas: list[ToolCallDelta] = []
        for item in raw:
            if not isinstance(item, dict):
                continue
            call_id = item.get("id") or None
            if call_id is not None:
                call_id = str(call_id)
            function = item.get("function")
            if not isinstance(function, dict):
                function = {}
            upstream = item.get("index")
            if isinstance(upstream, int):
                key: Any = upstream
            elif call_id is not None:
                key = ("id", call_id)
            else:
                key = self._last_key.get(choice, 0)
            slot = self._slots.get((choice, key))
            if slot is None or (call_id and slot.id and call_id != slot.id):
                position = self._next_index.get(choice, 0)
                self._next_index[choice] = position + 1
                slot = self._slots[(choice, key)] = _Slot(position, None)
            self._last_key[choice] = key
            emit_id = None
            if call_id and slot.id is None:
                slot.id = call_id
                emit_id = self._id_back.get(call_id, call_id)
            name = function.get("name") or None
            if name is not None and slot.named:
                name = None
            elif name is not None:
                slot.named = True
                self._count(str(name))
            arguments = function.get("arguments")
            if arguments is None:
                arguments = ""
            elif not isinstance(arguments, str):
                arguments = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
            if arguments:
                self._count(arguments)
            deltas.append(
                ToolCallDelta.model_construct(
                    index=slot.index, id=emit_id, name=name, arguments=arguments
                )
            )
        return deltas
