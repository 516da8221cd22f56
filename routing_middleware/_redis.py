"""A store's Redis clients: the ones it was given, or ones made lazily from a url.

``redis`` is imported on first use only, so the package imports without it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ._outage import MissingClient, StoreOutage

#: A blocking pool of 64 connections: bursts wait (up to 20 s) for a free one instead
#: of failing. The stores on the hot path of every call (budgets, stats) use it.
BLOCKING_POOL: Mapping[str, Any] = {"max_connections": 64, "timeout": 20}

#: Connect and read timeouts of the clients made here, in seconds. A store answers in
#: milliseconds; one that stops answering (a partition, a stalled server) must fail
#: the command, which lets the call go on without it, rather than hold every call
#: with no end. Reads get longer: a write whose answer timed out may have been
#: applied, and is then not tried again (see ``settle_now``), so a short pause of the
#: server should not cut it off. ``?socket_timeout=…&socket_connect_timeout=…`` in
#: the url win.
SOCKET_TIMEOUTS: Mapping[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0}


class RedisClients:
    """The sync and async Redis clients of one store.

    Given clients are used as they are and never closed here. A missing one is made
    from ``url`` on first use (the sync one under a lock, so threads share one) and
    closed by :meth:`close` / :meth:`aclose`. With ``pool`` (keyword arguments of
    ``BlockingConnectionPool.from_url``, e.g. ``{"max_connections": 64, "timeout": 20}``)
    made clients wait for a free connection instead of opening more, and closing them
    disconnects that pool; without it they come from ``Redis.from_url``. Made clients
    time out as :data:`SOCKET_TIMEOUTS` says. ``owner`` names the store in errors.
    """

    __slots__ = (
        "_async",
        "_lock",
        "_made_async",
        "_made_sync",
        "_outage",
        "_owner",
        "_pool",
        "_sync",
        "_url",
    )

    def __init__(
        self,
        owner: str,
        url: str | None,
        client: Any = None,
        async_client: Any = None,
        *,
        pool: Mapping[str, Any] | None = None,
    ) -> None:
        self._owner = owner
        self._url = url
        self._sync = client
        self._async = async_client
        self._pool = dict(pool) if pool is not None else None
        self._made_sync = self._made_async = False
        self._lock = threading.Lock()
        self._outage: StoreOutage | None = None

    @property
    def outage(self) -> StoreOutage:
        """The outage state of this store's Redis: shared by every store made from the
        same url (one failure leaves them all alone, one probe brings them all back),
        else this store's own."""
        found = self._outage
        if found is None:
            if self._url is not None and self._sync is None and self._async is None:
                found = _shared_outage(self._url)
            else:
                # (a given sync client is probed with its own ``ping``, when it has one)
                probe = getattr(self._sync, "ping", None)
                found = StoreOutage(f"Redis of {self._owner}", _MEANWHILE, probe)
            self._outage = found
        return found

    def _need_url(self, kind: str) -> str:
        if self._url is None:
            raise MissingClient(f"{self._owner} got no {kind} client and no url")
        return self._url

    def sync_client(self) -> Any:
        """The sync client (``redis.Redis``), made on first use when none was given."""
        client = self._sync
        if client is None:
            with self._lock:
                client = self._sync
                if client is None:
                    import redis

                    url = self._need_url("sync")
                    if self._pool is None:
                        client = redis.Redis.from_url(url, **SOCKET_TIMEOUTS)
                    else:
                        pool = redis.BlockingConnectionPool.from_url(
                            url, **SOCKET_TIMEOUTS, **self._pool
                        )
                        client = redis.Redis(connection_pool=pool)
                    self._sync = client
                    self._made_sync = True
        return client

    def async_client(self) -> Any:
        """The async client (``redis.asyncio.Redis``), made on first use when none was given.

        No lock: an event loop runs this without switching tasks in between.
        """
        client = self._async
        if client is None:
            import redis.asyncio

            url = self._need_url("async")
            if self._pool is None:
                client = redis.asyncio.Redis.from_url(url, **SOCKET_TIMEOUTS)
            else:
                pool = redis.asyncio.BlockingConnectionPool.from_url(
                    url, **SOCKET_TIMEOUTS, **self._pool
                )
                client = redis.asyncio.Redis(connection_pool=pool)
            self._async = client
            self._made_async = True
        return client

    def close(self) -> None:
        """Close the sync client made here (not a given one); the next use makes a new one."""
        with self._lock:
            client = self._sync
            if self._made_sync and client is not None:
                client.close()
                if self._pool is not None:
                    client.connection_pool.disconnect()
                self._sync = None

    async def aclose(self) -> None:
        """Close the async client made here (not a given one); the sync one stays open."""
        client = self._async
        if self._made_async and client is not None:
            await client.aclose()
            if self._pool is not None:
                await client.connection_pool.disconnect()
            self._async = None


_MEANWHILE = "calls go on without the budgets, breakers, latency figures and answers it holds"
_outages: dict[str, StoreOutage] = {}
_outages_lock = threading.Lock()


def _shared_outage(url: str) -> StoreOutage:
    """The outage state of the Redis at ``url``, probed with a ``PING`` on a short-lived
    client (the url, which may hold a password, is never logged)."""
    with _outages_lock:
        found = _outages.get(url)
        if found is None:
            found = _outages[url] = StoreOutage("Redis", _MEANWHILE, lambda: _ping(url))
        return found


def _ping(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, **SOCKET_TIMEOUTS)
    try:
        client.ping()
    finally:
        client.close()
