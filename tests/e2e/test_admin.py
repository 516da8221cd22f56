"""llmroute's admin pages on the seeded demo data, in a browser."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e

REPORT = "/admin/django_llmroute/costreport/"


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
