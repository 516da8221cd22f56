"""Models and migrations."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, connection

from django_llmroute.models import Budget, LLMCall
from django_llmroute.reports import format_money
from django_llmroute.sinks import record_to_call

from .factories import make_record


@pytest.mark.django_db
def test_no_missing_migrations():
    out = io.StringIO()
    call_command("makemigrations", "django_llmroute", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_report_indexes_exist():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, LLMCall._meta.db_table)
    indexed = {tuple(c["columns"]) for c in constraints.values() if c["index"] or c["unique"]}
    for columns in [
        ("created_at",),
        ("feature", "created_at"),
        ("chosen_model", "created_at"),
        ("user_id", "created_at"),
        ("call_id", "attempt"),
        ("record_id",),
    ]:
        assert columns in indexed, columns


@pytest.mark.django_db
def test_call_attempt_is_unique():
    record = make_record()
    record_to_call(record).save()
    twin = make_record(call_id=record.call_id, attempt=record.attempt)
    with pytest.raises(IntegrityError):
        record_to_call(twin).save()


def test_long_text_is_clipped_to_the_column():
    call = record_to_call(make_record(feature="f" * 500, request_id="r" * 500))
    assert len(call.feature) == 128
    assert len(call.request_id) == 128


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (Decimal("1234.5678"), "$1,234.57"),
        (Decimal("0.0123456"), "$0.0123"),
        (Decimal("0.001234"), "$0.001234"),
        (Decimal("0.0000004"), "$0.000000"),
        (Decimal(0), "$0.00"),
        (Decimal("-0.5"), "-$0.5000"),
        (None, "—"),
    ],
)
def test_format_money(value, shown):
    assert format_money(value) == shown


class TestBudget:
    def test_clean_uses_the_core_rules(self):
        with pytest.raises(ValidationError, match="hours"):
            Budget(name="r", period="rolling", limit_usd=1).clean()
        with pytest.raises(ValidationError, match="name"):
            Budget(name="has space", limit_usd=1).clean()
        with pytest.raises(ValidationError, match="global budget takes no"):
            Budget(name="g", scope_value="x", limit_usd=1).clean()
        with pytest.raises(ValidationError, match="ascending"):
            Budget(
                name="t", limit_usd=1, thresholds=[[0.9, "cheapest"], [0.5, "downgrade"]]
            ).clean()
        with pytest.raises(ValidationError, match="limit_usd"):
            Budget(name="z", limit_usd=0).clean()
        Budget(name="per-user", scope="user", limit_usd=1).clean()  # each user on its own
        Budget(name="g", limit_usd=1, thresholds=[[0.8, "downgrade"]]).clean()

    def test_period_start_matches_the_core_windows(self):
        now = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)  # a Thursday
        assert Budget(period="day").period_start(now) == datetime(2026, 11, 26, tzinfo=UTC)
        assert Budget(period="week").period_start(now) == datetime(2026, 11, 23, tzinfo=UTC)
        assert Budget(period="month").period_start(now) == datetime(2026, 11, 1, tzinfo=UTC)
        # the current hour and the five before it
        assert Budget(period="rolling", hours=6).period_start(now) == datetime(
            2026, 11, 26, 10, 0, tzinfo=UTC
        )

    def test_to_core(self):
        budget = Budget(
            name="team",
            scope="feature",
            scope_value="search",
            period="rolling",
            hours=12,
            limit_usd=Decimal("5"),
            thresholds=[[0.8, "downgrade"]],
            action="cheapest",
        )
        core = budget.to_core()
        assert (core.name, core.scope, core.value, core.period, core.rolling_hours) == (
            "team",
            "feature",
            "search",
            "rolling",
            12,
        )
        assert core.limit_usd == Decimal("5")
        assert core.thresholds == ((0.8, "downgrade"),)
        assert core.on_limit == "cheapest"
        assert Budget(name="g", limit_usd=Decimal("2")).to_core().value is None
