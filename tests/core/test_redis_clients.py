"""The stores' shared Redis client holder: given clients stay yours, made ones are closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest

from routing_middleware._redis import RedisClients
from routing_middleware.budgets import Budget, Budgets, RedisBudgetStore
from routing_middleware.stats import RedisStatsStore

from .redis_helpers import drop_keys, redis_url_or_skip

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


# ------------------------------------------------------------------ the stores on a real Redis


@pytest.fixture
def prefix() -> Iterator[str]:
    import redis

    url = redis_url_or_skip()
    found = f"llmroute-test:clients:{uuid.uuid4().hex}:"
    yield found
    client = redis.Redis.from_url(url)
    drop_keys(client, found)
    client.close()


def _budgets(store: RedisBudgetStore) -> Budgets:
    return Budgets([Budget(name="b", limit_usd=Decimal("1"))], store)


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["stats", "budgets"])
def test_stores_make_their_clients_on_one_blocking_pool_and_close_them(
    prefix: str, kind: str
) -> None:
    import redis

    url = redis_url_or_skip()
    store: RedisStatsStore | RedisBudgetStore
    if kind == "stats":
        store = RedisStatsStore(url, prefix=prefix)
        use: Callable[[], object] = lambda: store.record("a/b", latency_ms=5.0)  # noqa: E731
    else:
        store = budget_store = RedisBudgetStore(url, prefix=prefix)
        use = lambda: _budgets(budget_store).reserve(Decimal("0.1"))  # noqa: E731
    use()
    client = store._clients.sync_client()
    pool = client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (64, 20)
    assert [c._sock is not None for c in pool._connections] == [True]
    store.close()
    assert [c._sock is not None for c in pool._connections] == [False]  # disconnected
    use()  # a new client, made on first use
    assert store._clients.sync_client() is not client
    store.close()

    async def run() -> Any:
        made = store._clients.async_client()
        if isinstance(store, RedisStatsStore):
            await store.arecord("a/b", latency_ms=6.0)
        else:
            await _budgets(store).areserve(Decimal("0.1"))
        await store.aclose()
        return made

    made = asyncio.run(run())
    assert isinstance(made.connection_pool, redis.asyncio.BlockingConnectionPool)
    assert made.connection_pool.max_connections == 64
    assert store._clients.async_client() is not made
    # Three uses, on three clients, all landed.
    if isinstance(store, RedisStatsStore):
        assert store.snapshot().deployments["a/b"].samples == 3
    else:
        assert _budgets(store).status()[0].spent == Decimal("0.3")
    store.close()


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["stats", "budgets"])
def test_stores_use_given_clients_and_leave_them_open(prefix: str, kind: str) -> None:
    import redis
    import redis.asyncio

    url = redis_url_or_skip()
    sync = redis.Redis.from_url(url)

    async def run() -> None:
        async_ = redis.asyncio.Redis.from_url(url)
        store: RedisStatsStore | RedisBudgetStore
        if kind == "stats":
            store = stats = RedisStatsStore(client=sync, async_client=async_, prefix=prefix)
            stats.record("a/b", latency_ms=5.0)
            await stats.arecord("a/b", latency_ms=6.0)
            assert stats.snapshot().deployments["a/b"].samples == 2
        else:
            store = budget_store = RedisBudgetStore(client=sync, async_client=async_, prefix=prefix)
            budgets = _budgets(budget_store)
            budgets.reserve(Decimal("0.1"))
            await budgets.areserve(Decimal("0.1"))
            assert budgets.status()[0].spent == Decimal("0.2")
        store.close()
        await store.aclose()
        assert store._clients.sync_client() is sync
        assert store._clients.async_client() is async_
        assert await async_.ping()
        await async_.aclose()

    asyncio.run(run())
    assert sync.ping()
    sync.close()


@pytest.mark.redis
def test_a_stats_store_given_only_an_async_client_says_so_on_sync_use(prefix: str) -> None:
    import redis.asyncio

    url = redis_url_or_skip()

    async def run() -> None:
        async_ = redis.asyncio.Redis.from_url(url)
        store = RedisStatsStore(async_client=async_, prefix=prefix)
        await store.astarted("a/b")
        assert store.in_flight("a/b") == 1  # counted here: no client needed
        with pytest.raises(RuntimeError, match="RedisStatsStore got no sync client and no url"):
            store.snapshot()
        await store.afinished("a/b")
        await async_.aclose()

    asyncio.run(run())


# ------------------------------------------------------------------ a server that stops answering


class Silent:
    """A Redis url whose server accepts connections and reads, but never answers."""

    def __init__(self) -> None:
        import socket
        import threading

        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}/0"
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)  # kept open and never answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def _within(seconds: float, work: Callable[[], object]) -> object:
    """``work()``'s result or error, failing the test if it is still running after
    ``seconds`` (a client without read timeouts waits on a silent server forever)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(work)
        try:
            return future.exception(timeout=seconds) or future.result()
        except TimeoutError:
            pytest.fail(f"still waiting on the silent server after {seconds} s")


def test_made_clients_time_out_on_a_silent_server_and_the_url_can_say_how_long(
    silent: Silent,
) -> None:
    import redis

    store = RedisBudgetStore(url=silent.url)
    error = _within(20, lambda: _budgets(store).reserve(Decimal("0.01"), None))
    assert isinstance(error, redis.TimeoutError)
    kwargs = store._clients.sync_client().connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.0, 1.0)
    store.close()

    clients = RedisClients("Store", silent.url + "?socket_timeout=0.2")
    assert clients.sync_client().connection_pool.connection_kwargs["socket_timeout"] == 0.2
    assert isinstance(_within(20, clients.sync_client().ping), redis.TimeoutError)
    clients.close()

    async def ping() -> object:
        client = RedisClients("Store", silent.url, pool={"max_connections": 2}).async_client()
        try:
            return await asyncio.wait_for(client.ping(), 20)
        except redis.TimeoutError as exc:
            return exc
        finally:
            await client.aclose()

    assert isinstance(asyncio.run(ping()), redis.TimeoutError)


def test_calls_go_on_when_redis_stops_answering_and_leave_it_alone_meanwhile(
    silent: Silent, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from routing_middleware.engine import LLMRoute
    from routing_middleware.schema import ChatRequest, Message

    budget = {"name": "all", "scope": "global", "limit_usd": "5"}
    engine = LLMRoute(
        {
            "offline": "always",
            "offline_latency": "none",
            "redis_url": silent.url,
            "routing": {"budgets": [budget], "stats_refresh_s": 3600},
        },
        environ={},
    )
    request = ChatRequest(model="gpt-4o-mini", messages=[Message(role="user", content="hi")])
    streamed = request.model_copy(update={"stream": True})

    async def async_calls() -> str:
        done = await engine.acomplete(request)
        _, stream = await engine.astream(streamed)
        text = "".join([chunk.text or "" async for chunk in stream])
        return done.response.text + text

    with caplog.at_level(logging.WARNING, logger="llmroute"):
        # the first call finds each store failing (one timeout each) and goes on
        first = _within(60, lambda: engine.complete(request))
        assert not isinstance(first, BaseException), first
        asked = silent.connections
        assert asked > 0
        for _ in range(5):
            done = _within(10, lambda: engine.complete(request))
            assert not isinstance(done, BaseException), done
        assert _within(10, lambda: asyncio.run(async_calls()))
    assert silent.connections == asked  # nothing more asked of it while it is down
    failed = [r.getMessage() for r in caplog.records if "failed (TimeoutError)" in r.getMessage()]
    # one warning: the stores made from one url share its outage (one timeout found it)
    assert len(failed) == 1
    assert failed[0].startswith("Redis failed (TimeoutError)")
    assert silent.url.rsplit(":", 1)[1] not in caplog.text  # (nor its address)


def test_stores_made_from_one_url_share_its_outage_and_given_clients_have_their_own() -> None:
    from routing_middleware.breaker import RedisBreakerStore
    from routing_middleware.cache import RedisCacheStore

    url = "redis://127.0.0.1:1/3"
    stores = [
        RedisBudgetStore(url=url),
        RedisStatsStore(url),
        RedisBreakerStore(url),
        RedisCacheStore(url),
    ]
    assert all(store.outage is stores[0].outage for store in stores)
    assert RedisBudgetStore(url="redis://127.0.0.1:1/4").outage is not stores[0].outage
    assert RedisBudgetStore(client=Given()).outage is not stores[0].outage
    budgets = Budgets([Budget(name="b", limit_usd=Decimal("1"))], stores[0])
    assert budgets.outage is stores[0].outage


@pytest.mark.redis
def test_a_store_left_alone_is_probed_off_the_request_path_and_comes_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import time

    from routing_middleware import _deferred, _outage

    monkeypatch.setattr(_outage, "STORE_RETRY_S", 0.05)
    url = redis_url_or_skip()
    store = RedisBudgetStore(url=url + "?client_name=probe-test")  # (its own outage)
    outage = store.outage
    with caplog.at_level(logging.WARNING, logger="llmroute"):
        outage.failed(ConnectionError("blip"))
        assert outage.down
        time.sleep(0.1)
        assert outage.down  # due: a probe is queued, callers still leave it alone
        assert _deferred.drain()
        assert not outage.down
    assert "Redis answers again" in caplog.text
    store.close()
