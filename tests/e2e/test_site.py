"""The support desk in a browser: mode banner, routed actions, streaming, the call log."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest

from example_project.demo_login import ADMIN_USERNAME

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e


def _money(text: str) -> float:
    found = re.search(r"\$([0-9,]+(?:\.[0-9]+)?)", text)
    assert found, f"no amount in {text!r}"
    return float(found.group(1).replace(",", ""))


def _open_first_ticket(page: Page) -> None:
    page.goto("/")
    page.locator("table.tickets a").first.click()
    page.wait_for_selector("#action-summarize")


def test_every_page_says_it_runs_offline(page: Page) -> None:
    page.goto("/")
    assert "Offline mode" in page.inner_text("#llm-mode")
    _open_first_ticket(page)
    banner = page.inner_text("#llm-mode")
    assert "Offline mode" in banner
    assert "openai" in banner


def test_summarize_shows_routing_and_lands_in_the_call_log(admin_page: Page) -> None:
    page = admin_page
    _open_first_ticket(page)
    page.click("#action-summarize")
    page.wait_for_selector("#routing")
    model = page.inner_text('[data-field="model"]').split()[0]
    requested = page.inner_text('[data-field="requested-model"]')
    assert requested == "gpt-5.4"
    # The cheap tier never answers with the premium model the code asked for.
    assert model.rsplit("/", 1)[-1] != "gpt-5.4"
    cost = _money(page.inner_text('[data-field="cost"]'))
    would = _money(page.inner_text('[data-field="requested-cost"]'))
    assert 0 < cost < would
    assert page.locator('[data-field="reasons"] li').count() >= 1
    assert page.inner_text("#answer-text").strip()

    # The record is written off the request path: give the sink a moment.
    deadline = time.monotonic() + 15
    while True:
        page.goto("/admin/django_llmroute/llmcall/?feature=ticket-summary")
        first = page.locator("#result_list tbody tr").first
        if ADMIN_USERNAME in first.inner_text() or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    row = first.inner_text()
    assert ADMIN_USERNAME in row, row
    assert model.rsplit("/", 1)[-1] in row, row


def test_draft_reply_streams_tokens_into_the_page(page: Page) -> None:
    _open_first_ticket(page)
    page.evaluate(
        """() => {
            window.__updates = 0;
            new MutationObserver(() => { window.__updates += 1; }).observe(
                document.getElementById("answer-text"),
                {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.click("#action-draft")
    page.wait_for_selector("#routing-panel #routing")
    updates = page.evaluate("window.__updates")
    assert updates >= 5, f"the draft arrived in {updates} updates, not as a stream"
    assert len(page.inner_text("#answer-text")) > 40
    assert "Streamed in" in page.inner_text("#routing")
    assert page.inner_text('[data-field="requested-model"]') == "gpt-5.4"


def test_a_blocking_budget_stops_the_call_and_the_page_says_so(admin_page: Page) -> None:
    page = admin_page
    page.goto("/admin/django_llmroute/budget/add/")
    page.fill("#id_name", "e2e-classify-cap")
    page.select_option("#id_scope", "feature")
    page.fill("#id_scope_value", "ticket-classify")
    page.select_option("#id_period", "rolling")
    page.fill("#id_hours", "720")
    page.fill("#id_limit_usd", "0.01")
    page.select_option("#id_action", "block")
    page.click("input[name=_save]")
    page.wait_for_selector("#result_list")

    _open_first_ticket(page)
    page.click("#action-classify")
    page.wait_for_selector("#result")
    error = page.inner_text("#result .error")
    assert "402" in error, error
    assert page.locator("#routing").count() == 0


def test_legal_review_runs_in_observe_mode_on_the_requested_model(page: Page) -> None:
    _open_first_ticket(page)
    page.click("#action-legal")
    page.wait_for_selector("#routing")
    requested = page.inner_text('[data-field="requested-model"]')
    model = page.inner_text('[data-field="model"]').split()[0]
    assert model.rsplit("/", 1)[-1] == requested.rsplit("/", 1)[-1] == "claude-opus-4-7"
    assert "observe" in page.inner_text('[data-field="reasons"]')
    assert page.inner_text("#answer-text").strip()
