"""Report queries: percentiles, the rollup and the one-pass PostgreSQL path agree."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from django_llmroute import reports
from django_llmroute.models import DailySummary, DailyUsage, LLMCall
from django_llmroute.sinks import store_records

from .factories import make_record

pytestmark = pytest.mark.django_db


def reference_percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@pytest.fixture
def latencies():
    values = [float((i * 37) % 1000) + i / 7 for i in range(1, 202)]
    store_records([make_record(latency_ms=v) for v in values] + [make_record(latency_ms=None)])
    return values


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.9, 0.95, 0.99, 1.0])
def test_offset_percentile_matches_the_definition(latencies, fraction):
    got = reports.percentile(LLMCall.objects.all(), "latency_ms", fraction, method="offset")
    assert got == pytest.approx(reference_percentile(latencies, fraction))


@pytest.mark.postgres
@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_percentile_cont_and_offset_agree(latencies, fraction):
    qs = LLMCall.objects.all()
    cont = reports.percentile(qs, "latency_ms", fraction, method="aggregate")
    assert cont == pytest.approx(reports.percentile(qs, "latency_ms", fraction, method="offset"))
    assert cont == pytest.approx(reference_percentile(latencies, fraction))


def test_percentile_of_nothing():
    assert reports.percentile(LLMCall.objects.all(), "latency_ms", 0.95) is None


def _calls_over_days():
    now = timezone.now()
    records = [
        make_record(
            created_at=now - timedelta(days=i % 20, minutes=i),
            latency_ms=float(100 + (i * 53) % 900),
            feature=("a", "b", "c")[i % 3],
            tier=None if i % 5 == 0 else i % 3,
            status="error" if i % 11 == 0 else "ok",
        )
        for i in range(120)
    ]
    store_records(records)
    return records


def test_rollup_p95_stays_exact_after_pruning():
    _calls_over_days()
    call_command("llmroute_prune", "--older-than-days", "10", stdout=None)
    qs = LLMCall.objects.all()
    from_rollup = reports.cost_figures(qs, {})
    from_calls = reports.cost_figures(qs, None)
    assert from_rollup.totals.p95_latency_ms == pytest.approx(from_calls.totals.p95_latency_ms)
    # the spend history survives the prune in the rollup
    assert from_rollup.totals.calls == 120
    assert from_calls.totals.calls == qs.count() < 120


def _flatten(figures: reports.Figures) -> dict[str, object]:
    def rows(items):
        # Ordered by spend as shown (8 places), then label: a rollup sums per-day
        # sums, so rows whose spend ties to the cent can differ in the 10th place and
        # come in either order (a test run just after midnight UTC split them so).
        found = [(r.label, r.spend.quantize(Decimal("1e-8")), r.calls, r.tokens) for r in items]
        return sorted(found, key=lambda row: (-row[1], str(row[0])))

    t = figures.totals
    return {
        "totals": (
            t.spend.quantize(Decimal("1e-8")),
            t.requested.quantize(Decimal("1e-8")),
            t.calls,
            t.input_tokens,
            t.output_tokens,
            t.errors,
            t.cache_hits,
            t.fallbacks,
            round(t.avg_latency_ms or 0, 6),
        ),
        **{kind: rows(items) for kind, items in figures.breakdowns.items()},
        "per_day": rows(figures.per_day),
        "tiers": rows(figures.tiers),
    }


def test_rollup_and_calls_give_the_same_figures():
    _calls_over_days()
    qs = LLMCall.objects.all()
    assert _flatten(reports.cost_figures(qs, {})) == _flatten(reports.cost_figures(qs, None))


@pytest.mark.postgres
def test_one_pass_postgresql_report_matches_the_separate_queries():
    _calls_over_days()
    qs = LLMCall.objects.all()
    one_pass = reports._grouped_figures(qs, rollup=False, limit=15, days=92)
    separate = reports.Figures(
        reports.totals(qs, with_p95=False),
        {kind: reports.breakdown(qs, kind) for kind in reports.BREAKDOWNS},
        reports.spend_per_day(qs),
        reports.tier_distribution(qs),
    )
    assert _flatten(one_pass) == _flatten(separate)
    rollup_pass = reports._grouped_figures(DailyUsage.objects.all(), rollup=True, limit=15, days=92)
    assert _flatten(rollup_pass) == _flatten(separate)
    summary_pass = reports._grouped_figures(
        DailySummary.objects.all(), rollup=True, limit=15, days=92
    )
    without_users = _flatten(separate)
    without_users.pop("user")
    assert _flatten(summary_pass) == without_users


def test_budget_spent_uses_local_calendar_days():
    today = timezone.localdate()
    start = datetime(today.year, today.month, 1, tzinfo=UTC)
    store_records(
        [
            make_record(created_at=start + timedelta(minutes=5), cost=Decimal("1"), feature="x"),
            make_record(created_at=start - timedelta(minutes=5), cost=Decimal("7"), feature="x"),
        ]
    )
    from django_llmroute.models import Budget

    budget = Budget(name="m", scope="feature", scope_value="x", period="month", limit_usd=5)
    assert budget.spent() == Decimal("1")
    assert budget.fraction_used() == pytest.approx(0.2)
