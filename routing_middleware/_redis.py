"""A store's Redis clients: the ones it was given, or ones made lazily from a url.

``redis`` is imported on first use only, so the package imports without it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

#: A blocking pool of 64 connections: bursts wait (up to 20 s) for a free one instead
#: of failing. The stores on the hot path of every call (budgets, stats) use it.
BLOCKING_POOL: Mapping[str, Any] = {"max_connections": 64, "timeout": 20}

#: Connect and read timeouts of the clients made here, in seconds. A store answers in
#: milliseconds; one that stops answering (a partition, a stalled server) must fail
#: the command, which lets the call go on without it, rather than hold every call
#: with no end. ``?socket_timeout=…&socket_connect_timeout=…`` in the url win.
SOCKET_TIMEOUTS: Mapping[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}


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

    __slots__ = ("_async", "_lock", "_made_async", "_made_sync", "_owner", "_pool", "_sync", "_url")

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

    def _need_url(self, kind: str) -> str:
        if self._url is None:
            raise RuntimeError(f"{self._owner} got no {kind} client and no url")
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
