"""The bundled catalog: contents, lazy loading, lookups, queries, quality import."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import routing_middleware.catalog as catalog_module
from routing_middleware.catalog import (
    PROVIDERS,
    Catalog,
    ModelInfo,
    OffPeakPrice,
    OffPeakWindow,
    Price,
    default_catalog,
    models_from_json,
    models_to_json,
    tier_for_price,
)
from routing_middleware.feeds import FeedError, tier_for_quality
from routing_middleware.schema import UnknownModel

DATA = Path(__file__).parent / "data"
SNAPSHOT = Path(catalog_module.__file__).parent / "data" / "catalog.json"
CATALOG = Catalog.bundled()


def test_snapshot_size_and_coverage() -> None:
    chat = CATALOG.filter(mode="chat")
    providers = {m.provider for m in chat}
    assert len(chat) >= 171
    assert len(providers) >= 14
    assert providers <= PROVIDERS
    for m in chat:
        assert m.price.input > 0, m.id
        assert m.price.output > 0, m.id
        assert m.context_window > 0, m.id
        assert m.id == f"{m.provider}/{m.name}"
        assert m.as_of is not None
        assert m.source
        assert m.tier in (1, 2, 3)


def test_snapshot_has_openai_embeddings() -> None:
    embeddings = CATALOG.filter(mode="embedding")
    assert {m.id for m in embeddings} >= {"openai/text-embedding-3-small"}
    assert all(m.provider == "openai" for m in embeddings)
    assert "openai/text-embedding-3-small" not in {m.id for m in CATALOG.filter()}


def test_snapshot_file_is_deterministic_and_round_trips() -> None:
    text = SNAPSHOT.read_text(encoding="utf-8")
    header = json.loads(text)
    assert header["as_of"]
    assert "litellm 1.110.2" in header["source"]
    again = models_to_json(models_from_json(text), as_of=header["as_of"], source=header["source"])
    assert again == text
    ids = [m.id for m in CATALOG]
    assert ids == sorted(ids)


def test_known_list_prices() -> None:
    mini = CATALOG.get("openai/gpt-4o-mini")
    assert (mini.price.input, mini.price.output, mini.price.cached_input) == (
        Decimal("0.15"),
        Decimal("0.6"),
        Decimal("0.075"),
    )
    sonnet = CATALOG.get("anthropic/claude-sonnet-4-6")
    assert sonnet.price.cache_write == Decimal("3.75")
    assert sonnet.price.cache_write_long == 6
    pro = CATALOG.get("gemini/gemini-2.5-pro")
    assert [(b.above_tokens, b.input) for b in pro.price.bands] == [(200_000, Decimal("2.5"))]
    assert pro.deprecation_date is not None
    flash = CATALOG.get("deepseek/deepseek-v4-flash")
    assert flash.price.off_peak is not None
    qwen = CATALOG.get("qwen/qwen-flash")
    assert [b.above_tokens for b in qwen.price.bands] == [256_000]


def test_prices_have_no_float_artifacts() -> None:
    for m in CATALOG:
        for value in (m.price.input, m.price.output, m.price.cached_input):
            if value is not None:
                assert len(value.normalize().as_tuple().digits) <= 8, (m.id, value)


def test_tier_from_blended_price() -> None:
    # b = (3 in + out) / 4
    assert tier_for_price(Price(Decimal("0.15"), Decimal("0.6"))) == 1  # b = 0.2625
    assert tier_for_price(Price(Decimal("0.5"), Decimal("1.5"))) == 2  # b = 0.75 exactly
    assert tier_for_price(Price(Decimal(3), Decimal(15))) == 3  # b = 6
    assert tier_for_price(Price(Decimal(4), Decimal(8))) == 3  # b = 5: not below 5
    assert tier_for_price(Price(Decimal(4), Decimal("7.96"))) == 2  # b = 4.99
    assert CATALOG.get("gpt-4o-mini").tier == 1
    assert CATALOG.get("claude-sonnet-4-6").tier == 3


# ---------------------------------------------------------------------- lookups


@pytest.mark.parametrize(
    ("name", "model_id"),
    [
        ("openai/gpt-4o-mini", "openai/gpt-4o-mini"),
        ("gpt-4o-mini", "openai/gpt-4o-mini"),
        ("GPT-4o-Mini", "openai/gpt-4o-mini"),
        ("  gpt-4o-mini ", "openai/gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
        ("claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4-5"),
        ("anthropic/claude-sonnet-4.6", "anthropic/claude-sonnet-4-6"),
        ("anthropic/claude-sonnet-4.5", "anthropic/claude-sonnet-4-5"),
        ("google/gemini-2.5-flash", "gemini/gemini-2.5-flash"),
        ("gemini/gemini-2.5-flash", "gemini/gemini-2.5-flash"),
        ("x-ai/grok-4.3", "xai/grok-4.3"),
        ("dashscope/qwen-plus", "qwen/qwen-plus"),
        (
            "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        ),
        ("amazon.nova-pro-v1:0", "bedrock/amazon.nova-pro-v1:0"),
        ("deepseek-chat", "deepseek/deepseek-chat"),
    ],
)
def test_lookup_by_id_and_alias(name: str, model_id: str) -> None:
    assert CATALOG.get(name).id == model_id
    assert name in CATALOG


def test_unknown_model_suggests_close_ids() -> None:
    with pytest.raises(UnknownModel) as info:
        CATALOG.get("gpt-4o-mni")
    assert info.value.suggestions[0] == "openai/gpt-4o-mini"
    assert "Did you mean" in str(info.value)
    assert info.value.status_code == 404
    with pytest.raises(UnknownModel) as info:
        CATALOG.get("claude-sonet-4-6")
    assert "anthropic/claude-sonnet-4-6" in info.value.suggestions
    assert CATALOG.find("no-such-model-anywhere") is None
    assert "no-such-model-anywhere" not in CATALOG


def test_canonical_id_wins_over_another_models_alias() -> None:
    price = Price(Decimal(1), Decimal(1))
    a = ModelInfo("openai/a", "openai", "a", price, 10, aliases=("openai/b",))
    b = ModelInfo("openai/b", "openai", "b", price, 10)
    assert Catalog([a, b]).get("openai/b") is b


# ---------------------------------------------------------------------- queries


def test_filter() -> None:
    anthropic = CATALOG.filter(provider="anthropic")
    assert anthropic
    assert all(m.provider == "anthropic" for m in anthropic)
    two = CATALOG.filter(provider=["anthropic", "openai"], tier=1)
    assert {m.provider for m in two} == {"anthropic", "openai"}
    assert all(m.tier == 1 for m in two)
    vision_tools = CATALOG.filter(capability=["vision", "tools"])
    assert vision_tools
    assert all({"vision", "tools"} <= m.capabilities for m in vision_tools)
    assert len(CATALOG.filter(mode=None)) == len(CATALOG)
    cheap = CATALOG.filter(max_blended_price=Decimal("0.3"), min_context=1_000_000)
    assert cheap
    assert all(m.price.blended <= Decimal("0.3") and m.context_window >= 10**6 for m in cheap)
    good = CATALOG.filter(min_quality=90)
    assert all(m.quality is not None and m.quality >= 90 for m in good)
    assert CATALOG.filter(provider="nobody") == []


def test_quality_scores_are_labelled_estimates() -> None:
    scored = [m for m in CATALOG if m.quality is not None]
    assert len(scored) > 150
    assert all(0 <= m.quality <= 100 for m in scored)  # type: ignore[operator]
    assert all("estimate" in (m.quality_source or "") for m in scored)


# ---------------------------------------------------------------------- loading


def test_import_does_not_read_the_snapshot() -> None:
    code = (
        "import json, pathlib\n"
        "opened = []\n"
        "orig_read = pathlib.Path.read_text\n"
        "def spy(self, *a, **k):\n"
        "    opened.append(str(self))\n"
        "    return orig_read(self, *a, **k)\n"
        "pathlib.Path.read_text = spy\n"
        "import routing_middleware.catalog as c\n"
        "import sys\n"
        "state = {'cache': c._bundled_cache is None, 'default': c._default is None,\n"
        "         'pydantic': 'pydantic' in sys.modules,\n"
        "         'reads_at_import': [p for p in opened if p.endswith('catalog.json')]}\n"
        "cat = c.default_catalog()\n"
        "state['reads_after'] = len([p for p in opened if p.endswith('catalog.json')])\n"
        "state['same'] = c.default_catalog() is cat\n"
        "print(json.dumps(state))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(out) == {
        "cache": True,
        "default": True,
        "pydantic": False,
        "reads_at_import": [],
        "reads_after": 1,
        "same": True,
    }


def test_default_catalog_is_shared() -> None:
    assert default_catalog() is default_catalog()
    assert len(default_catalog()) == len(CATALOG)


def test_bundled_catalogs_are_independent() -> None:
    a, b = Catalog.bundled(), Catalog.bundled()
    a.replace(a.models[:3])
    assert len(a) == 3
    assert len(b) == len(CATALOG)
    assert a.generation == 1
    assert b.generation == 0


def test_load_and_to_json(tmp_path: Path) -> None:
    path = tmp_path / "cat.json"
    path.write_text(CATALOG.to_json(), encoding="utf-8")
    loaded = Catalog.load(path)
    assert loaded.models == CATALOG.models


def test_off_peak_price_windows() -> None:
    simple = OffPeakPrice(windows=((16, 24),), input=Decimal(1), output=Decimal(1))
    assert simple.applies_at(datetime(2026, 1, 1, 16, 0, tzinfo=UTC))
    assert simple.applies_at(datetime(2026, 1, 1, 23, 59, tzinfo=UTC))
    assert not simple.applies_at(datetime(2026, 1, 1, 15, 59, tzinfo=UTC))
    weekend = OffPeakPrice(
        windows=(),
        input=Decimal(1),
        output=Decimal(1),
        schedule=(OffPeakWindow(0, 0, frozenset({5, 6})),),
    )
    assert weekend.applies_at(datetime(2026, 11, 29, 3, 0, tzinfo=UTC))  # Sunday
    assert not weekend.applies_at(datetime(2026, 11, 30, 3, 0, tzinfo=UTC))  # Monday
    # weekdays read on another calendar: Sunday 20:00 UTC is Monday 04:00 in Shanghai
    shanghai = replace(weekend, weekday_timezone="Asia/Shanghai")
    assert not shanghai.applies_at(datetime(2026, 11, 29, 20, 0, tzinfo=UTC))
    assert shanghai.applies_at(datetime(2026, 11, 28, 20, 0, tzinfo=UTC))


# ---------------------------------------------------------------------- quality import


def test_update_quality_from_csv() -> None:
    catalog = Catalog.bundled()
    report = catalog.update_quality(DATA / "leaderboard.csv")
    assert report.unknown == ["no-such-model-xyz"]
    assert sorted(report.updated) == [
        "anthropic/claude-sonnet-4-6",
        "gemini/gemini-2.5-flash",
        "openai/gpt-4o-mini",
    ]
    mini = catalog.get("gpt-4o-mini")
    assert mini.quality == 62  # 61.5 rounds half-even to 62
    assert mini.quality_source == "leaderboard leaderboard.csv"
    assert mini.tier == tier_for_quality(62) == 1
    assert catalog.get("claude-sonnet-4.6").tier == 3  # 91 -> top band
    assert catalog.get("gemini-2.5-flash").tier == 2  # 70 -> middle band
    assert catalog.generation == 1


def test_update_quality_from_json_without_tiers() -> None:
    catalog = Catalog.bundled()
    before = catalog.get("anthropic/claude-haiku-4-5").tier
    report = catalog.update_quality(
        DATA / "leaderboard.json", label="arena 2026-11", set_tiers=False
    )
    assert report.unknown == ["nonexistent/model"]
    haiku = catalog.get("anthropic/claude-haiku-4-5")
    assert (haiku.quality, haiku.quality_source, haiku.tier) == (88, "arena 2026-11", before)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("model,score\ngpt-4o-mini,101\n", r"'gpt-4o-mini'\.score: must be within 0-100"),
        ("gpt-4o-mini,-1\n", r"must be within 0-100"),
        ("gpt-4o-mini,good\n", r"'gpt-4o-mini'\.score: not a number"),
        ("gpt-4o-mini\n", r"row 1: expected 'model,score'"),
        ('{"gpt-4o-mini": 150}', r"must be within 0-100"),
    ],
)
def test_update_quality_rejects_bad_scores(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / ("q.json" if content.startswith("{") else "q.csv")
    path.write_text(content, encoding="utf-8")
    catalog = Catalog.bundled()
    with pytest.raises(FeedError, match=message):
        catalog.update_quality(path)
    assert catalog.generation == 0
    assert catalog.get("gpt-4o-mini").quality == CATALOG.get("gpt-4o-mini").quality


# ---------------------------------------------------------------------- the build script


def _build_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "build_catalog", Path(__file__).parents[2] / "scripts" / "build_catalog.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_selects_folds_and_aliases() -> None:
    build = _build_module()
    entry = {
        "litellm_provider": "anthropic",
        "mode": "chat",
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "max_input_tokens": 200000,
    }
    document = {
        "claude-sonnet-9-1": entry,
        "claude-sonnet-9-1-20270101": entry,  # same price: folded into an alias
        "claude-sonnet-9-1-20260101": {**entry, "input_cost_per_token": 4e-06},  # kept apart
        "claude-old-1": {**entry, "deprecation_date": "2020-01-01"},  # retired: dropped
        "claude-skip-me": entry,  # excluded by pattern
        "together_ai/org/Model-A": {**entry, "litellm_provider": "together_ai"},
        "together_ai/org/Model-B": {**entry, "litellm_provider": "together_ai"},
        "text-embedding-x": {
            "litellm_provider": "openai",
            "mode": "embedding",
            "input_cost_per_token": 2e-08,
            "max_input_tokens": 8191,
        },
    }
    overlay = {
        "litellm": {"version": "9.9.9", "file": "prices.json", "sha256": "abc"},
        "as_of": "2026-11-28",
        "first_party": ["anthropic"],
        "include_all": ["anthropic"],
        "include": {"together": ["org/Model-A"]},
        "exclude": ["anthropic/claude-skip-*"],
        "keep_deprecated": [],
        "embeddings": ["openai/text-embedding-x"],
        "tiers": {"together/org/Model-A": 1},
        "aliases": {},
        "quality_source": "test estimate",
        "quality": [["anthropic/claude-sonnet-9*", 90]],
    }
    models, header = build.build(json.dumps(document).encode(), overlay)
    by_id = {m.id: m for m in models}
    assert sorted(by_id) == [
        "anthropic/claude-sonnet-9-1",
        "anthropic/claude-sonnet-9-1-20260101",
        "openai/text-embedding-x",
        "together/org/Model-A",
    ]
    sonnet = by_id["anthropic/claude-sonnet-9-1"]
    assert set(sonnet.aliases) >= {
        "claude-sonnet-9-1",
        "claude-sonnet-9-1-20270101",
        "anthropic/claude-sonnet-9.1",
        "anthropic/claude-sonnet-9.1-20270101",
    }
    assert (sonnet.quality, sonnet.quality_source) == (90, "test estimate")
    assert sonnet.source == "litellm 9.9.9: claude-sonnet-9-1"
    assert str(sonnet.as_of) == "2026-11-28"
    assert by_id["together/org/Model-A"].tier == 1  # overlay beats the blended-price tier
    assert by_id["together/org/Model-A"].quality is None  # no rule: no made-up score
    assert by_id["openai/text-embedding-x"].mode == "embedding"
    assert header["source"] == "litellm 9.9.9 prices.json (sha256 abc)"


def test_chat_candidates_exclude_audio_only_models() -> None:
    # Audio models take and give audio; routing a text call to one would be wrong.
    chat = default_catalog().filter(mode="chat")
    assert not [m.id for m in chat if "audio" in m.id or "realtime" in m.id]


@pytest.mark.parametrize(
    "name", ["openai/gpt-4o-mini", "OpenAI/GPT-4o-mini", "  openai/gpt-4o-mini\n", "gpt-4o-mini"]
)
def test_find_takes_ids_and_aliases_in_any_case_and_spacing(name: str) -> None:
    found = CATALOG.find(name)
    assert found is not None
    assert found.id == "openai/gpt-4o-mini"
