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
    def test_clean(self):
        with pytest.raises(ValidationError, match="hours"):
            Budget(name="r", period="rolling", limit_usd=1).clean()
        with pytest.raises(ValidationError, match="Name the user"):
            Budget(name="u", scope="user", limit_usd=1).clean()
        Budget(name="g", limit_usd=1).clean()

    def test_period_start(self):
        now = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)  # a Thursday
        assert Budget(period="day").period_start(now) == datetime(2026, 11, 26, tzinfo=UTC)
        assert Budget(period="week").period_start(now) == datetime(2026, 11, 23, tzinfo=UTC)
        assert Budget(period="month").period_start(now) == datetime(2026, 11, 1, tzinfo=UTC)
        assert Budget(period="rolling", hours=6).period_start(now) == datetime(
            2026, 11, 26, 9, 30, tzinfo=UTC
        )

    def test_core_fields_use_the_core_names(self):
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
        assert budget.core_fields() == {
            "name": "team",
            "scope": "feature",
            "scope_value": "search",
            "period": "rolling:12h",
            "limit_usd": Decimal("5"),
            "thresholds": ((0.8, "downgrade"),),
            "action": "cheapest",
        }
