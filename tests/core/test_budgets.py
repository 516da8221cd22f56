from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from routing_middleware.budgets import (
    Budget,
    Budgets,
    BudgetStatus,
    MemoryBudgetStore,
    RedisBudgetStore,
    from_micros,
    to_micros,
    worst_case_cost,
)
from routing_middleware.catalog import ModelInfo, Price
from routing_middleware.context import RouteContext
from routing_middleware.schema import BudgetExceeded, ChatRequest, Message


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# 2026-03-10 12:00 UTC, a Tuesday
T0 = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()


def _budget(**kw: Any) -> Budget:
    kw.setdefault("name", "b")
    kw.setdefault("limit_usd", Decimal("1"))
    return Budget(**kw)


def test_micros_round_up() -> None:
    assert to_micros(Decimal("0.0000001")) == 1
    assert to_micros(Decimal("1.5")) == 1_500_000
    assert from_micros(1_500_000) == Decimal("1.5")


def test_budget_validation() -> None:
    with pytest.raises(ValidationError, match="global budget takes no 'value'"):
        _budget(value="x")
    with pytest.raises(ValidationError, match="ascending"):
        _budget(thresholds=((0.9, "cheapest"), (0.5, "downgrade")))
    with pytest.raises(ValidationError):
        _budget(limit_usd=Decimal(0))


def test_action_at_thresholds() -> None:
    b = _budget(on_limit="cheapest")
    assert b.action_at(0.5) is None
    assert b.action_at(0.8) == "downgrade"
    assert b.action_at(0.96) == "cheapest"
    assert b.action_at(1.0) == "cheapest"
    assert _budget().action_at(1.2) == "block"


def test_scopes_match_context() -> None:
    budgets = Budgets(
        [
            _budget(name="all"),
            _budget(name="alice", scope="user", value="alice"),
            _budget(name="per-user", scope="user"),
            _budget(name="support", scope="feature", value="support"),
            _budget(name="tags", scope="tag"),
            _budget(name="key", scope="api_key", value="k1"),
        ]
    )
    ctx = RouteContext(user_id="alice", feature="support", tags=frozenset({"b", "a"}))
    names = [(line.budget.name, line.subject) for line in budgets.lines(ctx)]
    assert names == [
        ("all", "*"),
        ("alice", "alice"),
        ("per-user", "alice"),
        ("support", "support"),
        ("tags", "a"),
        ("tags", "b"),
    ]
    assert [line.budget.name for line in budgets.lines(RouteContext(api_key_id="k1"))] == [
        "all",
        "key",
    ]


def test_reserve_settle_release_and_block() -> None:
    budgets = Budgets([_budget()], clock=Clock(T0))
    r1 = budgets.reserve(Decimal("0.6"))
    with pytest.raises(BudgetExceeded) as info:
        budgets.reserve(Decimal("0.5"))
    assert info.value.budget == "b"
    assert info.value.status_code == 402
    budgets.settle(r1, Decimal("0.3"))
    r2 = budgets.reserve(Decimal("0.5"))
    assert budgets.status()[0].spent == Decimal("0.8")
    budgets.release(r2)
    status = budgets.status()[0]
    assert status.spent == Decimal("0.3")
    assert status.ratio == pytest.approx(0.3)


def test_all_or_nothing_across_budgets() -> None:
    budgets = Budgets(
        [_budget(name="big", limit_usd=Decimal(10)), _budget(name="small", scope="user")],
        clock=Clock(T0),
    )
    ctx = RouteContext(user_id="u")
    budgets.reserve(Decimal("0.9"), ctx)
    with pytest.raises(BudgetExceeded, match="small"):
        budgets.reserve(Decimal("0.2"), ctx)
    # The failed reservation held nothing on the budget that had room.
    spent = {s.budget.name: s.spent for s in budgets.status(ctx)}
    assert spent == {"big": Decimal("0.9"), "small": Decimal("0.9")}


def test_on_limit_cheapest_never_blocks() -> None:
    budgets = Budgets([_budget(on_limit="cheapest")], clock=Clock(T0))
    budgets.reserve(Decimal("2"))
    status = budgets.status()[0]
    assert status.ratio == pytest.approx(2.0)
    assert status.action == "cheapest"


def test_daily_period_rolls_over() -> None:
    clock = Clock(T0)
    budgets = Budgets([_budget()], clock=clock)
    budgets.settle(budgets.reserve(Decimal("1")), Decimal("1"))
    with pytest.raises(BudgetExceeded):
        budgets.reserve(Decimal("0.01"))
    clock.now += 86_400
    budgets.reserve(Decimal("0.5"))


def test_week_and_month_periods() -> None:
    clock = Clock(T0)
    weekly = Budgets([_budget(period="week")], clock=clock)
    monthly = Budgets([_budget(period="month")], clock=clock)
    for b in (weekly, monthly):
        b.settle(b.reserve(Decimal("1")), Decimal("1"))
    clock.now += 3 * 86_400  # Friday, same ISO week and month
    for b in (weekly, monthly):
        with pytest.raises(BudgetExceeded):
            b.reserve(Decimal("0.01"))
    clock.now += 4 * 86_400  # next Tuesday: new week, same month
    weekly.reserve(Decimal("0.5"))
    with pytest.raises(BudgetExceeded):
        monthly.reserve(Decimal("0.01"))
    clock.now = datetime(2026, 4, 1, tzinfo=UTC).timestamp()
    monthly.reserve(Decimal("0.5"))


def test_rolling_window_forgets_old_hours() -> None:
    clock = Clock(T0)
    budgets = Budgets([_budget(period="rolling", rolling_hours=3)], clock=clock)
    budgets.settle(budgets.reserve(Decimal("0.6")), Decimal("0.6"))
    clock.now += 3600
    budgets.settle(budgets.reserve(Decimal("0.4")), Decimal("0.4"))
    with pytest.raises(BudgetExceeded):
        budgets.reserve(Decimal("0.01"))
    clock.now += 2 * 3600  # the first hour left the 3-hour window
    assert budgets.status()[0].spent == Decimal("0.4")
    budgets.reserve(Decimal("0.6"))


def test_worst_case_cost_uses_max_tokens_or_cap() -> None:
    model = ModelInfo(
        id="p/m",
        provider="p",
        name="m",
        price=Price(Decimal("1"), Decimal("4")),
        context_window=100_000,
        max_output_tokens=1000,
    )
    request = ChatRequest(model="p/m", messages=[Message(role="user", content="x" * 400)])
    # 3 + 4 + 100 input tokens; output capped by the model's 1000-token limit
    assert worst_case_cost(request, model) == (Decimal(107) + Decimal(4000)) / 1_000_000
    capped = request.model_copy(update={"max_tokens": 10})
    assert worst_case_cost(capped, model) == (Decimal(107) + Decimal(40)) / 1_000_000
    budgets = Budgets([_budget()], clock=Clock(T0))
    reservation = budgets.reserve_for(capped, model)
    assert reservation.amount_usd == Decimal("0.000147")


def test_status_cache_serves_reads_until_ttl() -> None:
    store = MemoryBudgetStore()
    cached = Budgets([_budget()], store, status_ttl_s=60)
    live = Budgets([_budget()], store)
    assert cached.status()[0].spent == 0
    live.settle(live.reserve(Decimal("0.5")), Decimal("0.5"))
    assert cached.status()[0].spent == 0  # still cached
    assert live.status()[0].spent == Decimal("0.5")


WORST = Decimal("0.02")
LIMIT = Decimal("1")


def _hammer_threads(budgets: Budgets, n: int = 200) -> tuple[int, int]:
    barrier = threading.Barrier(n)
    ok: list[int] = []
    blocked: list[int] = []

    def call(i: int) -> None:
        barrier.wait()
        try:
            reservation = budgets.reserve(WORST)
        except BudgetExceeded:
            blocked.append(i)
            return
        ok.append(i)
        budgets.settle(reservation, WORST)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(ok), len(blocked)


def _check_spend(budgets: Budgets, ok: int, blocked: int) -> None:
    spent = budgets.status()[0].spent
    assert ok + blocked == 200
    assert spent <= LIMIT + WORST
    # Every reservation settles at its worst case, so exactly limit / worst fit.
    assert ok == int(LIMIT / WORST)
    assert spent == LIMIT


def test_memory_store_concurrent_reservations_never_overspend() -> None:
    budgets = Budgets([_budget(limit_usd=LIMIT)])
    ok, blocked = _hammer_threads(budgets)
    _check_spend(budgets, ok, blocked)


REDIS_URL = os.environ.get("LLMROUTE_TEST_REDIS_URL", "")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    import redis

    prefix = f"llmroute-test:budgets:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


@pytest.fixture
def store(redis_prefix: str) -> Iterator[RedisBudgetStore]:
    store = RedisBudgetStore(REDIS_URL, prefix=redis_prefix)
    yield store
    store.close()


@pytest.mark.redis
def test_redis_store_reserve_settle_release(store: RedisBudgetStore) -> None:
    budgets = Budgets([_budget(), _budget(name="u", scope="user")], store, clock=Clock(T0))
    ctx = RouteContext(user_id="x")
    r1 = budgets.reserve(Decimal("0.6"), ctx)
    with pytest.raises(BudgetExceeded):
        budgets.reserve(Decimal("0.5"), ctx)
    budgets.settle(r1, Decimal("0.25"))
    assert [s.spent for s in budgets.status(ctx)] == [Decimal("0.25"), Decimal("0.25")]
    r2 = budgets.reserve(Decimal("0.7"), ctx)
    budgets.release(r2)
    assert [s.spent for s in budgets.status(ctx)] == [Decimal("0.25"), Decimal("0.25")]


@pytest.mark.redis
def test_redis_keys_expire_with_their_period(store: RedisBudgetStore, redis_prefix: str) -> None:
    import redis

    budgets = Budgets([_budget(period="rolling", rolling_hours=2)], store)
    budgets.reserve(Decimal("0.1"))
    client = redis.Redis.from_url(REDIS_URL)
    keys = sorted(client.scan_iter(match=redis_prefix + "*"))
    ttls = [client.ttl(key) for key in keys]
    client.close()
    assert [key.decode().removeprefix(redis_prefix)[-6:] for key in keys] == [
        keys[0].decode()[-6:],
        "|holds",
    ]  # the counter and its hold set
    assert all(0 < ttl <= 3 * 3600 for ttl in ttls)


@pytest.mark.redis
def test_redis_store_concurrent_threads_never_overspend(store: RedisBudgetStore) -> None:
    budgets = Budgets([_budget(limit_usd=LIMIT)], store)
    ok, blocked = _hammer_threads(budgets)
    _check_spend(budgets, ok, blocked)


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_store_concurrent_asyncio_never_overspend(store: RedisBudgetStore) -> None:
    budgets = Budgets([_budget(limit_usd=LIMIT)], store)

    async def call() -> bool:
        try:
            reservation = await budgets.areserve(WORST)
        except BudgetExceeded:
            return False
        await asyncio.sleep(0)
        await budgets.asettle(reservation, WORST)
        return True

    try:
        results = await asyncio.gather(*(call() for _ in range(200)))
        ok = sum(results)
        _check_spend(budgets, ok, 200 - ok)
        status = await budgets.astatus()
        assert status[0].spent == LIMIT
        with pytest.raises(BudgetExceeded):
            await budgets.areserve(Decimal("0.000001"))
        free = await budgets.areserve(Decimal(0))
        await budgets.arelease(free)
    finally:
        await store.aclose()


def test_settled_spend_is_rounded_to_the_nearest_micro_dollar_not_up() -> None:
    budgets = Budgets([_budget()], clock=Clock(T0))
    cost = Decimal("0.00000324")  # 3.24 micro-dollars: 20 calls spend 64.8
    for _ in range(20):
        reservation = budgets.reserve(Decimal("0.00001"))
        budgets.settle(reservation, cost)
    spent = budgets.status()[0].spent
    assert spent == Decimal("0.00006")  # rounding up charged 80 micro-dollars (+23%)
    assert abs(spent - 20 * cost) <= 20 * Decimal("0.0000005")
    # holds still round up: a fraction of a micro-dollar is held as a whole one
    assert budgets.reserve(Decimal("0.0000001")).amount == 1
    assert budgets.status()[0].spent == Decimal("0.000061")


def test_worst_case_cost_uses_the_band_cache_write_reasoning_and_output_limit() -> None:
    from routing_middleware.catalog import PriceBand

    model = ModelInfo(
        id="p/r",
        provider="p",
        name="r",
        price=Price(
            Decimal("1"),
            Decimal("4"),
            cache_write=Decimal("1.25"),
            cache_write_long=Decimal("2"),
            reasoning=Decimal("6"),
            bands=(PriceBand(above_tokens=1000, input=Decimal("3"), output=Decimal("8")),),
        ),
        context_window=1_000_000,
        max_output_tokens=32_000,
    )
    short = ChatRequest(model="p/r", messages=[Message(role="user", content="x")])
    # below the band: input at the long cache-write rate, output at the reasoning rate,
    # and the cap is the model's 32k output limit, not 4096
    assert (
        worst_case_cost(short, model, input_tokens=500)
        == (Decimal(500) * 2 + Decimal(32_000) * 6) / 1_000_000
    )
    # above the band: the band's input/output (dearer than the writes and reasoning)
    assert (
        worst_case_cost(short, model, input_tokens=2000)
        == (Decimal(2000) * 3 + Decimal(32_000) * 8) / 1_000_000
    )
    unknown_limit = ModelInfo(
        id="p/u",
        provider="p",
        name="u",
        price=Price(Decimal("1"), Decimal("4")),
        context_window=8000,
    )
    assert (
        worst_case_cost(short, unknown_limit, input_tokens=10)
        == (Decimal(10) + Decimal(4096) * 4) / 1_000_000
    )


def test_cached_status_sees_its_own_reserves_and_settles_at_once() -> None:
    store = MemoryBudgetStore()
    cached = Budgets([_budget()], store, status_ttl_s=60)
    other = Budgets([_budget()], store)
    assert cached.status()[0].spent == 0
    reservation = cached.reserve(Decimal("0.5"))
    assert cached.status()[0].spent == Decimal("0.5")
    cached.settle(reservation, Decimal("0.2"))
    assert cached.status()[0].spent == Decimal("0.2")
    cached.release(cached.reserve(Decimal("0.1")))
    assert cached.status()[0].spent == Decimal("0.2")
    other.settle(other.reserve(Decimal("0.3")), Decimal("0.3"))
    assert cached.status()[0].spent == Decimal("0.2")  # another worker's spend lags
    assert other.status()[0].spent == Decimal("0.5")


def test_cached_status_sees_its_own_async_reserves_and_settles() -> None:
    cached = Budgets([_budget()], MemoryBudgetStore(), status_ttl_s=60)

    async def run() -> None:
        assert (await cached.astatus())[0].spent == 0
        reservation = await cached.areserve(Decimal("0.5"))
        assert (await cached.astatus())[0].spent == Decimal("0.5")
        await cached.asettle(reservation, Decimal("0.25"))
        assert (await cached.astatus())[0].spent == Decimal("0.25")

    asyncio.run(run())


# ------------------------------------------------------------------ pressing (the router's read)


def _ratios(statuses: tuple[BudgetStatus, ...]) -> list[tuple[str, float, str | None]]:
    return [(s.budget.name, s.ratio, s.action) for s in statuses]


def test_pressing_answers_like_status_and_sees_every_spend_at_once() -> None:
    store = MemoryBudgetStore(Clock(T0))
    budgets = Budgets([_budget(), _budget(name="u", scope="user")], store, clock=Clock(T0))
    other = Budgets(budgets.budgets, store, clock=Clock(T0))  # another instance, same store
    ctx = RouteContext(user_id="ann")
    assert budgets.pressing(ctx) == ()
    assert budgets.pressing(ctx) == ()  # remembered
    # Spend through another instance crosses the soft threshold of both budgets.
    other.settle(other.reserve(Decimal("0.01"), ctx), Decimal("0.85"))
    assert _ratios(budgets.pressing(ctx)) == [("b", 0.85, "downgrade"), ("u", 0.85, "downgrade")]
    assert budgets.pressing(ctx) == tuple(budgets.status(ctx, pressing=True))
    # A hold alone counts too, and so does its release.
    held = other.reserve(Decimal("0.12"), RouteContext(user_id="bob"))
    assert _ratios(budgets.pressing(ctx)) == [("b", 0.97, "cheapest"), ("u", 0.85, "downgrade")]
    other.release(held)
    assert _ratios(budgets.pressing(ctx))[0] == ("b", 0.85, "downgrade")


def test_pressing_forgets_counters_that_expire() -> None:
    clock = Clock(T0)
    budgets = Budgets([_budget(period="rolling", rolling_hours=2)], clock=clock)
    budgets.settle(budgets.reserve(Decimal("0.01")), Decimal("0.9"))
    assert _ratios(budgets.pressing()) == [("b", 0.9, "downgrade")]
    # Within the hour slot the counter outlives, but its TTL (3 h) runs out 3 h later.
    clock.now += 3 * 3600 + 1
    assert budgets.pressing() == ()
    assert budgets.status(pressing=True) == []


def test_pressing_rereads_once_a_counter_it_read_expires() -> None:
    # The store's clock runs ahead of the budgets' (still in the same hour slot, so the
    # same lines): only the counter's own expiry can tell the remembered answer is stale.
    store_clock = Clock(T0)
    budgets = Budgets([_budget()], MemoryBudgetStore(store_clock), clock=Clock(T0))
    budgets.settle(budgets.reserve(Decimal("0.01")), Decimal("0.9"))
    assert budgets.pressing() != ()
    store_clock.now += 2 * 86_400 + 1  # the day's counter expired (2-day TTL) unwritten
    assert budgets.pressing() == ()
    store_clock.now = T0 - 60  # a clock set back: the answer is not trusted either
    assert budgets.pressing() != ()


def test_pressing_with_status_ttl_follows_own_spend_and_the_ttl() -> None:
    store = MemoryBudgetStore()
    cached = Budgets([_budget()], store, status_ttl_s=0.05)
    other = Budgets([_budget()], store)
    assert cached.pressing() == ()
    cached.settle(cached.reserve(Decimal("0.01")), Decimal("0.85"))
    assert _ratios(cached.pressing()) == [("b", 0.85, "downgrade")]  # own spend: at once
    other.settle(other.reserve(Decimal("0.01")), Decimal("0.11"))
    assert _ratios(cached.pressing()) == [("b", 0.85, "downgrade")]  # others': after the TTL
    time.sleep(0.06)
    assert _ratios(cached.pressing()) == [("b", 0.96, "cheapest")]
