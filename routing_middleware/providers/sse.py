"""Server-sent events: an incremental decoder and an encoder.

The decoder takes bytes as they come off the network, in any split: a multi-byte
UTF-8 character or a ``\\r\\n`` pair may straddle two reads. Comment lines
(``: keep-alive``, ``: OPENROUTER PROCESSING``) are dropped.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSEEvent", "encode_sse"]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its ``event`` name (``None`` when unnamed) and ``data``."""

    data: str
    event: str | None = None
    id: str | None = None


class SSEDecoder:
    """Incremental SSE parser following the WHATWG event-stream rules."""

    __slots__ = ("_data", "_decoder", "_event", "_id", "_pending", "_saw_cr")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._saw_cr = False
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse ``data`` and return the events it completed."""
        text = self._decoder.decode(data)
        if not text:
            return []
        if self._saw_cr and text.startswith("\n"):
            text = text[1:]  # the \n of a \r\n split across two reads
        self._saw_cr = text.endswith("\r")
        text = self._pending + text
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        self._pending = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """End of input: dispatch what a missing final blank line left pending."""
        tail = self._decoder.decode(b"", final=True)
        events = self.feed(tail.encode()) if tail else []
        if self._pending:
            event = self._line(self._pending)
            self._pending = ""
            if event is not None:
                events.append(event)
        event = self._line("")
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = None
                return None
            event = SSEEvent(data="\n".join(self._data), event=self._event, id=self._id)
            self._data = []
            self._event = None
            return event
        if line[0] == ":":
            return None
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def encode_sse(data: str, event: str | None = None) -> bytes:
    """One event as wire bytes; multi-line ``data`` becomes several ``data:`` lines."""
    head = f"event: {event}\n" if event else ""
    if "\n" in data:
        body = "".join(f"data: {line}\n" for line in data.split("\n"))
    else:
        body = f"data: {data}\n"
    return f"{head}{body}\n".encode()
