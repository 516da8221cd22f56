"""Wire plumbing shared by the fake's dialects: replies, SSE framing, stream failures."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from ._fake_config import Failure, FakeModel
from ._fake_gen import Generation

__all__ = ["Ctx", "Piece", "Reply", "StreamPlan", "json_reply", "sse", "sse_comment"]


@dataclass(slots=True)
class Piece:
    """One write of the response body: an SSE event, a comment, or a whole JSON body.

    ``token`` pieces are paced by the model's latency; ``counts`` says whether the
    piece is an event for ``Failure.cut(after=...)`` (comments are not); ``pause``
    adds a stall before the piece.
    """

    data: bytes
    token: bool = False
    counts: bool = True
    pause: float = 0.0


@dataclass(slots=True)
class Reply:
    """Everything an I/O shell needs to answer: status, headers, paced body pieces."""

    status: int
    headers: list[tuple[str, str]]
    pieces: list[Piece] = field(default_factory=list)
    stream: bool = False
    ttft: float = 0.0
    token_delay: float = 0.0
    hang: float = 0.0
    reset: bool = False
    refuse: bool = False
    abort: bool = False

    def start_delay(self) -> float:
        """Seconds before the status line goes out."""
        if self.stream:
            return self.hang
        tokens = sum(1 for p in self.pieces if p.token)
        return self.hang + (self.ttft + self.token_delay * max(tokens - 1, 0) if tokens else 0)

    def schedule(self) -> Iterator[tuple[float, bytes]]:
        """Body writes with the delay to wait before each."""
        if not self.stream:
            yield 0.0, b"".join(p.data for p in self.pieces)
            return
        first = True
        for piece in self.pieces:
            delay = 0.0
            if piece.token:
                delay = self.ttft if first else self.token_delay
                first = False
            yield delay + piece.pause, piece.data


@dataclass(slots=True)
class Ctx:
    """One request as a dialect renderer sees it."""

    endpoint: str
    flavor: str
    body: dict[str, Any]
    headers: Mapping[str, str]
    model: FakeModel
    gen: Generation
    stream: bool
    response_id: str
    created: int
    cost: Decimal | None
    failure: Failure | None

    @property
    def usage_off(self) -> bool:
        return self.failure is not None and self.failure.kind == "no_usage"


@dataclass(slots=True)
class StreamPlan:
    """A rendered stream before failures: events, the end marker, the in-band error."""

    events: list[Piece]
    end_marker: Piece | None
    error_event: Piece
    headers: list[tuple[str, str]]


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(obj: Any) -> str:
    """Compact JSON, as providers send it (money goes out as a JSON number)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_default)


def sse(data: Any, event: str | None = None, *, token: bool = False) -> Piece:
    """An SSE event; ``data`` is JSON-encoded unless it is already text."""
    text = data if isinstance(data, str) else dumps(data)
    head = f"event: {event}\n" if event else ""
    return Piece(f"{head}data: {text}\n\n".encode(), token=token)


def sse_comment(text: str) -> Piece:
    return Piece(f": {text}\n\n".encode(), counts=False)


def json_reply(
    status: int, body: Any, headers: list[tuple[str, str]] | None = None, *, token: bool = False
) -> Reply:
    data = dumps(body).encode()
    all_headers = [("content-type", "application/json"), *(headers or [])]
    return Reply(status, all_headers, [Piece(data, token=token)])


def retry_headers(failure: Failure | None) -> list[tuple[str, str]]:
    """``retry-after`` / ``retry-after-ms`` / ``x-should-retry`` as the failure asks."""
    if failure is None:
        return []
    out: list[tuple[str, str]] = []
    if failure.retry_after is not None:
        seconds = failure.retry_after
        text = str(int(seconds)) if float(seconds).is_integer() else str(math.ceil(seconds))
        out.append(("retry-after", text))
    if failure.retry_after_ms is not None:
        out.append(("retry-after-ms", str(failure.retry_after_ms)))
    if failure.should_retry is not None:
        out.append(("x-should-retry", "true" if failure.should_retry else "false"))
    return out


def _break(piece: Piece) -> Piece:
    """The same event with its JSON payload cut in half."""
    text = piece.data.decode()
    head, sep, payload = text.rpartition("data: ")
    payload = payload.rstrip("\n")
    return Piece(f"{head}{sep}{payload[: max(len(payload) // 2, 1)]}\n\n".encode(), piece.token)


def finish_stream(plan: StreamPlan, ctx: Ctx) -> Reply:
    """Apply the request's stream failure (if any) to ``plan`` and build the reply."""
    failure = ctx.failure
    model = ctx.model
    reply = Reply(200, plan.headers, stream=True, ttft=model.ttft, token_delay=model.token_delay)
    events = list(plan.events)
    if plan.end_marker is not None:
        events.append(plan.end_marker)
    kind = failure.kind if failure else None
    if kind in ("cut", "stream_error"):
        assert failure is not None
        kept: list[Piece] = []
        counted = 0
        for piece in events:
            if piece.counts and counted >= failure.after:
                break
            kept.append(piece)
            counted += piece.counts
        if kind == "stream_error":
            kept.append(plan.error_event)
        elif failure.terminal and plan.end_marker is not None and plan.end_marker not in kept:
            kept.append(plan.end_marker)
        reply.abort = failure.abort
        events = kept
    elif kind == "stall":
        assert failure is not None
        positions = [i for i, p in enumerate(events) if p.counts]
        if failure.after < len(positions):
            target = positions[failure.after]
            events[target] = replace(events[target], pause=failure.hang)
    elif kind == "malformed":
        counted_idx = [i for i, p in enumerate(events) if p.counts]
        if counted_idx:
            target = counted_idx[len(counted_idx) // 2]
            events[target] = _break(events[target])
    reply.pieces = events
    return reply


def finish_json(reply: Reply, ctx: Ctx) -> Reply:
    """Pace a non-streamed reply like the model and apply a malformed-body failure."""
    reply.ttft = ctx.model.ttft
    reply.token_delay = ctx.model.token_delay
    if reply.pieces:
        tokens = max(len(ctx.gen.pieces) + len(ctx.gen.reasoning_pieces), 1)
        body = reply.pieces[0].data
        if ctx.failure is not None and ctx.failure.kind == "malformed":
            body = body[: len(body) // 2]
        reply.pieces = [Piece(body, token=True)] + [Piece(b"", token=True)] * (tokens - 1)
    return reply
