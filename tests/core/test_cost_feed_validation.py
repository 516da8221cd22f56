"""Feed validation that protects what calls cost: no NaN, negative or placeholder price
reaches :func:`~routing_middleware.pricing.cost_of` through a feed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from routing_middleware.catalog import Catalog
from routing_middleware.feeds import FeedError, parse_feed
from routing_middleware.pricing import cost_of
from routing_middleware.schema import Usage


def _snapshot(price: dict[str, Any]) -> dict[str, Any]:
    model = {
        "id": "openai/gpt-4o-mini",
        "provider": "openai",
        "name": "gpt-4o-mini",
        "price": price,
        "context_window": 128000,
    }
    return {"format": 1, "models": [model]}


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ({"input": "0.15", "output": "0.6", "reasoning": "-5"}, "price.reasoning: negative"),
        ({"input": "0.15", "output": "0.6", "reasoning": "NaN"}, "price.reasoning: not a finite"),
        (
            {
                "input": "0.15",
                "output": "0.6",
                "bands": [{"above_tokens": 1000, "input": "NaN", "output": "1"}],
            },
            "price.bands[0].input: not a finite",
        ),
        (
            {
                "input": "0.15",
                "output": "0.6",
                "bands": [{"above_tokens": 1000, "input": "1", "output": "-1"}],
            },
            "price.bands[0].output: negative",
        ),
        (
            {
                "input": "0.15",
                "output": "0.6",
                "bands": [
                    {"above_tokens": 1000, "input": "1", "output": "1", "cached_input": "-1"}
                ],
            },
            "price.bands[0].cached_input: negative",
        ),
        (
            {
                "input": "0.15",
                "output": "0.6",
                "bands": [{"above_tokens": -1, "input": "1", "output": "1"}],
            },
            "price.bands[0].above_tokens: must be at least 0",
        ),
        (
            {
                "input": "0.15",
                "output": "0.6",
                "off_peak": {"windows": [[0, 24]], "input": "-0.1", "output": "0.3"},
            },
            "price.off_peak.input: negative",
        ),
        (
            {
                "input": "0.15",
                "output": "0.6",
                "off_peak": {"windows": [[0, 24]], "input": "0.1", "output": "Infinity"},
            },
            "price.off_peak.output: not a finite",
        ),
    ],
)
def test_snapshot_feed_rejects_bad_reasoning_band_and_off_peak_prices(
    price: dict[str, Any], message: str
) -> None:
    with pytest.raises(FeedError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_feed(_snapshot(price))


def test_bad_band_in_a_snapshot_feed_leaves_the_catalog_and_its_costs_alone(
    tmp_path: Path,
) -> None:
    catalog = Catalog.bundled()
    path = tmp_path / "feed.json"
    price = {"input": "0.15", "output": "0.6", "reasoning": "-5"}
    path.write_text(json.dumps(_snapshot(price)), encoding="utf-8")
    with pytest.raises(FeedError):
        catalog.update_from_feed(path)
    assert catalog.generation == 0
    usage = Usage(input_tokens=0, output_tokens=1000, reasoning_tokens=1000)
    # gpt-4o-mini's reasoning is priced as output, 0.6 per 1M:
    # 1,000 x 0.6 = 600 -> 600 / 1,000,000 = 0.0006 (with the feed's -5 it was -0.005)
    assert cost_of(usage, "gpt-4o-mini", catalog=catalog) == Decimal("0.0006")


def test_valid_snapshot_feed_with_bands_and_off_peak_still_loads() -> None:
    price = {
        "input": "0.15",
        "output": "0.6",
        "reasoning": "0.9",
        "bands": [{"above_tokens": 1000, "input": "0.3", "output": "1.2"}],
        "off_peak": {"windows": [[16, 24]], "input": "0.1", "output": "0.3"},
    }
    (model,) = parse_feed(_snapshot(price)).models
    assert model.price.bands[0].input == Decimal("0.3")
    assert model.price.off_peak is not None
    # 2,000 input (above the 1,000 band: 0.3) + 100 output (band 1.2):
    # 2,000 x 0.3 + 100 x 1.2 = 600 + 120 = 720 -> 0.00072
    usage = Usage(input_tokens=2000, output_tokens=100)
    assert cost_of(usage, model) == Decimal("0.00072")


def _litellm_entry(provider: str, input: str, output: str) -> dict[str, Any]:
    return {
        "litellm_provider": provider,
        "mode": "chat",
        "input_cost_per_token": input,
        "output_cost_per_token": output,
        "max_input_tokens": 128000,
    }


def test_litellm_zero_price_placeholders_do_not_make_calls_free(tmp_path: Path) -> None:
    # LiteLLM lists models it has no price for yet at $0 (e.g. command-a-plus-05-2026).
    document = {
        "gpt-4o-mini": _litellm_entry("openai", "0", "0"),
        "command-a-plus-05-2026": _litellm_entry("cohere_chat", "0.0", "0.0"),
        "ollama/llama3": _litellm_entry("ollama", "0", "0"),
        "openrouter/meta-llama/llama-3.3-70b-instruct:free": _litellm_entry("openrouter", "0", "0"),
    }
    path = tmp_path / "litellm.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    catalog = Catalog.bundled()
    report = catalog.update_from_feed(path, "litellm")
    assert "gpt-4o-mini" in report.skipped
    assert "command-a-plus-05-2026" in report.skipped
    assert "cohere/command-a-plus-05-2026" not in catalog
    # gpt-4o-mini keeps its list price: in 0.15, out 0.6 per 1M
    # 10,000 x 0.15 + 1,000 x 0.6 = 1,500 + 600 = 2,100 -> 0.0021 (0 with the placeholder)
    usage = Usage(input_tokens=10_000, output_tokens=1_000)
    assert cost_of(usage, "gpt-4o-mini", catalog=catalog) == Decimal("0.0021")
    # Self-hosted and explicitly free models really cost nothing.
    assert cost_of(usage, "ollama/llama3", catalog=catalog) == 0
    free = "openrouter/meta-llama/llama-3.3-70b-instruct:free"
    assert cost_of(usage, free, catalog=catalog) == 0


OPENROUTER = Path(__file__).parent / "data" / "openrouter_small.json"


@pytest.mark.parametrize(
    "document",
    [
        {"data": []},
        {"data": [{"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}}]},
    ],
)
def test_empty_openrouter_feed_does_not_unprice_every_openrouter_model(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    catalog = Catalog.bundled()
    catalog.update_from_feed(OPENROUTER)
    model_id = "openrouter/anthropic/claude-sonnet-4.6"
    generation = catalog.generation
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(FeedError, match="no priced model"):
        catalog.update_from_feed(path)
    assert catalog.generation == generation
    # Still priced: in 3, out 15 per 1M: 1,000 x 3 + 100 x 15 = 4,500 -> 0.0045
    usage = Usage(input_tokens=1_000, output_tokens=100)
    assert cost_of(usage, model_id, catalog=catalog) == Decimal("0.0045")


def test_off_peak_with_an_unknown_time_zone_is_rejected_by_the_feed() -> None:
    entry = _litellm_entry("deepseek", "3e-07", "1.2e-06")
    entry["off_peak_pricing"] = {
        "input_cost_per_token": "1.5e-07",
        "output_cost_per_token": "6e-07",
        "windows": [{"hours_utc": "16:30-00:30", "weekdays": [1, 2, 3, 4, 5]}],
        "weekday_timezone": "Asia/Shanghaii",
    }
    # Accepted, it made every off-peak cost computation of the model raise.
    with pytest.raises(FeedError, match=r"weekday_timezone: unknown time zone 'Asia/Shanghaii'"):
        parse_feed({"deepseek-x": entry}, "litellm")
    price = {
        "input": "0.3",
        "output": "1.2",
        "off_peak": {
            "windows": [[16, 24]],
            "input": "0.15",
            "output": "0.6",
            "weekday_timezone": "Mars/Base",
        },
    }
    with pytest.raises(FeedError, match=r"off_peak.weekday_timezone: unknown time zone"):
        parse_feed(_snapshot(price))


def test_off_peak_with_a_real_time_zone_still_prices_off_peak() -> None:
    entry = _litellm_entry("deepseek", "3e-07", "1.2e-06")
    entry["off_peak_pricing"] = {
        "input_cost_per_token": "1.5e-07",
        "output_cost_per_token": "6e-07",
        "windows": [{"hours_utc": "16:30-00:30"}],
        "weekday_timezone": "Asia/Shanghai",
    }
    (model,) = parse_feed({"deepseek-x": entry}, "litellm").models
    at = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)  # inside 16:30-00:30 UTC
    # off-peak: 10,000 x 0.15 + 1,000 x 0.6 = 1,500 + 600 = 2,100 -> 0.0021
    usage = Usage(input_tokens=10_000, output_tokens=1_000)
    assert cost_of(usage, model, at=at) == Decimal("0.0021")
