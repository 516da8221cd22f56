"""Configuration objects of the fake upstream: models, tool calls and failures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .catalog import Price

__all__ = ["Failure", "FailureKind", "FakeModel", "FakeToolCall", "FinishMode"]

FinishMode = Literal["stop", "length", "content_filter", "refusal"]
FailureKind = Literal[
    "http", "timeout", "reset", "cut", "stall", "malformed", "no_usage", "stream_error"
]


@dataclass(frozen=True, slots=True)
class FakeToolCall:
    """A function call the fake model makes; ``arguments`` is a dict or a JSON text."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)

    @property
    def arguments_json(self) -> str:
        """The arguments as compact JSON text."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Failure:
    """One injected failure.

    ``kind="http"`` (the default when ``status`` is given) answers with the
    provider's error body for ``status``; ``code`` picks a variant
    (``"insufficient_quota"``), ``retry_after`` (seconds) / ``retry_after_ms`` set
    the headers (Gemini: ``RetryInfo`` in the body instead) and ``should_retry``
    sets ``x-should-retry``. The other kinds:

    - ``timeout``: hang ``hang`` seconds before answering (an in-process client
      with a shorter read timeout gets its library's ``ReadTimeout``);
    - ``reset``: the connection drops before any response;
    - ``cut``: the stream stops after ``after`` events, without its terminal event
      (``terminal=True`` still sends the end marker, ``[DONE]`` or ``message_stop``,
      so the stream looks complete but lacks finish and usage; Responses and Gemini
      streams have no separate marker); ``abort=True`` drops the connection instead
      of ending the body cleanly;
    - ``stall``: the stream pauses ``hang`` seconds after ``after`` events, then
      goes on (a client with a shorter read timeout gets ``ReadTimeout``);
    - ``malformed``: the body (or one stream event) is not valid JSON;
    - ``no_usage``: the answer omits its usage;
    - ``stream_error``: after ``after`` events the stream carries the provider's
      in-band error (Anthropic ``overloaded_error``, an OpenRouter error chunk).
    """

    status: int | None = None
    kind: FailureKind = "http"
    retry_after: float | None = None
    retry_after_ms: int | None = None
    should_retry: bool | None = None
    code: str | None = None
    message: str | None = None
    after: int = 0
    terminal: bool = False
    abort: bool = False
    hang: float = 600.0

    def __post_init__(self) -> None:
        if self.kind == "http" and self.status is None:
            raise ValueError("an HTTP failure needs a status")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("status must be a 4xx or 5xx code")
        if self.after < 0 or self.hang < 0:
            raise ValueError("after and hang must not be negative")

    @classmethod
    def rate_limit(cls, retry_after: float | None = None, **kw: Any) -> Failure:
        """429 rate limit (Gemini: RESOURCE_EXHAUSTED with RetryInfo)."""
        return cls(status=429, retry_after=retry_after, **kw)

    @classmethod
    def insufficient_quota(cls, **kw: Any) -> Failure:
        """Out of credit: OpenAI 429 insufficient_quota, DeepSeek/OpenRouter/Anthropic 402."""
        return cls(status=429, code="insufficient_quota", **kw)

    @classmethod
    def overloaded(cls, **kw: Any) -> Failure:
        """Anthropic's 529 overloaded_error (other dialects answer 529 in their shape)."""
        return cls(status=529, **kw)

    @classmethod
    def unavailable(cls, **kw: Any) -> Failure:
        """503: the model is overloaded or unavailable."""
        return cls(status=503, **kw)

    @classmethod
    def timeout(cls, hang: float = 600.0) -> Failure:
        """Answer only after ``hang`` seconds."""
        return cls(kind="timeout", hang=hang)

    @classmethod
    def reset(cls) -> Failure:
        """Drop the connection before answering."""
        return cls(kind="reset")

    @classmethod
    def cut(cls, after: int, *, terminal: bool = False, abort: bool = False) -> Failure:
        """Stop the stream after ``after`` events (see the class docs)."""
        return cls(kind="cut", after=after, terminal=terminal, abort=abort)

    @classmethod
    def stall(cls, after: int, hang: float = 600.0) -> Failure:
        """Pause the stream for ``hang`` seconds after ``after`` events."""
        return cls(kind="stall", after=after, hang=hang)

    @classmethod
    def malformed(cls) -> Failure:
        """Send a body (or, streamed, one event) that is not valid JSON."""
        return cls(kind="malformed")

    @classmethod
    def no_usage(cls) -> Failure:
        """Answer normally but leave the usage out."""
        return cls(kind="no_usage")

    @classmethod
    def stream_error(cls, after: int = 1, message: str | None = None) -> Failure:
        """Send the provider's in-band error event after ``after`` events."""
        return cls(kind="stream_error", after=after, message=message)


@dataclass(frozen=True, slots=True)
class FakeModel:
    """One model the fake upstream serves, and how it behaves.

    Output: ``content`` (canned), else the last user message when ``echo``, else
    ``output_tokens`` filler words, else a fixed sentence. ``output_tokens``, when
    set, is also the reported count of visible output tokens; otherwise it is
    estimated from the text. ``input_tokens`` fixes the prompt count (otherwise it
    is estimated with :mod:`routing_middleware.tokens`). ``cached_tokens``,
    ``cache_write_tokens`` (of which ``cache_write_long_tokens`` use the long TTL)
    and ``reasoning_tokens`` are reported in each dialect's convention.
    ``reasoning`` is visible reasoning text (DeepSeek ``reasoning_content``,
    Anthropic thinking, Gemini thoughts) where the dialect has a place for it.

    ``tool_calls`` are made when the request declares tools (several = parallel).
    ``finish`` forces a finish reason; a request's max-tokens limit below the
    output gives ``length`` by itself.

    ``ttft`` is the delay before the first token, ``token_delay`` the delay
    between streamed pieces (both seconds). ``failures`` are consumed one per call,
    in order; ``always_fail`` applies to every call after them.
    ``price`` (a catalog :class:`~routing_middleware.catalog.Price`) lets the
    ledger compute what the provider billed.
    """

    name: str
    content: str | None = None
    echo: bool = False
    output_tokens: int | None = None
    input_tokens: int | None = None
    reasoning_tokens: int = 0
    reasoning: str | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_long_tokens: int = 0
    tool_calls: tuple[FakeToolCall, ...] = ()
    finish: FinishMode = "stop"
    refusal_text: str = "I'm sorry, I can't help with that."
    ttft: float = 0.0
    token_delay: float = 0.0
    price: Price | None = None
    embedding_dimensions: int = 8
    failures: tuple[Failure, ...] = ()
    always_fail: Failure | None = None
    owned_by: str = "fake"

    def __post_init__(self) -> None:
        counts = (
            self.output_tokens,
            self.input_tokens,
            self.reasoning_tokens,
            self.cached_tokens,
            self.cache_write_tokens,
            self.cache_write_long_tokens,
        )
        if any(c is not None and c < 0 for c in counts):
            raise ValueError("token counts must not be negative")
        if self.cache_write_long_tokens > self.cache_write_tokens:
            raise ValueError("cache_write_long_tokens is a subset of cache_write_tokens")
        if self.ttft < 0 or self.token_delay < 0:
            raise ValueError("latencies must not be negative")
        if not self.name:
            raise ValueError("a model needs a name")

    @classmethod
    def realistic(
        cls,
        name: str,
        *,
        ttft: float = 0.45,
        tokens_per_second: float = 60.0,
        output_tokens: int | None = 120,
        **kw: Any,
    ) -> FakeModel:
        """A model with a demo-like pace: first token after ``ttft``, then a steady rate."""
        return cls(
            name,
            ttft=ttft,
            token_delay=1.0 / tokens_per_second,
            output_tokens=output_tokens,
            **kw,
        )
