"""Usage decoding for calls the router passes through without translating.

Some OpenAI endpoints are not routed (the Responses API, embeddings), but their
cost is still recorded. These functions read only the usage out of such answers,
in the normalized convention of :class:`~routing_middleware.schema.Usage`:
input includes cached reads and cache writes, output includes reasoning.

Nothing here raises on bad input: a body or stream without readable usage gives
``None`` (the meter records "usage unknown" rather than break the caller's call).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from ..schema import Usage

__all__ = ["UsageKind", "UsageStreamScanner", "decode_usage", "usage_from_responses"]

UsageKind = Literal["responses", "embeddings"]

_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
_TYPE_PREFIX = re.compile(rb'^\s*\{\s*"type"\s*:\s*"([^"]*)"')
#: Bytes of a data line looked at to decide whether to keep it.
_PEEK = 96


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_responses(usage: Any) -> Usage | None:
    """Normalize a Responses-API ``usage`` object (``None`` if it is not one)."""
    if not isinstance(usage, dict) or "input_tokens" not in usage:
        return None
    details = usage.get("input_tokens_details") or {}
    write_details = details.get("cache_write_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    input_tokens = _int(usage.get("input_tokens"))
    output_tokens = _int(usage.get("output_tokens"))
    cached = min(_int(details.get("cached_tokens")), input_tokens)
    writes = min(_int(details.get("cache_write_tokens")), input_tokens - cached)
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached,
        cache_write_tokens=writes,
        cache_write_long_tokens=min(_int(write_details.get("ttl_12h_tokens")), writes),
        reasoning_tokens=min(_int(output_details.get("reasoning_tokens")), output_tokens),
    )


def _usage_from_embeddings(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    tokens = usage.get("prompt_tokens", usage.get("total_tokens"))
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        return None
    return Usage(input_tokens=max(tokens, 0))


def decode_usage(kind: UsageKind, body: bytes) -> Usage | None:
    """The usage in a complete (non-streamed) answer of ``kind``, or ``None``.

    ``kind`` is ``"responses"`` (``POST /v1/responses``) or ``"embeddings"``
    (``POST /v1/embeddings``, input tokens only).
    """
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    if kind == "responses":
        return usage_from_responses(document.get("usage"))
    if kind == "embeddings":
        return _usage_from_embeddings(document.get("usage"))
    raise ValueError(f"unknown usage kind {kind!r}")


class UsageStreamScanner:
    """Finds the usage in a streamed Responses-API answer, incrementally.

    Feed the raw bytes as they pass through (any split); the scanner keeps only the
    line being read, and drops data lines of events that cannot carry usage as soon
    as their event name (or the ``type`` at the start of their JSON) gives them
    away. Usage comes from ``response.completed`` / ``response.incomplete``
    (``response.failed`` when it has one). ``complete`` tells whether the terminal
    event arrived; after :meth:`close`, a stream without it has ``usage`` ``None``
    unless an earlier terminal event carried one.
    """

    def __init__(self) -> None:
        self._line = bytearray()
        self._skip_line = False
        self._event: str | None = None
        self._data: list[bytes] = []
        self._drop_event = False
        self.usage: Usage | None = None
        self.status: str | None = None
        self.complete = False

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the stream."""
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            if end < 0:
                if not self._skip_line:
                    self._line += data[start:]
                    self._maybe_skip()
                return
            if not self._skip_line:
                self._line += data[start:end]
                self._line_done(bytes(self._line).rstrip(b"\r"))
            self._line.clear()
            self._skip_line = False
            start = end + 1

    @property
    def buffered(self) -> int:
        """Bytes held right now (the partial line and the current event's data)."""
        return len(self._line) + sum(len(d) for d in self._data)

    def close(self) -> Usage | None:
        """End of stream: finish any last event; return the usage found."""
        if self._line and not self._skip_line:
            self._line_done(bytes(self._line).rstrip(b"\r"))
        self._line.clear()
        self._dispatch()
        return self.usage

    # -- internals -------------------------------------------------------------

    def _maybe_skip(self) -> None:
        """Stop collecting a partial line as soon as it is known to be useless."""
        line = self._line
        if not line.startswith(b"data:"):
            if len(line) > _PEEK and not line.startswith(b"event:"):
                self._skip_line = True  # comments, ids and unknown fields
                self._line.clear()
            return
        if self._drop_event or (self._event is not None and self._event not in _TERMINAL):
            self._skip_line = True
        elif self._event is None and len(line) >= _PEEK:
            match = _TYPE_PREFIX.match(bytes(line[5:_PEEK]))
            if match and match.group(1).decode("latin-1") not in _TERMINAL:
                self._drop_event = True
                self._skip_line = True
        if self._skip_line:
            self._line.clear()

    def _line_done(self, line: bytes) -> None:
        if not line:
            self._dispatch()
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            self._event = value.decode("utf-8", "replace")
            self._drop_event = self._event not in _TERMINAL
        elif name == b"data" and not self._drop_event:
            if self._event is None and not self._data:
                match = _TYPE_PREFIX.match(value[:_PEEK])
                if match and match.group(1).decode("latin-1") not in _TERMINAL:
                    self._drop_event = True
                    return
            self._data.append(value)

    def _dispatch(self) -> None:
        data, self._data = self._data, []
        self._event, self._drop_event = None, False
        if not data:
            return
        try:
            event = json.loads(b"\n".join(data))
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("type") not in _TERMINAL:
            return
        response = event.get("response")
        if not isinstance(response, dict):
            return
        usage = usage_from_responses(response.get("usage"))
        if usage is not None:
            self.usage = usage
        self.status = str(event["type"]).removeprefix("response.")
        self.complete = True
