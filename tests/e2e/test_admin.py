"""llmroute's admin pages on the seeded demo data, in a browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from example_project.server import demo_env

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from .conftest import Site

pytestmark = pytest.mark.e2e

REPORT = "/admin/django_llmroute/costreport/"

# Calls made through the site's own engine in observe mode, recorded by its sink;
# prints what the report should show for them, summed from the stored rows.
_OBSERVE_CALLS = """
import json
from decimal import Decimal

import django

django.setup()

from django_llmroute.models import LLMCall
from django_llmroute.reports import format_money, saving_text
from django_llmroute.runtime import get_engine, get_sink
from routing_middleware.context import RouteContext, use_context
from routing_middleware.schema import ChatRequest, Message

engine = get_engine()
with use_context(RouteContext(feature="e2e-observe", mode="observe")):
    for n in range(3):
        text = f"Summarise ticket {n}: the printer on floor {n} jams on every job."
        engine.complete(
            ChatRequest(model="openai/gpt-5.4", messages=[Message(role="user", content=text)])
        )
assert get_sink().flush(30)
rows = list(LLMCall.objects.filter(feature="e2e-observe").values("cost", "routed_cost", "mode"))
assert rows and all(r["mode"] == "observe" and r["routed_cost"] is not None for r in rows)
spend = sum((Decimal(r["cost"]) for r in rows), Decimal(0))
routed = sum((Decimal(r["routed_cost"]) for r in rows), Decimal(0))
print(json.dumps({
    "calls": str(len(rows)),
    "spend": format_money(spend),
    "routed": format_money(routed),
    "would_save": saving_text(spend - routed, spend),
    "cheaper": bool(routed < spend),
}))
"""


def _number(text: str) -> float:
    found = re.search(r"[0-9][0-9,]*(?:\.[0-9]+)?", text)
    assert found, f"no number in {text!r}"
    return float(found.group(0).replace(",", ""))


def _totals(page: Page) -> tuple[float, float]:
    spend = _number(page.inner_text('[data-total="spend"]'))
    calls = _number(page.inner_text('[data-total="calls"]'))
    return spend, calls


def test_cost_report_draws_charts_of_the_seeded_spend(admin_page: Page) -> None:
    page = admin_page
    page.goto(REPORT)
    charts = page.locator("#llmroute-cost-report svg.llmroute-chart")
    assert charts.count() >= 3
    widths = page.eval_on_selector_all(
        "#llmroute-cost-report svg.llmroute-chart rect",
        "rects => rects.map(r => parseFloat(r.getAttribute('width') || '0'))",
    )
    assert sum(1 for w in widths if w > 0) >= 10, widths
    heights = page.eval_on_selector_all(
        "#llmroute-cost-report svg.llmroute-chart rect",
        "rects => rects.map(r => parseFloat(r.getAttribute('height') || '0'))",
    )
    assert max(heights) > 0
    spend, calls = _totals(page)
    assert spend > 0
    assert calls > 500
    assert "gemini/gemini-2.5-flash-lite" in page.inner_text("#llmroute-cost-report")
    markers = page.eval_on_selector_all(
        ".llmroute-cards li", "items => items.map(i => getComputedStyle(i).listStyleType)"
    )
    assert markers
    assert set(markers) == {"none"}  # cards, not bullet points


def test_date_filter_narrows_the_totals(admin_page: Page) -> None:
    page = admin_page
    page.goto(REPORT)
    before = _totals(page)
    links = page.locator("nav.toplinks a:not(.date-back)")
    assert links.count() >= 1
    # Drill down the date hierarchy to a single day (a month first when the data spans two).
    while "day=" not in page.url and links.count():
        links.last.click()
        page.wait_for_load_state()
        links = page.locator("nav.toplinks a:not(.date-back)")
    after = _totals(page)
    assert "created_at__day=" in page.url
    assert 0 < after[1] < before[1]
    assert 0 < after[0] < before[0]


def test_seeded_legal_review_shows_what_observe_mode_would_have_saved(admin_page: Page) -> None:
    page = admin_page
    page.goto(REPORT)
    assert page.locator("#llmroute-observe").is_visible()
    page.goto(REPORT + "?feature=legal-review")
    # Every seeded legal review ran in observe mode: no realized saving, only a would-be one.
    calls = page.inner_text('[data-total="calls"]')
    assert page.inner_text('[data-total="observed-calls"]') == calls
    assert _number(calls) >= 50
    assert page.inner_text('[data-total="observed-spend"]') == page.inner_text(
        '[data-total="spend"]'
    )
    assert page.inner_text('[data-total="savings"]') == "$0.00 (0.0%)"
    routed = _number(page.inner_text('[data-total="observed-routed"]'))
    assert 0 < routed < _number(page.inner_text('[data-total="observed-spend"]'))
    assert _number(page.inner_text('[data-total="would-save"]')) > 0
    row = page.locator("#llmroute-table-feature tr", has_text="legal-review")
    assert row.locator("[data-would-save]").inner_text() == page.inner_text(
        '[data-total="would-save"]'
    )


def test_new_budget_shows_its_progress_bar(admin_page: Page) -> None:
    page = admin_page
    page.goto("/admin/django_llmroute/budget/add/")
    page.fill("#id_name", "e2e-summaries")
    page.select_option("#id_scope", "feature")
    page.fill("#id_scope_value", "ticket-summary")
    page.select_option("#id_period", "rolling")
    page.fill("#id_hours", "720")
    page.fill("#id_limit_usd", "5")
    page.fill("#id_thresholds", '[[0.8, "downgrade"]]')
    page.click("input[name=_save]")
    page.wait_for_selector("#result_list")
    row = page.locator("#result_list tr", has_text="e2e-summaries")
    assert row.count() == 1
    bar = row.locator('[role="progressbar"]')
    used = float(bar.get_attribute("aria-valuenow") or "0")
    assert 0 < used < 100
    assert "$5" in row.inner_text()


def test_seeded_global_budget_leaves_the_demo_undowngraded(admin_page: Page) -> None:
    # Past its 80% threshold the monthly budget would downgrade every call the demo
    # site makes, and every button would show the cheapest tier.
    page = admin_page
    page.goto("/admin/django_llmroute/budget/")
    row = page.locator("#result_list tr", has_text="support-monthly")
    used = float(row.locator('[role="progressbar"]').get_attribute("aria-valuenow") or "nan")
    assert 20 < used < 80, used


@pytest.fixture(scope="module")
def observed(site: Site) -> dict[str, str]:
    """Three observe-mode calls on the site; what the report should show for them."""
    env = demo_env(site.db_path, fast=True)
    done = subprocess.run(
        [sys.executable, "-c", _OBSERVE_CALLS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_cost_report_shows_what_observe_mode_would_have_saved(
    admin_page: Page, observed: dict[str, str]
) -> None:
    assert observed["cheaper"], observed
    page = admin_page
    page.goto(REPORT)
    section = page.locator("#llmroute-observe")
    assert section.is_visible()
    assert _number(page.inner_text('[data-total="observed-calls"]')) >= 3
    page.locator("#changelist-filter a", has_text="e2e-observe").first.click()
    page.wait_for_url("**feature=e2e-observe**")
    assert page.inner_text('[data-total="observed-calls"]') == observed["calls"] == "3"
    assert page.inner_text('[data-total="observed-spend"]') == observed["spend"]
    assert page.inner_text('[data-total="spend"]') == observed["spend"]
    assert page.inner_text('[data-total="observed-routed"]') == observed["routed"]
    assert page.inner_text('[data-total="would-save"]') == observed["would_save"]
    assert "Would have saved" in section.inner_text()
    row = page.locator("#llmroute-table-feature tr", has_text="e2e-observe")
    assert row.locator("[data-would-save]").inner_text() == observed["would_save"]
