"""Sending straight to an httpx transport's connection pool (httpcore / httpcore2).

When the transport the client picks for a URL is the library's own ``HTTPTransport``
(the default, proxies from the environment included), the request goes to its
connection pool as the pool's own request type: no ``httpx.Request`` to build, no
conversion to the pool's request and back, no ``httpx.Response`` to wrap. What the
call needs is prepared once per URL and per header set. Response bodies are asked
for uncompressed (no ``Accept-Encoding``); a server that compresses anyway is
decoded here (gzip, deflate) or refused with a clear error.
"""

from __future__ import annotations

import functools
import sys
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ._dispatch_state import _Reply as Reply
from .providers.base import EncodedRequest
from .schema import UpstreamProtocolError

_CACHE_MAX = 512
_SKIPPED = frozenset({"accept-encoding", "content-length", "host", "connection"})


@functools.cache
def _direct_builder(core: Any) -> Any:
    """A function making ``core.Request(method, url, headers=..., content=body,
    extensions=...)`` from values already in the types the pool uses (method and
    headers as bytes, ``url`` the pool's URL) without checking them again, or
    ``None`` when ``core``'s requests are not built the way this knows. Worked out
    once per library.

    The check: a request built by the library holds exactly what this sets (a
    ``__dict__`` of method, url, headers, stream, extensions), its body in a stream
    type that this makes the same way."""
    url = core.URL(scheme=b"http", host=b"example.invalid", port=None, target=b"/")
    headers = [(b"host", b"example.invalid"), (b"content-length", b"2")]
    extensions: dict[str, Any] = {"timeout": {}}
    try:
        reference = core.Request(
            b"POST", url, headers=headers, content=b"{}", extensions=extensions
        )
        state = vars(reference)
        stream_type = type(reference.stream)
        same = (
            set(state) == {"method", "url", "headers", "stream", "extensions"}
            and type(reference) is core.Request
            and reference.method == b"POST"
            and reference.url is url
            and reference.headers == headers
            and reference.extensions is extensions
            and list(stream_type(b"{}")) == [b"{}"]
            and list(reference.stream) == [b"{}"]
        )
    except Exception:
        return None
    if not same:
        return None
    request_type = core.Request
    new = object.__new__

    def build(
        method: bytes, url: Any, headers: list[tuple[bytes, bytes]], body: bytes, extensions: Any
    ) -> Any:
        # Set one by one, in __init__'s order: the request keeps the class's compact
        # attribute layout, and the pool's many reads of them stay fast.
        request = new(request_type)
        request.method = method
        request.url = url
        request.headers = headers
        request.stream = stream_type(body)
        request.extensions = extensions
        return request

    return build


class CoreSender:
    """Requests for one client's pool library (``httpcore`` for httpx, ``httpcore2``
    for httpx2); ``defaults`` are the client's default headers, lowercased.

    Everything in a request is prepared here as the pool's own types (bytes
    headers, the pool's URL), so the request is made without the library checking
    and converting it all again, when the library's requests are built as
    :func:`_direct_builder` knows; otherwise through its constructor."""

    __slots__ = ("_build", "_core", "_defaults", "_headers", "_targets")

    def __init__(self, core_module: str, defaults: dict[str, str]) -> None:
        self._core = sys.modules[core_module]
        self._defaults = {k: v for k, v in defaults.items() if k not in _SKIPPED}
        self._targets: dict[str, tuple[Any, tuple[bytes, bytes]]] = {}
        self._headers: dict[tuple[tuple[str, str], ...], list[tuple[bytes, bytes]]] = {}
        self._build = _direct_builder(self._core)

    def _target(self, url: Any, text: str) -> tuple[Any, tuple[bytes, bytes]]:
        found = self._targets.get(text)
        if found is None:
            if len(self._targets) >= _CACHE_MAX:
                self._targets.clear()
            core_url = self._core.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            )
            found = self._targets[text] = (core_url, (b"host", url.netloc))
        return found

    def _header_list(self, encoded: EncodedRequest) -> list[tuple[bytes, bytes]]:
        key = tuple(encoded.headers.items())
        found = self._headers.get(key)
        if found is None:
            merged = self._defaults.copy()
            for name, value in encoded.headers.items():
                lowered = name.lower()
                if lowered not in _SKIPPED:
                    merged[lowered] = value
            if len(self._headers) >= _CACHE_MAX:
                self._headers.clear()
            found = self._headers[key] = [
                (name.encode("latin-1"), value.encode("latin-1")) for name, value in merged.items()
            ]
        return found

    def request(
        self, url: Any, encoded: EncodedRequest, body: bytes, timeout: dict[str, Any]
    ) -> Any:
        """The pool's request for ``encoded`` (``url``: the client library's parsed URL)."""
        core_url, host = self._target(url, encoded.url)
        headers = [
            host,
            *self._header_list(encoded),
            (b"content-length", b"%d" % len(body)),
        ]
        if self._build is not None and encoded.method == "POST":
            return self._build(b"POST", core_url, headers, body, {"timeout": timeout})
        return self._core.Request(
            encoded.method, core_url, headers=headers, content=body, extensions={"timeout": timeout}
        )

    def exchange(self, pool: Any, request: Any, stream: bool, provider: str) -> Reply:
        """Send ``request`` through ``pool``: the whole body, or for a successful
        ``stream`` a handle of ``(response, chunk iterator)``."""
        response = pool.handle_request(request)
        status = response.status
        headers = _headers(response.headers)
        decode = _decoder(headers, provider)
        if stream and status < 400:
            chunks = iter(response.stream)
            return Reply(status, headers, None, (response, _decoded(chunks, decode)))
        try:
            body = b"".join(response.stream)
        finally:
            response.close()
        return Reply(status, headers, decode(body) + decode(None) if decode else body)

    async def aexchange(self, pool: Any, request: Any, stream: bool, provider: str) -> Reply:
        """Async twin of :meth:`exchange`."""
        response = await pool.handle_async_request(request)
        status = response.status
        headers = _headers(response.headers)
        decode = _decoder(headers, provider)
        if stream and status < 400:
            chunks = response.stream.__aiter__()
            return Reply(status, headers, None, (response, _adecoded(chunks, decode)))
        try:
            body = b"".join([part async for part in response.stream])
        finally:
            await response.aclose()
        return Reply(status, headers, decode(body) + decode(None) if decode else body)


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}


def _decoder(headers: dict[str, str], provider: str) -> Any:
    """``None`` for an identity body; else a function feeding compressed bytes (``None``
    flushes) for gzip or deflate. Anything else is refused."""
    encoding = headers.get("content-encoding", "").strip().lower()
    if not encoding or encoding == "identity":
        return None
    if encoding not in ("gzip", "deflate"):
        raise UpstreamProtocolError(
            f"the provider compressed its answer with {encoding!r}, which was not asked for",
            provider=provider,
        )
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))

    def decode(data: bytes | None) -> bytes:
        return inflater.flush() if data is None else inflater.decompress(data)

    return decode


def _decoded(chunks: Iterator[bytes], decode: Any) -> Iterator[bytes]:
    if decode is None:
        return chunks
    return (decode(chunk) for chunk in chunks)


def _adecoded(chunks: AsyncIterator[bytes], decode: Any) -> AsyncIterator[bytes]:
    if decode is None:
        return chunks

    async def decoded() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield decode(chunk)

    return decoded()
