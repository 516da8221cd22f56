"""The streams :meth:`Dispatcher.stream` and :meth:`Dispatcher.astream` return."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, cast

from ._dispatch_drivers import _Pipe, _upstream_error
from ._dispatch_state import _Call, _Closed, _Deliver, _End, _Flow
from .metering import UsageRecord
from .schema import LLMError, StreamChunk, Usage

#: What a driver step hands the consumer: a chunk, forwarded bytes, or the rest of a
#: forwarded stream; ``None`` at the end.
_Item = StreamChunk | bytes | _Pipe | _Flow | None

if TYPE_CHECKING:
    from .dispatch import Dispatcher
    from .router import Deployment


def _flow_chunks(flow: _Flow) -> Generator[StreamChunk, None, None]:
    """The chunks of the rest of a decoded stream, read off the upstream (see
    :class:`~._dispatch_state._Flow`); a failure ends them and is left on ``flow``."""
    feed, take = flow.decoder.feed, flow.take
    try:
        for data in flow.handle[1]:
            if data:
                for chunk in feed(data if type(data) is bytes else bytes(data)):
                    out = take(chunk)
                    if out is not None:
                        yield out
    except LLMError as error:
        flow.error = error
    except Exception as exc:
        flow.error = _upstream_error(exc, flow.provider)


async def _aflow_chunks(flow: _Flow) -> AsyncGenerator[StreamChunk, None]:
    """Async twin of :func:`_flow_chunks`."""
    feed, take = flow.decoder.feed, flow.take
    try:
        async for data in flow.handle[1]:
            if data:
                for chunk in feed(data if type(data) is bytes else bytes(data)):
                    out = take(chunk)
                    if out is not None:
                        yield out
    except LLMError as error:
        flow.error = error
    except Exception as exc:
        flow.error = _upstream_error(exc, flow.provider)


class _StreamInfo:
    """What both stream flavours expose about the call behind them, and the
    bookkeeping they share (the chunk held from priming, the end of the stream)."""

    _call: _Call
    _pending: _Item
    _done: bool

    def _take(self) -> _Item:
        """The chunk held since :meth:`_prime`, once."""
        pending = self._pending
        self._pending = None
        return pending

    def _chunk(self, outcome: _Deliver | _End) -> _Item:
        """The chunk a driver step delivered, or ``None`` at the end of the stream."""
        if isinstance(outcome, _End):
            self._done = True
            return None
        return outcome.chunk

    @property
    def forwarding(self) -> bool:
        """Whether the stream delivers an OpenAI caller's SSE bytes rather than chunks
        (only when the relay asked for them; read them with ``forwarded``)."""
        return self._call.forwarding

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
        self._driver = dispatcher._sync_driver
        self._machine = dispatcher._run(call)
        self._pending: _Item = None
        self._done = False
        self._flowing: Generator[StreamChunk, None, None] | None = None

    def _advance(self, throw: BaseException | None = None) -> _Item:
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
        flowing = self._flowing
        if flowing is not None:
            chunk = next(flowing, None)
            if chunk is not None:
                return chunk
            self._flowing = None
        item = self._take()
        if item is None:
            if self._done:
                raise StopIteration
            item = self._advance()
        while type(item) is _Flow:
            self._flowing = flowing = _flow_chunks(item)
            chunk = next(flowing, None)
            if chunk is not None:
                return chunk
            self._flowing = None
            item = self._advance()
        if item is None:
            raise StopIteration
        return cast("StreamChunk", item)

    def forwarded(
        self,
        failure: Callable[[Exception], bytes] | None = None,
        ended: Callable[[], None] | None = None,
    ) -> Iterator[bytes]:
        """The caller's bytes, when :attr:`forwarding`.

        With ``failure``, an error ends the bytes with ``failure(error)`` rather than
        raising. With ``ended``, the stream closes itself once the bytes end (or the
        iterator is closed early) and then calls ``ended()``. All of it runs in this
        one generator: once the answer started, a read costs one step of it and the
        forwarder's ``feed``, nothing more.
        """
        try:
            try:
                item = self._take()
                drained: _Pipe | None = None
                while True:
                    if item is None:
                        if self._done:
                            return
                        item = self._advance()
                        if drained is not None:
                            # the pipe's end, left on it once the logic metered the attempt
                            if drained.tail:
                                yield drained.tail
                            drained = None
                        if item is None:
                            return
                    if type(item) is bytes:
                        yield item
                        item = None
                        continue
                    # the rest of the stream, straight off the upstream
                    pipe = cast("_Pipe", item)
                    item = None
                    yield pipe.head
                    feed = pipe.forward.feed
                    try:
                        for data in pipe.handle[1]:
                            if data:
                                out = feed(data if type(data) is bytes else bytes(data))
                                if out:
                                    yield out
                    except LLMError as error:
                        pipe.error = error
                    except Exception as exc:
                        pipe.error = _upstream_error(exc, pipe.provider)
                    drained = pipe
            except Exception as exc:
                if failure is None:
                    raise
                yield failure(exc)
        finally:
            if ended is not None:
                self.close()
                ended()

    def close(self) -> None:
        """Stop early: close the upstream response, settle and record (idempotent)."""
        self._pending = None
        flowing, self._flowing = self._flowing, None
        if flowing is not None:
            flowing.close()
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
        self._driver = dispatcher._async_driver
        self._machine = dispatcher._run(call)
        self._pending: _Item = None
        self._done = False
        self._flowing: AsyncGenerator[StreamChunk, None] | None = None

    async def _advance(self, throw: BaseException | None = None) -> _Item:
        try:
            outcome = await self._driver.step(self._machine, throw)
        except BaseException:
            self._done = True
            raise
        return self._chunk(outcome)

    async def _prime(self) -> None:
        self._pending = await self._advance()

    async def _flowed(self, flowing: AsyncGenerator[StreamChunk, None]) -> StreamChunk | None:
        """The next chunk of a flow (``None`` once it ended). Cancelled while waiting
        for the upstream, the logic is told, as when it waits itself: it records and
        closes the upstream, shielded, before the cancellation goes on."""
        try:
            return await anext(flowing, None)
        except BaseException as exc:
            self._flowing = None
            await self._advance(exc)
            raise

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __anext__(self) -> StreamChunk:
        flowing = self._flowing
        if flowing is not None:
            chunk = await self._flowed(flowing)
            if chunk is not None:
                return chunk
            self._flowing = None
        item = self._take()
        if item is None:
            if self._done:
                raise StopAsyncIteration
            item = await self._advance()
        while type(item) is _Flow:
            self._flowing = flowing = _aflow_chunks(item)
            chunk = await self._flowed(flowing)
            if chunk is not None:
                return chunk
            self._flowing = None
            item = await self._advance()
        if item is None:
            raise StopAsyncIteration
        return cast("StreamChunk", item)

    async def forwarded(
        self,
        failure: Callable[[Exception], bytes] | None = None,
        ended: Callable[[], None] | None = None,
    ) -> AsyncIterator[bytes]:
        """The caller's bytes, when :attr:`forwarding`; ``failure`` and ``ended`` as
        for :meth:`DispatchStream.forwarded` (the stream closes with :meth:`aclose`)."""
        try:
            try:
                item = self._take()
                drained: _Pipe | None = None
                while True:
                    if item is None:
                        if self._done:
                            return
                        item = await self._advance()
                        if drained is not None:
                            # the pipe's end, left on it once the logic metered the attempt
                            if drained.tail:
                                yield drained.tail
                            drained = None
                        if item is None:
                            return
                    if type(item) is bytes:
                        yield item
                        item = None
                        continue
                    pipe = cast("_Pipe", item)
                    item = None
                    yield pipe.head
                    feed = pipe.forward.feed
                    try:
                        async for data in pipe.handle[1]:
                            if data:
                                out = feed(data if type(data) is bytes else bytes(data))
                                if out:
                                    yield out
                    except LLMError as error:
                        pipe.error = error
                    except Exception as exc:
                        pipe.error = _upstream_error(exc, pipe.provider)
                    drained = pipe
            except Exception as exc:
                if failure is None:
                    raise
                yield failure(exc)
        finally:
            if ended is not None:
                await self.aclose()
                ended()

    async def aclose(self) -> None:
        """Stop early: close the upstream response, settle and record (idempotent)."""
        self._pending = None
        flowing, self._flowing = self._flowing, None
        if flowing is not None:
            await flowing.aclose()
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
