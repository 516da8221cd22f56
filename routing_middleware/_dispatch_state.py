"""What the dispatcher's logic and its drivers share: the effects and the per-call state.

The logic (:mod:`._dispatch_machine`) yields *effects*; a driver
(:mod:`._dispatch_drivers`) performs them and sends back their results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from .cache import CacheEntry
from .catalog import ModelInfo
from .context import RouteContext
from .metering import UsageRecord
from .schema import ChatRequest, ChatResponse, StreamChunk, Usage

if TYPE_CHECKING:
    from ._dispatch_drivers import _Pipe
    from .budgets import Reservation
    from .providers.base import EncodedRequest, StreamDecoder
    from .providers.openai_forward import OpenAIForwarder
    from .router import Decision, Deployment

StreamFailover = Literal["error", "continue"]

#: Set by the relay around starting a stream for an OpenAI chat-completions caller:
#: whether that caller asked for the usage event. Streams started meanwhile may
#: forward an OpenAI-compatible upstream's events as bytes (see ``_forward_attempt``).
forward_bytes: ContextVar[bool | None] = ContextVar("llmroute_forward_bytes", default=None)


class JsonOffer:
    """Set (as :data:`forward_json`) by the relay around a non-streamed call for an
    OpenAI chat-completions caller: the first such call started meanwhile takes it,
    and when an OpenAI-compatible upstream's answer can reach the caller as it came,
    leaves that body in ``body`` (see ``_Machine._plain_attempt``)."""

    __slots__ = ("body", "taken")

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.taken = False


forward_json: ContextVar[JsonOffer | None] = ContextVar("llmroute_forward_json", default=None)


# ----------------------------------------------------------------------------- effects


@dataclass(slots=True)
class _Send:
    request: EncodedRequest
    timeout: float | None
    stream: bool
    provider: str


@dataclass(slots=True)
class _Read:
    handle: Any
    provider: str


@dataclass(slots=True)
class _Close:
    handle: Any


@dataclass(slots=True)
class _Sleep:
    seconds: float


class _Flow:
    """The rest of a decoded stream, for its consumer to read straight off the
    upstream (see ``DispatchStream.__next__``): each read through ``decoder``, each
    chunk through ``take``, which does the logic's bookkeeping and returns what the
    consumer gets (``None``: nothing). No effect per read; the logic resumes once
    the upstream ended, and finds the failure that ended it, if any, in ``error``."""

    __slots__ = ("decoder", "error", "handle", "provider", "take")

    def __init__(
        self,
        handle: Any,
        decoder: StreamDecoder,
        provider: str,
        take: Callable[[StreamChunk], StreamChunk | None],
    ) -> None:
        self.handle = handle
        self.decoder = decoder
        self.provider = provider
        self.take = take
        self.error: Exception | None = None


@dataclass(slots=True)
class _Deliver:
    #: bytes: the caller's own wire format, forwarded; an iterable of them: the rest
    #: of the stream, for the consumer to read (see ``_dispatch_drivers._Pipe``); a
    #: ``_Flow``: the rest of a decoded stream, likewise
    chunk: StreamChunk | bytes | _Pipe | _Flow


@dataclass(slots=True)
class _Reserve:
    amount: Decimal
    context: RouteContext
    enforce: bool = True


@dataclass(slots=True)
class _Settle:
    reservation: Reservation
    amount: Decimal


@dataclass(slots=True)
class _Acquire:
    deployment: Deployment


@dataclass(slots=True)
class _Report:
    deployment: Deployment
    ok: bool | None
    ticket: float  # what the breaker's ``admit`` gave the call


@dataclass(slots=True)
class _StatsStart:
    key: str


@dataclass(slots=True)
class _Ended:
    """An attempt ended: its outcome for the breaker (``deployment``, ``ok``) and for
    the stats (``key``, ``sample``), in one effect; a ``None`` part is skipped."""

    deployment: Deployment | None
    ok: bool | None
    key: str | None
    sample: dict[str, Any] | None
    ticket: float = 0.0  # what the breaker's ``admit`` gave the attempt


@dataclass(slots=True)
class _CacheGet:
    key: str


@dataclass(slots=True)
class _CachePut:
    key: str
    entry: CacheEntry


@dataclass(slots=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes | None = None
    handle: Any = None


@dataclass(slots=True)
class _End:
    value: ChatResponse | None


class _Closed(BaseException):
    """Thrown into the logic when the consumer closes a stream before its end."""


# ----------------------------------------------------------------------------- state


@dataclass(slots=True, eq=False)
class _Attempt:
    number: int
    deployment: Deployment
    info: ModelInfo | None
    started: float
    fallback_from: str | None
    reservation: Reservation | None = None
    #: the model whose list price the budgets charge when ``info`` is unknown
    budget_info: ModelInfo | None = None
    handle: Any = None
    decoder: StreamDecoder | None = None
    forward: OpenAIForwarder | None = None  # forwarding the upstream's bytes
    sent: bool = False  # the request was encoded and went upstream
    answered: bool = False  # got a 2xx: the provider likely billed something
    ttft: float | None = None
    text: list[str] = field(default_factory=list)
    #: the breaker's ticket for this attempt (its outcome frees or resolves a
    #: half-open probe only if it is that probe's; see ``CircuitBreaker.admit``)
    ticket: float = 0.0


@dataclass(slots=True, eq=False)
class _Call:
    request: ChatRequest
    decision: Decision
    context: RouteContext
    stream: bool
    cache_key: str | None
    call_id: str
    started: float
    deadline_at: float | None
    #: The caller's own bound on each attempt (``RouteContext.timeout_s``), if any.
    attempt_timeout: float | None = None
    reasons: tuple[tuple[str, str], ...] = ()
    input_tokens: int | None = None
    records: list[UsageRecord] = field(default_factory=list)
    live: _Attempt | None = None
    #: the caller takes OpenAI stream bytes (the value: whether it wants the usage
    #: event) and nothing here needs decoded chunks; ``None``: chunks only
    forward: bool | None = None
    forwarding: bool = False  # what was delivered is bytes
    #: a non-streamed call whose caller takes an OpenAI body as it came
    offer: JsonOffer | None = None
    delivered: bool = False
    tool_delta: bool = False
    stitched: bool = False
    trim: bool = False  # drop the continuation's leading whitespace (the prefix had it)
    text: list[str] = field(default_factory=list)
    answer: str | None = None  # a non-streamed answer's text (for content storage)
    carried: Usage | None = None
    origin: Usage | None = None  # the first stitched part's usage (the original input)
    carried_cost: Decimal = Decimal(0)  # what the earlier stitched parts cost
    served: Deployment | None = None
    usage: Usage | None = None
    finished: bool = False
