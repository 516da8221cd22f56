"""Management commands: report, replay and prune."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_llmroute.models import DailyUsage, LLMCall
from django_llmroute.sinks import store_records
from django_llmroute.spool import Spool

from .factories import assert_rollup_matches_calls, make_record

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def period_calls():
    day = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    store_records(
        [
            make_record(
                created_at=day, feature="search", chosen_model="m-small", cost=Decimal("0.5")
            ),
            make_record(
                created_at=day, feature="search", chosen_model="m-large", cost=Decimal("2")
            ),
            make_record(
                created_at=day + timedelta(days=1),
                feature="chat",
                chosen_model="m-small",
                cost=Decimal("0.25"),
                tier=3,
            ),
            make_record(created_at=day - timedelta(days=30), feature="chat", cost=Decimal("100")),
        ]
    )


class TestReport:
    def test_table_by_feature(self, period_calls):
        out = run("llmroute_report", "--since", "2026-11-01", "--until", "2026-11-30")
        lines = out.splitlines()
        assert lines[0] == "LLM spend 2026-11-01 … 2026-11-30 by feature"
        assert lines[3].split()[:2] == ["search", "2"]
        assert "$2.50" in lines[3]
        assert lines[4].split()[:2] == ["chat", "1"]
        assert lines[-2] == "total: $2.75 over 3 calls"
        assert lines[-1].startswith("saved by routing (enforced calls): ")

    def test_csv_by_feature_and_model(self, period_calls):
        out = run(
            "llmroute_report",
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-30",
            "--by",
            "feature,model",
            "--format",
            "csv",
        )
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [(r["feature"], r["model"], r["calls"], Decimal(r["spend_usd"])) for r in rows] == [
            ("search", "m-large", "1", Decimal("2")),
            ("search", "m-small", "1", Decimal("0.5")),
            ("chat", "m-small", "1", Decimal("0.25")),
        ]

    @pytest.mark.parametrize("source", ["rollup", "calls"])
    def test_by_tier_and_day_from_either_source(self, period_calls, source):
        store_records(
            [make_record(created_at=datetime(2026, 11, 12, tzinfo=UTC), tier=None, cost=Decimal(1))]
        )
        out = run(
            "llmroute_report",
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-30",
            "--by",
            "tier,day",
            "--format",
            "csv",
            "--source",
            source,
        )
        rows = list(csv.DictReader(io.StringIO(out)))
        assert {(r["tier"], r["day"], r["calls"], Decimal(r["spend_usd"])) for r in rows} == {
            ("1", "2026-11-10", "2", Decimal("2.5")),
            ("3", "2026-11-11", "1", Decimal("0.25")),
            ("", "2026-11-12", "1", Decimal("1")),
        }

    def test_days_counts_back_from_today(self):
        store_records([make_record(created_at=timezone.now(), feature="today", cost=Decimal("1"))])
        out = run("llmroute_report", "--days", "1", "--by", "feature", "--format", "csv")
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [r["feature"] for r in rows] == ["today"]

    def test_rejects_unknown_groups(self):
        with pytest.raises(CommandError, match="--by"):
            run("llmroute_report", "--by", "colour")


def test_replay_is_exactly_once(spool_path):
    records = [make_record() for _ in range(5)]
    store_records(records[:1])
    Spool(spool_path).append(records)
    out = run("llmroute_replay", "--path", str(spool_path))
    assert "read 5, inserted 4, already stored 1, rejected 0 (1 file(s))" in out
    Spool(spool_path).append(records)
    out = run("llmroute_replay", "--path", str(spool_path))
    assert "read 5, inserted 0, already stored 5" in out
    out = run("llmroute_replay", "--path", str(spool_path))
    assert "read 0, inserted 0" in out
    assert LLMCall.objects.count() == 5
    assert_rollup_matches_calls()


def test_prune_deletes_old_calls_in_batches_and_keeps_the_rollup():
    now = timezone.now()
    store_records([make_record(created_at=now - timedelta(days=100 + i)) for i in range(7)])
    store_records([make_record(created_at=now - timedelta(days=1))])
    rollup_before = list(DailyUsage.objects.order_by("pk").values_list("calls", "cost"))
    out = run("llmroute_prune", "--older-than-days", "90", "--dry-run")
    assert out.startswith("would delete 7 calls")
    assert LLMCall.objects.count() == 8
    out = run("llmroute_prune", "--older-than-days", "90", "--batch-size", "3")
    assert out.startswith("deleted 7 calls")
    assert LLMCall.objects.count() == 1
    assert list(DailyUsage.objects.order_by("pk").values_list("calls", "cost")) == rollup_before
