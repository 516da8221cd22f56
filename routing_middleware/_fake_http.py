"""In-process transports serving the fake to httpx and httpx2 clients, sync and async.

One set of classes is built per library from the same code; only the sleeping
differs between sync (``time.sleep``) and async (``anyio.sleep``). Client timeouts
are honoured like a network transport would: a wait longer than the request's
read timeout raises the library's ``ReadTimeout``.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

from ._fake_server import RawRequest
from ._fake_wire import Reply

__all__ = ["transport_classes"]

Handler = Callable[[RawRequest], Reply]
_RESET = "[Errno 104] Connection reset by peer"
_REFUSED = "[Errno 111] Connection refused"
_CUT = "peer closed connection without sending complete message body (incomplete chunked read)"


def _raw(request: Any, body: bytes) -> RawRequest:
    url = request.url
    query = dict(parse_qsl(url.query.decode() if isinstance(url.query, bytes) else url.query))
    headers = {k.lower(): v for k, v in request.headers.items()}
    host = f"{url.host}:{url.port}" if url.port else url.host
    return RawRequest(request.method, url.path, query, headers, body, host)


def _read_timeout(request: Any) -> float | None:
    timeout = request.extensions.get("timeout") or {}
    value = timeout.get("read")
    return float(value) if value is not None else None


def _headers(reply: Reply) -> list[tuple[str, str]]:
    if reply.stream or reply.abort:
        return reply.headers
    length = sum(len(p.data) for p in reply.pieces)
    return [*reply.headers, ("content-length", str(length))]


@functools.cache
def transport_classes(lib_name: str) -> tuple[type[Any], type[Any]]:
    """``(SyncTransport, AsyncTransport)`` classes for ``httpx`` or ``httpx2``."""
    lib: Any = importlib.import_module(lib_name)

    def wait(delay: float, timeout: float | None, request: Any) -> None:
        if timeout is not None and delay > timeout:
            time.sleep(timeout)
            raise lib.ReadTimeout("timed out", request=request)
        if delay > 0:
            time.sleep(delay)

    async def await_(delay: float, timeout: float | None, request: Any) -> None:
        import anyio

        if timeout is not None and delay > timeout:
            await anyio.sleep(timeout)
            raise lib.ReadTimeout("timed out", request=request)
        if delay > 0:
            await anyio.sleep(delay)

    class SyncBody(lib.SyncByteStream):  # type: ignore[misc]
        def __init__(self, reply: Reply, timeout: float | None, request: Any) -> None:
            self._reply, self._timeout, self._request = reply, timeout, request

        def __iter__(self) -> Iterator[bytes]:
            for delay, data in self._reply.schedule():
                wait(delay, self._timeout, self._request)
                yield data
            if self._reply.abort:
                raise lib.RemoteProtocolError(_CUT, request=self._request)

    class AsyncBody(lib.AsyncByteStream):  # type: ignore[misc]
        def __init__(self, reply: Reply, timeout: float | None, request: Any) -> None:
            self._reply, self._timeout, self._request = reply, timeout, request

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for delay, data in self._reply.schedule():
                await await_(delay, self._timeout, self._request)
                yield data
            if self._reply.abort:
                raise lib.RemoteProtocolError(_CUT, request=self._request)

    class FakeTransport(lib.BaseTransport):  # type: ignore[misc]
        """Serves a fake provider to a sync client, no sockets involved."""

        def __init__(self, handler: Handler) -> None:
            self._handler = handler

        def handle_request(self, request: Any) -> Any:
            reply = self._handler(_raw(request, request.read()))
            if reply.refuse:
                raise lib.ConnectError(_REFUSED, request=request)
            timeout = _read_timeout(request)
            wait(reply.start_delay(), timeout, request)
            if reply.reset:
                raise lib.ReadError(_RESET, request=request)
            return lib.Response(
                reply.status,
                headers=_headers(reply),
                stream=SyncBody(reply, timeout, request),
                request=request,
            )

    class AsyncFakeTransport(lib.AsyncBaseTransport):  # type: ignore[misc]
        """Serves a fake provider to an async client; streams pace with real sleeps."""

        def __init__(self, handler: Handler) -> None:
            self._handler = handler

        async def handle_async_request(self, request: Any) -> Any:
            reply = self._handler(_raw(request, await request.aread()))
            if reply.refuse:
                raise lib.ConnectError(_REFUSED, request=request)
            timeout = _read_timeout(request)
            await await_(reply.start_delay(), timeout, request)
            if reply.reset:
                raise lib.ReadError(_RESET, request=request)
            return lib.Response(
                reply.status,
                headers=_headers(reply),
                stream=AsyncBody(reply, timeout, request),
                request=request,
            )

    FakeTransport.__qualname__ = FakeTransport.__name__ = f"FakeTransport[{lib_name}]"
    AsyncFakeTransport.__name__ = f"AsyncFakeTransport[{lib_name}]"
    AsyncFakeTransport.__qualname__ = AsyncFakeTransport.__name__
    return FakeTransport, AsyncFakeTransport
