"""The drivers: perform the logic's effects with blocking or async I/O.

Both drivers share the effect table and the pure helpers; only the awaiting differs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from . import _deferred
from ._dispatch_state import (
    _Acquire,
    _CacheGet,
    _CachePut,
    _Close,
    _Deliver,
    _End,
    _Ended,
    _Read,
    _Reply,
    _Report,
    _Reserve,
    _Send,
    _Settle,
    _Sleep,
    _StatsStart,
)
from ._outage import MissingClient, may_have_applied
from .cache import CacheEntry
from .schema import ChatResponse, LLMError, UpstreamTimeout, UpstreamUnavailable

if TYPE_CHECKING:
    from .budgets import Budgets, Reservation
    from .context import RouteContext
    from .dispatch import Dispatcher
    from .providers.openai_forward import OpenAIForwarder


_ERROR_TYPES: dict[type, str | None] = {}
#: httpcore's (and httpcore2's) failures of the connection itself.
_CORE_TRANSPORT = frozenset({"NetworkError", "ProtocolError", "ProxyError", "UnsupportedProtocol"})


def _transport_kind(exc: BaseException) -> str | None:
    """``timeout``/``transport`` for httpx, httpx2 and aiohttp transport errors, else ``None``."""
    kind = _ERROR_TYPES.get(type(exc), "?")
    if kind == "?":
        kind = None
        mro = type(exc).__mro__
        if TimeoutError in mro:  # asyncio's and aiohttp's timeouts
            kind = "timeout"
        for cls in mro if kind is None else ():
            if cls.__module__.startswith("aiohttp") and cls.__name__ == "ClientError":
                kind = "transport"
                break
            if cls.__module__.startswith("httpcore") and cls.__name__ in _CORE_TRANSPORT:
                kind = "transport"
                break
            if not cls.__module__.startswith(("httpx", "httpcore")):
                continue
            if cls.__name__ == "TimeoutException":
                kind = "timeout"
                break
            if cls.__name__ == "TransportError":
                kind = "transport"
                break
        _ERROR_TYPES[type(exc)] = kind
    return kind


def _upstream_error(exc: Exception, provider: str) -> Exception:
    """An httpx(2) transport error as an LLMError; other exceptions unchanged.

    Only the exception's class name is kept: messages can carry URLs with keys.
    """
    kind = _transport_kind(exc)
    if kind == "timeout":
        return UpstreamTimeout(
            f"{provider} did not answer in time ({type(exc).__name__})", provider=provider
        )
    if kind == "transport":
        return UpstreamUnavailable(
            f"connection to {provider} failed ({type(exc).__name__})", provider=provider
        )
    return exc


def _result(outcome: _Deliver | _End) -> ChatResponse | None:
    """The answer of a non-streamed call run to its end."""
    if isinstance(outcome, _End):
        return outcome.value
    raise RuntimeError("a non-streamed call produced stream chunks")


def _charge_only(budgets: Budgets, context: RouteContext) -> Reservation:
    """A hold of nothing: in ``observe`` mode budgets count spend but never block."""
    from .budgets import Reservation

    return Reservation(budgets.lines(context), 0)


def settle_now(budgets: Budgets, reservation: Reservation, amount: Any) -> None:
    """Settle ``reservation`` to ``amount`` (blocking); never raises.

    A store hiccup must not leave the worst-case hold counted, nor take the call
    down: a settle that failed before reaching the store is tried once more, then
    kept for when the store answers again, as is one the store is known to be down
    for (see :meth:`~.budgets.Budgets.settle_later`). One that timed out is kept at
    once: the store may have applied it, and sending it again then changes nothing
    (settles are idempotent by hold id), while trying again now would wait out
    another timeout on the call's path.
    """
    outage = budgets.outage
    if outage.until is not None and outage.down:
        budgets.settle_later(reservation, amount)
        return
    seen = outage.until
    for attempt in range(2):
        try:
            budgets.settle(reservation, amount)
        except MissingClient:
            # (a store given only an async client, settled from a dropped stream's
            # cleanup thread: the next async operation on these budgets sends it)
            budgets.settle_on_loop([(reservation, amount)])
            return
        except Exception as exc:
            if _settle_kept(budgets, reservation, amount, exc, attempt):
                return
            continue
        if seen is not None:
            outage.answered(seen)
        return


async def asettle_now(budgets: Budgets, reservation: Reservation, amount: Any) -> None:
    """Async twin of :func:`settle_now`; the settle lands even if the caller is
    cancelled meanwhile (see :func:`_settle_uncancelled`)."""
    outage = budgets.outage
    if outage.until is not None and outage.down:
        budgets.settle_later(reservation, amount)
        return
    seen = outage.until
    for attempt in range(2):
        try:
            await _settle_uncancelled(budgets, reservation, amount)
        except Exception as exc:
            if _settle_kept(budgets, reservation, amount, exc, attempt):
                return
            continue
        if seen is not None:
            outage.answered(seen)
        return


#: Settles whose caller was cancelled, running on to their end (held here: the event
#: loop keeps only weak references to its tasks).
_detached: set[asyncio.Task[None]] = set()


async def _settle_uncancelled(budgets: Budgets, reservation: Reservation, amount: Any) -> None:
    """``budgets.asettle``, run to its end when the caller is cancelled meanwhile (its
    client went away): the call ran and costs, and a settle dropped halfway would leave
    its worst case held for the hold TTL and what it cost never counted. The caller's
    cancellation goes on at once; a settle that then fails is kept for later."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): anyio's shield covers its cancellations
        import anyio

        with anyio.CancelScope(shield=True):
            await budgets.asettle(reservation, amount)
        return
    task = asyncio.ensure_future(budgets.asettle(reservation, amount))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            _detached.add(task)
            task.add_done_callback(lambda done: _detached_done(budgets, reservation, amount, done))
        raise


def _detached_done(
    budgets: Budgets, reservation: Reservation, amount: Any, task: asyncio.Task[None]
) -> None:
    """The end of a settle whose caller was cancelled: kept for later if it failed,
    and sent from the cleanup thread if its event loop cancelled it (shutting down)."""
    _detached.discard(task)
    if task.cancelled():
        _deferred.prepare()
        _deferred.defer(lambda: settle_now(budgets, reservation, amount))
        return
    error = task.exception()
    if isinstance(error, Exception):
        _settle_kept(budgets, reservation, amount, error, 1)


def _settle_kept(
    budgets: Budgets, reservation: Reservation, amount: Any, error: Exception, attempt: int
) -> bool:
    """Whether a settle that failed with ``error`` on ``attempt`` (0, 1) is kept for
    later rather than tried again now: see :func:`settle_now`."""
    if attempt or may_have_applied(error):
        budgets.outage.failed(error)
        budgets.settle_later(reservation, amount)
        return True
    return False


class _Pipe:
    """The rest of a forwarded stream, read by its consumer straight off the upstream
    and through the forwarder, with no effect per read (see ``DispatchStream.forwarded``);
    the logic resumes once it ended, and finds the failure that ended it, if any, in
    ``error``.

    ``head`` is what the forwarder let through so far, for the consumer to send first;
    once the logic metered the attempt it leaves the stream's last bytes in ``tail``,
    for the consumer to send when its next step comes back (one step fewer each).
    """

    __slots__ = ("error", "forward", "handle", "head", "provider", "tail")

    def __init__(self, handle: Any, forward: OpenAIForwarder, provider: str, head: bytes) -> None:
        self.handle = handle
        self.forward = forward
        self.provider = provider
        self.head = head
        self.tail = b""
        self.error: Exception | None = None


#: The driver method that performs each kind of effect (``_Deliver`` is the consumer's).
_PERFORMERS: dict[type, str] = {
    _Send: "_send",
    _Read: "_read",
    _Close: "_close",
    _Sleep: "_sleep",
    _Reserve: "_reserve",
    _Settle: "_settle",
    _Acquire: "_acquire",
    _Report: "_report",
    _CacheGet: "_cache_get",
    _CachePut: "_cache_put",
    _StatsStart: "_stats_start",
    _Ended: "_ended",
}


class _Driver:
    """What both drivers share: the dispatcher and the table of effect performers."""

    __slots__ = ("_d", "_table")

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher
        self._table: dict[type, Callable[[Any], Any]] = {
            kind: getattr(self, name) for kind, name in _PERFORMERS.items()
        }


class _SyncDriver(_Driver):
    """Performs effects with blocking I/O."""

    __slots__ = ()

    def step(
        self, machine: Generator[Any, Any, Any], throw: BaseException | None = None
    ) -> _Deliver | _End:
        """Advance ``machine`` to its next delivery or its end."""
        value: Any = None
        error = throw
        table = self._table
        while True:
            try:
                effect = machine.throw(error) if error is not None else machine.send(value)
            except StopIteration as stop:
                return _End(stop.value)
            if type(effect) is _Deliver:
                return effect
            error = None
            try:
                value = table[type(effect)](effect)
            except Exception as exc:
                value = None
                error = exc

    def run(self, machine: Generator[Any, Any, ChatResponse | None]) -> ChatResponse | None:
        return _result(self.step(machine))

    def _send(self, effect: _Send) -> _Reply:
        try:
            return self._d.sync_sender().exchange(
                effect.request, effect.timeout, effect.stream, effect.provider
            )
        except Exception as exc:
            raise _upstream_error(exc, effect.provider) from None

    def _read(self, effect: _Read) -> bytes:
        try:
            for data in effect.handle[1]:
                if data:
                    return bytes(data)
        except Exception as exc:
            raise _upstream_error(exc, effect.provider) from None
        return b""

    def _close(self, effect: _Close) -> None:
        try:
            effect.handle[0].close()
        except Exception:
            return

    def _sleep(self, effect: _Sleep) -> None:
        self._d.clock.sleep(effect.seconds)

    def _cache_get(self, effect: _CacheGet) -> CacheEntry | None:
        cache = self._d.cache
        return cache.get(effect.key) if cache else None

    def _reserve(self, effect: _Reserve) -> Reservation | None:
        budgets = self._d.budgets
        if budgets is None:
            return None

        def hold() -> Reservation:
            if not effect.enforce:
                return _charge_only(budgets, effect.context)
            return budgets.reserve(effect.amount, effect.context)

        # (a budget store outage must not take calls down; a spent budget must)
        return budgets.outage.run(hold, None, passing=LLMError)

    def _settle(self, effect: _Settle) -> None:
        if self._d.budgets is not None:
            settle_now(self._d.budgets, effect.reservation, effect.amount)

    def _acquire(self, effect: _Acquire) -> float | None:
        breaker = self._d.breaker
        try:
            return 0.0 if breaker is None else breaker.admit(effect.deployment)
        except Exception:
            return 0.0

    def _report(self, effect: _Report) -> None:
        if self._d.breaker is not None:
            try:
                self._d.breaker.record(effect.deployment, effect.ok, effect.ticket)
            except Exception:
                return

    def _cache_put(self, effect: _CachePut) -> None:
        if self._d.cache is not None:
            self._d.cache.set(effect.key, effect.entry)

    def _stats_start(self, effect: _StatsStart) -> None:
        stats = self._d.stats
        if stats is not None:
            try:
                stats.started(effect.key)
            except Exception:
                return

    def _ended(self, effect: _Ended) -> None:
        breaker, stats = self._d.breaker, self._d.stats
        if effect.deployment is not None and breaker is not None:
            try:
                breaker.record(effect.deployment, effect.ok, effect.ticket)
            except Exception:
                pass
        if effect.key is not None and stats is not None:
            try:
                stats.finished(effect.key)
                if effect.sample is not None:
                    stats.record(effect.key, **effect.sample)
            except Exception:
                return


class _AsyncDriver(_Driver):
    """Performs effects with async I/O; cleanup after a cancellation is shielded."""

    __slots__ = ()

    async def step(
        self, machine: Generator[Any, Any, Any], throw: BaseException | None = None
    ) -> _Deliver | _End:
        value: Any = None
        error = throw
        table = self._table
        shielded = throw is not None
        while True:
            try:
                effect = machine.throw(error) if error is not None else machine.send(value)
            except StopIteration as stop:
                return _End(stop.value)
            if type(effect) is _Deliver:
                return effect
            error = None
            try:
                if shielded:
                    import anyio

                    with anyio.CancelScope(shield=True):
                        value = await table[type(effect)](effect)
                else:
                    value = await table[type(effect)](effect)
            except Exception as exc:
                value = None
                error = exc
            except BaseException as exc:  # cancelled: let the logic clean up, shielded
                value = None
                error = exc
                shielded = True

    async def run(self, machine: Generator[Any, Any, ChatResponse | None]) -> ChatResponse | None:
        return _result(await self.step(machine))

    async def _send(self, effect: _Send) -> _Reply:
        sender = self._d.async_sender()
        try:
            return await sender.aexchange(
                effect.request, effect.timeout, effect.stream, effect.provider
            )
        except Exception as exc:
            raise _upstream_error(exc, effect.provider) from None

    async def _read(self, effect: _Read) -> bytes:
        try:
            async for data in effect.handle[1]:
                if data:
                    return bytes(data)
        except Exception as exc:
            raise _upstream_error(exc, effect.provider) from None
        return b""

    async def _close(self, effect: _Close) -> None:
        try:
            await effect.handle[0].aclose()
        except Exception:
            return

    async def _sleep(self, effect: _Sleep) -> None:
        await self._d.clock.asleep(effect.seconds)

    async def _reserve(self, effect: _Reserve) -> Reservation | None:
        budgets = self._d.budgets
        if budgets is None:
            return None

        async def hold() -> Reservation:
            if not effect.enforce:
                return _charge_only(budgets, effect.context)
            return await budgets.areserve(effect.amount, effect.context)

        return await budgets.outage.arun(hold, None, passing=LLMError)

    async def _settle(self, effect: _Settle) -> None:
        if self._d.budgets is not None:
            await asettle_now(self._d.budgets, effect.reservation, effect.amount)

    async def _acquire(self, effect: _Acquire) -> float | None:
        breaker = self._d.breaker
        try:
            return 0.0 if breaker is None else await breaker.aadmit(effect.deployment)
        except Exception:
            return 0.0

    async def _report(self, effect: _Report) -> None:
        if self._d.breaker is not None:
            try:
                await self._d.breaker.arecord(effect.deployment, effect.ok, effect.ticket)
            except Exception:
                return

    async def _cache_get(self, effect: _CacheGet) -> CacheEntry | None:
        return await self._d.cache.aget(effect.key) if self._d.cache is not None else None

    async def _cache_put(self, effect: _CachePut) -> None:
        if self._d.cache is not None:
            await self._d.cache.aset(effect.key, effect.entry)

    async def _stats_start(self, effect: _StatsStart) -> None:
        if self._d.stats is not None:
            with contextlib.suppress(Exception):
                await self._d.stats.astarted(effect.key)

    async def _ended(self, effect: _Ended) -> None:
        breaker, stats = self._d.breaker, self._d.stats
        if effect.deployment is not None and breaker is not None:
            try:
                await breaker.arecord(effect.deployment, effect.ok, effect.ticket)
            except Exception:
                pass
        if effect.key is not None and stats is not None:
            with contextlib.suppress(Exception):
                await stats.afinished(effect.key)
                if effect.sample is not None:
                    await stats.arecord(effect.key, **effect.sample)
