"""The async upstream sender on aiohttp (extra ``aiohttp``).

Measured on the gateway benchmark, aiohttp costs a fraction of httpx's CPU per
call at 50 concurrent (see benchmarks/README.md), so the async path uses it when
it is installed. An aiohttp session belongs to the event loop it was made in:
one session is kept per running loop. A loop run by ``asyncio.run`` (or anything
that calls ``loop.shutdown_asyncgens()`` before closing, as anyio and asgiref do)
closes its session on the way out: the session is tied to a suspended async
generator, which that shutdown finalizes.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Any

from ._dispatch_state import _Reply as Reply
from ._upstream import encode_json
from .providers.base import EncodedRequest

#: Connections per session: enough for a busy worker; aiohttp's default is 100.
CONNECTION_LIMIT = 256


def available() -> bool:
    """Whether aiohttp is installed (without importing it: that takes ~0.2 s)."""
    import importlib.util

    return importlib.util.find_spec("aiohttp") is not None


class _Response:
    """What the driver closes when a stream ends early or late."""

    __slots__ = ("_response",)

    def __init__(self, response: Any) -> None:
        self._response = response

    async def aclose(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()  # read to the end: the connection goes back to the pool
        else:
            response.close()


class AiohttpSender:
    """Sends the dispatcher's async requests with aiohttp.

    ``session`` is a caller's ``aiohttp.ClientSession`` (used as is, never closed
    here); without one, a session per event loop is made on first use. Proxy
    settings come from the environment, as with httpx: when a proxy variable is
    set the session honours them (``trust_env``); when none is, it skips the
    per-request proxy and netrc lookups that ``trust_env`` costs. TLS certificates
    are checked against the same bundle httpx uses.
    """

    direct = True

    def __init__(self, session: Any = None, *, limit: int = CONNECTION_LIMIT) -> None:
        # aiohttp is imported on the first async call, not when an engine is built.
        self._aiohttp: Any = None
        self._given = session
        self._limit = limit
        # Per loop: the session and the generator that closes it when the loop ends
        # (held here so that it is not finalized early).
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, AsyncIterator[None]]
        ] = weakref.WeakKeyDictionary()
        self._timeouts: dict[float | None, Any] = {}

    def _module(self) -> Any:
        if self._aiohttp is None:
            import aiohttp

            self._aiohttp = aiohttp
        return self._aiohttp

    async def session(self) -> Any:
        """The session for the running loop (made on first use)."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        found = self._sessions.get(loop)
        if found is None or found[0].closed:
            aiohttp = self._module()
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, ssl=_ssl_context()),
                trust_env=_proxies_set(),
            )
            guard = _close_at_loop_shutdown(session)
            await guard.__anext__()
            found = self._sessions[loop] = (session, guard)
        return found[0]

    def _timeout(self, seconds: float | None) -> Any:
        found = self._timeouts.get(seconds)
        if found is None:
            if len(self._timeouts) >= 512:
                self._timeouts.clear()
            found = self._timeouts[seconds] = self._module().ClientTimeout(
                total=None, connect=seconds, sock_read=seconds
            )
        return found

    async def aexchange(
        self, encoded: EncodedRequest, timeout: float | None, stream: bool, provider: str = ""
    ) -> Reply:
        """Send ``encoded``: the whole body, or for a successful ``stream`` a handle of
        ``(response, chunk iterator)``."""
        session = await self.session()
        response = await session.request(
            encoded.method,
            encoded.url,
            data=encode_json(encoded.json),
            headers=encoded.headers,
            timeout=self._timeout(timeout),
            allow_redirects=False,
        )
        if stream and response.status < 400:
            return Reply(
                response.status,
                response.headers,
                None,
                (_Response(response), response.content.iter_any()),
            )
        try:
            body = await response.read()
        finally:
            response.release()
        return Reply(response.status, response.headers, body)

    async def aclose(self) -> None:
        """Close the session this sender made for the running loop (a given session
        is the caller's; other loops' sessions close when their loop ends)."""
        found = self._sessions.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[0].close()


def _ssl_context() -> Any:
    """Certificates verified as httpx verifies them (certifi's bundle, or the
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` the environment names), not only the
    system's store, which slim container images often lack."""
    import httpx

    return httpx.create_ssl_context()


def _proxies_set() -> bool:
    from urllib.request import getproxies

    return bool(getproxies())


async def _close_at_loop_shutdown(session: Any) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await session.close()
