"""Sending the dispatcher's requests: straight to the client's transport when safe.

``client.send(client.build_request(...))`` re-parses and merges the URL, merges
default headers, reads and writes cookies, runs auth and event hooks: on a routed
call that is ~40% of the dispatcher's CPU. API calls need none of the cookie or
redirect machinery, so for a client without auth and event hooks the request is
built once, with URLs and the client's default headers prepared ahead, and handed
to the transport the client itself would pick (mounts and proxies included). A
client with auth or hooks goes through ``client.send`` as before, so what a caller
configured on it still runs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ._core_send import CoreSender
from ._dispatch_state import _Reply as Reply
from .providers.base import EncodedRequest

#: Marks requests the dispatcher itself sends upstream, so interception leaves them alone.
UPSTREAM_EXTENSION = "llmroute_upstream"

_URL_CACHE_MAX = 512


#: ``json.dumps`` with these options makes a new encoder per call; one serves all.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_json(body: Any) -> bytes:
    """``body`` as httpx encodes ``json=``: compact, UTF-8, no NaN."""
    return _ENCODER.encode(body).encode()


class UpstreamSender:
    """Builds and sends upstream requests for one httpx or httpx2 client."""

    __slots__ = (
        "_core",
        "_defaults",
        "_headers",
        "_lib",
        "_timeouts",
        "_urls",
        "client",
        "direct",
    )

    def __init__(self, client: Any) -> None:
        self.client = client
        self._lib = sys.modules[type(client).__module__.partition(".")[0]]
        hooks = getattr(client, "event_hooks", None) or {}
        self.direct = (
            getattr(client, "auth", None) is None
            and not any(hooks.values())
            and hasattr(client, "_transport_for_url")
            and hasattr(self._lib, "Request")
        )
        self._urls: dict[str, Any] = {}
        self._headers: dict[tuple[tuple[str, str], ...], Any] = {}
        self._timeouts: dict[float | None, dict[str, Any]] = {}
        # The client's default headers (user agent, accept-encoding, ...), lowercased.
        self._defaults: dict[str, str] = dict(client.headers.items()) if self.direct else {}
        self._core: CoreSender | None = None

    def build(self, encoded: EncodedRequest, timeout: float | None) -> Any:
        """The request for ``encoded``; ``timeout`` in seconds for connect, read, write and
        pool each (``None``: no limit, as the retry policy's ``attempt_timeout=None``
        asks — never the client's own default)."""
        if not self.direct:
            return self.client.build_request(
                encoded.method,
                encoded.url,
                headers=encoded.headers,
                json=encoded.json,
                timeout=timeout,
                extensions={UPSTREAM_EXTENSION: True},
            )
        url = self._url(encoded.url)
        # The same few header sets recur (one per provider and stream flag): build
        # each merged set once and let the request copy it.
        key = tuple(encoded.headers.items())
        headers = self._headers.get(key)
        if headers is None:
            merged = self._defaults.copy()
            for name, value in encoded.headers.items():
                merged[name.lower()] = value
            if len(self._headers) >= _URL_CACHE_MAX:
                self._headers.clear()
            headers = self._headers[key] = self._lib.Headers(merged)
        return self._lib.Request(
            encoded.method,
            url,
            headers=headers,
            content=encode_json(encoded.json),
            extensions={"timeout": self._timeout(timeout), UPSTREAM_EXTENSION: True},
        )

    def _url(self, text: str) -> Any:
        url = self._urls.get(text)
        if url is None:
            if len(self._urls) >= _URL_CACHE_MAX:
                self._urls.clear()
            url = self._urls[text] = self._lib.URL(text)
        return url

    def _pool(self, url: Any) -> Any:
        """The connection pool behind the library's own transport for ``url``, if that
        is the transport the client picks (else ``None``: send through the transport)."""
        if self.client.is_closed:
            raise RuntimeError("the upstream client has been closed")
        transport = self.client._transport_for_url(url)
        if type(transport).__module__ == "routing_middleware.transport":
            transport = transport.inner  # interception passes our own requests through
        kind = type(transport)
        if kind is not self._lib.HTTPTransport and kind is not self._lib.AsyncHTTPTransport:
            return None
        pool = getattr(transport, "_pool", None)
        if pool is not None and self._core is None:
            self._core = CoreSender(type(pool).__module__.partition(".")[0], self._defaults)
        return pool

    def _pooled(
        self, encoded: EncodedRequest, timeout: float | None
    ) -> tuple[CoreSender, Any, Any] | None:
        """``(sender, pool, pool request)`` when ``encoded`` can go straight to a pool."""
        if not self.direct:
            return None
        url = self._url(encoded.url)
        pool = self._pool(url)
        if pool is None or self._core is None:
            return None
        body = encode_json(encoded.json)
        return self._core, pool, self._core.request(url, encoded, body, self._timeout(timeout))

    def _timeout(self, seconds: float | None) -> dict[str, Any]:
        found = self._timeouts.get(seconds)
        if found is None:
            if len(self._timeouts) >= _URL_CACHE_MAX:
                self._timeouts.clear()
            found = self._timeouts[seconds] = self._lib.Timeout(seconds).as_dict()
        return found

    def send(self, request: Any) -> Any:
        """Send ``request``; the response is not read yet (a stream)."""
        if not self.direct:
            return self.client.send(request, stream=True)
        if self.client.is_closed:
            raise RuntimeError("the upstream client has been closed")
        response = self.client._transport_for_url(request.url).handle_request(request)
        response.request = request
        return response

    async def asend(self, request: Any) -> Any:
        """Async twin of :meth:`send`."""
        if not self.direct:
            return await self.client.send(request, stream=True)
        if self.client.is_closed:
            raise RuntimeError("the upstream client has been closed")
        transport = self.client._transport_for_url(request.url)
        response = await transport.handle_async_request(request)
        response.request = request
        return response

    def exchange(
        self, encoded: EncodedRequest, timeout: float | None, stream: bool, provider: str = ""
    ) -> Reply:
        """Send ``encoded``: the whole body, or for a successful ``stream`` a handle of
        ``(response, chunk iterator)``. Errors are the client's (or its pool's) own."""
        pooled = self._pooled(encoded, timeout)
        if pooled is not None:
            core, pool, request = pooled
            return core.exchange(pool, request, stream, provider)
        response = self.send(self.build(encoded, timeout))
        if stream and response.status_code < 400:
            return Reply(
                response.status_code, response.headers, None, (response, response.iter_bytes())
            )
        try:
            body = response.read()
        finally:
            response.close()
        return Reply(response.status_code, response.headers, body)

    async def aexchange(
        self, encoded: EncodedRequest, timeout: float | None, stream: bool, provider: str = ""
    ) -> Reply:
        """Async twin of :meth:`exchange`."""
        pooled = self._pooled(encoded, timeout)
        if pooled is not None:
            core, pool, request = pooled
            return await core.aexchange(pool, request, stream, provider)
        response = await self.asend(self.build(encoded, timeout))
        if stream and response.status_code < 400:
            return Reply(
                response.status_code, response.headers, None, (response, response.aiter_bytes())
            )
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        return Reply(response.status_code, response.headers, body)
