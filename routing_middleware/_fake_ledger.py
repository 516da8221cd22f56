"""The fake upstream's ledger: every call it served and what it billed."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .schema import Usage

__all__ = ["FakeCall", "Ledger"]


@dataclass(frozen=True, slots=True)
class FakeCall:
    """One request the fake served.

    ``usage`` is what the provider billed, normalized (input includes cache reads
    and writes, output includes reasoning); it is ``None`` when the call was
    rejected before generation (HTTP errors, resets, unknown models). It covers only
    what the provider's wire format can express (e.g. Gemini reports no cache
    writes, so they bill as plain input). ``reported`` is false whenever a failure
    touched the body, so the caller may not have seen that usage. ``cost`` is the
    billed cost when the model has a price. ``received_at`` is the
    ``time.monotonic()`` of arrival (to measure retry waits). ``headers`` (lower-case names) and
    ``api_key`` are what arrived; neither appears in ``repr``.
    """

    seq: int
    method: str
    path: str
    dialect: str
    endpoint: str
    flavor: str
    model: str | None
    stream: bool
    status: int
    failure: str | None
    usage: Usage | None
    reported: bool
    cost: Decimal | None
    received_at: float = field(default=0.0, repr=False)
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: Any = field(default=None, repr=False)


class Ledger:
    """A thread-safe, append-only list of :class:`FakeCall` with billing sums."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[FakeCall] = []

    def add(self, call: FakeCall) -> None:
        with self._lock:
            self._calls.append(call)

    def next_seq(self) -> int:
        with self._lock:
            return len(self._calls) + 1

    @property
    def calls(self) -> list[FakeCall]:
        """A snapshot of the calls so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def _select(self, model: str | None) -> list[FakeCall]:
        return [c for c in self.calls if model is None or c.model == model]

    def billed_usage(self, model: str | None = None) -> Usage:
        """The sum of billed usage, over all calls or one model's."""
        total = Usage()
        for call in self._select(model):
            if call.usage is not None:
                total = total + call.usage
        return total

    def billed_cost(self, model: str | None = None) -> Decimal:
        """The sum of billed cost (calls without a price count zero)."""
        return sum((c.cost for c in self._select(model) if c.cost is not None), Decimal(0))

    def api_keys(self) -> set[str]:
        """Every API key that reached this provider."""
        return {c.api_key for c in self.calls if c.api_key}

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    def __iter__(self) -> Iterator[FakeCall]:
        return iter(self.calls)
