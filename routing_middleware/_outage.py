"""When a shared store (budgets, breakers, stats, cache) last failed, so callers stop
asking it.

Routing and calls must go on when Redis, or whatever backs a store, is down or stops
answering: each read would otherwise fail the call, or cost a timeout per call. A
failure marks the store down; meanwhile callers skip it and go on without what it
holds. A store that can be probed (Redis: a ``PING``) is probed every
:data:`STORE_RETRY_S` on the cleanup thread, never on a request, and is up again
once a probe answers; any other store is tried again by the first caller after
:data:`STORE_RETRY_S`. One warning per outage names the store and the error's type
only (an error's message can carry a connection string).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from . import _deferred

__all__ = ["STORE_RETRY_S", "StoreOutage", "StoreUnavailable", "outage_of"]

logger = logging.getLogger("llmroute")

#: How long a failed store is left alone before it is probed or tried again, in seconds.
STORE_RETRY_S = 5.0


class StoreUnavailable(RuntimeError):
    """A store known to be down was not asked (see :meth:`StoreOutage.check`)."""


class StoreOutage:
    """The outage state of one store (or of every store on one Redis). ``what``
    names it in warnings, ``meanwhile`` says what callers do without it, ``probe``
    checks it answers (raising if not). ``until`` is ``None`` while it answers, else
    when to probe or try it again (``time.monotonic``); read it first on hot paths."""

    __slots__ = ("_meanwhile", "_probe", "_probing", "_what", "until")

    def __init__(
        self, what: str, meanwhile: str, probe: Callable[[], object] | None = None
    ) -> None:
        self._what = what
        self._meanwhile = meanwhile
        self._probe = probe
        self._probing = False
        self.until: float | None = None

    @property
    def down(self) -> bool:
        """Whether callers should leave the store alone now."""
        until = self.until
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        if self._probe is None:
            return False  # (the caller tries it)
        if not self._probing:
            self._probing = True
            _deferred.prepare()
            _deferred.defer(self._run_probe)
        return True

    def check(self) -> None:
        """Raise :class:`StoreUnavailable` while callers should leave the store alone."""
        if self.until is not None and self.down:
            raise StoreUnavailable(f"{self._what} is down; it is left alone for now")

    def _run_probe(self) -> None:
        assert self._probe is not None
        try:
            self._probe()
        except Exception:
            self.until = time.monotonic() + STORE_RETRY_S
        else:
            self.answered()
        finally:
            self._probing = False

    def failed(self, error: BaseException) -> None:
        """Note that the store failed with ``error`` (warns once per outage)."""
        if self.until is None:
            logger.warning(
                "%s failed (%s): %s, retrying it every %g s",
                self._what,
                type(error).__name__,
                self._meanwhile,
                STORE_RETRY_S,
            )
        self.until = time.monotonic() + STORE_RETRY_S

    def answered(self) -> None:
        """Note that the store answered after an outage."""
        if self.until is not None:
            self.until = None
            logger.warning("%s answers again", self._what)


def outage_of(store: object, what: str, meanwhile: str) -> StoreOutage:
    """``store``'s own outage state when it has one (a Redis store's, shared with the
    other stores on that Redis), else a new one named ``what`` and its type."""
    found = getattr(store, "outage", None)
    if isinstance(found, StoreOutage):
        return found
    return StoreOutage(f"{what} {type(store).__name__}", meanwhile)
