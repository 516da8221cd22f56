"""Usage records: one per call attempt, with its cost, and where they go (sinks)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ._ids import new_id
from .pricing import cost_of
from .schema import Usage

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = [
    "MemorySink",
    "RecordSink",
    "UsageRecord",
    "cost_of",
]

Status = Literal["ok", "error", "blocked", "cache_hit"]


def routed_extra(catalog: Catalog, routed_model: str, usage: Usage) -> dict[str, str]:
    """A record's ``extra`` for a call observe mode kept where the code sent it: the
    model routing picked and, when the catalog prices it, what this call's usage would
    have cost there (list prices; that model's tokenizer would count a little
    differently)."""
    found = {"routed_model": routed_model}
    model = catalog.find(routed_model)
    if model is not None:
        found["routed_cost"] = str(cost_of(usage, model))
    return found


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class UsageRecord:
    """What one LLM call (one attempt of it) used, cost and why it went where it went.

    ``cost`` is what the chosen model billed for this attempt; ``requested_cost`` what
    the model the caller asked for would have billed for the same usage, so
    ``requested_cost - cost`` is the saving routing made. ``attempt`` numbers the
    attempt (1-based) and ``attempts`` is set on the final record of a call.
    ``reasons`` are ``(code, sentence)`` pairs from the routing decision. Prompt and
    completion text are kept only when the host enables content storage.

    Savings, so that summing ``saved_cost`` over records never invents money: a cache
    hit has ``requested_cost=None`` (its saving is ``cache_saved_cost``); when the
    provider reported the billed cost, ``requested_cost`` is that cost plus the
    list-price difference between the requested and the chosen model (the cost
    itself when they are the same model); on a stitched stream the final record
    carries the whole call's saving (the requested model priced on the original
    input and the delivered output, less what the earlier parts cost). A model
    missing from the catalog is recorded at ``cost=0`` with ``extra["unpriced"]``
    true and no ``requested_cost``; budgets charged it at the list price of
    ``extra["budget_price_model"]``.
    """

    requested_model: str
    chosen_model: str
    provider: str
    usage: Usage
    cost: Decimal
    requested_cost: Decimal | None = None
    id: str = field(default_factory=new_id)
    call_id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=_now)
    request_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    feature: str | None = None
    route: str | None = None
    tags: tuple[str, ...] = ()
    tier: int | None = None
    mode: Literal["enforce", "observe"] = "enforce"
    endpoint: str = "chat"
    deployment: str | None = None
    status: Status = "ok"
    error_kind: str | None = None
    attempt: int = 1
    attempts: int = 1
    fallback_from: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    streamed: bool = False
    stitched: bool = False
    cache_saved_cost: Decimal | None = None
    reasons: tuple[tuple[str, str], ...] = ()
    prompt: str | None = None
    completion: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def saved_cost(self) -> Decimal:
        """Requested-model cost minus actual cost (zero when unknown)."""
        if self.requested_cost is None:
            return Decimal(0)
        return self.requested_cost - self.cost


class RecordSink(Protocol):
    """Where usage records go. ``emit`` must never block the caller nor raise."""

    def emit(self, record: UsageRecord) -> None: ...


class MemorySink:
    """Keeps records in memory; for tests, the demo and small scripts.

    With ``maxlen`` only the most recent records are kept (the engine's default
    sink), so a long-running process does not grow without bound.
    """

    def __init__(self, maxlen: int | None = None) -> None:
        self._lock = threading.Lock()
        self._records: deque[UsageRecord] = deque(maxlen=maxlen)

    @property
    def records(self) -> list[UsageRecord]:
        with self._lock:
            return list(self._records)

    def emit(self, record: UsageRecord) -> None:
        with self._lock:
            self._records.append(record)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
