"""``llmroute_sync_prices`` and ``llmroute_check``, and interception driven by ``LLMROUTE``."""

# ruff: noqa: F811  (fixtures imported from llmroute_helpers are test arguments)

from __future__ import annotations

import json
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from django_llmroute import runtime
from django_llmroute.models import Budget as BudgetRow

from .llmroute_helpers import llmroute  # noqa: F401

FEED = {
    "gpt-5.4": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "max_input_tokens": 400000,
        "max_output_tokens": 128000,
    },
    "brand-new-model": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 1e-07,
        "output_cost_per_token": 4e-07,
        "max_input_tokens": 128000,
    },
}


def run(name: str, *args: str) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    path = tmp_path / "litellm.json"
    path.write_text(json.dumps(FEED), encoding="utf-8")
    return path


# -- llmroute_sync_prices ------------------------------------------------------------


@pytest.mark.django_db
def test_sync_prices_reports_and_writes_the_catalog(llmroute, feed, tmp_path):
    catalog_path = tmp_path / "catalog" / "models.json"
    llmroute(CATALOG_PATH=str(catalog_path))
    before = runtime.get_engine().catalog.get("openai/gpt-5.4").price.input
    assert before != Decimal(3)
    output = run("llmroute_sync_prices", "--feed", str(feed))
    assert "1 added, 1 changed, 0 removed" in output
    assert "added    openai/brand-new-model  input $0.1 output $0.4 per 1M tokens" in output
    assert f"changed  openai/gpt-5.4  input ${before.normalize()} -> $3" in output
    assert f"wrote   {catalog_path}" in output
    assert catalog_path.is_file()
    # The engine of this process now reads the synced catalog.
    engine = runtime.get_engine()
    assert engine.catalog.get("openai/gpt-5.4").price.input == Decimal(3)
    assert "openai/brand-new-model" in engine.catalog
    # A second sync starts from the written file: nothing changes any more.
    assert "0 added, 0 changed, 0 removed" in run("llmroute_sync_prices", "--feed", str(feed))


def test_sync_prices_dry_run_writes_nothing(llmroute, feed, tmp_path):
    out = tmp_path / "out.json"
    output = run("llmroute_sync_prices", "--feed", str(feed), "--out", str(out), "--dry-run")
    assert "1 added, 1 changed" in output
    assert "dry run: nothing written" in output
    assert not out.exists()


def test_sync_prices_known_only_and_feed_from_settings(llmroute, feed, tmp_path):
    llmroute(CATALOG_FEED=str(feed))
    out = tmp_path / "out.json"
    output = run("llmroute_sync_prices", "--known-only", "--out", str(out))
    assert "0 added, 1 changed" in output
    written = out.read_text(encoding="utf-8")
    assert "brand-new-model" not in written


def test_sync_prices_errors(llmroute, tmp_path):
    with pytest.raises(CommandError, match="no feed"):
        run("llmroute_sync_prices")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(CommandError, match=r"feed .*bad\.json"):
        run("llmroute_sync_prices", "--feed", str(bad))


# -- llmroute_check ------------------------------------------------------------------


@pytest.mark.django_db
def test_check_lists_providers_dry_runs_and_decides(llmroute):
    llmroute(PROVIDERS={"openai": {}, "anthropic": {}})
    output = run("llmroute_check", "--feature", "support")
    assert "django_llmroute.I001" in output  # OFFLINE is "always" in the test settings
    assert "anthropic    offline (FakeProvider)   https://api.anthropic.com" in output
    assert "openai       offline (FakeProvider)" in output
    dry = output.split("Dry runs (FakeProvider)")[1].split("Sample decision")[0]
    assert dry.count(" ok ") == 2
    assert "anthropic    ok  anthropic/" in dry
    decision = output.split("Sample decision")[1]
    assert "asked for  openai/gpt-5.4" in decision
    assert "goes to    " in decision
    assert "- chosen:" in decision


@pytest.mark.django_db
def test_check_shows_a_budget_at_work(llmroute):
    llmroute(PROVIDERS={"openai": {}})
    BudgetRow.objects.create(
        name="support-budget",
        scope="feature",
        scope_value="support",
        limit_usd=Decimal("0.000001"),
        action="block",
    )
    output = run("llmroute_check", "--feature", "support", "--no-dry-run")
    assert "budgets: support-budget" in output
    assert "Dry runs" not in output
    # Nothing spent yet, so the decision goes through; the dry runs never charge it.
    assert "goes to" in output


def test_check_fails_on_invalid_settings(llmroute):
    llmroute(MODE="sometimes")
    out = StringIO()
    with pytest.raises(CommandError, match="LLMROUTE is invalid"):
        call_command("llmroute_check", stdout=out)
    assert "django_llmroute.E001: LLMROUTE['MODE']" in out.getvalue()


# -- interception switched on by INSTRUMENT_HTTPX -------------------------------------


@pytest.mark.django_db(transaction=True)
def test_instrument_httpx_routes_sdk_calls_made_in_a_view(client, llmroute):
    from routing_middleware import transport

    assert not transport.is_instrumented()
    llmroute(INSTRUMENT_HTTPX=True, PROVIDERS={"openai": {}})
    try:
        assert transport.is_instrumented()
        answer = client.get("/it/sdk/").json()
    finally:
        llmroute(INSTRUMENT_HTTPX=False)
    assert not transport.is_instrumented()
    assert answer["content"]
    assert answer["routed_to"].startswith("openai/")
    [call] = llmroute.wait_for_calls(1, feature="sdk-feature")
    assert call.route == "it:sdk"
    assert call.tier == 1
    assert call.requested_model.endswith("gpt-5.4")
