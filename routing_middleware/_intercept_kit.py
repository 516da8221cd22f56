"""Per-library pieces of interception: response streams that must subclass the
library's own stream types, built once per library (``httpx`` or ``httpx2``) from
the same code."""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from types import GeneratorType
from typing import TYPE_CHECKING, Any, cast

from ._intercept_meter import CallInfo, Meter

if TYPE_CHECKING:
    from .relay import RelayResponse

__all__ = ["Kit", "kit_for"]

logger = logging.getLogger("llmroute.transport")


@dataclass(frozen=True, slots=True)
class Kit:
    """One HTTP library's classes, and the response builders that need them."""

    lib: Any
    relay_stream: type[Any]
    arelay_stream: type[Any]
    metered_stream: type[Any]
    ametered_stream: type[Any]
    ascii_headers: Callable[[Collection[tuple[str, str]]], Any]

    def relay_response(self, answer: RelayResponse) -> Any:
        """The relay's answer as the library's response.

        Its headers are made once, as ASCII (what encoding ``str`` headers takes; a
        header that is not ASCII raises here as it would in the library), so the
        library need not work out their encoding again when they are read.
        """
        if answer.stream is not None:
            stream: Any = self.relay_stream(answer.stream)
            items: Any = answer.headers.items()
        elif answer.astream is not None:
            stream = self.arelay_stream(answer.astream)
            items = answer.headers.items()
        else:
            body = answer.body
            stream = self.lib.ByteStream(body)
            items = [*answer.headers.items(), ("content-length", str(len(body)))]
        response = self.lib.Response(
            answer.status, stream=stream, extensions=_status_line(answer.status)
        )
        response.headers = self.ascii_headers(items)
        return response

    def metered(self, response: Any, info: CallInfo, *, is_async: bool) -> tuple[Any, Meter | None]:
        """``response`` with its body wrapped by a :class:`Meter` (never raises).

        A response the transport made with its body already read (``httpx.MockTransport``,
        respx, a cache) is never iterated nor closed through its stream: its meter is
        fed the body now and returned, for the caller to finish; otherwise ``None``.
        """
        try:
            meter = Meter(info, response.status_code, response.headers.get("content-type", ""))
            loaded = getattr(response, "_content", None)
            if loaded is None:
                cls = self.ametered_stream if is_async else self.metered_stream
                response.stream = cls(response.stream, meter)
            decision = info.decision
            if decision is not None and info.engine.config.response_headers:
                from .relay import decision_headers

                response.headers.update(decision_headers(decision, info.requested, info.provider))
            if loaded is not None:
                meter.feed(loaded)
                return response, meter
        except Exception:
            logger.exception("llmroute could not meter a call to %s", info.provider)
        return response, None


@functools.cache
def _status_line(status: int) -> dict[str, bytes]:
    """The status line extensions a response read off a socket carries. Without them
    the library's ``http_version`` and ``reason_phrase`` (which its client logs on
    every call) fall back to the same values, through a ``KeyError`` each."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return {"http_version": b"HTTP/1.1", "reason_phrase": phrase.encode("ascii")}


def _unstarted(chunks: Any) -> bool:
    """Whether ``chunks`` is a generator that has not run yet."""
    return (
        type(chunks) is GeneratorType
        and chunks.gi_frame is not None
        and not chunks.gi_suspended
        and not chunks.gi_running
    )


def _ascii_headers_builder(lib: Any) -> Callable[[Collection[tuple[str, str]]], Any]:
    """A function making ``lib.Headers(items, encoding="ascii")`` from ``str`` pairs.

    The library normalises each pair through two helper calls; this makes the same
    ``(name, lowered name, value)`` byte triples in one loop when the library's
    headers hold exactly that state (checked once per library against one it built),
    and is the library's constructor otherwise. Errors stay the library's: a header
    that is not ASCII raises ``UnicodeEncodeError`` here as there, anything not a
    ``str`` goes to the constructor to be refused."""
    headers_type = lib.Headers

    def construct(items: Collection[tuple[str, str]]) -> Any:
        return headers_type(items, encoding="ascii")

    try:
        reference = headers_type([("X-Name", "value")], encoding="ascii")
        same = type(reference) is headers_type and vars(reference) == {
            "_list": [(b"X-Name", b"x-name", b"value")],
            "_encoding": "ascii",
        }
    except Exception:
        return construct
    if not same:
        return construct
    new = object.__new__

    def build(items: Collection[tuple[str, str]]) -> Any:
        triples = []
        try:
            for name, value in items:
                key = name.encode("ascii")
                triples.append((key, key.lower(), value.encode("ascii")))
        except AttributeError:  # not a str: the library says what is wrong
            return construct(items)
        # Set one by one, in __init__'s order: the instance keeps the class's compact
        # attribute layout, and the library's own reads of them stay fast.
        headers = new(headers_type)
        headers._list = triples
        headers._encoding = "ascii"
        return headers

    return build


_kits: dict[type[Any], Kit] = {}


def kit_for(request: Any) -> Kit:
    """The kit of the library ``request`` belongs to."""
    kind = type(request)
    kit = _kits.get(kind)
    if kit is None:
        kit = _kits[kind] = _build_kit(kind.__module__.partition(".")[0])
    return kit


@functools.cache
def _build_kit(lib_name: str) -> Kit:
    lib: Any = importlib.import_module(lib_name)

    class RelayStream(lib.SyncByteStream):  # type: ignore[misc]
        """The relay's answer bytes, incrementally; closing ends the routed call.

        Iterating it iterates the relay's generator itself: no step of its own per
        chunk."""

        __slots__ = ("_chunks", "_closed")

        def __init__(self, chunks: Iterator[bytes]) -> None:
            self._chunks = chunks
            self._closed = False

        def __iter__(self) -> Iterator[bytes]:
            return self._chunks

        def close(self) -> None:
            if self._closed:
                return
            self._closed = True
            chunks = cast("Any", self._chunks)
            if _unstarted(chunks):  # a generator's cleanup only runs once it started
                try:
                    next(chunks)
                except StopIteration:
                    pass
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    class AsyncRelayStream(lib.AsyncByteStream):  # type: ignore[misc]
        """Async twin of ``RelayStream``."""

        __slots__ = ("_chunks", "_closed", "_fresh")

        def __init__(self, chunks: AsyncIterator[bytes]) -> None:
            self._chunks = chunks
            self._closed = False
            frame = getattr(chunks, "ag_frame", None)
            # where a generator that never ran stands; it moves on its first step
            self._fresh = frame.f_lasti if frame is not None else None

        def __aiter__(self) -> AsyncIterator[bytes]:
            return self._chunks

        async def aclose(self) -> None:
            if self._closed:
                return
            self._closed = True
            chunks = cast("Any", self._chunks)
            try:
                frame = getattr(chunks, "ag_frame", None)
                if frame is not None and not chunks.ag_running and frame.f_lasti == self._fresh:
                    try:
                        await chunks.__anext__()
                    except StopAsyncIteration:
                        pass
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            except RuntimeError:  # closed while another task is reading it
                logger.debug("llmroute stream closed while being read", exc_info=True)

    class MeteredStream(lib.SyncByteStream):  # type: ignore[misc]
        """Passes an upstream body through untouched, feeding a :class:`Meter`."""

        __slots__ = ("_complete", "_inner", "_iter", "_meter")

        def __init__(self, inner: Any, meter: Meter) -> None:
            self._inner, self._meter = inner, meter
            self._iter: Iterator[bytes] | None = None
            self._complete = False

        def __iter__(self) -> Iterator[bytes]:
            self._iter = iter(self._inner)
            return self

        def __next__(self) -> bytes:
            assert self._iter is not None
            try:
                data: bytes = next(self._iter)
            except StopIteration:
                self._complete = True
                raise
            self._meter.feed(data)
            return data

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._meter.finish(self._complete)

    class AsyncMeteredStream(lib.AsyncByteStream):  # type: ignore[misc]
        """Async twin of ``MeteredStream``."""

        __slots__ = ("_complete", "_inner", "_iter", "_meter")

        def __init__(self, inner: Any, meter: Meter) -> None:
            self._inner, self._meter = inner, meter
            self._iter: AsyncIterator[bytes] | None = None
            self._complete = False

        def __aiter__(self) -> AsyncIterator[bytes]:
            self._iter = self._inner.__aiter__()
            return self

        async def __anext__(self) -> bytes:
            assert self._iter is not None
            try:
                data: bytes = await self._iter.__anext__()
            except StopAsyncIteration:
                self._complete = True
                raise
            self._meter.feed(data)
            return data

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                await self._meter.afinish(self._complete)

    for cls in (RelayStream, AsyncRelayStream, MeteredStream, AsyncMeteredStream):
        cls.__qualname__ = cls.__name__ = f"{cls.__name__}[{lib_name}]"
    return Kit(
        lib,
        RelayStream,
        AsyncRelayStream,
        MeteredStream,
        AsyncMeteredStream,
        _ascii_headers_builder(lib),
    )
