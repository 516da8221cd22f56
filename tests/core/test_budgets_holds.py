"""Budget holds by id: a reserve or settle sent again counts once, a hold nobody settles
expires, and a settle or reserve whose answer was lost is sent again once the store
answers. Memory and Redis (a real server) stores alike."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from decimal import Decimal
from typing import Any

import pytest

from routing_middleware import _deferred, _outage
from routing_middleware import budgets as budgets_module
from routing_middleware.budgets import (
    Budget,
    BudgetLine,
    Budgets,
    MemoryBudgetStore,
    RedisBudgetStore,
    new_hold_id,
)
from routing_middleware.context import RouteContext

REDIS_URL = os.environ.get("LLMROUTE_TEST_REDIS_URL", "")
CTX = RouteContext(user_id="ada")

#: A store and a way to let ``seconds`` pass for it.
Maker = Callable[[float], tuple[Any, Callable[[float], None]]]


class Clock:
    def __init__(self) -> None:
        self.now = 1_770_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _lines(store: Any) -> tuple[BudgetLine, ...]:
    """Two lines (a global and a per-user budget): holds span several counters."""
    budgets = Budgets(
        [
            Budget(name="all", limit_usd=Decimal(10)),
            Budget(name="per-user", scope="user", limit_usd=Decimal(10)),
        ],
        store,
    )
    return budgets.lines(CTX)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    import redis

    prefix = f"llmroute-test:holds:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_store(request: pytest.FixtureRequest) -> Iterator[Maker]:
    """A factory of stores with a given hold TTL, memory (on an injected clock) or Redis
    (on the server's clock: time passes for real)."""
    made: list[RedisBudgetStore] = []

    def make(hold_ttl_s: float) -> tuple[Any, Callable[[float], None]]:
        if request.param == "memory":
            clock = Clock()
            return MemoryBudgetStore(clock, hold_ttl_s=hold_ttl_s), clock.advance
        prefix = request.getfixturevalue("redis_prefix")
        store = RedisBudgetStore(REDIS_URL, prefix=prefix, hold_ttl_s=hold_ttl_s)
        made.append(store)
        return store, time.sleep

    yield make
    for store in made:
        store.close()


def test_settling_twice_counts_once_and_releases_only_its_own_hold(make_store: Maker) -> None:
    store, _ = make_store(3600)
    lines = _lines(store)
    mine, other = new_hold_id(), new_hold_id()
    assert store.reserve(lines, 300_000, mine) is None
    assert store.reserve(lines, 200_000, other) is None
    store.settle(lines, 300_000, 100_000, mine)
    store.settle(lines, 300_000, 100_000, mine)  # sent again (its answer was lost)
    assert store.totals(lines) == [300_000, 300_000]  # 0.1 spent once, the other 0.2 held
    store.settle(lines, 200_000, 50_000, other)
    assert store.totals(lines) == [150_000, 150_000]


def test_a_reserve_sent_again_holds_once(make_store: Maker) -> None:
    store, _ = make_store(3600)
    lines = _lines(store)
    hold = new_hold_id()
    assert store.reserve(lines, 400_000, hold) is None
    assert store.reserve(lines, 400_000, hold) is None  # a retry: answers held
    assert store.totals(lines) == [400_000, 400_000]
    store.settle(lines, 400_000, 100_000, hold)
    assert store.reserve(lines, 400_000, hold) is None  # a retry after its settle
    assert store.totals(lines) == [100_000, 100_000]


def test_settling_an_id_never_held_records_the_spend_once(make_store: Maker) -> None:
    store, _ = make_store(3600)
    lines = _lines(store)
    other = new_hold_id()
    assert store.reserve(lines, 200_000, other) is None
    never = new_hold_id()  # its reserve never landed
    store.settle(lines, 500_000, 70_000, never)
    store.settle(lines, 500_000, 70_000, never)
    assert store.totals(lines) == [270_000, 270_000]  # spent once; the other hold untouched


def test_a_hold_nobody_settles_stops_counting_after_the_hold_ttl(make_store: Maker) -> None:
    store, advance = make_store(1)
    lines = _lines(store)
    lost = new_hold_id()  # its worker died before settling
    assert store.reserve(lines, 600_000, lost) is None
    assert store.totals(lines) == [600_000, 600_000]
    advance(1.2)
    assert store.totals(lines) == [0, 0]
    live = new_hold_id()
    assert store.reserve(lines, 200_000, live) is None
    store.settle(lines, 600_000, 30_000, lost)  # late: records its spend, holds nothing
    assert store.totals(lines) == [230_000, 230_000]
    store.settle(lines, 200_000, 10_000, live)
    assert store.totals(lines) == [40_000, 40_000]


def test_an_expired_hold_no_longer_blocks_a_spent_looking_budget(make_store: Maker) -> None:
    store, advance = make_store(1)
    budgets = Budgets([Budget(name="all", limit_usd=Decimal(1))], store)
    lines = budgets.lines(CTX)
    assert store.reserve(lines, 1_000_000, new_hold_id()) is None
    assert store.reserve(lines, 1, new_hold_id()) == 0  # the whole dollar is held
    advance(1.2)
    assert store.reserve(lines, 1_000_000, new_hold_id()) is None


def test_the_memory_store_keeps_no_record_of_holds_past_their_ttl_and_few_settled_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(budgets_module, "MAX_SETTLED_IN_MEMORY", 20)
    clock = Clock()
    store = MemoryBudgetStore(clock, hold_ttl_s=60)
    lines = _lines(store)
    settled = []
    for _ in range(50):
        hold = new_hold_id()
        store.reserve(lines, 10, hold)
        store.settle(lines, 10, 5, hold)
        settled.append(hold)
    store.reserve(lines, 10, new_hold_id())  # never settled
    assert len(store._holds) == 1
    assert list(store._settled) == settled[-20:]  # by number, whatever the call rate
    store.settle(lines, 10, 5, settled[-1])  # still known: counted once
    assert store.totals(lines) == [260, 260]
    clock.advance(61)
    assert store.totals(lines) == [250, 250]
    assert (len(store._holds), len(store._lapse)) == (0, 0)


def test_the_memory_store_forgets_settled_holds_at_any_call_rate() -> None:
    clock = Clock()
    store = MemoryBudgetStore(clock, hold_ttl_s=3600)
    lines = _lines(store)
    live = [new_hold_id() for _ in range(100)]
    for hold in live:
        store.reserve(lines, 10, hold)
    for _ in range(20_000):  # far more calls than an hour's worth of live holds
        hold = new_hold_id()
        store.reserve(lines, 10, hold)
        store.settle(lines, 10, 5, hold)
        clock.advance(0.01)
    assert len(store._lapse) <= 2 * len(store._holds) + 1024  # not one per call
    assert store.totals(lines) == [101_000, 101_000]
    clock.advance(3600)  # the unsettled ones still lapse, in order, once their time is up
    assert store.totals(lines) == [100_000, 100_000]
    assert (len(store._holds), len(store._lapse)) == (0, 0)


def test_pressing_lets_go_of_a_hold_once_it_lapses() -> None:
    clock = Clock()
    store = MemoryBudgetStore(clock, hold_ttl_s=60)
    budgets = Budgets([Budget(name="all", limit_usd=Decimal(1))], store, clock=clock)
    budgets.reserve(Decimal("0.9"), CTX)  # its worker dies: never settled
    assert [s.action for s in budgets.pressing(CTX)] == ["downgrade"]
    clock.advance(30)
    assert [s.action for s in budgets.pressing(CTX)] == ["downgrade"]
    clock.advance(31)
    assert budgets.pressing(CTX) == ()  # remembered answers end when the hold lapses


def test_every_key_a_redis_script_touches_is_in_the_slot_of_the_prefix_hash_tag() -> None:
    """Redis Cluster runs a script only on keys of one slot: every counter and hold set of
    a reservation, whatever its subjects hold, hashes by the prefix's tag alone."""
    from redis.crc import key_slot

    store = RedisBudgetStore("redis://127.0.0.1:1", prefix="llmroute:{b}:")  # never connects
    budgets = Budgets(
        [
            Budget(name="all", limit_usd=Decimal(1)),
            Budget(name="u", scope="user", period="rolling", rolling_hours=3, limit_usd=Decimal(1)),
            Budget(name="t", scope="tag", limit_usd=Decimal(1)),
        ],
        store,
    )
    lines = budgets.lines(RouteContext(user_id="{ada}", tags=frozenset({"x}", "{y"})))
    keys = (
        store._reserve_args(lines, 1, "h")[0]
        + store._settle_args(lines, 1, "h")[0]
        + store._totals_args(lines)[0]
    )
    assert len(keys) == 2 * (2 * (1 + 3 + 2)) + 2 * 4  # counters and hold sets, all lines
    assert {key_slot(key.encode()) for key in keys} == {key_slot(b"b")}


@pytest.mark.redis
def test_redis_sweeps_expired_holds_a_bounded_batch_per_call(redis_prefix: str) -> None:
    import redis

    from routing_middleware.budgets import SWEEP_BATCH

    store = RedisBudgetStore(REDIS_URL, prefix=redis_prefix, hold_ttl_s=1)
    lines = Budgets([Budget(name="all", limit_usd=Decimal(10))], store).lines(CTX)
    for _ in range(2 * SWEEP_BATCH + 50):
        assert store.reserve(lines, 10, new_hold_id()) is None
    client = redis.Redis.from_url(REDIS_URL)
    holds = redis_prefix + lines[0].charge_key + "|holds"
    time.sleep(1.2)
    left = []
    for _ in range(3):
        store.totals(lines)
        left.append(client.zcard(holds))
    assert left == [SWEEP_BATCH + 50, 50, 0]
    assert store.totals(lines) == [0]
    assert client.hlen(redis_prefix + lines[0].charge_key) == 1  # only ``h`` is left
    client.close()
    store.close()


@pytest.mark.redis
def test_redis_remembers_settled_ids_for_their_own_shorter_window(redis_prefix: str) -> None:
    import redis

    store = RedisBudgetStore(REDIS_URL, prefix=redis_prefix, hold_ttl_s=3600, settled_ttl_s=1)
    lines = Budgets([Budget(name="all", limit_usd=Decimal(10))], store).lines(CTX)
    client = redis.Redis.from_url(REDIS_URL)
    holds = redis_prefix + lines[0].charge_key + "|holds"
    settled, live = new_hold_id(), new_hold_id()
    assert store.reserve(lines, 300_000, settled) is None
    assert store.reserve(lines, 200_000, live) is None
    now = client.time()[0]
    store.settle(lines, 300_000, 100_000, settled)
    # the live hold lapses after the hold TTL; the settled id is forgotten much sooner
    assert now + 3590 < client.zscore(holds, live) <= now + 3602
    assert now < client.zscore(holds, settled) <= now + 3
    store.settle(lines, 300_000, 100_000, settled)  # a retry within the window
    assert store.totals(lines) == [300_000]
    time.sleep(1.2)
    assert store.totals(lines) == [300_000]  # swept: the live hold still counts
    assert client.zrange(holds, 0, -1) == [live.encode()]
    # past the window, a retry of a settle that had landed counts again (documented)
    store.settle(lines, 300_000, 100_000, settled)
    assert store.totals(lines) == [400_000]
    with pytest.raises(ValueError, match="settled_ttl_s"):
        RedisBudgetStore(REDIS_URL, settled_ttl_s=0)
    client.close()
    store.close()


# ------------------------------------------------------------------ answers lost on the way


class LossyProxy:
    """A TCP proxy to the test Redis that can drop what the client sends
    (``drop_requests``: Redis never sees it) or what Redis answers (``drop_replies``:
    Redis applied it, the client times out)."""

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit

        target = urlsplit(url)
        self._target = (target.hostname or "127.0.0.1", target.port or 6379)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        port = self._server.getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}{target.path}?socket_timeout=0.3"
        self.drop_requests = False
        self.drop_replies = False
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            for src, dst, drop in ((client, upstream, "requests"), (upstream, client, "replies")):
                threading.Thread(target=self._pump, args=(src, dst, drop), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, drop: str) -> None:
        try:
            while data := src.recv(65536):
                if not getattr(self, f"drop_{drop}"):
                    dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for sock in self._sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def proxy() -> Iterator[LossyProxy]:
    found = LossyProxy(REDIS_URL)
    yield found
    found.close()


def _answers_again(budgets: Budgets) -> None:
    """Let the retry time pass, have the outage probed, and run what follows on the
    cleanup thread (the probe, then the kept settles it lets go)."""
    time.sleep(0.15)
    assert budgets.outage.down  # due: probed on the cleanup thread
    assert _deferred.drain()
    assert _deferred.drain()
    assert budgets.outage.until is None


@pytest.mark.redis
def test_settles_and_a_hold_whose_answers_were_lost_count_once_when_redis_answers_again(
    proxy: LossyProxy, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from routing_middleware._dispatch_drivers import settle_now

    monkeypatch.setattr(_outage, "STORE_RETRY_S", 0.1)
    store = RedisBudgetStore(proxy.url, prefix=redis_prefix)
    budgets = Budgets([Budget(name="all", limit_usd=Decimal(10))], store)
    applied, lost, other = (budgets.reserve(Decimal("0.5"), CTX) for _ in range(3))
    direct = RedisBudgetStore(REDIS_URL, prefix=redis_prefix)  # (around the proxy)
    lines = budgets.lines(CTX)
    assert direct.totals(lines) == [1_500_000]

    # Redis applies the settle; its answer is lost: kept, and sent again later.
    proxy.drop_replies = True
    settle_now(budgets, applied, Decimal("0.1"))
    assert budgets.outage.until is not None
    assert [kept for kept, _ in budgets._unsettled] == [applied]
    assert direct.totals(lines) == [1_100_000]  # it did apply
    proxy.drop_replies = False
    _answers_again(budgets)
    assert budgets._unsettled == []
    assert direct.totals(lines) == [1_100_000]  # sent again: counted once, other holds kept

    # The settle never reaches Redis: kept, and applied later.
    proxy.drop_requests = True
    settle_now(budgets, lost, Decimal("0.2"))
    assert direct.totals(lines) == [1_100_000]
    proxy.drop_requests = False
    _answers_again(budgets)
    assert direct.totals(lines) == [800_000]  # 0.1 + 0.2 spent, 0.5 held

    # A hold Redis takes but whose answer is lost: the caller goes on without it,
    # and the hold is released once Redis answers.
    proxy.drop_replies = True
    with pytest.raises(redis.TimeoutError):
        budgets.reserve(Decimal("0.7"), CTX)
    assert direct.totals(lines) == [1_500_000]
    proxy.drop_replies = False
    _answers_again(budgets)
    assert direct.totals(lines) == [800_000]

    budgets.settle(other, Decimal("0.3"))
    assert direct.totals(lines) == [600_000]
    direct.close()
    store.close()


def test_hold_ids_differ_across_forked_workers_even_when_the_app_seeds_random() -> None:
    import random

    random.seed(7)  # (an app making its own randomness repeatable)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        random.seed(7)
        os.write(write, new_hold_id().encode())
        os._exit(0)
    os.waitpid(child, 0)
    theirs = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    mine = new_hold_id()
    assert len(mine) == len(theirs) == 24
    assert mine != theirs
