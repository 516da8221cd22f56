"""Migrations apply forwards and backwards, and 0002 fills observe mode's figures in."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

APP = "django_llmroute"
BEFORE = [(APP, "0001_initial")]
AFTER = [(APP, "0002_observe_mode_routed_cost")]
DAY = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

pytestmark = pytest.mark.django_db(transaction=True)


def _migrate(target: list[tuple[str, str]]) -> Any:
    """Migrate the test database to ``target``; the apps of that state."""
    executor = MigrationExecutor(connection)
    executor.migrate(target)
    return executor.loader.project_state(target).apps


@pytest.fixture
def at_0001() -> Iterator[Any]:
    apps = _migrate(BEFORE)
    try:
        yield apps
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes(APP))


def _columns(table: str) -> set[str]:
    with connection.cursor() as cursor:
        return {c.name for c in connection.introspection.get_table_description(cursor, table)}


def _call(apps: Any, n: int, **fields: Any) -> None:
    values: dict[str, Any] = {
        "record_id": f"r{n}",
        "call_id": f"c{n}",
        "created_at": DAY + timedelta(minutes=n),
        "requested_model": "gpt-4o",
        "chosen_model": "gpt-4o",
        "provider": "openai",
        "feature": "search",
    }
    values.update(fields)
    apps.get_model(APP, "LLMCall").objects.create(**values)


def _rollups(apps: Any, **fields: Any) -> None:
    """The rows both rollups hold for one key, as the sink of 0001 wrote them."""
    key = {"date": fields.pop("date", DAY.date()), "provider": "openai", "model": "gpt-4o"}
    key.update(fields.pop("key", {}))
    apps.get_model(APP, "DailyUsage").objects.create(**key, user_ref="", **fields)
    apps.get_model(APP, "DailySummary").objects.create(**key, **fields)


def test_0002_backfills_and_reverses(at_0001):
    apps = at_0001
    assert "routed_cost" not in _columns("django_llmroute_llmcall")
    observe = {"mode": "observe", "extra": {"routed_model": "gpt-4o-mini"}}
    # key 1, all calls kept: two observe calls (one unpriced), one enforced
    _call(
        apps,
        1,
        cost=Decimal("0.40"),
        requested_cost=Decimal("0.40"),
        mode="observe",
        extra={"routed_model": "gpt-4o-mini", "routed_cost": "0.0400000001", "other": 1},
    )
    _call(apps, 2, cost=Decimal("0.30"), requested_cost=Decimal("0.33"), **observe)
    _call(apps, 3, cost=Decimal("0.20"), requested_cost=Decimal("0.20"))
    _rollups(
        apps,
        key={"feature": "search"},
        calls=3,
        cost=Decimal("0.90"),
        requested_cost=Decimal("0.93"),
        saved_cost=Decimal("0.03"),
    )
    # key 2, the day before: one call of three left after pruning
    _call(
        apps,
        4,
        created_at=DAY - timedelta(days=1),
        cost=Decimal("0.50"),
        mode="observe",
        extra={"routed_model": "gpt-4o-mini", "routed_cost": "0.05"},
    )
    _rollups(
        apps,
        date=(DAY - timedelta(days=1)).date(),
        key={"feature": "search"},
        calls=3,
        cost=Decimal("1.50"),
        requested_cost=Decimal("1.50"),
    )
    # key 3, no feature: calls without one and with an empty one share the row;
    # a routed cost that is no amount counts as unknown
    _call(apps, 5, feature=None, cost=Decimal("0.10"), **observe)
    _call(
        apps,
        6,
        feature="",
        cost=Decimal("0.10"),
        mode="observe",
        extra={"routed_model": "x", "routed_cost": "NaN"},
    )
    _rollups(apps, calls=2, cost=Decimal("0.20"), requested_cost=Decimal("0.20"))

    apps = _migrate(AFTER)
    calls = apps.get_model(APP, "LLMCall").objects
    stored = dict(calls.values_list("record_id", "routed_cost"))
    assert stored == {
        "r1": Decimal("0.0400000001"),
        "r2": None,
        "r3": None,
        "r4": Decimal("0.0500000000"),
        "r5": None,
        "r6": None,
    }
    assert calls.get(record_id="r1").routed_model == "gpt-4o-mini"
    assert calls.get(record_id="r1").extra["other"] == 1  # extra left as it was
    assert calls.get(record_id="r3").routed_model is None
    for name in ("DailyUsage", "DailySummary"):
        rows = apps.get_model(APP, name).objects
        full = rows.get(date=DAY.date(), feature="search")
        assert full.observed_calls == 2
        assert full.observed_cost == Decimal("0.70")
        assert full.observed_requested_cost == Decimal("0.73")
        assert full.observed_routed_cost == Decimal("0.3400000001")
        assert full.observed_unpriced == 1
        pruned = rows.get(date=(DAY - timedelta(days=1)).date())
        assert (pruned.observed_calls, pruned.observed_cost) == (0, 0)  # no partial sums
        blank = rows.get(date=DAY.date(), feature="")
        assert blank.observed_calls == 2
        assert blank.observed_routed_cost == Decimal("0.20")
        assert blank.observed_unpriced == 2

    _migrate(BEFORE)
    assert "routed_cost" not in _columns("django_llmroute_llmcall")
    assert "observed_routed_cost" not in _columns("django_llmroute_dailysummary")
    assert "observed_calls" not in _columns("django_llmroute_dailyusage")
    apps = _migrate(AFTER)  # and forwards again over the same rows
    assert apps.get_model(APP, "DailySummary").objects.get(
        date=DAY.date(), feature="search"
    ).observed_routed_cost == Decimal("0.3400000001")
