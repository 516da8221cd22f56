"""The stores' shared Redis client holder: given clients stay yours, made ones are closed."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from routing_middleware._redis import RedisClients

URL = "redis://127.0.0.1:1/0"  # never connected to: clients connect on first command


class Given:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1

    async def aclose(self) -> None:
        self.closed += 1


def test_given_clients_are_used_and_never_closed() -> None:
    sync, async_ = Given(), Given()
    clients = RedisClients("Store", URL, sync, async_)
    assert clients.sync_client() is sync
    assert clients.async_client() is async_
    clients.close()
    asyncio.run(clients.aclose())
    assert sync.closed == async_.closed == 0
    assert clients.sync_client() is sync


def test_without_url_a_missing_client_is_an_error_naming_the_store() -> None:
    clients = RedisClients("RedisThingStore", None, async_client=Given())
    with pytest.raises(RuntimeError, match="RedisThingStore got no sync client and no url"):
        clients.sync_client()
    clients = RedisClients("RedisThingStore", None, client=Given())
    with pytest.raises(RuntimeError, match="RedisThingStore got no async client and no url"):
        clients.async_client()


def test_made_clients_are_made_once_closed_and_made_again() -> None:
    import redis
    import redis.asyncio

    clients = RedisClients("Store", URL)
    with ThreadPoolExecutor(max_workers=8) as pool:
        made = list(pool.map(lambda _: clients.sync_client(), range(32)))
    assert all(c is made[0] for c in made)
    assert isinstance(made[0], redis.Redis)
    clients.close()
    again = clients.sync_client()
    assert again is not made[0]
    clients.close()

    async def run() -> tuple[Any, Any]:
        first = clients.async_client()
        assert clients.async_client() is first
        await clients.aclose()
        second = clients.async_client()
        await clients.aclose()
        return first, second

    first, second = asyncio.run(run())
    assert isinstance(first, redis.asyncio.Redis)
    assert first is not second


def test_pool_options_make_clients_on_a_blocking_pool() -> None:
    import redis

    clients = RedisClients("Store", URL, pool={"max_connections": 3, "timeout": 1})
    client = clients.sync_client()
    assert isinstance(client.connection_pool, redis.BlockingConnectionPool)
    assert client.connection_pool.max_connections == 3
    clients.close()

    async def run() -> Any:
        made = clients.async_client()
        await clients.aclose()
        return made

    made = asyncio.run(run())
    assert made.connection_pool.max_connections == 3
