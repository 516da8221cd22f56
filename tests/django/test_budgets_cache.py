"""Budgets on Django's cache: atomic reservations, reconciliation, admin budgets, end to end."""

# ruff: noqa: F811  (fixtures imported from llmroute_helpers are test arguments)

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.cache import caches
from django.db import DatabaseError
from django.test import override_settings

from django_llmroute import budgets as budgets_module
from django_llmroute import runtime
from django_llmroute.budgets import (
    BUDGETS_KEY,
    BUDGETS_VERSION_KEY,
    CacheBudgetStore,
    database_budgets,
    line_spent_in_db,
)
from django_llmroute.models import Budget as BudgetRow
from django_llmroute.signals import budget_exceeded
from django_llmroute.sinks import store_records
from routing_middleware.budgets import Budget, Budgets, to_micros
from routing_middleware.context import RouteContext
from routing_middleware.schema import BudgetExceeded

from .factories import make_record
from .llmroute_helpers import llmroute  # noqa: F401

LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "budget-tests"}


def _redis() -> dict[str, str]:
    return {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("LLMROUTE_TEST_REDIS_URL", ""),
        "KEY_PREFIX": "llmroute-budget-tests",
    }


@pytest.fixture(params=["locmem", pytest.param("redis", marks=pytest.mark.redis)])
def budget_cache(request):
    """A cache alias ``budgets`` on LocMemCache or on Redis, emptied around the test."""
    backend = LOCMEM if request.param == "locmem" else _redis()
    with override_settings(CACHES={**settings.CACHES, "budgets": backend}):
        caches["budgets"].clear()
        yield "budgets"
        caches["budgets"].clear()


def test_store_reports_how_it_is_atomic(budget_cache):
    store = CacheBudgetStore(budget_cache)
    expected = "redis-script" if "Redis" in settings.CACHES["budgets"]["BACKEND"] else "cache-lock"
    assert store.atomicity == expected
    store.close()


def test_200_concurrent_reservations_never_overspend_one_dollar(budget_cache):
    """The core property: settled spend never exceeds the limit plus one call's worst case."""
    limit = Decimal(1)
    worst = Decimal("0.03")
    # Four stores stand for four workers sharing the cache.
    stores = [CacheBudgetStore(budget_cache, reconcile_s=0) for _ in range(4)]
    budgets = [Budgets([Budget(name="dollar", limit_usd=limit)], store) for store in stores]
    rng = random.Random(7)
    actuals = [worst * Decimal(rng.randint(50, 100)) / 100 for _ in range(200)]

    def call(n: int) -> Decimal | None:
        mine = budgets[n % len(budgets)]
        try:
            hold = mine.reserve(worst, RouteContext())
        except BudgetExceeded:
            return None
        time.sleep(rng.random() / 1000)
        mine.settle(hold, actuals[n])
        return actuals[n]

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(call, range(200)))
    spent = sum((r for r in results if r is not None), Decimal(0))
    served = sum(r is not None for r in results)
    assert spent <= limit + worst
    assert served >= 33  # holds of 0.03 fit 33 times in $1 before any settles lower
    assert served < 200  # and the limit did block
    lines = budgets[0].lines(RouteContext())
    # Every hold was released or settled: what is counted is exactly what was spent.
    assert stores[0].totals(lines) == [to_micros(spent)]
    for store in stores:
        store.close()


def test_exact_worst_case_calls_fill_the_budget_exactly(budget_cache):
    store = CacheBudgetStore(budget_cache, reconcile_s=0)
    budgets = Budgets([Budget(name="exact", limit_usd=Decimal(1))], store)

    def call(_: int) -> bool:
        try:
            hold = budgets.reserve(Decimal("0.03"), RouteContext())
        except BudgetExceeded:
            return False
        budgets.settle(hold, Decimal("0.03"))
        return True

    with ThreadPoolExecutor(max_workers=32) as pool:
        served = sum(pool.map(call, range(200)))
    assert served == 33
    store.close()


def test_a_refusal_on_one_line_holds_nothing_on_the_others(budget_cache):
    store = CacheBudgetStore(budget_cache, reconcile_s=0)
    budgets = Budgets(
        [
            Budget(name="everyone", limit_usd=Decimal(10)),
            Budget(name="per-user", scope="user", limit_usd=Decimal("0.5")),
        ],
        store,
    )
    alice = RouteContext(user_id="alice")
    budgets.settle(budgets.reserve(Decimal("0.4"), alice), Decimal("0.4"))
    with pytest.raises(BudgetExceeded, match="per-user"):
        budgets.reserve(Decimal("0.2"), alice)
    everyone, per_user = budgets.status(alice)
    assert everyone.spent == Decimal("0.4")  # the refused call held nothing here
    assert per_user.spent == Decimal("0.4")
    # Another user is not affected by alice's budget.
    budgets.reserve(Decimal("0.2"), RouteContext(user_id="bob"))
    store.close()


def test_rolling_window_counts_every_hour(budget_cache):
    store = CacheBudgetStore(budget_cache, reconcile_s=0)
    now = [1_800_000_000.0]
    rolling = Budget(name="rolling", period="rolling", rolling_hours=3, limit_usd=Decimal(1))
    budgets = Budgets([rolling], store, clock=lambda: now[0])
    budgets.settle(budgets.reserve(Decimal("0.6"), RouteContext()), Decimal("0.6"))
    now[0] += 3600  # next hour, same window
    with pytest.raises(BudgetExceeded):
        budgets.reserve(Decimal("0.5"), RouteContext())
    now[0] += 3 * 3600  # the first hour left the window
    budgets.reserve(Decimal("0.5"), RouteContext())
    store.close()


def _hold_store(budget_cache, hold_ttl_s: float = 3600):
    """A store with a hold TTL and a way to let time pass for it: an injected clock on
    the cache-lock backends, real time on Redis (the server's clock)."""
    now = [1_800_000_000.0]
    store = CacheBudgetStore(
        budget_cache, reconcile_s=0, hold_ttl_s=hold_ttl_s, clock=lambda: now[0]
    )

    def advance(seconds: float) -> None:
        if store.atomicity == "redis-script":
            time.sleep(seconds)
        now[0] += seconds

    budgets = Budgets(
        [
            Budget(name="everyone", limit_usd=Decimal(10)),
            Budget(name="per-user", scope="user", limit_usd=Decimal(10)),
        ],
        store,
    )
    return store, budgets.lines(RouteContext(user_id="ada")), advance


def test_a_settle_sent_twice_counts_once_and_releases_only_its_own_hold(budget_cache):
    store, lines, _ = _hold_store(budget_cache)
    store.reserve(lines, 300_000, "mine")
    store.reserve(lines, 200_000, "other")
    store.settle(lines, 300_000, 100_000, "mine")
    store.settle(lines, 300_000, 100_000, "mine")
    assert store.totals(lines) == [300_000, 300_000]
    store.settle(lines, 200_000, 50_000, "other")
    assert store.totals(lines) == [150_000, 150_000]
    store.close()


def test_a_reserve_sent_twice_holds_once(budget_cache):
    store, lines, _ = _hold_store(budget_cache)
    assert store.reserve(lines, 400_000, "mine") is None
    assert store.reserve(lines, 400_000, "mine") is None
    assert store.totals(lines) == [400_000, 400_000]
    store.settle(lines, 400_000, 100_000, "mine")
    assert store.reserve(lines, 400_000, "mine") is None  # after its settle: still a retry
    assert store.totals(lines) == [100_000, 100_000]
    store.close()


def test_a_settle_of_a_hold_never_taken_counts_once(budget_cache):
    store, lines, _ = _hold_store(budget_cache)
    store.reserve(lines, 200_000, "other")
    store.settle(lines, 500_000, 70_000, "never-held")
    store.settle(lines, 500_000, 70_000, "never-held")
    assert store.totals(lines) == [270_000, 270_000]
    store.close()


def test_a_hold_nobody_settles_stops_counting_after_the_hold_ttl(budget_cache):
    store, lines, advance = _hold_store(budget_cache, hold_ttl_s=1)
    store.reserve(lines, 600_000, "lost")
    assert store.totals(lines) == [600_000, 600_000]
    advance(1.2)
    assert store.totals(lines) == [0, 0]
    store.reserve(lines, 200_000, "live")
    store.settle(lines, 600_000, 30_000, "lost")  # late: its spend, no hold
    store.settle(lines, 200_000, 10_000, "live")
    assert store.totals(lines) == [40_000, 40_000]
    store.close()


def test_a_cache_lock_hold_record_stays_bounded(monkeypatch):
    monkeypatch.setattr(budgets_module, "MAX_SETTLED_IDS", 3)
    with override_settings(CACHES={**settings.CACHES, "budgets": LOCMEM}):
        caches["budgets"].clear()
        store, lines, advance = _hold_store("budgets", hold_ttl_s=60)
        for n in range(5):
            store.reserve(lines, 10, f"call-{n}")
            store.settle(lines, 10, 5, f"call-{n}")
        store.reserve(lines, 10, "lost")
        record = caches["budgets"].get(store._key(lines[0].charge_key))[2:]
        assert (list(record[0]), list(record[1])) == (["lost"], ["call-2", "call-3", "call-4"])
        advance(61)
        store.settle(lines, 0, 1, "late")
        record = caches["budgets"].get(store._key(lines[0].charge_key))[2:]
        assert record == ({}, {"late": pytest.approx(1_800_000_061.0 + 60)})
        assert store.totals(lines) == [26, 26]
        caches["budgets"].clear()


@pytest.mark.parametrize("evicted", ["counter", "hold record"])
def test_a_cache_lock_counter_and_its_holds_are_evicted_together(evicted):
    """A cache evicts entries one by one (LocMemCache the least recently used first,
    memcached per slab): what a line holds must never outlive, nor be outlived by, the
    holds it counts, or a settle releases a hold twice (the next call's is lost) or
    never (it blocks until the period ends)."""
    with override_settings(CACHES={**settings.CACHES, "budgets": LOCMEM}):
        cache = caches["budgets"]
        cache.clear()
        store = CacheBudgetStore("budgets", reconcile_s=0)
        lines = Budgets([Budget(name="dollar", limit_usd=Decimal(1))], store).lines(RouteContext())
        assert store.reserve(lines, 900_000, "first") is None
        key = store._key(lines[0].charge_key)
        cache.delete(key if evicted == "counter" else key + "|holds")
        if store.totals(lines) == [0]:  # the hold went with what was evicted
            assert store.reserve(lines, 900_000, "second") is None
            store.settle(lines, 900_000, 100_000, "first")
            assert store.totals(lines) == [1_000_000]  # the second call's hold still counts
            assert store.reserve(lines, 900_000, "third") == 0
        else:
            store.settle(lines, 900_000, 100_000, "first")
            assert store.totals(lines) == [100_000]  # its hold released
        cache.clear()


def test_budget_exceeded_signal(budget_cache):
    store = CacheBudgetStore(budget_cache, reconcile_s=0)
    budgets = Budgets([Budget(name="tiny", scope="feature", limit_usd=Decimal("0.1"))], store)
    seen: list[dict] = []

    def receiver(sender, **kwargs):
        seen.append(kwargs)

    budget_exceeded.connect(receiver, sender=BudgetRow)
    try:
        ctx = RouteContext(feature="search")
        budgets.settle(budgets.reserve(Decimal("0.08"), ctx), Decimal("0.08"))
        with pytest.raises(BudgetExceeded):
            budgets.reserve(Decimal("0.05"), ctx)
    finally:
        budget_exceeded.disconnect(receiver, sender=BudgetRow)
    [sent] = seen
    assert sent["budget"].name == "tiny"
    assert sent["scope_value"] == "search"
    assert sent["spent"] == Decimal("0.08")
    assert sent["limit"] == Decimal("0.1")
    assert sent["requested"] == Decimal("0.05")
    store.close()


# -- reconciliation with the stored calls ---------------------------------------------


def _store_spend(feature: str, *costs: str) -> None:
    now = datetime.now(UTC)
    store_records(
        [make_record(feature=feature, cost=Decimal(c), created_at=now) for c in costs],
        send_signals=False,
    )


@pytest.mark.django_db
def test_reconcile_restores_a_lost_counter(budget_cache):
    _store_spend("reports", "0.25", "0.15")
    store = CacheBudgetStore(budget_cache, reconcile_s=0)
    budget = Budget(name="reports", scope="feature", value="reports", limit_usd=Decimal(1))
    budgets = Budgets([budget], store)
    ctx = RouteContext(feature="reports")
    lines = budgets.lines(ctx)
    assert line_spent_in_db(lines[0]) == Decimal("0.4")
    assert store.reconcile(lines) == [to_micros(Decimal("0.4"))]
    assert store.totals(lines) == [to_micros(Decimal("0.4"))]
    assert store.reconcile(lines) == [0]  # nothing counted twice
    caches[budget_cache].clear()  # the cache lost everything
    store.reconcile(lines)
    with pytest.raises(BudgetExceeded):
        budgets.reserve(Decimal("0.7"), ctx)
    store.close()


@pytest.mark.django_db(transaction=True)
def test_reservations_reconcile_on_their_own_now_and_then(budget_cache):
    _store_spend("exports", "0.9")
    store = CacheBudgetStore(budget_cache, reconcile_s=60)
    budgets = Budgets(
        [Budget(name="exports", scope="feature", value="exports", limit_usd=Decimal(1))], store
    )
    # The counter is empty, but the stored calls say 0.9 was spent today.
    with pytest.raises(BudgetExceeded):
        budgets.reserve(Decimal("0.2"), RouteContext(feature="exports"))
    store.close()


# -- admin budgets reach the engine ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_admin_budgets_are_read_cached_and_invalidated(llmroute):
    assert database_budgets() == ()
    row = BudgetRow.objects.create(
        name="support", scope="feature", scope_value="support", period="day", limit_usd=2
    )
    [budget] = database_budgets()
    assert budget.name == "support"
    assert budget.limit_usd == Decimal(2)
    engine = runtime.get_engine()
    assert [b.name for b in engine.budgets.budgets] == ["support"]
    stats, breaker = engine.stats, engine.breaker
    row.limit_usd = 3
    row.save()
    # The same engine, with the new budget: what it learned is kept.
    assert runtime.get_engine() is engine
    assert [b.limit_usd for b in engine.budgets.budgets] == [Decimal(3)]
    assert engine.router.budgets is engine.budgets
    assert engine.dispatcher.budgets is engine.budgets
    assert (engine.stats, engine.breaker) == (stats, breaker)
    row.active = False
    row.save()
    assert runtime.get_engine().budgets.budgets == ()
    BudgetRow.objects.create(name="gone", limit_usd=1).delete()
    assert database_budgets() == ()


@pytest.mark.django_db(transaction=True)
def test_other_workers_notice_a_budget_change_through_the_cache(llmroute):
    llmroute(BUDGETS_REFRESH_S=0)
    engine = runtime.get_engine()
    assert runtime.get_engine() is engine
    # Another worker saved a budget: the shared version moved, our cache copy is gone.
    BudgetRow.objects.bulk_create([BudgetRow(name="elsewhere", limit_usd=1)])  # no signals
    caches["default"].delete("llmroute:db-budgets")
    caches["default"].add(BUDGETS_VERSION_KEY, 0)
    caches["default"].incr(BUDGETS_VERSION_KEY)
    fresh = runtime.get_engine()
    assert fresh is engine
    assert [b.name for b in fresh.budgets.budgets] == ["elsewhere"]


@pytest.mark.django_db(transaction=True)
def test_budgets_from_db_can_be_switched_off(llmroute):
    llmroute(BUDGETS_FROM_DB=False)
    BudgetRow.objects.create(name="ignored", limit_usd=1)
    assert runtime.get_engine().budgets.budgets == ()


@pytest.mark.django_db(transaction=True)
def test_engine_uses_the_django_cache_store(llmroute):
    store = runtime.get_engine().budgets.store
    assert isinstance(store, CacheBudgetStore)
    assert store.alias == "default"


# -- admin budgets loaded from an event loop ------------------------------------------


class FlakyLoader:
    """Stands for ``_load_rows``: fails (or waits) until allowed, then reads the database."""

    def __init__(self, *, block: bool = False) -> None:
        self.real = budgets_module._load_rows
        self.allowed = threading.Event()
        self.block = block
        self.attempts = 0

    def __call__(self, using: str) -> list[dict]:
        self.attempts += 1
        if self.block:
            self.allowed.wait(5)
        elif not self.allowed.is_set():
            raise DatabaseError("the database went away")
        return self.real(using)

    def wait_for_attempts(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.attempts < count:
            assert time.monotonic() < deadline, f"{self.attempts} load attempts"
            time.sleep(0.005)


@pytest.fixture
def flaky_loader(monkeypatch):
    loader = FlakyLoader()
    monkeypatch.setattr(budgets_module, "_load_rows", loader)
    monkeypatch.setattr(budgets_module, "_RETRY_DELAYS_S", (0.01,))
    yield loader
    loader.allowed.set()
    _wait_for_background_loads()


def _wait_for_background_loads(timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name == "llmroute-budget-load":
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), "the background budget load did not finish"


def _from_an_event_loop(func, *args):
    async def call():
        return func(*args)

    return asyncio.run(call())


def _names(budgets) -> list[str]:
    return [b.name for b in budgets]


def _expires_in(key: str) -> float | None:
    """Seconds until ``key`` leaves the default cache (``None``: never)."""
    cache = caches["default"]
    full_key = cache.make_key(key)
    if hasattr(cache, "_expire_info"):  # LocMemCache
        expiry = cache._expire_info[full_key]
        return None if expiry is None else expiry - time.time()
    ttl = cache._cache.get_client(full_key).ttl(full_key)  # RedisCache
    assert ttl != -2, "no such key"
    return None if ttl == -1 else float(ttl)


@pytest.mark.django_db(transaction=True)
def test_a_failed_load_in_an_event_loop_caches_nothing_and_is_retried(llmroute, flaky_loader):
    BudgetRow.objects.create(name="kept", limit_usd=1)
    # Nothing loaded yet in this process: an event loop gets no admin budgets for now...
    assert _from_an_event_loop(database_budgets) == ()
    flaky_loader.wait_for_attempts(2)  # ...the load failed, and is being retried
    # The failure was not cached: no empty list standing for "no budgets".
    assert caches["default"].get(BUDGETS_KEY) is None
    flaky_loader.allowed.set()  # the database is back
    _wait_for_background_loads()
    assert [row["name"] for row in caches["default"].get(BUDGETS_KEY)] == ["kept"]
    assert _names(database_budgets()) == ["kept"]
    assert _names(_from_an_event_loop(database_budgets)) == ["kept"]


@pytest.mark.django_db(transaction=True)
def test_an_event_loop_keeps_the_last_good_budgets_while_a_load_fails(llmroute, flaky_loader):
    BudgetRow.objects.create(name="kept", limit_usd=1)
    flaky_loader.allowed.set()
    assert _names(database_budgets()) == ["kept"]
    flaky_loader.allowed.clear()
    caches["default"].delete(BUDGETS_KEY)  # evicted, or another worker invalidated it
    assert _names(_from_an_event_loop(database_budgets)) == ["kept"]
    flaky_loader.wait_for_attempts(3)
    assert caches["default"].get(BUDGETS_KEY) is None
    assert _names(_from_an_event_loop(database_budgets)) == ["kept"]  # still, while it fails
    BudgetRow.objects.create(name="added", limit_usd=1)
    flaky_loader.allowed.set()
    _wait_for_background_loads()
    assert _names(database_budgets()) == ["added", "kept"]


@pytest.mark.django_db(transaction=True)
def test_budgets_loaded_in_the_background_reach_the_engine(llmroute, flaky_loader):
    BudgetRow.objects.bulk_create([BudgetRow(name="late", limit_usd=1)])  # no invalidation
    flaky_loader.allowed.set()
    engine = _from_an_event_loop(runtime.get_engine)
    # Built from the event loop before anything was read: without the admin budgets...
    assert engine.budgets.budgets == ()
    _wait_for_background_loads()
    # ...and rebuilt with them once the background load brought them in.
    rebuilt = runtime.get_engine()
    assert rebuilt is engine
    assert _names(rebuilt.budgets.budgets) == ["late"]


@pytest.mark.django_db(transaction=True)
def test_an_event_loop_never_waits_for_the_database(llmroute, monkeypatch):
    slow = FlakyLoader(block=True)
    monkeypatch.setattr(budgets_module, "_load_rows", slow)
    started = time.monotonic()
    try:
        assert _from_an_event_loop(database_budgets) == ()
        assert time.monotonic() - started < 2  # the loader blocks for up to 5 s
        slow.wait_for_attempts(1)
    finally:
        slow.allowed.set()
        _wait_for_background_loads()


@pytest.mark.django_db(transaction=True)
def test_a_failed_load_outside_an_event_loop_raises_and_caches_nothing(llmroute, flaky_loader):
    with pytest.raises(DatabaseError, match="went away"):
        database_budgets()
    assert caches["default"].get(BUDGETS_KEY) is None
    flaky_loader.allowed.set()
    BudgetRow.objects.create(name="kept", limit_usd=1)
    assert _names(database_budgets()) == ["kept"]


@pytest.mark.django_db(transaction=True)
def test_cached_admin_budgets_expire(llmroute):
    database_budgets()
    expires_in = _expires_in(BUDGETS_KEY)
    assert expires_in is not None
    assert 0 < expires_in <= budgets_module.BUDGETS_CACHE_TIMEOUT_S


# -- end to end: a view's budget downgrades, then blocks --------------------------------


@pytest.mark.django_db(transaction=True)
def test_budget_downgrades_then_blocks_through_a_view(client, llmroute):
    llmroute(PROVIDERS={"openai": {}}, OFFLINE="always", OFFLINE_LATENCY="none")
    BudgetRow.objects.create(
        name="budgeted-feature",
        scope="feature",
        scope_value="budgeted",
        period="day",
        limit_usd=Decimal("0.002"),
        thresholds=[[0.3, "downgrade"]],
        action="block",
    )
    answers = []
    for _ in range(80):
        response = client.get("/it/budgeted/")
        answers.append((response.status_code, response.json()))
        if response.status_code == 402:
            break
    tiers = [a["tier"] for status, a in answers if status == 200]
    assert tiers[0] == 3  # premium while the budget is fresh
    assert 2 in tiers  # then one tier lower
    first_low = tiers.index(2)
    assert all(t == 2 for t in tiers[first_low:])
    downgraded = [a for status, a in answers if status == 200 and a["tier"] == 2]
    assert all("budget_downgrade" in a["reasons"] for a in downgraded)
    assert answers[-1] == (402, {"blocked": "budgeted-feature"})
    assert client.get("/it/budgeted/").status_code == 402  # and stays blocked
    calls = llmroute.calls(feature="budgeted", status="ok")
    assert len(calls) == len(tiers)
    assert sum(c.cost for c in calls) <= Decimal("0.002")
