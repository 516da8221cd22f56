"""Upstream answers: Gemini responses and ``streamGenerateContent`` streams decoded."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

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
from .gemini_errors import _error_from_payload
from .gemini_wire import (
    _PROMPT_BLOCKED,
    _PROVIDER,
    _block_reason,
    _finish_in,
    _parts_of,
    _tool_call_from_part,
    _usage_from_meta,
)
from .sse import SSEDecoder


def _decode_payload(payload: Mapping[str, Any], response_id: str) -> ChatResponse:
    candidates = payload.get("candidates")
    choices: list[Choice] = []
    if isinstance(candidates, list):
        for position, candidate in enumerate(candidates):
            if not isinstance(candidate, Mapping):
                raise UpstreamProtocolError("Gemini candidate is not an object", provider=_PROVIDER)
            index = candidate.get("index", position)
            texts: list[str] = []
            thoughts: list[str] = []
            calls: list[ToolCall] = []
            for part in _parts_of(candidate):
                if not isinstance(part, Mapping):
                    continue
                if "functionCall" in part:
                    calls.append(_tool_call_from_part(part, response_id, index, len(calls)))
                elif isinstance(part.get("text"), str):
                    (thoughts if part.get("thought") else texts).append(part["text"])
            native = candidate.get("finishReason")
            native = native if isinstance(native, str) else None
            message = Message.model_construct(
                role="assistant",
                content="".join(texts) if texts or not calls else None,
                tool_calls=calls or None,
                reasoning="".join(thoughts) if thoughts else None,
            )
            choices.append(
                Choice.model_construct(
                    index=index,
                    message=message,
                    finish_reason=_finish_in(native, bool(calls)),
                    native_finish_reason=native,
                )
            )
    if not choices:
        blocked = _block_reason(payload)
        if blocked is None:
            raise UpstreamProtocolError(
                "Gemini answered with no candidates and no block reason", provider=_PROVIDER
            )
        choices.append(
            Choice.model_construct(
                index=0,
                message=Message.model_construct(role="assistant", content=""),
                finish_reason=FinishReason.CONTENT_FILTER,
                native_finish_reason=_PROMPT_BLOCKED + blocked,
            )
        )
    meta = payload.get("usageMetadata")
    model = payload.get("modelVersion")
    return ChatResponse.model_construct(
        id=response_id,
        model=model if isinstance(model, str) else "",
        provider=_PROVIDER,
        created=0,
        choices=choices,
        usage=_usage_from_meta(meta) if isinstance(meta, Mapping) else None,
    )


class GeminiStreamDecoder:
    """Decodes one ``streamGenerateContent?alt=sse`` answer.

    Each SSE event is a whole GenerateContentResponse. There is no ``[DONE]``: the
    chunk whose candidates all carry a ``finishReason`` ends the stream, and ``close()``
    raises :class:`UpstreamProtocolError` if none came. The last ``usageMetadata`` seen
    holds the complete counts; when none came, usage is estimated (``estimated=True``).
    """

    __slots__ = (
        "_calls",
        "_done",
        "_final_usage",
        "_finished",
        "_id",
        "_meta",
        "_model",
        "_pieces",
        "_provider",
        "_request",
        "_sse",
    )

    def __init__(self, provider: str, request: ChatRequest) -> None:
        self._sse = SSEDecoder()
        self._provider = provider
        self._request = request
        self._meta: Mapping[str, Any] | None = None
        self._final_usage: Usage | None = None
        self._calls: dict[int, int] = {}  # candidate index → function calls seen
        self._finished: set[int] = set()
        self._done = False
        self._id: str | None = None
        self._model: str | None = None
        self._pieces: list[str] = []  # generated text, for estimates only

    @property
    def usage(self) -> Usage | None:
        """The final usage, or the latest reported so far (``None`` before any)."""
        if self._final_usage is not None:
            return self._final_usage
        return _usage_from_meta(self._meta) if self._meta is not None else None

    def feed(self, data: bytes) -> list[StreamChunk]:
        """Decode ``data``; raises the mapped LLMError for an error object in the stream."""
        chunks: list[StreamChunk] = []
        for event in self._sse.feed(data):
            self._event(event.data, chunks)
        return chunks

    def close(self) -> list[StreamChunk]:
        """End of input; raises UpstreamProtocolError when no ``finishReason`` arrived."""
        chunks: list[StreamChunk] = []
        for event in self._sse.close():
            self._event(event.data, chunks)
        if not self._done:
            self._final_usage = self._estimate(cut=True)
            raise UpstreamProtocolError(
                "Gemini stream ended before any finishReason (cut short)",
                provider=self._provider,
            )
        return chunks

    def _estimate(self, *, cut: bool) -> Usage:
        reported = _usage_from_meta(self._meta) if self._meta is not None else None
        output = estimate_text_tokens("".join(self._pieces))
        if reported is not None and (not cut or reported.output_tokens >= output):
            return reported if not cut else reported.model_copy(update={"estimated": True})
        input_tokens = reported.input_tokens if reported and reported.input_tokens else None
        return Usage(
            input_tokens=input_tokens or estimate_request_tokens(self._request),
            output_tokens=max(output, reported.output_tokens if reported else 0),
            reasoning_tokens=reported.reasoning_tokens if reported else 0,
            cached_input_tokens=reported.cached_input_tokens if reported else 0,
            estimated=True,
        )

    def _event(self, data: str, out: list[StreamChunk]) -> None:
        if not data or data == "[DONE]":
            return
        try:
            payload = json.loads(data)
        except ValueError as error:
            raise UpstreamProtocolError(
                f"Gemini stream event is not JSON: {data[:80]!r}", provider=self._provider
            ) from error
        if not isinstance(payload, dict):
            raise UpstreamProtocolError(
                "Gemini stream event is not an object", provider=self._provider
            )
        if "error" in payload:
            raise _error_from_payload(200, {}, payload, self._provider)
        response_id = payload.get("responseId")
        if isinstance(response_id, str):
            self._id = response_id
        model = payload.get("modelVersion")
        if isinstance(model, str):
            self._model = model
        meta = payload.get("usageMetadata")
        fresh_usage = isinstance(meta, dict)
        if fresh_usage:
            self._meta = meta
        candidates = payload.get("candidates")
        produced = False
        if isinstance(candidates, list):
            start = len(out)
            for position, candidate in enumerate(candidates):
                if isinstance(candidate, dict):
                    out.append(self._candidate(candidate, position))
                    produced = True
            if produced and not self._done and self._finished.issuperset(self._calls):
                # Every candidate seen so far has finished: this event ends the stream.
                self._done = True
                last = next(c for c in reversed(out[start:]) if c.finish_reason is not None)
                last.usage = self._settle()
        if not produced and not self._done:
            blocked = _block_reason(payload)
            if blocked is not None:
                self._done = True
                out.append(
                    StreamChunk.model_construct(
                        id=self._id,
                        model=self._model,
                        role="assistant",
                        finish_reason=FinishReason.CONTENT_FILTER,
                        native_finish_reason=_PROMPT_BLOCKED + blocked,
                        usage=self._settle(),
                    )
                )
                return
        if self._done and fresh_usage and not produced and self._final_usage is not None:
            # Counts arriving after the end: report the corrected total once more.
            self._final_usage = _usage_from_meta(meta)  # type: ignore[arg-type]
            out.append(StreamChunk.model_construct(id=self._id, usage=self._final_usage))

    def _settle(self) -> Usage:
        self._final_usage = (
            _usage_from_meta(self._meta) if self._meta is not None else self._estimate(cut=False)
        )
        return self._final_usage

    def _candidate(self, candidate: Mapping[str, Any], position: int) -> StreamChunk:
        index = candidate.get("index", position)
        first = index not in self._calls
        seen = self._calls.setdefault(index, 0)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCallDelta] = []
        for part in _parts_of(candidate):
            if not isinstance(part, dict):
                continue
            if "functionCall" in part:
                call = _tool_call_from_part(part, self._id or "", index, seen + len(calls))
                calls.append(
                    ToolCallDelta.model_construct(
                        index=seen + len(calls),
                        id=call.id,
                        name=call.name,
                        arguments=call.arguments,
                    )
                )
                self._pieces.append(call.arguments)
            elif isinstance(part.get("text"), str) and part["text"]:
                (thoughts if part.get("thought") else texts).append(part["text"])
        self._calls[index] = seen + len(calls)
        text = "".join(texts) if texts else None
        reasoning = "".join(thoughts) if thoughts else None
        if text:
            self._pieces.append(text)
        if reasoning:
            self._pieces.append(reasoning)
        native = candidate.get("finishReason")
        finish: FinishReason | None = None
        if isinstance(native, str) and native:
            finish = _finish_in(native, self._calls[index] > 0)
            self._finished.add(index)
        else:
            native = None
        return StreamChunk.model_construct(
            id=self._id,
            model=self._model,
            index=index,
            role="assistant" if first else None,
            text=text,
            reasoning=reasoning,
            tool_calls=calls or None,
            finish_reason=finish,
            native_finish_reason=native,
            usage=None,
        )
