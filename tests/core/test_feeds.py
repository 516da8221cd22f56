"""Pricing feeds: LiteLLM and OpenRouter import, validation, atomic merge, URLs, refresher."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from routing_middleware.catalog import Catalog, models_to_json
from routing_middleware.feeds import (
    FeedError,
    detect_format,
    load_feed,
    merge_feed,
    parse_feed,
)
from routing_middleware.refresh import CatalogRefresher

from .feed_server import serve

DATA = Path(__file__).parent / "data"
LITELLM = DATA / "litellm_small.json"
OPENROUTER = DATA / "openrouter_small.json"


def _write(tmp_path: Path, document: Any, name: str = "feed.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _litellm(**fields: Any) -> dict[str, Any]:
    entry = {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": "1e-06",
        "output_cost_per_token": "2e-06",
        "max_input_tokens": 8192,
    }
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not None}


# ---------------------------------------------------------------------- litellm


def test_litellm_feed_converts_prices_exactly() -> None:
    feed = load_feed(LITELLM)
    assert feed.format == "litellm"
    models = {m.id: m for m in feed.models}
    mini = models["openai/gpt-4o-mini"]
    # 1.2e-07 per token = 0.12 per 1M, exactly (no float artifacts)
    assert mini.price.input == Decimal("0.12")
    assert str(mini.price.output) == "0.48"
    assert mini.price.cached_input == Decimal("0.06")
    assert mini.capabilities >= {"tools", "vision", "json_schema", "prompt_caching", "streaming"}
    # LiteLLM's {"alias_of": ...} entries become aliases of their target
    assert "openai/latest-pointer" in mini.aliases


def test_litellm_bands_ignore_priority_and_batch_variants() -> None:
    models = {m.id: m for m in load_feed(LITELLM).models}
    band = models["gemini/gemini-9-test"].price.bands
    assert len(band) == 1
    assert (band[0].above_tokens, band[0].input, band[0].output) == (200_000, 2, 12)


def test_litellm_tiered_pricing_becomes_base_price_and_bands() -> None:
    model = {m.id: m for m in load_feed(LITELLM).models}["qwen/qwen-test-tiered"]
    assert (model.price.input, model.price.output) == (Decimal("0.05"), Decimal("0.4"))
    (band,) = model.price.bands
    assert (band.above_tokens, band.input, band.output) == (256_000, Decimal("0.25"), 2)


def test_litellm_off_peak_windows_and_weekdays() -> None:
    op = {m.id: m for m in load_feed(LITELLM).models}["deepseek/deepseek-test-offpeak"].price
    assert op.off_peak is not None
    assert (op.off_peak.input, op.off_peak.output) == (Decimal("0.15"), Decimal("0.6"))
    applies = op.off_peak.applies_at
    # 2026-11-25 is a Wednesday, 2026-11-28 a Saturday
    assert applies(datetime(2026, 11, 25, 0, 30, tzinfo=UTC))
    assert not applies(datetime(2026, 11, 25, 1, 0, tzinfo=UTC))  # end is exclusive
    assert applies(datetime(2026, 11, 25, 16, 30, tzinfo=UTC))  # wraps past midnight...
    assert applies(datetime(2026, 11, 26, 0, 29, tzinfo=UTC))
    assert not applies(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    assert applies(datetime(2026, 11, 28, 12, 0, tzinfo=UTC))  # Saturday: all day
    assert applies(datetime(2026, 11, 28, 12, 0))  # naive means UTC


def test_litellm_feed_skips_what_llmroute_cannot_use() -> None:
    feed = load_feed(LITELLM)
    assert "vercel_ai_gateway/some/model" in feed.skipped
    assert "dall-e-3" in feed.skipped
    assert all(not m.id.startswith("vercel") for m in feed.models)


# ---------------------------------------------------------------------- openrouter


def test_openrouter_feed() -> None:
    feed = load_feed(OPENROUTER)
    assert feed.format == "openrouter"
    models = {m.id: m for m in feed.models}
    sonnet = models["openrouter/anthropic/claude-sonnet-4.6"]
    assert sonnet.provider == "openrouter"
    assert sonnet.name == "anthropic/claude-sonnet-4.6"
    assert (sonnet.price.input, sonnet.price.output) == (3, 15)
    assert sonnet.price.cached_input == Decimal("0.3")
    assert sonnet.price.cache_write == Decimal("3.75")
    assert sonnet.price.reasoning is None  # "0" internal_reasoning: same as output
    assert sonnet.context_window == 1_000_000
    assert sonnet.max_output_tokens == 64_000
    assert sonnet.as_of is not None  # the day the feed was read
    assert sonnet.source == f"feed {OPENROUTER}"
    assert {"tools", "vision", "json_schema", "reasoning"} <= sonnet.capabilities
    flash = models["openrouter/deepseek/deepseek-v4-flash"]
    assert flash.price.reasoning == Decimal("2.2")
    free = models["openrouter/meta-llama/llama-3.3-70b-instruct:free"]
    assert free.price.input == 0
    assert free.deprecation_date is not None
    # "-1" is a variable price: skipped, not an error
    assert "openrouter/openrouter/auto" not in models
    assert feed.skipped == ("openrouter/auto",)


def test_format_detection() -> None:
    assert detect_format({"data": []}) == "openrouter"
    assert detect_format({"format": 1, "models": []}) == "llmroute"
    assert detect_format({"gpt-x": {}}) == "litellm"
    with pytest.raises(FeedError, match="top level"):
        detect_format([1, 2])


# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"m1": _litellm(input_cost_per_token="-1e-06")}, r"'m1'\.input_cost_per_token: negative"),
        ({"m2": _litellm(output_cost_per_token="cheap")}, r"'m2'\.output_cost_per_token: not a"),
        ({"m3": _litellm(input_cost_per_token=True)}, r"'m3'\.input_cost_per_token: expected"),
        # $2,000 per 1M tokens: a per-1M price written into the per-token field
        ({"m4": _litellm(input_cost_per_token="0.002")}, r"'m4'\.input_cost_per_token: 2000"),
        ({"m5": _litellm(output_cost_per_token=None)}, r"'m5'\.output_cost_per_token: missing"),
        (
            {"m6": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6}},
            r"'m6'\.litellm_provider: missing",
        ),
        ({"m7": _litellm(deprecation_date="soon")}, r"'m7'\.deprecation_date"),
        (
            {"m8": _litellm(tiered_pricing=[{"range": [0, 10]}], input_cost_per_token=None)},
            r"'m8'\.tiered_pricing\[0\]\.input_cost_per_token: missing",
        ),
        (
            {"m9": _litellm(off_peak_pricing={"windows": [{"hours_utc": "25:00-26:00"}]})},
            r"'m9'\.off_peak_pricing\.windows\[0\]",
        ),
        (
            {"data": [{"id": "x/y", "pricing": {"prompt": "abc", "completion": "0"}}]},
            r"'x/y'\.pricing\.prompt: not a number",
        ),
        (
            {"data": [{"id": "x/y", "pricing": {"prompt": "0.000001"}, "context_length": 9}]},
            r"'x/y'\.pricing\.completion: missing",
        ),
        (
            {"data": [{"id": "x/y", "pricing": {"prompt": "0", "completion": "0"}}]},
            r"'x/y'\.context_length: missing",
        ),
        (
            {
                "format": 1,
                "models": [
                    {
                        "id": "acme/m",
                        "provider": "acme",
                        "name": "m",
                        "price": {"input": "1", "output": "2"},
                        "context_window": 100,
                    }
                ],
            },
            r"'acme/m'\.provider: unknown provider 'acme'",
        ),
        (
            {
                "format": 1,
                "models": [
                    {
                        "id": "openai/m",
                        "provider": "openai",
                        "name": "m",
                        "price": {"input": "1", "output": "-2"},
                        "context_window": 100,
                    }
                ],
            },
            r"'openai/m'\.price\.output: negative",
        ),
    ],
)
def test_invalid_feeds_name_entry_and_field(document: dict[str, Any], message: str) -> None:
    with pytest.raises(FeedError, match=message):
        parse_feed(document)


def test_feed_error_is_a_value_error() -> None:
    assert issubclass(FeedError, ValueError)


def test_unreadable_sources(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match="cannot read"):
        load_feed(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(FeedError, match="not valid JSON"):
        load_feed(bad)
    with pytest.raises(FeedError, match="unknown feed format"):
        load_feed(LITELLM, "yaml")


# ---------------------------------------------------------------------- merging


def test_merge_reports_added_changed_and_keeps_curated_fields() -> None:
    base = Catalog.bundled()
    before = base.get("openai/gpt-4o-mini")
    models, report = merge_feed(base.models, load_feed(LITELLM))
    merged = {m.id: m for m in models}
    after = merged["openai/gpt-4o-mini"]
    assert after.price.input == Decimal("0.12")
    assert after.quality == before.quality
    assert after.tier == before.tier
    assert set(before.aliases) <= set(after.aliases)
    assert report.changed == ["openai/gpt-4o-mini"]
    assert report.added == [
        "deepseek/deepseek-test-offpeak",
        "gemini/gemini-9-test",
        "qwen/qwen-test-tiered",
    ]
    assert report.removed == []
    # models the feed does not mention stay
    assert len(models) == len(base) + 3


def test_merge_matches_feed_models_by_alias() -> None:
    # The snapshot knows "deepseek/deepseek-v4-flash"; a LiteLLM feed keyed
    # "deepseek-v4-flash" (provider deepseek) lands on the same model.
    document = {
        "deepseek-v4-flash": _litellm(
            litellm_provider="deepseek", input_cost_per_token="4e-07", max_input_tokens=1000000
        )
    }
    models, report = merge_feed(Catalog.bundled().models, parse_feed(document))
    assert report.changed == ["deepseek/deepseek-v4-flash"]
    assert not report.added
    assert {m.id: m for m in models}["deepseek/deepseek-v4-flash"].price.input == Decimal("0.4")


def test_exact_id_wins_over_alias_and_duplicates_merge_once() -> None:
    # The snapshot folds "gpt-4o-mini-2024-07-18" into openai/gpt-4o-mini as an alias.
    # A feed pricing the dated entry differently, listed first, must not override the
    # model's own entry, nor be added as a second model.
    document = {
        "gpt-4o-mini-2024-07-18": _litellm(input_cost_per_token="5e-07", max_input_tokens=128000),
        "gpt-4o-mini": _litellm(input_cost_per_token="1.2e-07", max_input_tokens=128000),
    }
    models, report = merge_feed(Catalog.bundled().models, parse_feed(document))
    merged = {m.id: m for m in models}
    assert merged["openai/gpt-4o-mini"].price.input == Decimal("0.12")
    assert "openai/gpt-4o-mini-2024-07-18" not in merged
    assert report.changed == ["openai/gpt-4o-mini"]
    assert report.added == []


def test_known_only_merge_skips_new_models() -> None:
    catalog = Catalog.bundled()
    report = catalog.update_from_feed(LITELLM, add_new=False)
    assert report.added == []
    assert report.changed == ["openai/gpt-4o-mini"]
    assert "gemini/gemini-9-test" in report.skipped
    assert "gemini/gemini-9-test" not in catalog
    assert len(catalog) == len(Catalog.bundled())


def test_unchanged_feed_changes_nothing() -> None:
    catalog = Catalog.bundled()
    snapshot_text = models_to_json(catalog.models[:5])
    doc = json.loads(snapshot_text)
    models, report = merge_feed(catalog.models, parse_feed(doc))
    assert report.unchanged == 5
    assert not report.changed_anything
    assert models == tuple(sorted(catalog.models, key=lambda m: m.id))


def test_openrouter_feed_is_authoritative_for_openrouter(tmp_path: Path) -> None:
    catalog = Catalog.bundled()
    first = catalog.update_from_feed(OPENROUTER)
    assert len(first.added) == 3
    assert catalog.generation == 1
    smaller = json.loads(OPENROUTER.read_text())
    smaller["data"] = [e for e in smaller["data"] if e["id"] != "deepseek/deepseek-v4-flash"]
    second = catalog.update_from_feed(_write(tmp_path, smaller))
    assert second.removed == ["openrouter/deepseek/deepseek-v4-flash"]
    assert "openrouter/deepseek/deepseek-v4-flash" not in catalog
    assert "deepseek/deepseek-v4-flash" in catalog  # the direct model is untouched
    # OpenRouter-style ids without the prefix still mean the vendor's own model
    assert catalog.get("anthropic/claude-sonnet-4.6").id == "anthropic/claude-sonnet-4-6"


def test_from_feed_builds_a_new_catalog_over_the_snapshot() -> None:
    catalog = Catalog.from_feed(LITELLM)
    assert catalog.get("gpt-4o-mini").price.input == Decimal("0.12")
    assert len(catalog) == len(Catalog.bundled()) + 3
    assert Catalog.bundled().get("gpt-4o-mini").price.input == Decimal("0.15")


def test_failed_feed_leaves_catalog_untouched(tmp_path: Path) -> None:
    catalog = Catalog.bundled()
    models_before = catalog.models
    # The first entry is valid and would change a price; the second is broken.
    document = {
        "gpt-4o-mini": _litellm(input_cost_per_token="9e-07", max_input_tokens=128000),
        "broken": _litellm(output_cost_per_token="-3e-06"),
    }
    with pytest.raises(FeedError, match="'broken'"):
        catalog.update_from_feed(_write(tmp_path, document))
    assert catalog.generation == 0
    assert catalog.models is models_before
    assert catalog.get("gpt-4o-mini").price.input == Decimal("0.15")


# ---------------------------------------------------------------------- URLs


def test_feed_from_local_url() -> None:
    routes = {"/models": OPENROUTER.read_bytes()}
    with serve(routes) as base:
        catalog = Catalog.bundled()
        report = catalog.update_from_feed(f"{base}/models")
        assert report.format == "openrouter"
        assert "openrouter/anthropic/claude-sonnet-4.6" in catalog
        with pytest.raises(FeedError, match="cannot fetch"):
            load_feed(f"{base}/missing")
    assert catalog.generation == 1


def test_unreachable_url_is_a_feed_error() -> None:
    with serve({}) as base:
        port = base.rsplit(":", 1)[1]
    # the server is gone: connection refused on the same local port
    with pytest.raises(FeedError, match="cannot fetch"):
        load_feed(f"http://127.0.0.1:{port}/models", timeout=2)


# ---------------------------------------------------------------------- refresher


def _or_doc(prompt: str) -> bytes:
    doc = json.loads(OPENROUTER.read_text())
    doc["data"][0]["pricing"]["prompt"] = prompt
    return json.dumps(doc).encode()


def _wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_refresher_follows_a_changing_feed_and_survives_a_bad_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    routes = {"/models": _or_doc("0.000003")}
    model_id = "openrouter/anthropic/claude-sonnet-4.6"
    catalog = Catalog.bundled()
    with serve(routes) as base:
        refresher = CatalogRefresher(catalog, f"{base}/models", interval_s=0.05)
        assert not refresher.running  # nothing starts on construction
        refresher.start()
        try:
            assert _wait_for(lambda: model_id in catalog)
            assert catalog.get(model_id).price.input == 3
            routes["/models"] = _or_doc("0.000002")
            assert _wait_for(lambda: catalog.get(model_id).price.input == 2)
            generation = catalog.generation
            with caplog.at_level(logging.WARNING, logger="llmroute.catalog"):
                routes["/models"] = b'{"data": [{"id": "x/y", "pricing": {"prompt": "-5"}}]}'
                assert _wait_for(lambda: refresher.failures >= 2)
            assert catalog.get(model_id).price.input == 2
            assert catalog.generation == generation
            assert "keeping current prices" in caplog.text
            assert "'x/y'.pricing.completion: missing" in (refresher.last_error or "")
        finally:
            refresher.stop()
    assert not refresher.running


def test_refresher_refresh_once_and_validation() -> None:
    catalog = Catalog.bundled()
    refresher = CatalogRefresher(catalog, OPENROUTER, interval_s=60)
    report = refresher.refresh()
    assert report is not None
    assert len(report.added) == 3
    assert refresher.refresh() is not None  # same feed again: nothing changes
    assert catalog.generation == 1
    with pytest.raises(ValueError, match="positive"):
        CatalogRefresher(catalog, OPENROUTER, interval_s=0)


def test_refresher_start_stop_is_idempotent() -> None:
    def refresh_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "llmroute-catalog-refresh"]

    refresher = CatalogRefresher(Catalog(), OPENROUTER, interval_s=30)
    assert refresh_threads() == []
    with refresher:
        refresher.start()
        assert refresher.running
        threads = refresh_threads()
        assert len(threads) == 1
        assert threads[0].daemon
    assert not refresher.running
    assert refresh_threads() == []
    refresher.stop()
