"""Observe-mode figures outside the cost report page: ``llmroute_report`` and the call log CSV."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command

from django_llmroute import reports
from django_llmroute.admin import CSV_COLUMNS
from django_llmroute.models import LLMCall
from django_llmroute.sinks import store_records

from .test_observe_report import NOV_20, REPORT, enforced, observed, shown_total

pytestmark = pytest.mark.django_db

NOVEMBER = ("--since", "2026-11-01", "--until", "2026-11-30")
NOVEMBER_PAGE = REPORT + "?created_at__year=2026&created_at__month=11"
SOURCES = ["rollup", "calls"]


def report(*args: str) -> str:
    out = io.StringIO()
    call_command("llmroute_report", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def report_csv(*args: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(report(*args, "--format", "csv"))))


@pytest.fixture
def mixed_calls():
    store_records(
        [
            enforced("0.10", "0.40", feature="search"),
            observed("0.50", "0.05", feature="search"),
            observed("0.30", "0.03", feature="chat"),
            observed("0.20", None, feature="chat", tier=2),
            # October: outside the period
            observed("0.40", "0.01", feature="chat", created_at=NOV_20 - timedelta(days=31)),
        ]
    )


# --------------------------------------------------------------------------- llmroute_report


@pytest.mark.parametrize("source", SOURCES)
def test_report_totals_are_the_cost_report_pages(admin_client, mixed_calls, source):
    html = admin_client.get(NOVEMBER_PAGE).content.decode()
    lines = report(*NOVEMBER, "--source", source).splitlines()
    assert lines[-4:] == [
        f"total: {shown_total(html, 'spend')} over {shown_total(html, 'calls')} calls",
        f"saved by routing (enforced calls): {shown_total(html, 'savings')}",
        f"observe mode: {shown_total(html, 'observed-calls')} calls cost"
        f" {shown_total(html, 'observed-spend')}; routed, {shown_total(html, 'observed-routed')}:"
        f" would have saved {shown_total(html, 'would-save')}",
        f"  ({shown_total(html, 'observed-unpriced')} of them have no routed price"
        " and count at what they cost)",
    ]
    # and the figures themselves, so a page and a command wrong alike still fail
    assert lines[-4] == "total: $1.10 over 4 calls"
    assert lines[-3] == "saved by routing (enforced calls): $0.3000 (75.0%)"
    assert lines[-2].endswith("would have saved $0.7200 (72.0%)")


@pytest.mark.parametrize("source", SOURCES)
def test_report_table_has_a_would_save_column(mixed_calls, source):
    lines = report(*NOVEMBER, "--source", source).splitlines()
    assert lines[1].split()[-3:] == ["saved", "would", "save"]
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert rows["search"][-2:] == ["$0.3000", "$0.4500"]
    assert rows["chat"][-2:] == ["$0.00", "$0.2700"]


def test_report_without_observe_calls_says_nothing_of_them():
    store_records([enforced("0.10", "0.40", created_at=NOV_20)])
    out = report(*NOVEMBER)
    assert "would" not in out
    assert "observe" not in out
    assert out.splitlines()[-1] == "saved by routing (enforced calls): $0.3000 (75.0%)"


@pytest.mark.parametrize("source", SOURCES)
def test_report_csv_rows_are_the_cost_report_breakdown(admin_client, mixed_calls, source):
    rows = {r["feature"]: r for r in report_csv(*NOVEMBER, "--source", source)}
    assert {k: rows["search"][k] for k in ("calls", "observed_calls")} == {
        "calls": "2",
        "observed_calls": "1",
    }
    money = {
        feature: tuple(
            Decimal(row[k])
            for k in ("saved_usd", "observed_spend_usd", "observed_routed_usd", "would_save_usd")
        )
        for feature, row in rows.items()
    }
    assert money == {
        "search": (Decimal("0.30"), Decimal("0.50"), Decimal("0.05"), Decimal("0.45")),
        "chat": (Decimal(0), Decimal("0.50"), Decimal("0.23"), Decimal("0.27")),
    }
    # The page's feature table shows the same savings, row by row.
    html = admin_client.get(NOVEMBER_PAGE).content.decode()
    table = html.split('id="llmroute-table-feature"')[1].split("</table>")[0]
    for feature, row in rows.items():
        cells = re.search(rf"<td>{feature}</td>(.*?)</tr>", table, re.S)
        assert cells, feature
        numbers = re.findall(r'<td class="num"[^>]*>([^<]*)</td>', cells.group(1))
        saved, would_save = numbers[3], numbers[4]
        assert saved == reports.format_money(Decimal(row["saved_usd"]))
        assert would_save.startswith(reports.format_money(Decimal(row["would_save_usd"])) + " (")


@pytest.mark.parametrize("source", SOURCES)
def test_report_csv_by_tier_and_day_sums_each_observe_call_once(mixed_calls, source):
    rows = report_csv(*NOVEMBER, "--by", "tier,day", "--source", source)
    assert {
        (r["tier"], r["day"], r["observed_calls"], Decimal(r["would_save_usd"])) for r in rows
    } == {
        ("1", "2026-11-20", "2", Decimal("0.72")),
        ("2", "2026-11-20", "1", Decimal(0)),
    }


def test_report_csv_header_is_stable(mixed_calls):
    out = report(*NOVEMBER, "--by", "feature,model", "--format", "csv")
    assert out.splitlines()[0] == (
        "feature,model,calls,input_tokens,output_tokens,spend_usd,saved_usd,"
        "observed_calls,observed_spend_usd,observed_routed_usd,would_save_usd"
    )


# --------------------------------------------------------------------------- call log CSV


def test_call_log_csv_carries_the_routed_model_and_cost(admin_client, mixed_calls):
    response = admin_client.post(
        "/admin/django_llmroute/llmcall/",
        {
            "action": "export_csv",
            "_selected_action": [str(pk) for pk in LLMCall.objects.values_list("pk", flat=True)],
        },
    )
    body = b"".join(response.streaming_content).decode()
    reader = csv.DictReader(io.StringIO(body))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    rows = list(reader)
    got = sorted((r["mode"], r["cost"], r["routed_model"], r["routed_cost"]) for r in rows)
    assert got == [
        ("enforce", "0.1000000000", "", ""),
        ("observe", "0.2000000000", "gpt-4o-mini", ""),
        ("observe", "0.3000000000", "gpt-4o-mini", "0.0300000000"),
        ("observe", "0.4000000000", "gpt-4o-mini", "0.0100000000"),
        ("observe", "0.5000000000", "gpt-4o-mini", "0.0500000000"),
    ]
    # As documented: the observe rows' cost minus routed cost is the page's saving.
    november = [r for r in rows if r["created_at"].startswith("2026-11")]
    would_save = sum(
        Decimal(r["cost"]) - Decimal(r["routed_cost"] or r["cost"])
        for r in november
        if r["mode"] == "observe"
    )
    html = admin_client.get(NOVEMBER_PAGE).content.decode()
    assert shown_total(html, "would-save").startswith(reports.format_money(would_save) + " (")
