"""A shared store (budgets, breakers, response cache) that fails never takes routing
or calls down, and is left alone for a while once it has failed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from routing_middleware import _outage
from routing_middleware.breaker import BreakerPolicy, CircuitBreaker, MemoryBreakerStore
from routing_middleware.budgets import Budget, BudgetLine, Budgets, MemoryBudgetStore
from routing_middleware.cache import CacheEntry, MemoryCacheStore, ResponseCache
from routing_middleware.context import RouteContext
from routing_middleware.engine import LLMRoute
from routing_middleware.router import Deployment
from routing_middleware.schema import BudgetExceeded, ChatRequest, ChatResponse, Choice, Message

SECRET = "redis://:hunter2@10.0.0.9:6379/0"


class FlakyStore(MemoryBudgetStore):
    """A memory store that can be switched off; counts what it was asked while off."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.asked_while_down = 0

    def _check(self) -> None:
        if self.down:
            self.asked_while_down += 1
            raise ConnectionError(f"Error 111 connecting to {SECRET}")

    def totals(self, lines: Sequence[BudgetLine]) -> list[int]:
        self._check()
        return super().totals(lines)

    def totals_until(self, lines: Sequence[BudgetLine]) -> tuple[list[int], float]:
        self._check()
        return super().totals_until(lines)

    def reserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        self._check()
        return super().reserve(lines, amount, hold)

    async def areserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        self._check()
        return await super().areserve(lines, amount, hold)


def _request() -> ChatRequest:
    return ChatRequest(model="gpt-4o-mini", messages=[Message(role="user", content="hi")])


def _engine(store: FlakyStore) -> LLMRoute:
    budget = {"name": "all", "scope": "global", "limit_usd": "0.000001"}
    return LLMRoute(
        {"offline": "always", "offline_latency": "none", "routing": {"budgets": [budget]}},
        environ={},
        budget_store=store,
    )


def _spend(engine: LLMRoute) -> None:
    """Spend the engine's tiny budget, so a call with budgets applied is refused."""
    engine.budgets.settle(engine.budgets.reserve(Decimal(0)), Decimal("0.01"))


def test_calls_go_on_without_budgets_while_the_store_fails_and_it_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_outage, "STORE_RETRY_S", 0.2)
    store = FlakyStore()
    engine = _engine(store)
    store.down = True
    with caplog.at_level(logging.WARNING, logger="llmroute"):
        for _ in range(5):
            assert engine.complete(_request()).response.text
        assert engine.budgets.outage.until is not None
        # asked once, then left alone until it is due again
        assert store.asked_while_down == 1
        time.sleep(0.25)
        assert engine.complete(_request()).response.text
        assert store.asked_while_down == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "failed (ConnectionError)" in w]) == 1
    assert not any("hunter2" in w or "10.0.0.9" in w for w in warnings)

    store.down = False
    time.sleep(0.25)
    _spend(engine)
    with caplog.at_level(logging.WARNING, logger="llmroute"), pytest.raises(BudgetExceeded):
        engine.complete(_request())
    assert "answers again" in caplog.text
    assert engine.budgets.outage.until is None


def test_async_calls_skip_the_hold_while_the_store_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FlakyStore()
    engine = _engine(store)
    store.down = True

    async def main() -> str:
        done = await engine.acomplete(_request())
        return done.response.text

    assert asyncio.run(main())
    assert engine.budgets.outage.until is not None


def test_status_and_reserve_still_raise_the_store_error_to_their_callers() -> None:
    store = FlakyStore()
    budgets = Budgets([Budget(name="all", limit_usd=Decimal("1"))], store)
    store.down = True
    assert budgets.pressing(RouteContext()) == ()
    with pytest.raises(ConnectionError):
        budgets.status(RouteContext())
    with pytest.raises(ConnectionError):
        budgets.reserve(Decimal("0.01"), RouteContext())


@pytest.mark.parametrize("store_kind", ["memory", "flaky with a status ttl"])
def test_pressing_gives_what_it_remembers_only_while_the_store_answers(store_kind: str) -> None:
    """The memo answers without the outage guard only while no outage is on; while the
    store is left alone, ``pressing`` gives nothing, as it did before it was fast."""
    store = MemoryBudgetStore() if store_kind == "memory" else FlakyStore()
    ttl = 0.0 if store_kind == "memory" else 60.0
    budgets = Budgets([Budget(name="all", limit_usd=Decimal("1"))], store, status_ttl_s=ttl)
    budgets.settle(budgets.reserve(Decimal(0), RouteContext()), Decimal("0.9"))
    budgets.pressing(RouteContext())  # (with a ttl: reads the totals it then keeps)
    spent = budgets.pressing(RouteContext())
    assert [s.action for s in spent] == ["downgrade"]
    assert budgets.pressing(RouteContext()) is spent  # remembered
    budgets.outage.failed(ConnectionError("down"))  # as a failed store call marks it
    assert budgets.outage.until is not None
    assert budgets.pressing(RouteContext()) == ()
    budgets.outage.answered(budgets.outage.until)
    assert budgets.outage.until is None
    assert budgets.pressing(RouteContext()) is spent


class Switch:
    """Makes a store's methods fail while ``down``; counts what they were asked then."""

    def __init__(self) -> None:
        self.down = False
        self.asked_while_down = 0

    def check(self) -> None:
        if self.down:
            self.asked_while_down += 1
            raise ConnectionError(f"Error 111 connecting to {SECRET}")


class FlakyBreakerStore(MemoryBreakerStore):
    def __init__(self, switch: Switch) -> None:
        super().__init__()
        self.switch = switch

    def get(self, key: str) -> Any:
        self.switch.check()
        return super().get(key)

    async def aget(self, key: str) -> Any:
        self.switch.check()
        return await super().aget(key)

    def apply(self, *args: Any) -> Any:
        self.switch.check()
        return super().apply(*args)


def test_breakers_count_every_deployment_healthy_while_their_store_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_outage, "STORE_RETRY_S", 0.2)
    switch = Switch()
    breaker = CircuitBreaker(
        FlakyBreakerStore(switch), BreakerPolicy(consecutive_failures=1, cooldown_s=60)
    )
    deployment = Deployment("openai/gpt-a", "openai", "gpt-a")
    breaker.record(deployment, False)
    assert not breaker.is_available(deployment)  # open

    switch.down = True
    with caplog.at_level(logging.WARNING, logger="llmroute"):
        assert breaker.is_available(deployment)
        assert breaker.acquire(deployment)
        assert asyncio.run(breaker.aacquire(deployment))
        breaker.record(deployment, False)
        asyncio.run(breaker.arecord(deployment, True))
    assert switch.asked_while_down == 1
    assert caplog.text.count("failed (ConnectionError)") == 1
    assert "hunter2" not in caplog.text
    with pytest.raises(ConnectionError):
        breaker.state(deployment)  # (what reports read still says it)

    switch.down = False
    time.sleep(0.25)
    with caplog.at_level(logging.WARNING, logger="llmroute"):
        assert not breaker.is_available(deployment)  # open again, as stored
    assert "breaker store FlakyBreakerStore answers again" in caplog.text


class FlakyCacheStore(MemoryCacheStore):
    def __init__(self, switch: Switch) -> None:
        super().__init__()
        self.switch = switch

    def get(self, key: str) -> CacheEntry | None:
        self.switch.check()
        return super().get(key)

    def set(self, key: str, entry: CacheEntry) -> None:
        self.switch.check()
        super().set(key, entry)


def test_a_failing_cache_store_is_a_miss_and_is_left_alone_meanwhile(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_outage, "STORE_RETRY_S", 0.2)
    switch = Switch()
    cache = ResponseCache(FlakyCacheStore(switch))
    answer = ChatResponse(
        id="r",
        model="gpt-a",
        provider="openai",
        choices=[Choice(message=Message(role="assistant", content="4"))],
    )
    entry = CacheEntry(answer, Decimal("0.001"))
    cache.set("k", entry)
    switch.down = True
    with caplog.at_level(logging.WARNING, logger="llmroute"):
        assert cache.get("k") is None
        cache.set("k2", entry)
        assert asyncio.run(cache.aget("k")) is None
    assert switch.asked_while_down == 1
    assert caplog.text.count("failed (ConnectionError)") == 1
    switch.down = False
    time.sleep(0.25)
    assert cache.get("k") == entry
    assert cache.get("k2") is None  # (dropped while the store was down)


class SettleSwitch(FlakyStore):
    """A flaky store whose settles fail too, with ``error`` while it is down."""

    error: Exception = ConnectionError("refused")

    def settle(self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str) -> None:
        if self.down:
            self.asked_while_down += 1
            raise self.error
        super().settle(lines, reserved, actual, hold)


def test_settles_the_store_cannot_take_are_kept_and_applied_when_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from routing_middleware import _deferred
    from routing_middleware._dispatch_drivers import settle_now

    monkeypatch.setattr(_outage, "STORE_RETRY_S", 0.1)
    store = SettleSwitch()
    budgets = Budgets([Budget(name="all", limit_usd=Decimal("10"))], store)
    held = [budgets.reserve(Decimal("0.5"), RouteContext()) for _ in range(3)]
    store.down = True
    settle_now(budgets, held[0], Decimal("0.1"))
    assert store.asked_while_down == 2  # failed before reaching it: one retry, then kept
    settle_now(budgets, held[1], Decimal("0.2"))
    assert store.asked_while_down == 2  # known down: kept without asking
    assert len(budgets._unsettled) == 2

    store.down = False
    assert budgets.status(RouteContext())[0].spent == Decimal("1.5")  # still held
    time.sleep(0.15)
    assert budgets.pressing(RouteContext()) == ()  # answers: the kept settles are due
    assert _deferred.drain()
    settle_now(budgets, held[2], Decimal("0.3"))
    assert budgets.status(RouteContext())[0].spent == Decimal("0.6")  # all three, once
    assert budgets._unsettled == []


class AppliedThenTimesOut(FlakyStore):
    """While ``down``, applies each settle and then times out (the answer is lost)."""

    def settle(self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str) -> None:
        super().settle(lines, reserved, actual, hold)
        if self.down:
            self.asked_while_down += 1
            raise TimeoutError("Timeout reading from socket")


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_settle_that_timed_out_is_kept_and_sent_again_without_counting_twice(
    monkeypatch: pytest.MonkeyPatch, is_async: bool
) -> None:
    from routing_middleware import _deferred
    from routing_middleware._dispatch_drivers import asettle_now, settle_now

    monkeypatch.setattr(_outage, "STORE_RETRY_S", 0.05)
    store = AppliedThenTimesOut()
    budgets = Budgets([Budget(name="all", limit_usd=Decimal("10"))], store)
    mine, other = (budgets.reserve(Decimal("0.5"), RouteContext()) for _ in range(2))
    store.down = True
    if is_async:
        asyncio.run(asettle_now(budgets, mine, Decimal("0.1")))
    else:
        settle_now(budgets, mine, Decimal("0.1"))
    assert store.asked_while_down == 1  # not again at once: kept for when it answers
    assert [kept for kept, _ in budgets._unsettled] == [mine]
    store.down = False
    time.sleep(0.06)
    budgets.pressing(RouteContext())  # it answers: the kept settle is sent again
    assert _deferred.drain()
    assert budgets._unsettled == []
    # counted once, and the other call's hold is still held
    assert budgets.status(RouteContext())[0].spent == Decimal("0.6")
    budgets.settle(other, Decimal("0.2"))
    assert budgets.status(RouteContext())[0].spent == Decimal("0.3")


class ReserveTimesOut(MemoryBudgetStore):
    """While ``down``, takes each hold and then times out (the answer is lost)."""

    down = False

    def reserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        found = super().reserve(lines, amount, hold)
        if self.down:
            raise TimeoutError("Timeout reading from socket")
        return found


def test_a_hold_whose_answer_was_lost_is_released_once_the_store_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from routing_middleware import _deferred

    monkeypatch.setattr(_outage, "STORE_RETRY_S", 0.05)
    store = ReserveTimesOut()
    engine = LLMRoute(
        {
            "offline": "always",
            "offline_latency": "none",
            "routing": {"budgets": [{"name": "all", "limit_usd": "10"}]},
        },
        environ={},
        budget_store=store,
    )
    budgets = engine.budgets
    store.down = True
    assert engine.complete(_request()).response.text  # it goes on without budgets
    assert budgets.outage.until is not None
    assert store.totals(budgets.lines(RouteContext())) > [0]  # the hold landed all the same
    store.down = False
    time.sleep(0.06)
    budgets.pressing(RouteContext())  # it answers: the kept release is sent
    assert _deferred.drain()
    assert store.totals(budgets.lines(RouteContext())) == [0]  # released, and not charged
    assert budgets._unsettled == []


def test_a_probed_store_stays_down_until_a_probe_on_the_cleanup_thread_answers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    from routing_middleware import _deferred

    monkeypatch.setattr(_outage, "STORE_RETRY_S", 0.05)
    answers = [False, True]
    probed_on: list[int] = []

    def probe() -> None:
        probed_on.append(threading.get_ident())
        if not answers.pop(0):
            raise ConnectionError("still down")

    outage = _outage.StoreOutage("Thing", "calls go on", probe)
    with caplog.at_level(logging.WARNING, logger="llmroute"):
        outage.failed(TimeoutError("x"))
        outage.failed(TimeoutError("x"))  # (one warning per outage)
        for expected_probes in (1, 2):
            time.sleep(0.08)
            assert outage.down  # due: probed in the background, left alone meanwhile
            assert _deferred.drain()
            assert len(probed_on) == expected_probes
        assert not outage.down
    assert threading.get_ident() not in probed_on
    assert caplog.text.count("Thing failed (TimeoutError)") == 1
    assert "Thing answers again" in caplog.text
    outage.failed(TimeoutError("x"))
    with pytest.raises(_outage.StoreUnavailable):
        outage.check()


class AsyncFails(MemoryBudgetStore):
    """Reads answer; async holds and settles fail."""

    async def areserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        raise ConnectionError("refused")

    async def asettle(
        self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str
    ) -> None:
        raise ConnectionError("refused")


def test_async_paths_go_on_when_their_own_store_call_fails_first() -> None:
    import redis.asyncio

    from routing_middleware.stats import RedisStatsStore

    store = AsyncFails()
    engine = _engine(store)  # type: ignore[arg-type]
    budgets = engine.budgets
    assert budgets.outage.until is None

    async def calls() -> None:
        done = await engine.acomplete(_request())  # its hold fails: it goes on without
        assert done.response.text
        assert budgets.outage.until is not None

    asyncio.run(calls())

    switch = Switch()
    breaker = CircuitBreaker(FlakyBreakerStore(switch))
    deployment = Deployment("openai/gpt-a", "openai", "gpt-a")
    switch.down = True
    assert asyncio.run(breaker.aacquire(deployment))
    assert breaker._outage.until is not None
    breaker2 = CircuitBreaker(FlakyBreakerStore(switch))
    asyncio.run(breaker2.arecord(deployment, False))  # does not raise
    assert breaker2._outage.until is not None

    cache_switch = Switch()

    class AsyncFlaky(FlakyCacheStore):
        async def aget(self, key: str) -> CacheEntry | None:
            self.switch.check()
            return None

        async def aset(self, key: str, entry: CacheEntry) -> None:
            self.switch.check()

    cache = ResponseCache(AsyncFlaky(cache_switch))
    cache_switch.down = True
    assert asyncio.run(cache.aget("k")) is None
    assert cache._outage.until is not None
    cache2 = ResponseCache(AsyncFlaky(cache_switch))
    answer = ChatResponse(id="r", model="m", provider="p", choices=[])
    asyncio.run(cache2.aset("k", CacheEntry(answer, Decimal(0))))  # does not raise
    assert cache2._outage.until is not None

    async def stats() -> None:
        client = redis.asyncio.Redis(host="127.0.0.1", port=1, socket_timeout=0.2)
        store = RedisStatsStore(async_client=client)
        await store.astarted("a/b")  # does not raise; counted here
        assert store.outage.until is not None
        assert store.in_flight("a/b") == 1
        await client.aclose()

    asyncio.run(stats())


def test_a_settle_on_a_store_without_a_sync_client_waits_for_its_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from routing_middleware._dispatch_drivers import settle_now
    from routing_middleware.budgets import RedisBudgetStore, Reservation

    store = RedisBudgetStore(async_client=object())
    budgets = Budgets([Budget(name="all", limit_usd=Decimal("10"))], store)
    reservation = Reservation(budgets.lines(RouteContext()), 500_000)
    with caplog.at_level(logging.WARNING):
        settle_now(budgets, reservation, Decimal("0.1"))
    # kept for the next async operation (tests/core/test_budgets_async_only.py)
    assert budgets._unsettled == [(reservation, Decimal("0.1"))]
    assert budgets._replay_async
    assert caplog.text == ""
    assert budgets.outage.until is None  # a setup limit, not an outage


def test_a_snapshot_per_decision_that_fails_keeps_the_figures_there_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from routing_middleware.stats import MemoryStatsStore

    class FlakyStats(MemoryStatsStore):
        down = False

        def snapshot(self) -> Any:
            if self.down:
                raise ConnectionError(f"Error 111 connecting to {SECRET}")
            return super().snapshot()

    from routing_middleware.catalog import default_catalog
    from routing_middleware.config import RoutingConfig
    from routing_middleware.router import Router

    stats = FlakyStats()
    router = Router(
        default_catalog(), RoutingConfig.model_validate({"stats_refresh_s": 0}), stats=stats
    )
    assert router.decide(_request(), RouteContext(tier=1)).primary
    stats.down = True
    with caplog.at_level(logging.WARNING, logger="llmroute"):
        for _ in range(3):
            assert router.decide(_request(), RouteContext(tier=1)).primary
    assert caplog.text.count("failed (ConnectionError)") == 1
    assert "hunter2" not in caplog.text
    stats.down = False
    router.decide(_request(), RouteContext(tier=1))
    assert not router._refresher.failing


def test_a_shared_outage_does_not_keep_replaced_budgets_alive() -> None:
    import gc
    import weakref

    from routing_middleware import _deferred

    shared = _outage.StoreOutage("Redis", "calls go on")

    class SharedStore(MemoryBudgetStore):
        outage = shared

    budgets = Budgets([Budget(name="all", limit_usd=Decimal("1"))], SharedStore())
    assert budgets.outage is shared
    gone = weakref.ref(budgets)
    del budgets
    gc.collect()
    assert gone() is None  # the listener it left on the shared outage holds it weakly
    shared.failed(ConnectionError("x"))
    shared.answered(shared.until or 0.0)  # runs that listener: nothing to do, no error
    assert _deferred.drain()


class SlowToSettle(MemoryBudgetStore):
    """Takes a while over each settle (a store across a network), and says when one began."""

    def __init__(self) -> None:
        super().__init__()
        self.settling = asyncio.Event()

    async def asettle(
        self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str
    ) -> None:
        self.settling.set()
        await asyncio.sleep(0.05)
        await super().asettle(lines, reserved, actual, hold)


@pytest.mark.parametrize("loop_goes_on", [True, False])
def test_an_async_call_cancelled_while_it_settles_still_settles(loop_goes_on: bool) -> None:
    from routing_middleware import _deferred

    store = SlowToSettle()
    budget = {"name": "all", "scope": "global", "limit_usd": "10"}
    engine = LLMRoute(
        {"offline": "always", "offline_latency": "none", "routing": {"budgets": [budget]}},
        environ={},
        budget_store=store,
    )
    lines = engine.budgets.lines(RouteContext())

    async def main() -> None:
        call = asyncio.create_task(engine.acomplete(_request()))
        await store.settling.wait()
        assert store.totals(lines)[0] > 0  # the worst case is held
        call.cancel()  # the client went away just then
        with pytest.raises(asyncio.CancelledError):
            await call
        if loop_goes_on:  # serving others: whatever the call left running ends
            await asyncio.gather(*asyncio.all_tasks() - {asyncio.current_task()})

    asyncio.run(main())  # (else it shuts down now, cancelling what is left)
    assert _deferred.drain()
    spent = store.totals(lines)[0]
    assert store._holds == {}  # the hold was replaced by the call's cost ...
    assert 0 < spent < 1_000  # ... not left counting its worst case for the hold TTL
