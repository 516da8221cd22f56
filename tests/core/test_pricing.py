"""cost_of and friends against hand-computed figures on real snapshot models.

Each expected figure is worked out in the comment above it: tokens x USD per 1M
tokens, summed, divided by 1,000,000. Prices are the bundled snapshot's (LiteLLM
1.110.2 list prices).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_middleware.catalog import Catalog, ModelInfo, Price, PriceBand
from routing_middleware.metering import cost_of as metering_cost_of
from routing_middleware.pricing import (
    COST_QUANTUM,
    billed_cost,
    cost_breakdown,
    cost_of,
    estimate_cost,
    rates_for,
)
from routing_middleware.schema import UnknownModel, Usage

CATALOG = Catalog.bundled()

WEDNESDAY_0800 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)  # DeepSeek peak
WEDNESDAY_1200 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # DeepSeek off-peak (10:00-24:00)
SATURDAY_0800 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)  # DeepSeek off-peak all weekend


def u(
    input: int = 0,
    output: int = 0,
    cached: int = 0,
    write: int = 0,
    write_long: int = 0,
    reasoning: int = 0,
    **extra: object,
) -> Usage:
    return Usage(
        input_tokens=input,
        output_tokens=output,
        cached_input_tokens=cached,
        cache_write_tokens=write,
        cache_write_long_tokens=write_long,
        reasoning_tokens=reasoning,
        **extra,  # type: ignore[arg-type]
    )


def cost(model: str, usage: Usage, at: datetime | None = None) -> Decimal:
    return cost_of(usage, model, at=at, catalog=CATALOG)


# One case per provider (19 providers), plus extra cases for each pricing rule.
CASES = [
    # openai/gpt-4o-mini: in 0.15, cached 0.075, out 0.6
    # 6,000 x 0.15 + 4,000 x 0.075 + 2,000 x 0.6 = 900 + 300 + 1,200 = 2,400 -> 0.0024
    ("openai/gpt-4o-mini", u(10_000, 2_000, cached=4_000), "0.0024"),
    # azure/gpt-4.1: in 2, out 8: 1,000 x 2 + 100 x 8 = 2,800 -> 0.0028
    ("azure/gpt-4.1", u(1_000, 100), "0.0028"),
    # anthropic/claude-sonnet-4-6: in 3, cached 0.3, 5-min write 3.75, 1-h write 6, out 15
    # uncached 10,000 x 3 = 30,000; cached 50,000 x 0.3 = 15,000;
    # 5-min writes 30,000 x 3.75 = 112,500; 1-h writes 10,000 x 6 = 60,000;
    # output 600 x 15 = 9,000; reasoning 400 x 15 = 6,000 -> 232,500 -> 0.2325
    (
        "anthropic/claude-sonnet-4-6",
        u(100_000, 1_000, cached=50_000, write=40_000, write_long=10_000, reasoning=400),
        "0.2325",
    ),
    # gemini/gemini-2.5-flash: in 0.3, out 2.5 (reasoning priced as output)
    # 1,000 x 0.3 + 200 x 2.5 + 800 x 2.5 = 300 + 500 + 2,000 = 2,800 -> 0.0028
    ("gemini/gemini-2.5-flash", u(1_000, 1_000, reasoning=800), "0.0028"),
    # deepseek/deepseek-v4-flash at peak: in 0.3, cached 0.006, out 1.2
    # 400,000 x 0.3 + 600,000 x 0.006 + 100,000 x 1.2 = 120,000 + 3,600 + 120,000 -> 0.2436
    ("deepseek/deepseek-v4-flash", u(1_000_000, 100_000, cached=600_000), "0.2436"),
    # qwen/qwen3.8-flash: cache write 0.2: 10,000 x 0.2 = 2,000 -> 0.002
    ("qwen/qwen3.8-flash", u(10_000, 0, write=10_000), "0.002"),
    # mistral/mistral-large-4: in 0.7, cached 0.07, out 2.1
    # 30,000 x 0.7 + 20,000 x 0.07 + 5,000 x 2.1 = 21,000 + 1,400 + 10,500 -> 0.0329
    ("mistral/mistral-large-4", u(50_000, 5_000, cached=20_000), "0.0329"),
    # xai/grok-4.3 (below its 200k band): in 1.25, cached 0.2, out 2.5
    # 50,000 x 1.25 + 50,000 x 0.2 + 10,000 x 2.5 = 62,500 + 10,000 + 25,000 -> 0.0975
    ("xai/grok-4.3", u(100_000, 10_000, cached=50_000), "0.0975"),
    # groq/openai/gpt-oss-120b: in 0.15, out 0.6: 8,000 x 0.15 + 2,000 x 0.6 = 2,400 -> 0.0024
    ("groq/openai/gpt-oss-120b", u(8_000, 2_000), "0.0024"),
    # together/meta-llama/Llama-3.3-70B-Instruct-Turbo: 1.04 in and out
    # (12,345 + 678) x 1.04 = 13,023 x 1.04 = 13,543.92 -> 0.01354392
    ("together/meta-llama/Llama-3.3-70B-Instruct-Turbo", u(12_345, 678), "0.01354392"),
    # fireworks llama4-maverick: in 0.22, out 0.88: 10,000 x 0.22 + 1,000 x 0.88 = 3,080
    (
        "fireworks/accounts/fireworks/models/llama4-maverick-instruct-basic",
        u(10_000, 1_000),
        "0.00308",
    ),
    # cerebras/gpt-oss-120b: in 0.35, out 0.75: 7 x 0.35 + 3 x 0.75 = 2.45 + 2.25 = 4.7
    ("cerebras/gpt-oss-120b", u(7, 3), "0.0000047"),
    # deepinfra Llama 4 Scout: in 0.1, out 0.3: 1M x 0.1 + 1M x 0.3 -> 0.4
    ("deepinfra/meta-llama/Llama-4-Scout-17B-16E-Instruct", u(1_000_000, 1_000_000), "0.4"),
    # moonshot/kimi-k3: in 3, cached 0.3, write 3, long write 6, out 15
    # 2,000 x 3 + 5,000 x 0.3 + 2,000 x 3 + 1,000 x 6 + 1,000 x 15
    # = 6,000 + 1,500 + 6,000 + 6,000 + 15,000 = 34,500 -> 0.0345
    ("moonshot/kimi-k3", u(10_000, 1_000, cached=5_000, write=3_000, write_long=1_000), "0.0345"),
    # zai/glm-5.3: in 1.4, out 4.4: 1,000 x 1.4 + 1,000 x 4.4 = 5,800 -> 0.0058
    ("zai/glm-5.3", u(1_000, 1_000), "0.0058"),
    # minimax/MiniMax-M2.5: in 0.3, cached 0.03, write 0.375, out 1.2
    # 4,000 x 0.3 + 4,000 x 0.03 + 2,000 x 0.375 + 500 x 1.2 = 1,200 + 120 + 750 + 600 = 2,670
    ("minimax/MiniMax-M2.5", u(10_000, 500, cached=4_000, write=2_000), "0.00267"),
    # perplexity/sonar-pro: in 3, out 15: 2,000 x 3 + 1,000 x 15 = 21,000 -> 0.021
    ("perplexity/sonar-pro", u(2_000, 1_000), "0.021"),
    # cohere/command-a-03-2025: in 2.5, out 10: 4,000 x 2.5 + 400 x 10 = 14,000 -> 0.014
    ("cohere/command-a-03-2025", u(4_000, 400), "0.014"),
    # bedrock/amazon.nova-pro-v1:0: in 0.8, cached 0.2, out 3.2
    # 5,000 x 0.8 + 5,000 x 0.2 + 1,000 x 3.2 = 4,000 + 1,000 + 3,200 = 8,200 -> 0.0082
    ("bedrock/amazon.nova-pro-v1:0", u(10_000, 1_000, cached=5_000), "0.0082"),
    # openai/text-embedding-3-small (embedding): 1M x 0.02 -> 0.02
    ("openai/text-embedding-3-small", u(1_000_000), "0.02"),
]


@pytest.mark.parametrize(("model", "usage", "expected"), CASES, ids=[c[0] for c in CASES])
def test_hand_computed_costs(model: str, usage: Usage, expected: str) -> None:
    assert cost(model, usage) == Decimal(expected)


def test_cases_cover_at_least_14_providers() -> None:
    providers = {CATALOG.get(model).provider for model, _, _ in CASES}
    assert len(providers) >= 14


def test_cost_is_quantized_to_1e_10() -> None:
    result = cost("openai/gpt-4o-mini", u(10_000, 2_000, cached=4_000))
    assert result.as_tuple().exponent == COST_QUANTUM.as_tuple().exponent == -10
    # 1 cached token on deepseek-v4-pro (0.044/M) = 0.000000044 exactly
    assert cost("deepseek/deepseek-v4-pro", u(1, 0, cached=1)) == Decimal("0.000000044")


def test_cached_reads_are_discounted() -> None:
    # gpt-4o-mini: 10,000 uncached x 0.15 = 0.0015 vs 10,000 cached x 0.075 = 0.00075
    assert cost("gpt-4o-mini", u(10_000)) == Decimal("0.0015")
    assert cost("gpt-4o-mini", u(10_000, cached=10_000)) == Decimal("0.00075")


def test_anthropic_five_minute_versus_one_hour_cache_writes() -> None:
    # claude-opus-4-7: 5-min write 6.25, 1-h write 10
    # 20,000 x 6.25 = 125,000 -> 0.125 ; 20,000 x 10 = 200,000 -> 0.2
    five_min = u(20_000, write=20_000)
    one_hour = u(20_000, write=20_000, write_long=20_000)
    assert cost("anthropic/claude-opus-4-7", five_min) == Decimal("0.125")
    assert cost("anthropic/claude-opus-4-7", one_hour) == Decimal("0.2")


def test_openai_long_ttl_cache_write_inside_a_band() -> None:
    # gpt-6-luna above 272k: in 0.2, write 0.25, 12-h write 0.5 for the whole request
    # 200,000 x 0.2 + 50,000 x 0.25 + 50,000 x 0.5 = 40,000 + 12,500 + 25,000 -> 0.0775
    usage = u(300_000, write=100_000, write_long=50_000)
    assert cost("openai/gpt-6-luna", usage) == Decimal("0.0775")


def test_reasoning_priced_apart_from_output() -> None:
    # qwen-turbo: in 0.05, out 0.2, reasoning 0.5
    # 10,000 x 0.05 + 2,000 x 0.2 + 3,000 x 0.5 = 500 + 400 + 1,500 -> 0.0024
    assert cost("qwen/qwen-turbo", u(10_000, 5_000, reasoning=3_000)) == Decimal("0.0024")
    # perplexity sonar-deep-research: in 2, out 8, reasoning 3
    # 1,000 x 2 + 2,000 x 8 + 8,000 x 3 = 2,000 + 16,000 + 24,000 -> 0.042
    usage = u(1_000, 10_000, reasoning=8_000)
    assert cost("perplexity/sonar-deep-research", usage) == Decimal("0.042")


def test_gemini_25_pro_long_context_threshold() -> None:
    # exactly 200,000 input is not above the threshold: 200,000 x 1.25 + 1,000 x 10 -> 0.26
    assert cost("gemini/gemini-2.5-pro", u(200_000, 1_000)) == Decimal("0.26")
    # 200,001: the whole request at 2.5 / 15: 500,002.5 + 15,000 -> 0.5150025
    assert cost("gemini/gemini-2.5-pro", u(200_001, 1_000)) == Decimal("0.5150025")
    # with cache reads at the band's 0.25:
    # 200,000 x 2.5 + 100,000 x 0.25 + 2,000 x 15 = 500,000 + 25,000 + 30,000 -> 0.555
    usage = u(300_000, 2_000, cached=100_000)
    assert cost("gemini/gemini-2.5-pro", usage) == Decimal("0.555")


def test_gpt_54_long_context_threshold() -> None:
    # 272,000 (not above): 272,000 x 2.5 + 10,000 x 15 = 680,000 + 150,000 -> 0.83
    assert cost("openai/gpt-5.4", u(272_000, 10_000)) == Decimal("0.83")
    # 300,000: 300,000 x 5 + 6,000 x 22.5 + 4,000 x 22.5 (reasoning = band output)
    # = 1,500,000 + 135,000 + 90,000 -> 1.725
    assert cost("openai/gpt-5.4", u(300_000, 10_000, reasoning=4_000)) == Decimal("1.725")


def test_qwen_tiered_pricing_is_strictly_above() -> None:
    # qwen-flash tier 1 (<= 256k): 256,000 x 0.05 + 1,000 x 0.4 = 12,800 + 400 -> 0.0132
    assert cost("qwen/qwen-flash", u(256_000, 1_000)) == Decimal("0.0132")
    # 256,001 (tier 2 for everything): 256,001 x 0.25 + 1,000 x 2 -> 0.06600025
    assert cost("qwen/qwen-flash", u(256_001, 1_000)) == Decimal("0.06600025")


def test_deepseek_off_peak() -> None:
    usage = u(1_000_000, 100_000, cached=600_000)
    # peak: 400,000 x 0.3 + 600,000 x 0.006 + 100,000 x 1.2 -> 0.2436
    assert cost("deepseek/deepseek-v4-flash", usage, WEDNESDAY_0800) == Decimal("0.2436")
    # off-peak: 400,000 x 0.15 + 600,000 x 0.003 + 100,000 x 0.6 = 60,000 + 1,800 + 60,000
    assert cost("deepseek/deepseek-v4-flash", usage, WEDNESDAY_1200) == Decimal("0.1218")
    assert cost("deepseek/deepseek-v4-flash", usage, SATURDAY_0800) == Decimal("0.1218")
    # no time given: the standard list price
    assert cost("deepseek/deepseek-v4-flash", usage) == Decimal("0.2436")
    # v4-pro off-peak: 1,000 x 0.66 + 1,000 x 1.98 = 2,640 -> 0.00264
    assert cost("deepseek-v4-pro", u(1_000, 1_000), WEDNESDAY_1200) == Decimal("0.00264")


def test_models_resolve_by_alias_and_unknown_raises() -> None:
    usage = u(1_000_000, 1_000_000)
    # gpt-4o-mini: 0.15 + 0.6
    assert cost("gpt-4o-mini", usage) == Decimal("0.75")
    assert cost("openai/gpt-4o-mini-2024-07-18", usage) == Decimal("0.75")
    assert cost_of(usage, CATALOG.get("gpt-4o-mini")) == Decimal("0.75")
    with pytest.raises(UnknownModel, match="gpt-4o-mini"):
        cost("gpt-4o-mni", usage)


def test_default_catalog_is_used_without_one() -> None:
    assert cost_of(u(1_000_000, 1_000_000), "openai/gpt-4o-mini") == Decimal("0.75")
    assert metering_cost_of is cost_of


def test_billed_cost_prefers_provider_cost() -> None:
    usage = u(1_000, 1_000, provider_cost=Decimal("0.0123"))
    assert billed_cost(usage, "openai/gpt-4o-mini") == Decimal("0.0123")
    # cost_of ignores it: 1,000 x 0.15 + 1,000 x 0.6 = 750 -> 0.00075
    assert cost_of(usage, "openai/gpt-4o-mini") == Decimal("0.00075")
    assert billed_cost(u(1_000, 1_000), "openai/gpt-4o-mini") == Decimal("0.00075")


def test_estimate_cost_fast_path() -> None:
    # gemini-2.5-pro: 100,000 x 1.25 + 1,000 x 10 = 135,000 -> 0.135
    assert estimate_cost("gemini/gemini-2.5-pro", 100_000, 1_000) == Decimal("0.135")
    # above the band: 250,000 x 2.5 + 1,000 x 15 = 640,000 -> 0.64
    assert estimate_cost("gemini/gemini-2.5-pro", 250_000, 1_000) == Decimal("0.64")
    model = CATALOG.get("claude-sonnet-4-6")
    assert estimate_cost(model, 1_234, 567) == cost_of(u(1_234, 567), model)


def test_breakdown_lines_sum_to_total() -> None:
    usage = u(100_000, 1_000, cached=50_000, write=40_000, write_long=10_000, reasoning=400)
    lines, total = cost_breakdown(usage, "anthropic/claude-sonnet-4-6", catalog=CATALOG)
    assert [line.label for line in lines] == [
        "uncached input",
        "cached input",
        "cache write",
        "cache write (long TTL)",
        "output",
        "reasoning",
    ]
    assert sum(line.amount for line in lines) == total == Decimal("0.2325")


def test_price_fallbacks() -> None:
    # no cached or write price listed: both cost plain input; no long-TTL price: the write price
    price = Price(input=Decimal(2), output=Decimal(4), cache_write=Decimal(3))
    rates = rates_for(price, 10)
    assert (rates.cached_input, rates.cache_write, rates.cache_write_long) == (
        Decimal(2),
        Decimal(3),
        Decimal(3),
    )
    assert rates.reasoning == 4
    band = PriceBand(above_tokens=5, input=Decimal(5), output=Decimal(6))
    banded = rates_for(Price(Decimal(2), Decimal(4), bands=(band,)), 10)
    assert (banded.input, banded.output, banded.band) == (Decimal(5), Decimal(6), 5)


# ---------------------------------------------------------------------- properties

CHAT_MODELS = [m for m in CATALOG if m.mode == "chat"]


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    cached = draw(st.integers(0, 400_000))
    write = draw(st.integers(0, 200_000))
    write_long = draw(st.integers(0, write))
    uncached = draw(st.integers(0, 400_000))
    reasoning = draw(st.integers(0, 50_000))
    output = reasoning + draw(st.integers(0, 50_000))
    return u(uncached + cached + write, output, cached, write, write_long, reasoning)


FIELDS = ["uncached", "cached", "write", "write_long", "output", "reasoning"]


def _grow(usage: Usage, field: str, n: int) -> Usage:
    d = usage.model_dump()
    if field in {"uncached", "cached", "write", "write_long"}:
        d["input_tokens"] += n
    if field == "cached":
        d["cached_input_tokens"] += n
    if field in {"write", "write_long"}:
        d["cache_write_tokens"] += n
    if field == "write_long":
        d["cache_write_long_tokens"] += n
    if field in {"output", "reasoning"}:
        d["output_tokens"] += n
    if field == "reasoning":
        d["reasoning_tokens"] += n
    return Usage(**d)


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(CHAT_MODELS),
    usage=usages(),
    field=st.sampled_from(FIELDS),
    extra=st.integers(1, 300_000),
    hour=st.integers(0, 23),
)
def test_cost_is_non_negative_and_monotonic(
    model: ModelInfo, usage: Usage, field: str, extra: int, hour: int
) -> None:
    at = datetime(2026, 11, 25, hour, tzinfo=UTC)
    base = cost_of(usage, model, at)
    assert base >= 0
    assert cost_of(_grow(usage, field, extra), model, at) >= base


@settings(max_examples=200, deadline=None)
@given(model=st.sampled_from(CHAT_MODELS), usage=usages())
def test_off_peak_never_costs_more(model: ModelInfo, usage: Usage) -> None:
    assert cost_of(usage, model, WEDNESDAY_1200) <= cost_of(usage, model)


# --------------------------------------------------------------------------- integer path


def _decimal_cost(usage: Usage, price: Price, at: datetime | None = None) -> Decimal:
    """The Decimal formula of the module docs, term by term."""
    r = rates_for(price, usage.input_tokens, at)
    short_writes = usage.cache_write_tokens - usage.cache_write_long_tokens
    total = (
        usage.uncached_input_tokens * r.input
        + usage.cached_input_tokens * r.cached_input
        + short_writes * r.cache_write
        + usage.cache_write_long_tokens * r.cache_write_long
        + (usage.output_tokens - usage.reasoning_tokens) * r.output
        + usage.reasoning_tokens * r.reasoning
    )
    return (total * Decimal("1e-6")).quantize(COST_QUANTUM)


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from([m for m in CATALOG if m.mode == "chat"]),
    inp=st.integers(0, 3_000_000),
    out=st.integers(0, 200_000),
    cached=st.integers(0, 3_000_000),
    write=st.integers(0, 3_000_000),
    long_share=st.integers(0, 100),
    reasoning_share=st.integers(0, 100),
)
def test_integer_arithmetic_gives_the_decimal_amount_exactly(
    model: ModelInfo,
    inp: int,
    out: int,
    cached: int,
    write: int,
    long_share: int,
    reasoning_share: int,
) -> None:
    cached = min(cached, inp)
    write = min(write, inp - cached)
    usage = u(
        inp,
        out,
        cached=cached,
        write=write,
        write_long=write * long_share // 100,
        reasoning=out * reasoning_share // 100,
    )
    got = cost_of(usage, model)
    expected = _decimal_cost(usage, model.price)
    assert got == expected
    assert str(got) == str(expected)  # the same Decimal, exponent included
    assert got.as_tuple().exponent == -10


def test_prices_finer_than_the_quantum_and_bands_take_the_decimal_path() -> None:
    fine = Price(Decimal("0.123456"), Decimal("1.0000001"))
    banded = Price(
        Decimal("1"), Decimal("2"), bands=(PriceBand(200_000, Decimal("2"), Decimal("4")),)
    )
    for price in (fine, banded):
        info = ModelInfo("x/fine", "x", "fine", price, 1_000_000)
        for usage in (u(7, 3), u(300_000, 11), u(0, 0)):
            assert cost_of(usage, info) == _decimal_cost(usage, price)
            assert str(cost_of(usage, info)) == str(_decimal_cost(usage, price))
    zero = cost_of(u(0, 0), CATALOG.get("openai/gpt-4o-mini"))
    assert str(zero) == str(Decimal(0).quantize(COST_QUANTUM))


def test_off_peak_prices_still_apply_at_their_hours() -> None:
    model = next(m for m in CATALOG if m.price.off_peak is not None)
    usage = u(1000, 1000)
    assert cost_of(usage, model, WEDNESDAY_1200) == _decimal_cost(
        usage, model.price, WEDNESDAY_1200
    )
    assert cost_of(usage, model) == _decimal_cost(usage, model.price)
    assert cost_of(usage, model, WEDNESDAY_1200) != cost_of(usage, model)
