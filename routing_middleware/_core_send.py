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

import sys
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ._dispatch_state import _Reply as Reply
from .providers.base import EncodedRequest
from .schema import UpstreamProtocolError

_CACHE_MAX = 512
_SKIPPED = frozenset({"accept-encoding", "content-length", "host", "connection"})


class CoreSender:
    """Requests for one client's pool library (``httpcore`` for httpx, ``httpcore2``
    for httpx2); ``defaults`` are the client's default headers, lowercased."""

    __slots__ = ("_core", "_defaults", "_headers", "_targets")

    def __init__(self, core_module: str, defaults: dict[str, str]) -> None:
        self._core = sys.modules[core_module]
        self._defaults = {k: v for k, v in defaults.items() if k not in _SKIPPED}
        self._targets: dict[str, tuple[Any, tuple[bytes, bytes]]] = {}
        self._headers: dict[tuple[tuple[str, str], ...], list[tuple[bytes, bytes]]] = {}

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
