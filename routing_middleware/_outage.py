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
from collections.abc import Awaitable, Callable
from typing import TypeVar

from . import _deferred

__all__ = [
    "STORE_RETRY_S",
    "MissingClient",
    "StoreOutage",
    "StoreUnavailable",
    "may_have_applied",
    "outage_of",
]

logger = logging.getLogger("llmroute")

T = TypeVar("T")
_Passing = type[BaseException] | tuple[type[BaseException], ...]

#: How long a failed store is left alone before it is probed or tried again, in seconds.
STORE_RETRY_S = 5.0


class StoreUnavailable(RuntimeError):
    """A store known to be down was not asked (see :meth:`StoreOutage.check`)."""


class MissingClient(RuntimeError):
    """A store was used through a client it was not given (a sync call on a store
    given only an async client): a setup error, not an outage."""


class StoreOutage:
    """The outage state of one store (or of every store on one Redis). ``what``
    names it in warnings, ``meanwhile`` says what callers do without it, ``probe``
    checks it answers (raising if not). ``until`` is ``None`` while it answers, else
    when to probe or try it again (``time.monotonic``). Callers go through
    :meth:`run` / :meth:`arun`, or follow the same steps where they must."""

    __slots__ = ("_listeners", "_meanwhile", "_probe", "_probing", "_what", "until")

    def __init__(
        self, what: str, meanwhile: str, probe: Callable[[], object] | None = None
    ) -> None:
        self._what = what
        self._meanwhile = meanwhile
        self._probe = probe
        self._probing = False
        self._listeners: list[Callable[[], object]] = []
        self.until: float | None = None

    @property
    def down(self) -> bool:
        """Whether callers should leave the store alone now. Once the retry time has
        come, a store with a probe is probed on the cleanup thread (and left alone
        until it answers); any other is tried by the one caller that finds it due,
        the others leaving it alone meanwhile."""
        until = self.until
        if until is None:
            return False
        now = time.monotonic()
        if now < until:
            return True
        if self._probe is None:
            self.until = now + STORE_RETRY_S  # (the others wait for this caller's try)
            return False
        if not self._probing:
            self._probing = True
            _deferred.prepare()
            _deferred.defer(self._run_probe)
        return True

    def run(self, op: Callable[[], T], fallback: T, *, passing: _Passing = ()) -> T:
        """``op()``, or ``fallback`` while the store is left alone or when ``op`` fails
        (then noted, see :meth:`failed`); a success ends an outage it began in. Errors
        of the types ``passing`` are answers, not failures: they reach the caller."""
        if self.until is not None and self.down:
            return fallback
        seen = self.until
        try:
            result = op()
        except passing:
            raise
        except Exception as exc:
            self.failed(exc)
            return fallback
        if seen is not None:
            self.answered(seen)
        return result

    async def arun(
        self, op: Callable[[], Awaitable[T]], fallback: T, *, passing: _Passing = ()
    ) -> T:
        """Async twin of :meth:`run`."""
        if self.until is not None and self.down:
            return fallback
        seen = self.until
        try:
            result = await op()
        except passing:
            raise
        except Exception as exc:
            self.failed(exc)
            return fallback
        if seen is not None:
            self.answered(seen)
        return result

    def check(self) -> None:
        """Raise :class:`StoreUnavailable` while callers should leave the store alone."""
        if self.until is not None and self.down:
            raise StoreUnavailable(f"{self._what} is down; it is left alone for now")

    def _run_probe(self) -> None:
        assert self._probe is not None
        seen = self.until
        try:
            self._probe()
        except Exception:
            self.until = time.monotonic() + STORE_RETRY_S
        else:
            if seen is not None:
                self.answered(seen)
        finally:
            self._probing = False

    def failed(self, error: BaseException) -> None:
        """Note that the store failed with ``error`` (warns once per outage)."""
        if isinstance(error, MissingClient):
            return
        if self.until is None:
            logger.warning(
                "%s failed (%s): %s, retrying it every %g s",
                self._what,
                type(error).__name__,
                self._meanwhile,
                STORE_RETRY_S,
            )
        self.until = time.monotonic() + STORE_RETRY_S

    def answered(self, seen: float) -> None:
        """Note that the store answered an operation begun when :attr:`until` was
        ``seen``: the outage is over unless a failure came since."""
        if self.until == seen:
            self.until = None
            logger.warning("%s answers again", self._what)
            for listener in self._listeners:
                _deferred.prepare()
                _deferred.defer(listener)

    def when_answering(self, listener: Callable[[], object]) -> None:
        """Run ``listener`` on the cleanup thread each time the store answers again."""
        self._listeners.append(listener)


def outage_of(store: object, what: str, meanwhile: str) -> StoreOutage:
    """``store``'s own outage state when it has one (a Redis store's, shared with the
    other stores on that Redis), else a new one named ``what`` and its type."""
    found = getattr(store, "outage", None)
    if isinstance(found, StoreOutage):
        return found
    return StoreOutage(f"{what} {type(store).__name__}", meanwhile)


def may_have_applied(error: BaseException) -> bool:
    """Whether a write that failed with ``error`` may still have been applied: a
    timeout leaves that unknown (the command may have run, its answer lost). Only an
    idempotent write (a budget settle, by its hold id) may be sent again after one;
    and then later, when the store answers, not at once against a slow store."""
    return isinstance(error, TimeoutError) or "Timeout" in type(error).__name__
