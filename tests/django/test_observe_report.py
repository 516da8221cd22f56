"""Observe mode in the cost report: what routing would have cost, next to what it saved."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from django_llmroute import reports
from django_llmroute.models import DailySummary, DailyUsage, LLMCall
from django_llmroute.sinks import routed_cost, store_records
from routing_middleware.metering import UsageRecord

from .factories import make_record

pytestmark = pytest.mark.django_db

REPORT = "/admin/django_llmroute/costreport/"
NOV_20 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def observed(cost: str, routed: str | None, **fields: Any) -> UsageRecord:
    """An observe-mode call: it went to the requested model; routing would have picked
    gpt-4o-mini at ``routed`` (no price when ``None``)."""
    extra = {"routed_model": "gpt-4o-mini"}
    if routed is not None:
        extra["routed_cost"] = routed
    fields.setdefault("requested_cost", Decimal(cost))
    return make_record(
        mode="observe",
        requested_model="gpt-4o",
        chosen_model="gpt-4o",
        cost=Decimal(cost),
        extra=extra,
        **fields,
    )


def enforced(cost: str, requested: str, **fields: Any) -> UsageRecord:
    """An enforced call that routing sent to gpt-4o-mini instead of gpt-4o."""
    return make_record(cost=Decimal(cost), requested_cost=Decimal(requested), **fields)


SOURCES = ["calls", "rollup"]


def figures(source: str, **filters: Any) -> reports.Figures:
    """The report's figures for the calls matching ``filters`` (lookups both the calls
    and the rollups understand), read from ``source``."""
    qs = LLMCall.objects.filter(**filters)
    return reports.cost_figures(qs, filters if source == "rollup" else None)


@pytest.mark.parametrize("source", SOURCES)
def test_observe_only(source):
    store_records(
        [
            observed("0.0123456789", "0.0012345678"),
            observed("0.2500000000", "0.0250000001"),
            observed("1.0000000000", "0.1000000000"),
        ]
    )
    t = figures(source).totals
    assert t.observed_calls == 3
    assert t.observed_spend == Decimal("1.2623456789")
    assert t.observed_routed == Decimal("0.1262345679")
    assert t.would_save == Decimal("1.1361111110")
    assert t.would_save_pct == pytest.approx(90.0, abs=1e-6)
    assert t.observed_unpriced == 0
    # nothing was routed for real: no realized saving
    assert t.savings == 0
    assert t.display()["would_save"] == "$1.14 (90.0%)"


@pytest.mark.parametrize("source", SOURCES)
def test_enforce_only_has_no_observe_figures(source):
    store_records([enforced("0.01", "0.03"), enforced("0.02", "0.06")])
    t = figures(source).totals
    assert (t.observed_calls, t.observed_spend, t.observed_routed) == (0, 0, 0)
    assert t.would_save == 0
    assert t.savings == Decimal("0.06")
    assert t.savings_pct == pytest.approx(200 / 3)


@pytest.mark.parametrize("source", SOURCES)
def test_mixed_counts_each_call_once(source):
    store_records(
        [
            enforced("0.10", "0.40"),
            enforced("0.20", "0.20"),
            observed("0.50", "0.05"),
            # billed by the provider below list price: its requested cost (list) is
            # not a saving routing made, so the realized saving leaves it out
            observed("0.30", "0.03", requested_cost=Decimal("0.33")),
            # no routed price: counted at what it cost, saving nothing
            observed("0.40", None),
            # failed: no usage, no price
            observed("0", None, status="error"),
        ]
    )
    t = figures(source).totals
    assert t.calls == 6
    assert t.spend == Decimal("1.50")
    assert t.enforced_spend == Decimal("0.30")
    assert t.savings == Decimal("0.30")  # 0.60 requested - 0.30 spent, enforced only
    assert t.savings_pct == pytest.approx(50.0)
    assert t.observed_calls == 4
    assert t.observed_spend == Decimal("1.20")
    assert t.observed_routed == Decimal("0.48")  # 0.05 + 0.03 + 0.40 + 0
    assert t.would_save == Decimal("0.72")
    assert t.would_save_pct == pytest.approx(60.0)
    assert t.observed_unpriced == 2
    shown = t.display()
    assert shown["savings"] == "$0.3000 (50.0%)"
    assert shown["would_save"] == "$0.7200 (60.0%)"


@pytest.mark.parametrize("source", SOURCES)
def test_empty(source):
    t = figures(source).totals
    assert (t.calls, t.observed_calls, t.observed_unpriced) == (0, 0, 0)
    assert t.would_save == 0
    assert t.display()["would_save"] == "$0.00 (0.0%)"
    assert t.display()["savings"] == "$0.00 (0.0%)"


@pytest.mark.parametrize("source", SOURCES)
def test_breakdown_rows_carry_their_observe_figures(source):
    store_records(
        [
            observed("0.40", "0.10", feature="search"),
            observed("0.20", "0.15", feature="search"),
            observed("0.30", "0.03", feature="chat"),
            enforced("0.05", "0.25", feature="chat", chosen_model="gpt-4o-mini"),
        ]
    )
    found = figures(source).breakdowns
    by_feature = {r.key: r for r in found["feature"]}
    assert by_feature["search"].would_save == Decimal("0.35")
    assert by_feature["search"].would_save_text == "$0.3500 (58.3%)"
    assert by_feature["search"].savings == 0
    assert by_feature["chat"].would_save == Decimal("0.27")
    assert by_feature["chat"].savings == Decimal("0.20")
    by_model = {r.key: r for r in found["model"]}
    assert by_model["gpt-4o"].observed_calls == 3
    assert by_model["gpt-4o"].would_save == Decimal("0.62")
    assert by_model["gpt-4o-mini"].observed_calls == 0
    assert by_model["gpt-4o-mini"].would_save_text == "—"
    assert by_model["gpt-4o-mini"].savings == Decimal("0.20")


@pytest.mark.parametrize("source", SOURCES)
def test_filters_narrow_the_observe_figures(source):
    store_records(
        [
            observed("0.40", "0.10", feature="search"),
            observed("0.30", "0.03", feature="chat"),
            observed("0.20", "0.02", feature="chat", created_at=NOV_20 - timedelta(days=30)),
        ]
    )
    t = figures(source, feature="chat").totals
    assert (t.observed_calls, t.would_save) == (2, Decimal("0.45"))
    t = figures(source, feature="search").totals
    assert (t.observed_calls, t.would_save) == (1, Decimal("0.30"))


@pytest.mark.postgres
def test_one_pass_postgresql_report_gives_the_same_observe_figures():
    store_records(
        [
            observed("0.40", "0.10", feature="search"),
            observed("0.30", None, feature="chat", requested_cost=Decimal("0.31")),
            enforced("0.05", "0.25", feature="chat"),
        ]
    )
    qs = LLMCall.objects.all()
    separate = reports.Figures(
        reports.totals(qs, with_p95=False),
        {kind: reports.breakdown(qs, kind) for kind in reports.BREAKDOWNS},
        [],
        [],
    )

    def observe_figures(f: reports.Figures) -> tuple[Any, ...]:
        t = f.totals
        rows = sorted(
            (kind, str(r.key), r.observed_calls, r.observed_spend, r.observed_routed, r.savings)
            for kind, items in f.breakdowns.items()
            if kind != "user"
            for r in items
        )
        return (
            t.observed_calls,
            t.observed_spend,
            t.observed_routed,
            t.observed_unpriced,
            t.savings,
            rows,
        )

    expected = observe_figures(separate)
    assert expected[:5] == (2, Decimal("0.70"), Decimal("0.40"), 1, Decimal("0.20"))
    for source, rollup in ((qs, False), (DailyUsage.objects.all(), True)):
        one_pass = reports._grouped_figures(source, rollup=rollup, limit=15, days=92)
        assert observe_figures(one_pass) == expected
    summary = reports._grouped_figures(DailySummary.objects.all(), rollup=True, limit=15, days=92)
    assert observe_figures(summary) == expected


# --------------------------------------------------------------------------- the sink


def test_sink_stores_the_routed_cost_and_sums_it_in_the_rollups():
    store_records(
        [
            observed("0.40", "0.1000000000049", user_id="u1"),
            observed("0.30", None, user_id="u1"),
            enforced("0.05", "0.25", user_id="u1"),
        ]
    )
    stored = {
        str(cost.normalize()): (model, routed)
        for cost, model, routed in LLMCall.objects.values_list(
            "cost", "routed_model", "routed_cost"
        )
    }
    assert stored == {
        "0.4": ("gpt-4o-mini", Decimal("0.1000000000")),
        "0.3": ("gpt-4o-mini", None),
        "0.05": (None, None),
    }
    for model in (DailyUsage, DailySummary):
        row = model.objects.get(model="gpt-4o")
        assert row.calls == row.observed_calls == 2
        assert row.observed_cost == Decimal("0.70")
        assert row.observed_requested_cost == Decimal("0.70")
        assert row.observed_routed_cost == Decimal("0.40")
        assert row.observed_unpriced == 1
        other = model.objects.get(model="gpt-4o-mini")
        assert (other.observed_calls, other.observed_cost) == (0, 0)


def test_a_second_batch_adds_to_the_observe_sums():
    store_records([observed("0.40", "0.10")])
    store_records([observed("0.20", "0.05"), observed("0.20", "0.05")])
    row = DailySummary.objects.get()
    assert (row.observed_calls, row.observed_cost, row.observed_routed_cost) == (
        3,
        Decimal("0.80"),
        Decimal("0.20"),
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.0012345678", Decimal("0.0012345678")),
        (0.5, Decimal("0.5000000000")),
        ("NaN", None),
        ("Infinity", None),
        ("not money", None),
        ("1e12", None),
        (True, None),
        (None, None),
    ],
)
def test_routed_cost_is_read_only_when_it_is_an_amount(raw, expected):
    record = make_record(extra={} if raw is None else {"routed_cost": raw})
    assert routed_cost(record) == expected
    # a record the reader rejects still stores, without a routed cost
    store_records([record])
    assert LLMCall.objects.get(record_id=record.id).routed_cost == expected


# --------------------------------------------------------------------------- the admin page


def shown_total(html: str, name: str) -> str:
    """The text of the cost report's figure ``name`` (its ``data-total``)."""
    match = re.search(rf'data-total="{name}">([^<]*)<', html)
    assert match, name
    return match.group(1)


@pytest.fixture
def mixed_calls():
    store_records(
        [
            enforced("0.10", "0.40", feature="search"),
            observed("0.50", "0.05", feature="search"),
            observed("0.30", "0.03", feature="chat"),
            observed("0.40", None, feature="chat", created_at=NOV_20 - timedelta(days=31)),
        ]
    )


def test_page_shows_what_routing_would_have_saved(admin_client, mixed_calls):
    html = admin_client.get(REPORT).content.decode()
    assert shown_total(html, "observed-calls") == "3"
    assert shown_total(html, "observed-spend") == "$1.20"
    assert shown_total(html, "observed-routed") == "$0.4800"
    assert shown_total(html, "would-save") == "$0.7200 (60.0%)"
    assert shown_total(html, "observed-unpriced") == "1"
    assert shown_total(html, "savings") == "$0.3000 (75.0%)"
    feature_table = html.split('id="llmroute-table-feature"')[1].split("</table>")[0]
    cells = re.findall(r"<td class=\"num\" data-would-save>([^<]*)</td>", feature_table)
    assert sorted(cells) == ["$0.2700 (38.6%)", "$0.4500 (90.0%)"]


@pytest.mark.parametrize(
    ("query", "calls", "would_save"),
    [
        ("?feature=chat", "2", "$0.2700 (38.6%)"),  # rollup-backed filter
        ("?q=search", "1", "$0.4500 (90.0%)"),  # search: read from the calls
        ("?created_at__year=2026&created_at__month=11", "2", "$0.7200 (90.0%)"),
    ],
)
def test_page_honours_the_changelist_filters(admin_client, mixed_calls, query, calls, would_save):
    html = admin_client.get(REPORT + query).content.decode()
    assert shown_total(html, "observed-calls") == calls
    assert shown_total(html, "would-save") == would_save


def test_page_without_observe_calls_leaves_the_section_out(admin_client):
    store_records([enforced("0.10", "0.40")])
    html = admin_client.get(REPORT).content.decode()
    assert 'id="llmroute-observe"' not in html
    assert "data-would-save" not in html
    assert shown_total(html, "savings") == "$0.3000 (75.0%)"


def test_observe_figures_come_from_the_rollup_when_it_answers_exactly(admin_client, mixed_calls):
    # Rows pruned from the call log stay in the rollup: the page still counts them.
    LLMCall.objects.filter(created_at__lt=NOV_20 - timedelta(days=1)).delete()
    html = admin_client.get(REPORT).content.decode()
    assert "the daily rollup" in html
    assert shown_total(html, "observed-calls") == "3"
    assert shown_total(html, "would-save") == "$0.7200 (60.0%)"
