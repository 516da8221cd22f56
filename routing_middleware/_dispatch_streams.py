"""The streams :meth:`Dispatcher.stream` and :meth:`Dispatcher.astream` return."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from ._dispatch_drivers import _AsyncDriver, _SyncDriver
from ._dispatch_state import _Call, _Closed, _Deliver, _End
from .metering import UsageRecord
from .schema import StreamChunk, Usage

if TYPE_CHECKING:
    from .dispatch import Dispatcher
    from .router import Deployment


class _StreamInfo:
    """What both stream flavours expose about the call behind them, and the
    bookkeeping they share (the chunk held from priming, the end of the stream)."""

    _call: _Call
    _pending: StreamChunk | None
    _done: bool

    def _take(self) -> StreamChunk | None:
        """The chunk held since :meth:`_prime`, once."""
        pending = self._pending
        self._pending = None
        return pending

    def _chunk(self, outcome: _Deliver | _End) -> StreamChunk | None:
        """The chunk a driver step delivered, or ``None`` at the end of the stream."""
        if isinstance(outcome, _End):
            self._done = True
            return None
        return outcome.chunk

    @property
    def call_id(self) -> str:
        """The id every usage record of this call carries."""
        return self._call.call_id

    @property
    def deployment(self) -> Deployment | None:
        """The deployment that served (or is serving) the stream."""
        live = self._call.live
        return live.deployment if live is not None else self._call.served

    @property
    def usage(self) -> Usage | None:
        """Usage of the answer once the stream ended (every stitched attempt summed)."""
        return self._call.usage

    @property
    def records(self) -> tuple[UsageRecord, ...]:
        """The call's usage records so far (complete once the stream ended or closed)."""
        return tuple(self._call.records)


class DispatchStream(_StreamInfo):
    """A streamed answer as :class:`StreamChunk` objects (sync).

    Raises an :class:`LLMError` mid-iteration when the upstream failed after
    content was delivered. :meth:`close` ends the upstream call early and records
    what it used; call it (or use ``with``) when you stop iterating before the end.
    """

    def __init__(self, dispatcher: Dispatcher, call: _Call) -> None:
        self._call = call
        self._driver = _SyncDriver(dispatcher)
        self._machine = dispatcher._run(call)
        self._pending: StreamChunk | None = None
        self._done = False

    def _advance(self, throw: BaseException | None = None) -> StreamChunk | None:
        try:
            outcome = self._driver.step(self._machine, throw)
        except BaseException:
            self._done = True
            raise
        return self._chunk(outcome)

    def _prime(self) -> None:
        self._pending = self._advance()

    def __iter__(self) -> Iterator[StreamChunk]:
        return self

    def __next__(self) -> StreamChunk:
        pending = self._take()
        if pending is not None:
            return pending
        if self._done:
            raise StopIteration
        chunk = self._advance()
        if chunk is None:
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Stop early: close the upstream response, settle and record (idempotent)."""
        self._pending = None
        if self._done:
            return
        try:
            self._advance(_Closed())
        except _Closed:
            pass

    def __enter__(self) -> DispatchStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncDispatchStream(_StreamInfo):
    """Async twin of :class:`DispatchStream`; close it with :meth:`aclose`."""

    def __init__(self, dispatcher: Dispatcher, call: _Call) -> None:
        self._call = call
        self._driver = _AsyncDriver(dispatcher)
        self._machine = dispatcher._run(call)
        self._pending: StreamChunk | None = None
        self._done = False

    async def _advance(self, throw: BaseException | None = None) -> StreamChunk | None:
        try:
            outcome = await self._driver.step(self._machine, throw)
        except BaseException:
            self._done = True
            raise
        return self._chunk(outcome)

    async def _prime(self) -> None:
        self._pending = await self._advance()

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __anext__(self) -> StreamChunk:
        pending = self._take()
        if pending is not None:
            return pending
        if self._done:
            raise StopAsyncIteration
        chunk = await self._advance()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Stop early: close the upstream response, settle and record (idempotent)."""
        self._pending = None
        if self._done:
            return
        try:
            await self._advance(_Closed())
        except _Closed:
            pass

    async def __aenter__(self) -> AsyncDispatchStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
