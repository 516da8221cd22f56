"""When a shared store (budgets, breakers) last failed, so callers stop asking it.

Routing and calls must go on when Redis, or whatever backs a store, is down or stops
answering: each read would otherwise fail the call, or cost a timeout per call. A
failure marks the store down for :data:`STORE_RETRY_S`; meanwhile callers skip it
and go on without what it holds. One warning per outage names the store and the
error's type only (an error's message can carry a connection string).
"""

from __future__ import annotations

import logging
import time

__all__ = ["STORE_RETRY_S", "StoreOutage"]

logger = logging.getLogger("llmroute")

#: How long a failed store is left alone before it is tried again, in seconds.
STORE_RETRY_S = 5.0


class StoreOutage:
    """The outage state of one store. ``until`` is ``None`` while it answers, else
    when to try it again (``time.monotonic``); read it first on hot paths."""

    __slots__ = ("_meanwhile", "_what", "until")

    def __init__(self, what: str, meanwhile: str) -> None:
        self._what = what
        self._meanwhile = meanwhile
        self.until: float | None = None

    @property
    def down(self) -> bool:
        """Whether the store failed less than :data:`STORE_RETRY_S` ago."""
        until = self.until
        return until is not None and time.monotonic() < until

    def failed(self, store: object, error: BaseException) -> None:
        """Note that ``store`` failed with ``error`` (warns once per outage)."""
        if self.until is None:
            logger.warning(
                "%s %s failed (%s): %s, retrying it every %g s",
                self._what,
                type(store).__name__,
                type(error).__name__,
                self._meanwhile,
                STORE_RETRY_S,
            )
        self.until = time.monotonic() + STORE_RETRY_S

    def answered(self, store: object) -> None:
        """Note that ``store`` answered after an outage."""
        if self.until is not None:
            self.until = None
            logger.warning("%s %s answers again", self._what, type(store).__name__)
