from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing_middleware import router as router_module
from routing_middleware.budgets import Budget, Budgets
from routing_middleware.catalog import Catalog, ModelInfo, Price
from routing_middleware.classify import ComplexityScorer
from routing_middleware.config import RoutingConfig
from routing_middleware.context import RouteContext, route_hint
from routing_middleware.engine import LLMRoute
from routing_middleware.router import (
    Decision,
    Deployment,
    Router,
    _cost_of_units,
    _CostWriter,
    _expected_cost,
    _list_units,
    _py_cost_of_units,
    _usd,
)
from routing_middleware.schema import (
    BudgetExceeded,
    ChatRequest,
    ImagePart,
    Message,
    NoRouteAvailable,
    ResponseFormat,
    TextPart,
    Tool,
)
from routing_middleware.stats import MemoryStatsStore, StatsSnapshot

ALL_CAPS = frozenset({"streaming", "tools", "vision", "json_schema", "reasoning"})
#: The cost writer the router uses (in C where built) and its Python path.
COST_PATHS = (_cost_of_units, _py_cost_of_units)


def _model(
    model_id: str,
    pin: str,
    pout: str,
    *,
    tier: int,
    quality: int,
    caps: frozenset[str] = ALL_CAPS,
    window: int = 128_000,
) -> ModelInfo:
    provider, name = model_id.split("/")
    return ModelInfo(
        id=model_id,
        provider=provider,
        name=name,
        price=Price(Decimal(pin), Decimal(pout)),
        context_window=window,
        capabilities=caps,
        quality=quality,
        tier=tier,
    )


def _models() -> list[ModelInfo]:
    return [
        _model("google/flash", "0.10", "0.40", tier=1, quality=58, caps=frozenset({"streaming"})),
        _model("openai/mini", "0.15", "0.60", tier=1, quality=60),
        _model("anthropic/haiku", "0.80", "4.00", tier=1, quality=62, window=16_000),
        _model("openai/mid", "1.25", "5.00", tier=2, quality=72),
        _model("google/pro", "1.25", "10.00", tier=2, quality=76),
        _model("anthropic/sonnet", "3.00", "15.00", tier=3, quality=85),
        _model("openai/big", "5.00", "20.00", tier=3, quality=90),
    ]


def _catalog() -> Catalog:
    return Catalog(_models())


def _request(text: str = "hi there", model: str = "openai/big", **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    )


def _config(**kw: Any) -> RoutingConfig:
    return RoutingConfig.model_validate(kw)


def _no_classifier(**kw: Any) -> RoutingConfig:
    return _config(classifier={"enabled": False}, **kw)


def _cost(model: ModelInfo, tokens_in: int, tokens_out: int) -> Decimal:
    return (tokens_in * model.price.input + tokens_out * model.price.output) / Decimal(1_000_000)


MODELS = {m.id: m for m in _models()}


# ------------------------------------------------------------------ tiers and ranking


def test_cheapest_of_classified_tier_with_reasons() -> None:
    decision = Router(_catalog()).decide(_request("Translate 'cat' into French."))
    assert decision.model == "google/flash"
    assert decision.tier == 1
    assert decision.mode == "enforce"
    assert decision.reason_codes[0] == "classifier"
    assert decision.reason_codes[-1] == "chosen"
    assert decision.primary == Deployment("google/flash", "google", "flash")
    assert decision.estimated_cost == _cost(
        MODELS["google/flash"], decision.input_tokens, decision.output_tokens
    )
    assert decision.requested_cost == _cost(
        MODELS["openai/big"], decision.input_tokens, decision.output_tokens
    )
    assert decision.savings is not None
    assert decision.savings > 0


@pytest.mark.parametrize("text_rule", [False, True])
def test_the_built_in_scorer_reads_the_texts_the_rules_read(text_rule: bool) -> None:
    """With a rule reading the last user text, the router reads a request's texts once
    for the rule and the scorer; the tiers are the scorer's own."""
    rules = [{"name": "never", "when": {"keywords": ["zzz-absent"]}, "then": {"tier": 3}}]
    router = Router(_catalog(), _config(rules=rules if text_rule else []))
    scorer = ComplexityScorer()
    texts = [
        "Translate 'cat' into French.",
        "Design a distributed, fault-tolerant queue; analyze the trade-offs and prove it.",
        "Write a short note to the team about the release.",
    ]
    for text in texts:
        request = ChatRequest.model_validate(
            {
                "model": "openai/big",
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "an earlier question"},
                    {"role": "assistant", "content": "an answer"},
                    {"role": "user", "content": text},
                ],
                "tools": [{"name": "lookup"}],
            }
        )
        assert router.decide(request).tier == scorer(request)
    assert len({router.decide(_request(t)).tier for t in texts}) == 3


def test_a_scorer_subclass_that_overrides_call_is_asked_through_it() -> None:
    class Always3(ComplexityScorer):
        def __call__(self, request: ChatRequest) -> int:
            return 3

    rules = [{"name": "never", "when": {"keywords": ["zzz-absent"]}, "then": {"tier": 1}}]
    router = Router(_catalog(), _config(rules=rules), classifier=Always3())
    decision = router.decide(_request("Translate 'cat' into French."))
    assert decision.tier == 3
    assert decision.reason_codes[0] == "classifier"


def test_without_classifier_requested_model_tier_is_used() -> None:
    router = Router(_catalog(), _no_classifier())
    decision = router.decide(_request(model="anthropic/sonnet"))
    assert decision.tier == 3
    assert decision.model == "anthropic/sonnet"  # cheaper than openai/big, the only cheaper t3
    assert "requested_tier" in decision.reason_codes


def test_hint_tier_by_number_and_name_beats_classifier() -> None:
    router = Router(_catalog())
    with route_hint(tier="balanced"):
        assert router.decide(_request("Translate 'cat'.")).model == "openai/mid"
    assert router.decide(_request(), RouteContext(tier=3)).model == "anthropic/sonnet"


def test_empty_tier_widens_to_neighbour() -> None:
    router = Router(_catalog(), _no_classifier())
    decision = router.decide(_request(), RouteContext(tier=2, min_quality=80))
    assert decision.model == "anthropic/sonnet"
    assert "tier_widened" in decision.reason_codes
    assert decision.tier == 3


def test_fastest_and_balanced_strategies_use_latency() -> None:
    stats = MemoryStatsStore()
    for _ in range(30):
        stats.record("google/flash", latency_ms=900.0)
        stats.record("openai/mini", latency_ms=150.0)
        stats.record("anthropic/haiku", latency_ms=100.0)
    cheapest = Router(_catalog(), _config(strategy="cheapest"), stats=stats)
    fastest = Router(_catalog(), _config(strategy="fastest"), stats=stats)
    balanced = Router(_catalog(), _config(strategy="balanced"), stats=stats)
    request = _request("Translate 'cat'.")
    assert cheapest.decide(request).model == "google/flash"
    assert fastest.decide(request).model == "anthropic/haiku"
    # balanced: mini is barely pricier than flash but far faster, haiku is 6x the price
    assert balanced.decide(request).model == "openai/mini"


def test_cheapest_ties_break_on_latency_then_quality() -> None:
    models = [
        _model("a/one", "1", "1", tier=1, quality=50),
        _model("b/two", "1", "1", tier=1, quality=70),
        _model("c/three", "1", "1", tier=1, quality=60),
    ]
    router = Router(Catalog(models), _no_classifier())
    ctx = RouteContext(tier=1)
    assert router.decide(_request(model="a/one"), ctx).model == "b/two"
    stats = MemoryStatsStore()
    for _ in range(5):
        stats.record("c/three", latency_ms=50.0)
        stats.record("b/two", latency_ms=400.0)
    router = Router(Catalog(models), _no_classifier(), stats=stats)
    assert router.decide(_request(model="a/one"), ctx).model == "c/three"


def test_sla_exclusions_are_reported_for_models_no_dearer_than_the_last_pick() -> None:
    models = [
        _model("a/slow-cheap", "0.1", "0.1", tier=1, quality=60),
        _model("b/fast", "0.2", "0.2", tier=1, quality=60),
        _model("c/fast", "0.3", "0.3", tier=1, quality=60),
        _model("d/slow-mid", "0.35", "0.35", tier=1, quality=60),
        _model("e/fast", "0.4", "0.4", tier=1, quality=60),
        _model("f/slow-dear", "0.5", "0.5", tier=1, quality=60),
        # Dearer than e at this request's share of output, yet the search's lower
        # bound for it is below e's: a walk by bounds passes it before stopping.
        _model("h/slow-skewed", "0", "0.416", tier=1, quality=60),
        _model("g/fast", "0.6", "0.6", tier=1, quality=60),
    ]
    stats = MemoryStatsStore()
    for model in models:
        slow = "slow" in model.id
        for _ in range(30):
            stats.record(model.id, latency_ms=3000.0 if slow else 200.0)
    router = Router(Catalog(models), _no_classifier(max_fallbacks=2), stats=stats)
    decision = router.decide(_request(model="g/fast"), RouteContext(tier=1, max_latency_ms=1000))
    # Picks: b, c, e (three with two fallbacks); f and h cost more than e, the last.
    share = decision.output_tokens / (decision.input_tokens + decision.output_tokens)
    assert 0.416 * share > 0.4 > 0.416 * (int(share * 64) / 64)
    assert [decision.model, *(d.model for d in decision.fallbacks)] == [
        "b/fast",
        "c/fast",
        "e/fast",
    ]
    excluded = [r.message.split(" ")[0] for r in decision.reasons if r.code == "excluded_sla"]
    assert excluded == ["a/slow-cheap", "d/slow-mid"]


def test_expected_output_per_feature_changes_the_ranking() -> None:
    models = [
        _model("a/cheap-in", "0.10", "3.00", tier=1, quality=60),
        _model("b/cheap-out", "1.00", "0.50", tier=1, quality=60),
    ]
    stats = MemoryStatsStore()
    stats.record("x", latency_ms=1.0, feature="essays", output_tokens=4000)
    router = Router(Catalog(models), _no_classifier(), stats=stats)
    request = _request("x" * 40_000, model="a/cheap-in")
    short = router.decide(request, RouteContext(tier=1, feature="labels", allow_upgrade=True))
    long = router.decide(request, RouteContext(tier=1, feature="essays", allow_upgrade=True))
    assert short.model == "a/cheap-in"
    assert short.output_tokens == 256
    assert long.model == "b/cheap-out"
    assert long.output_tokens == 4000


def test_max_tokens_caps_expected_output() -> None:
    decision = Router(_catalog()).decide(_request(max_tokens=10))
    assert decision.output_tokens == 10


def test_explicit_ordered_tier_and_quality_band_tier() -> None:
    config = _no_classifier(
        tiers={
            "1": {"models": ["anthropic/haiku", "openai/mini"]},
            "2": {"min_quality": 70, "max_input_price": "2"},
        }
    )
    router = Router(_catalog(), config)
    assert router.decide(_request(), RouteContext(tier=1)).model == "anthropic/haiku"
    # band: quality >= 70 and input price <= 2 -> openai/mid, google/pro (mid cheaper)
    assert router.decide(_request(), RouteContext(tier=2)).model == "openai/mid"
    # a long prompt no longer fits haiku's window: the next in the list
    long = _request("x" * 80_000)
    assert router.decide(long, RouteContext(tier=1)).model == "openai/mini"


# ------------------------------------------------------------------ hard constraints


def test_tools_exclude_models_without_tool_support() -> None:
    request = _request("Translate 'cat'.", tools=[Tool(name="lookup")])
    decision = Router(_catalog(), _no_classifier()).decide(request, RouteContext(tier=1))
    assert decision.model == "openai/mini"


def test_images_need_vision() -> None:
    request = ChatRequest(
        model="openai/big",
        messages=[
            Message(role="user", content=[TextPart(text="what"), ImagePart(url="https://x/y.png")])
        ],
    )
    assert Router(_catalog()).decide(request, RouteContext(tier=1)).model == "openai/mini"


def test_json_schema_and_reasoning_needs() -> None:
    fmt = ResponseFormat(type="json_schema", name="x", json_schema={"type": "object"})
    router = Router(_catalog())
    assert router.decide(_request(response_format=fmt), RouteContext(tier=1)).model == "openai/mini"
    loose = ResponseFormat(type="json_object")
    assert (
        router.decide(_request(response_format=loose), RouteContext(tier=1)).model == "google/flash"
    )
    reasoning = _request(reasoning_effort="high")
    assert router.decide(reasoning, RouteContext(tier=1)).model == "openai/mini"


def test_context_window_counts_input_and_requested_output() -> None:
    router = Router(_catalog())
    ctx = RouteContext(tier=1, allow_models=frozenset({"anthropic/haiku"}))
    assert router.decide(_request("x" * 40_000), ctx).model == "anthropic/haiku"
    with pytest.raises(NoRouteAvailable):
        # ~10k input fits 16k, but not with 8k of requested output
        router.decide(_request("x" * 40_000, max_tokens=8000), ctx)


def test_quality_floor_hint_and_rule() -> None:
    router = Router(_catalog())
    assert router.decide(_request(), RouteContext(tier=1, min_quality=61)).model == (
        "anthropic/haiku"
    )
    rule_router = Router(
        _catalog(),
        _config(rules=[{"name": "q", "when": {"feature": "legal"}, "then": {"min_quality": 75}}]),
    )
    decision = rule_router.decide(_request(), RouteContext(tier=2, feature="legal"))
    assert decision.model == "google/pro"


def test_requested_model_is_a_ceiling_unless_upgrade_allowed() -> None:
    router = Router(_catalog())
    request = _request(model="openai/mini")
    capped = router.decide(request, RouteContext(tier=3))
    # nothing in tier 3 (or 2) costs less than mini; tier 1 has flash and mini itself
    assert capped.model == "google/flash"
    assert capped.estimated_cost is not None
    assert capped.requested_cost is not None
    assert capped.estimated_cost <= capped.requested_cost
    upgraded = router.decide(request, RouteContext(tier=3, allow_upgrade=True))
    assert upgraded.model == "anthropic/sonnet"


def test_max_cost_per_call() -> None:
    router = Router(_catalog())
    ctx = RouteContext(tier=3, max_cost_per_call=Decimal("0.003"))
    decision = router.decide(_request("x" * 400), ctx)
    assert decision.estimated_cost is not None
    assert decision.estimated_cost <= Decimal("0.003")
    assert decision.model == "openai/mid"  # tier 3 too dear; widened to a tier that fits


def test_allow_deny_and_provider_lists() -> None:
    router = Router(_catalog())
    one = RouteContext(tier=1)
    assert router.decide(_request(), one.merged(deny_models=["flash"])).model == "openai/mini"
    only = one.merged(allow_models=["anthropic/haiku"])
    assert router.decide(_request(), only).model == "anthropic/haiku"
    providers = one.merged(allow_providers=["anthropic"])
    assert router.decide(_request(), providers).model == "anthropic/haiku"


def test_configured_providers_limit_candidates() -> None:
    router = Router(_catalog(), providers=["openai", "anthropic"])
    assert router.decide(_request(), RouteContext(tier=1)).model == "openai/mini"


class _Breaker:
    def __init__(self, down: set[str]) -> None:
        self.down = down

    def is_available(self, deployment: Deployment) -> bool:
        return deployment.key not in self.down


def test_unavailable_deployments_are_excluded() -> None:
    router = Router(_catalog(), health=_Breaker({"google/flash"}))
    decision = router.decide(_request(), RouteContext(tier=1))
    assert decision.model == "openai/mini"
    assert "excluded_unavailable" in decision.reason_codes


def test_sla_excludes_slow_deployments_once_enough_samples() -> None:
    stats = MemoryStatsStore()
    for _ in range(19):
        stats.record("google/flash", latency_ms=2300.0, ttft_ms=100.0)
    router = Router(_catalog(), _config(stats_refresh_s=0), stats=stats)
    ctx = RouteContext(tier=1, max_latency_ms=800)
    assert router.decide(_request(), ctx).model == "google/flash"  # 19 < 20 samples
    stats.record("google/flash", latency_ms=2300.0, ttft_ms=100.0)
    decision = router.decide(_request(), ctx)
    assert decision.model == "openai/mini"
    sla = [r for r in decision.reasons if r.code == "excluded_sla"]
    assert sla[0].message == "google/flash excluded: p95 2.3 s > SLA 800 ms"
    # streams are judged on time to first token
    assert router.decide(_request(stream=True), ctx).model == "google/flash"


@pytest.mark.parametrize("health", [False, True])
def test_an_sla_before_any_latency_is_known_excludes_nothing(health: bool) -> None:
    """A fresh router (no stats recorded, the circuit breaker on by default) takes
    every deployment for meeting an SLA, with or without health checks."""
    router = Router(
        _catalog(), _config(stats_refresh_s=0), health=_Breaker(set()) if health else None
    )
    decision = router.decide(_request(), RouteContext(tier=1, max_latency_ms=800))
    assert decision.model == "google/flash"
    assert not [r for r in decision.reasons if r.code == "excluded_sla"]


def test_an_sla_hint_on_a_default_engine_routes() -> None:
    engine = LLMRoute(environ={})
    request = ChatRequest(model="gpt-4o-mini", messages=[Message(role="user", content="hi")])
    decision = engine.decide(request, RouteContext(max_latency_ms=2500))
    assert decision.primary is not None


def test_no_route_raises() -> None:
    router = Router(_catalog())
    with pytest.raises(NoRouteAvailable):
        router.decide(_request(), RouteContext(allow_models=frozenset({"nope/none"})))


# ------------------------------------------------------------------ rules


def _rule_router(*rules: dict[str, Any], **kw: Any) -> Router:
    return Router(_catalog(), _no_classifier(rules=list(rules), **kw))


@pytest.mark.parametrize(
    ("when", "ctx", "request_kw", "matches"),
    [
        ({"feature": "summ*"}, RouteContext(feature="summaries"), {}, True),
        ({"feature": "summ*"}, RouteContext(feature="chat"), {}, False),
        ({"route": "api:*"}, RouteContext(route="api:search"), {}, True),
        ({"user_groups": ["staff"]}, RouteContext(user_groups=frozenset({"staff"})), {}, True),
        ({"user_groups": ["staff"]}, RouteContext(user_groups=frozenset({"free"})), {}, False),
        ({"tags": ["batch"]}, RouteContext(tags=frozenset({"batch", "x"})), {}, True),
        ({"max_input_tokens": 50}, RouteContext(), {"text": "short"}, True),
        ({"min_input_tokens": 50}, RouteContext(), {"text": "short"}, False),
        ({"has_tools": True}, RouteContext(), {"tools": [Tool(name="t")]}, True),
        ({"has_tools": True}, RouteContext(), {}, False),
        ({"has_images": False}, RouteContext(), {}, True),
        (
            {"json_schema": True},
            RouteContext(),
            {"response_format": ResponseFormat(type="json_schema", json_schema={})},
            True,
        ),
        ({"regex": r"\bSQL\b"}, RouteContext(), {"text": "write SQL for me"}, True),
        ({"regex": r"\bSQL\b"}, RouteContext(), {"text": "write sequel"}, False),
        ({"keywords": ["invoice"]}, RouteContext(), {"text": "An INVOICE question"}, True),
        ({"model": "openai/*"}, RouteContext(), {}, True),
        ({"model": "anthropic/*"}, RouteContext(), {}, False),
    ],
)
def test_rule_conditions(
    when: dict[str, Any], ctx: RouteContext, request_kw: dict[str, Any], matches: bool
) -> None:
    router = _rule_router({"name": "probe", "when": when, "then": {"tier": 1}})
    text = request_kw.pop("text", "hello")
    decision = router.decide(_request(text, **request_kw), ctx)
    assert (decision.tier == 1) is matches
    assert ("rule" in decision.reason_codes) is matches


def test_first_match_wins_unless_continue() -> None:
    first = {"name": "first", "when": {"feature": "f"}, "then": {"tier": 1}}
    second = {"name": "second", "when": {}, "then": {"tier": 3, "min_quality": 61}}
    stop = _rule_router(first, second).decide(_request(), RouteContext(feature="f"))
    assert stop.model == "google/flash"
    go_on = _rule_router({**first, "continue": True}, second).decide(
        _request(), RouteContext(feature="f")
    )
    # the first rule's tier stays; the second adds the quality floor it did not set
    assert go_on.tier == 1
    assert go_on.model == "anthropic/haiku"
    messages = [r.message for r in go_on.reasons if r.code == "rule"]
    assert messages == ["rule 'first' → tier 1", "rule 'second' → quality ≥ 61"]


def test_rule_pins_a_model_and_sets_sla_and_mode() -> None:
    router = _rule_router(
        {"name": "pin", "when": {"feature": "code"}, "then": {"model": "openai/mid"}},
        {"name": "shadow", "when": {"feature": "beta"}, "then": {"mode": "observe"}},
    )
    pinned = router.decide(_request(), RouteContext(feature="code"))
    assert pinned.model == "openai/mid"
    assert "pinned" in pinned.reason_codes
    shadow = router.decide(_request(), RouteContext(feature="beta"))
    assert shadow.mode == "observe"
    assert shadow.model == "openai/big"
    # a pinned model above the ceiling is refused and routing carries on
    capped = router.decide(_request(model="openai/mini"), RouteContext(feature="code"))
    assert capped.model != "openai/mid"
    assert "pin_failed" in capped.reason_codes


def test_rule_sla() -> None:
    stats = MemoryStatsStore()
    for _ in range(30):
        stats.record("google/flash", latency_ms=3000.0)
    router = Router(
        _catalog(),
        _no_classifier(
            rules=[{"name": "fast", "when": {"route": "chat"}, "then": {"max_latency_ms": 500}}]
        ),
        stats=stats,
    )
    assert router.decide(_request(), RouteContext(tier=1, route="chat")).model == "openai/mini"


def test_hints_override_rule_tier() -> None:
    router = _rule_router({"name": "all", "when": {}, "then": {"tier": 3}})
    assert router.decide(_request(), RouteContext(tier=1)).model == "google/flash"


# ------------------------------------------------------------------ budgets


def _budget_router(on_limit: str = "block", **kw: Any) -> tuple[Router, Budgets]:
    budgets = Budgets(
        [
            Budget(
                name="support",
                scope="feature",
                value="support",
                limit_usd=Decimal(1),
                on_limit=on_limit,
            )
        ]
    )
    return Router(_catalog(), _no_classifier(**kw), budgets=budgets), budgets


SUPPORT = RouteContext(feature="support", tier=3)


def test_budget_soft_threshold_downgrades_one_tier() -> None:
    router, budgets = _budget_router()
    assert router.decide(_request(), SUPPORT).tier == 3
    budgets.settle(budgets.reserve(Decimal("0.83"), SUPPORT), Decimal("0.83"))
    decision = router.decide(_request(), SUPPORT)
    assert decision.tier == 2
    assert decision.model == "openai/mid"
    message = next(r.message for r in decision.reasons if r.code == "budget_downgrade")
    assert message == "budget 'support' at 83% → downgraded from tier 3"
    # other features are untouched
    assert router.decide(_request(), RouteContext(feature="chat", tier=3)).tier == 3


def test_budget_near_limit_forces_cheapest() -> None:
    router, budgets = _budget_router()
    budgets.settle(budgets.reserve(Decimal("0.96"), SUPPORT), Decimal("0.96"))
    decision = router.decide(_request(), SUPPORT)
    assert decision.model == "google/flash"
    assert "budget_cheapest" in decision.reason_codes


def test_budget_at_limit_blocks_or_forces_cheapest() -> None:
    router, budgets = _budget_router()
    budgets.settle(budgets.reserve(Decimal("1"), SUPPORT), Decimal("1"))
    with pytest.raises(BudgetExceeded) as info:
        router.decide(_request(), SUPPORT)
    assert info.value.budget == "support"
    observe = router.decide(_request(), SUPPORT.merged(mode="observe"))
    assert "budget_block" in observe.reason_codes
    assert observe.model == "openai/big"

    cheap_router, cheap_budgets = _budget_router(on_limit="cheapest")
    cheap_budgets.settle(cheap_budgets.reserve(Decimal("1.5"), SUPPORT), Decimal("1.5"))
    assert cheap_router.decide(_request(), SUPPORT).model == "google/flash"


def test_cheapest_still_respects_capabilities() -> None:
    router, budgets = _budget_router()
    budgets.settle(budgets.reserve(Decimal("0.96"), SUPPORT), Decimal("0.96"))
    decision = router.decide(_request(tools=[Tool(name="t")]), SUPPORT)
    assert decision.model == "openai/mini"


def test_budgets_from_config_are_used() -> None:
    config = _no_classifier(budgets=[{"name": "all", "limit_usd": "1"}])
    router = Router(_catalog(), config)
    assert router.budgets is not None
    router.budgets.settle(router.budgets.reserve(Decimal("0.85")), Decimal("0.85"))
    assert router.decide(_request(), RouteContext(tier=3)).tier == 2


# ------------------------------------------------------------------ modes and unknown models


def test_observe_mode_keeps_requested_model_and_records_routing() -> None:
    router = Router(_catalog(), _config(mode="observe"))
    decision = router.decide(_request("Translate 'cat'."))
    assert decision.mode == "observe"
    assert decision.model == "openai/big"
    assert decision.routed is not None
    assert decision.routed.model == "google/flash"
    assert decision.fallbacks == ()
    assert decision.savings is not None
    assert decision.savings > 0
    assert "observe" in decision.reason_codes


def test_mode_hint_overrides_config() -> None:
    router = Router(_catalog(), _config(mode="observe"))
    assert router.decide(_request(), RouteContext(mode="enforce", tier=1)).model == "google/flash"


def test_unknown_model_passes_through_untouched() -> None:
    decision = Router(_catalog()).decide(_request(model="acme/secret-model"))
    assert decision.model == "acme/secret-model"
    assert decision.primary == Deployment("acme/secret-model", "acme", "secret-model")
    assert decision.mode == "observe"
    assert decision.reason_codes == ("unknown_model",)
    assert decision.requested_cost is None
    bare = Router(_catalog()).decide(_request(model="local-llama"))
    assert bare.primary.provider == "unknown"


def test_unknown_model_routes_when_hinted() -> None:
    decision = Router(_catalog()).decide(_request(model="acme/x"), RouteContext(tier=2))
    assert decision.model == "openai/mid"
    assert decision.requested_cost is None
    assert decision.savings is None


def test_aliases_resolve_requested_model() -> None:
    models = [*_models()]
    models[-1] = ModelInfo(
        id="openai/big",
        provider="openai",
        name="big",
        price=Price(Decimal(5), Decimal(20)),
        context_window=128_000,
        capabilities=ALL_CAPS,
        aliases=("big-latest",),
        quality=90,
        tier=3,
    )
    router = Router(Catalog(models), _no_classifier())
    assert router.decide(_request(model="big-latest")).tier == 3


# ------------------------------------------------------------------ fallbacks and deployments


def test_fallbacks_prefer_other_providers_then_neighbour_tier() -> None:
    router = Router(_catalog(), _no_classifier(max_fallbacks=4))
    decision = router.decide(_request(), RouteContext(tier=1))
    assert decision.model == "google/flash"
    fallbacks = [d.model for d in decision.fallbacks]
    assert fallbacks[:2] == ["openai/mini", "anthropic/haiku"]
    assert fallbacks[2] == "openai/mid"  # then the neighbouring tier
    assert len(fallbacks) <= 4
    assert decision.model not in fallbacks


def test_weighted_deployments_split_traffic() -> None:
    config = _no_classifier(
        deployments=[
            {"model": "openai/mini", "provider": "azure", "name": "mini-eu", "weight": 3},
            {"model": "openai/mini", "provider": "azure", "name": "mini-us", "weight": 1},
        ]
    )
    router = Router(_catalog(), config, rng=random.Random(7))
    ctx = RouteContext(tier=1, deny_models=frozenset({"google/flash"}))
    names = [router.decide(_request(), ctx).primary.name for _ in range(400)]
    share = names.count("mini-eu") / len(names)
    assert 0.65 < share < 0.85
    decision = router.decide(_request(), ctx)
    assert decision.fallbacks[0].provider == "anthropic"  # other providers first
    assert {d.name for d in decision.fallbacks} >= {"mini-eu", "mini-us"} - {decision.primary.name}


def test_least_busy_picks_the_deployment_with_fewest_in_flight() -> None:
    stats = MemoryStatsStore()
    config = _no_classifier(
        load_balancing="least_busy",
        deployments=[
            {"model": "google/flash", "provider": "vertex", "name": "flash-a"},
            {"model": "google/flash", "provider": "vertex", "name": "flash-b"},
        ],
    )
    router = Router(_catalog(), config, stats=stats)
    stats.started("vertex/flash-a")
    assert router.decide(_request(), RouteContext(tier=1)).primary.name == "flash-b"
    stats.started("vertex/flash-b")
    stats.started("vertex/flash-b")
    assert router.decide(_request(), RouteContext(tier=1)).primary.name == "flash-a"


class _AsyncOnlySnapshots(MemoryStatsStore):
    """A store whose snapshots an async caller should take: the sync one is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.sync_snapshots = 0
        self.async_snapshots = 0

    def snapshot(self) -> StatsSnapshot:
        self.sync_snapshots += 1
        return super().snapshot()

    async def asnapshot(self) -> StatsSnapshot:
        self.async_snapshots += 1
        return super().snapshot()


@pytest.mark.anyio
async def test_aprepare_takes_the_first_snapshot_through_the_async_client() -> None:
    stats = _AsyncOnlySnapshots()
    for _ in range(30):
        stats.record("google/flash", latency_ms=5000.0)
    router = Router(_catalog(), _no_classifier(stats_refresh_s=60), stats=stats)
    assert router.awaits_first_snapshot
    await router.aprepare()
    assert not router.awaits_first_snapshot
    await router.aprepare()  # taken already: not again
    assert (stats.async_snapshots, stats.sync_snapshots) == (1, 0)
    decision = router.decide(_request(), RouteContext(tier=1, max_latency_ms=800))
    assert stats.sync_snapshots == 0  # the decision used the prepared view
    assert decision.model != "google/flash"  # whose p95 the prepared view holds
    router.refresh()
    router.decide(_request(), RouteContext(tier=1))
    assert stats.sync_snapshots == 1  # a sync caller takes the first one itself


@pytest.mark.anyio
async def test_aprepare_leaves_synchronous_refreshes_alone() -> None:
    stats = _AsyncOnlySnapshots()
    router = Router(_catalog(), _no_classifier(stats_refresh_s=0), stats=stats)
    await router.aprepare()
    router.decide(_request(), RouteContext(tier=1))
    assert (stats.async_snapshots, stats.sync_snapshots) == (0, 1)


# ------------------------------------------------------------------ catalog generations


def test_price_changes_move_traffic_and_plan_is_reused_otherwise() -> None:
    catalog = _catalog()
    router = Router(catalog)
    ctx = RouteContext(tier=1)
    assert router.decide(_request(), ctx).model == "google/flash"
    plan = router._plan
    router.decide(_request(), ctx)
    assert router._plan is plan  # same generation: nothing recomputed
    cheaper = [
        _model("openai/mini", "0.05", "0.20", tier=1, quality=60) if m.id == "openai/mini" else m
        for m in _models()
    ]
    catalog.replace(cheaper)
    assert router.decide(_request(), ctx).model == "openai/mini"
    assert router._plan is not plan


# ------------------------------------------------------------------ property


def _catalog_strategy() -> st.SearchStrategy[list[ModelInfo]]:
    caps = st.frozensets(st.sampled_from(sorted(ALL_CAPS)), min_size=0)
    model = st.builds(
        lambda i, provider, pin, pout, tier, q, c, window: _model(
            f"{provider}/m{i}", str(pin), str(pout), tier=tier, quality=q, caps=c, window=window
        ),
        st.integers(0, 10_000),
        st.sampled_from(["openai", "anthropic", "google", "mistral"]),
        st.decimals(min_value=Decimal("0.01"), max_value=Decimal(30), places=2),
        st.decimals(min_value=Decimal("0.01"), max_value=Decimal(60), places=2),
        st.integers(1, 3),
        st.integers(30, 95),
        caps,
        st.sampled_from([8_000, 32_000, 128_000]),
    )
    return st.lists(model, min_size=1, max_size=15, unique_by=lambda m: m.id)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    models=_catalog_strategy(),
    data=st.data(),
    tools=st.booleans(),
    image=st.booleans(),
    schema=st.booleans(),
    reasoning=st.booleans(),
    chars=st.integers(10, 200) | st.integers(20_000, 140_000),
    max_tokens=st.none() | st.integers(1, 8_000),
    tier=st.none() | st.integers(1, 3),
    min_quality=st.none() | st.integers(30, 95),
    upgrade=st.booleans(),
    strategy=st.sampled_from(["cheapest", "fastest", "balanced"]),
    sla=st.none() | st.floats(100, 3000),
    health=st.booleans(),
)
def test_chosen_model_satisfies_every_hard_constraint(
    models: list[ModelInfo],
    data: st.DataObject,
    tools: bool,
    image: bool,
    schema: bool,
    reasoning: bool,
    chars: int,
    max_tokens: int | None,
    tier: int | None,
    min_quality: int | None,
    upgrade: bool,
    strategy: str,
    sla: float | None,
    health: bool,
) -> None:
    ids = [m.id for m in models]
    requested = data.draw(st.sampled_from(ids))
    deny = data.draw(st.frozensets(st.sampled_from(ids), max_size=2))
    allow = data.draw(st.none() | st.frozensets(st.sampled_from(ids), min_size=1))
    content: Any = "w " * (chars // 2)
    if image:
        content = [TextPart(text=content), ImagePart(url="https://x/y.png")]
    request = ChatRequest(
        model=requested,
        messages=[Message(role="user", content=content)],
        tools=[Tool(name="t")] if tools else None,
        response_format=ResponseFormat(type="json_schema", json_schema={}) if schema else None,
        reasoning_effort="high" if reasoning else None,
        max_tokens=max_tokens,
    )
    ctx = RouteContext(
        tier=tier,
        min_quality=min_quality,
        deny_models=deny,
        allow_models=allow,
        allow_upgrade=upgrade,
        max_latency_ms=sla,
    )
    # latency known for some deployments (or none: a fresh router), some of them down
    stats = MemoryStatsStore()
    for model_id in data.draw(st.lists(st.sampled_from(ids), unique=True)):
        for _ in range(data.draw(st.sampled_from([5, 20]))):
            stats.record(model_id, latency_ms=data.draw(st.floats(50, 5000)), ttft_ms=50.0)
    down = data.draw(st.frozensets(st.sampled_from(ids))) if health else frozenset()
    router = Router(
        Catalog(models),
        _config(strategy=strategy, stats_refresh_s=0),
        stats=stats,
        health=_Breaker(set(down)) if health else None,
    )
    try:
        decision = router.decide(request, ctx)
    except NoRouteAvailable:
        return
    _assert_hard_constraints(decision, models, request, ctx)
    assert decision.model not in down
    known = stats.snapshot().deployments.get(decision.model)
    if sla is not None and known is not None and known.samples >= 20:
        assert known.p95_ms <= sla


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    models=_catalog_strategy(),
    data=st.data(),
    lengths=st.lists(st.integers(1, 40_000), min_size=1, max_size=12),
    max_tokens=st.none() | st.integers(1, 8_000),
    tier=st.none() | st.integers(1, 3),
    sla=st.none() | st.floats(100, 3000),
    strategy=st.sampled_from(["cheapest", "fastest", "balanced"]),
)
def test_shared_selections_decide_exactly_as_a_fresh_search(
    models: list[ModelInfo],
    data: st.DataObject,
    lengths: list[int],
    max_tokens: int | None,
    tier: int | None,
    sla: float | None,
    strategy: str,
) -> None:
    requested = data.draw(st.sampled_from([m.id for m in models]))
    stats = MemoryStatsStore()
    for i, model in enumerate(models):
        for _ in range(25):
            stats.record(f"{model.provider}/{model.id.split('/')[1]}", latency_ms=200.0 + 90 * i)
    config = _config(strategy=strategy, stats_refresh_s=1000.0)
    shared = Router(Catalog(models), config, stats=stats)
    ctx = RouteContext(tier=tier, max_latency_ms=sla)
    for chars in lengths:
        request = _request("w " * chars, model=requested, max_tokens=max_tokens)
        fresh = Router(Catalog(models), config, stats=stats)
        fresh._span_of = lambda *args: (None, False)  # type: ignore[method-assign]
        try:
            expected: Decision | type[Exception] = fresh.decide(request, ctx)
        except (NoRouteAvailable, BudgetExceeded) as exc:
            expected = type(exc)
        try:
            got: Decision | type[Exception] = shared.decide(request, ctx)
        except (NoRouteAvailable, BudgetExceeded) as exc:
            got = type(exc)
        assert got == expected


def _assert_hard_constraints(
    decision: Decision, models: list[ModelInfo], request: ChatRequest, ctx: RouteContext
) -> None:
    by_id = {m.id: m for m in models}
    chosen = by_id[decision.model]
    needs = set()
    if request.tools:
        needs.add("tools")
    if request.has_images:
        needs.add("vision")
    if request.response_format is not None:
        needs.add("json_schema")
    if request.reasoning_effort:
        needs.add("reasoning")
    assert needs <= chosen.capabilities
    window_need = decision.input_tokens + (request.max_tokens or decision.output_tokens)
    assert chosen.context_window >= window_need
    assert (chosen.quality or 0) >= (ctx.min_quality or 0)
    assert ctx.deny_models is not None
    assert chosen.id not in ctx.deny_models
    if ctx.allow_models is not None:
        assert chosen.id in ctx.allow_models
    if not ctx.allow_upgrade:
        requested = by_id[request.model]
        assert _cost(chosen, decision.input_tokens, decision.output_tokens) <= _cost(
            requested, decision.input_tokens, decision.output_tokens
        )


def test_several_soft_budgets_downgrade_only_once() -> None:
    budgets = Budgets(
        [
            Budget(name="team", limit_usd=Decimal(1)),
            Budget(name="mine", scope="user", limit_usd=Decimal(1)),
        ]
    )
    ctx = RouteContext(user_id="u", tier=3)
    budgets.settle(budgets.reserve(Decimal("0.85"), ctx), Decimal("0.85"))
    decision = Router(_catalog(), _no_classifier(), budgets=budgets).decide(_request(), ctx)
    assert decision.tier == 2
    assert decision.reason_codes.count("budget_downgrade") == 1


# ------------------------------------------------------------------ remembered selections


def _count_selections(
    router: Router, monkeypatch: pytest.MonkeyPatch, spans: bool = False
) -> list[int]:
    """Count the searches ``router`` runs (a remembered selection runs none); without
    ``spans``, selections are not shared across output shares (see ``_span_of``)."""
    calls = [0]
    select = router._select
    if not spans:
        monkeypatch.setattr(router, "_span_of", lambda *args: (None, False))

    def counting(*args: Any) -> Any:
        calls[0] += 1
        return select(*args)

    monkeypatch.setattr(router, "_select", counting)
    return calls


def _same(a: Decision, b: Decision) -> None:
    assert (a.primary, a.fallbacks, a.routed, a.tier, a.mode) == (
        b.primary,
        b.fallbacks,
        b.routed,
        b.tier,
        b.mode,
    )
    assert (a.estimated_cost, a.requested_cost) == (b.estimated_cost, b.requested_cost)
    assert (a.input_tokens, a.output_tokens) == (b.input_tokens, b.output_tokens)
    assert a.reasons == b.reasons


def test_a_repeated_decision_reuses_its_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    router = Router(_catalog(), _no_classifier())
    calls = _count_selections(router, monkeypatch)
    ctx = RouteContext(tier=2)
    first = router.decide(_request(), ctx)
    _same(router.decide(_request(), ctx), first)  # kept the second time its inputs come
    _same(router.decide(_request(), ctx), first)
    _same(router.decide(_request(), ctx), first)
    assert calls[0] == 2
    # Any input the selection reads makes another one.
    router.decide(_request(max_tokens=100), ctx)
    router.decide(_request(stream=True), ctx)
    router.decide(_request("hi there, how are you"), ctx)
    router.decide(_request(), RouteContext(tier=2, allow_upgrade=True))
    router.decide(_request(), RouteContext(tier=2, max_latency_ms=900))
    router.decide(_request(), RouteContext(tier=2, deny_models=frozenset({"openai/mid"})))
    router.decide(_request(), RouteContext(tier=2, max_cost_per_call=Decimal("0.001")))
    assert calls[0] == 9


def test_requests_of_new_lengths_share_a_selection_where_no_costs_cross(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = Router(_catalog(), _no_classifier())
    calls = _count_selections(router, monkeypatch, spans=True)
    ctx = RouteContext(tier=2)
    texts = ["w " * 300 + " friend" * n for n in range(6)]  # every length new
    decisions = [router.decide(_request(text), ctx) for text in texts]
    buckets = [int(d.output_tokens / (d.input_tokens + d.output_tokens) * 64) for d in decisions]
    assert len(set(buckets)) < len(texts)
    # Per bucket of output shares: the first request searched; the second checked its
    # bucket's two ends, which agreed and so answered it too; none after.
    assert calls[0] == sum(1 if buckets.count(b) == 1 else 3 for b in set(buckets))
    for text, decision in zip(texts, decisions, strict=True):
        fresh = Router(_catalog(), _no_classifier())
        assert decision == fresh.decide(_request(text), ctx)  # costs and reasons too
    assert len({d.input_tokens for d in decisions}) == len(texts)


def test_a_selection_found_through_its_span_is_remembered_under_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = Router(_catalog(), _no_classifier())
    priced = [0]
    original = router_module._priced

    def counting(*args: Any) -> Any:
        priced[0] += 1
        return original(*args)

    monkeypatch.setattr(router_module, "_priced", counting)
    ctx = RouteContext(tier=2)
    base = "w " * 300
    first = router.decide(_request(base), ctx)  # searched
    second = router.decide(_request(base + " friend"), ctx)  # and its span checked at both ends
    assert priced[0] == 1 + 1  # (the searches at the ends are compared, never priced)
    third = [router.decide(_request(base + " friend friend"), ctx) for _ in range(3)]
    assert len({first.input_tokens, second.input_tokens, third[0].input_tokens}) == 3
    # From the span twice (kept under its own key the second time), then remembered.
    assert priced[0] == 2 + 2
    assert len(router._view.selections) + len(router._plan.selections) == 1
    _same(third[2], third[0])


@pytest.mark.parametrize(("sla", "kept"), [(None, True), (5_000.0, False)])
def test_a_span_outlives_a_stats_snapshot_unless_it_read_latency(
    monkeypatch: pytest.MonkeyPatch, sla: float | None, kept: bool
) -> None:
    stats = MemoryStatsStore()
    router = Router(_catalog(), _no_classifier(stats_refresh_s=0.0), stats=stats)
    calls = _count_selections(router, monkeypatch, spans=True)
    ctx = RouteContext(tier=2, max_latency_ms=sla)
    base = "w " * 300
    router.decide(_request(base), ctx)
    router.decide(_request(base + " friend"), ctx)  # the span is made here
    view = router._view
    stats.record("openai/mid", latency_ms=120.0)  # new figures: a new snapshot
    searched = calls[0]
    decision = router.decide(_request(base + " friend friend"), ctx)
    assert router._view is not view
    assert calls[0] == searched + (0 if kept else 1)
    fresh = Router(_catalog(), _no_classifier(stats_refresh_s=0.0), stats=stats)
    assert decision == fresh.decide(_request(base + " friend friend"), ctx)


def test_a_bucket_where_costs_cross_is_searched_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cheap on input and dear on output vs a flat price: which is cheaper depends on
    # the share of output w, and they cross at 1 + 8w == 5.2, w == 0.525, inside the
    # bucket of shares [33/64, 34/64).
    models = [
        _model("openai/in-cheap", "1", "9", tier=1, quality=60),
        _model("google/flat", "5.2", "5.2", tier=1, quality=60),
    ]
    router = Router(Catalog(models), _no_classifier(default_output_tokens=500))
    calls = _count_selections(router, monkeypatch, spans=True)
    ctx = RouteContext(tier=1)
    decisions = [router.decide(_request("w " * n), ctx) for n in (880, 900)]
    searched = calls[0]
    for n in (890, 885, 895):
        decisions.append(router.decide(_request("w " * n), ctx))
        assert calls[0] == searched + 1  # nothing shared: searched again
        searched = calls[0]
    shares = [d.output_tokens / (d.input_tokens + d.output_tokens) for d in decisions]
    assert {int(share * 64) for share in shares} == {33}
    assert shares[0] > 0.525 > shares[1]
    assert [d.model for d in decisions[:2]] == ["google/flat", "openai/in-cheap"]


def test_remembered_selection_is_dropped_with_the_catalog_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog = _catalog()
    router = Router(catalog, _no_classifier())
    calls = _count_selections(router, monkeypatch)
    ctx = RouteContext(tier=1)
    for _ in range(3):
        assert router.decide(_request(), ctx).model == "google/flash"
    assert calls[0] == 2
    catalog.replace(
        [
            _model("openai/mini", "0.05", "0.20", tier=1, quality=60)
            if m.id == "openai/mini"
            else m
            for m in _models()
        ]
    )
    decision = router.decide(_request(), ctx)
    assert decision.model == "openai/mini"
    assert decision.estimated_cost == _cost(
        catalog.get("openai/mini"), decision.input_tokens, decision.output_tokens
    )
    assert calls[0] == 3


def test_remembered_selection_follows_the_stats_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stats = MemoryStatsStore()
    for _ in range(30):
        stats.record("google/flash", latency_ms=300.0)
    router = Router(_catalog(), _no_classifier(stats_refresh_s=0), stats=stats)
    calls = _count_selections(router, monkeypatch)
    ctx = RouteContext(tier=1, max_latency_ms=800)
    # A new snapshot with the same figures keeps what was derived from them.
    for _ in range(3):
        assert router.decide(_request(), ctx).model == "google/flash"
    assert calls[0] == 2
    for _ in range(30):
        stats.record("google/flash", latency_ms=2500.0)
    decision = router.decide(_request(), ctx)
    assert decision.model == "openai/mini"
    assert "excluded_sla" in decision.reason_codes
    assert calls[0] == 3


def test_a_remembered_selection_that_read_no_latency_outlives_the_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stats = MemoryStatsStore()
    router = Router(_catalog(), _no_classifier(stats_refresh_s=0), stats=stats)
    calls = _count_selections(router, monkeypatch)
    ctx = RouteContext(tier=1)  # no SLA; the tier's prices do not tie
    for _ in range(2):
        assert router.decide(_request(), ctx).model == "google/flash"
    view = router._view
    for _ in range(30):
        stats.record("google/flash", latency_ms=2500.0)
    assert router.decide(_request(), ctx).model == "google/flash"
    assert router._view is not view
    assert calls[0] == 2  # searched twice (kept the second time), not again


def test_remembered_selection_follows_expected_output_per_feature() -> None:
    stats = MemoryStatsStore()
    router = Router(_catalog(), _no_classifier(stats_refresh_s=0), stats=stats)
    ctx = RouteContext(tier=1, feature="summaries")
    before = router.decide(_request(), ctx)
    stats.record("x/y", latency_ms=1.0, feature="summaries", output_tokens=900)
    after = router.decide(_request(), ctx)
    assert (before.output_tokens, after.output_tokens) == (256, 900)
    assert after.estimated_cost != before.estimated_cost


def test_remembered_selection_is_checked_against_health(monkeypatch: pytest.MonkeyPatch) -> None:
    breaker = _Breaker(set())
    router = Router(_catalog(), _no_classifier(), health=breaker)
    calls = _count_selections(router, monkeypatch)
    ctx = RouteContext(tier=1)
    healthy = router.decide(_request(), ctx)
    assert healthy.model == "google/flash"
    for _ in range(2):
        _same(router.decide(_request(), ctx), healthy)
    assert calls[0] == 2
    breaker.down = {"google/flash"}
    down = router.decide(_request(), ctx)
    assert down.model == "openai/mini"
    assert "excluded_unavailable" in down.reason_codes
    breaker.down = {"openai/mid"}  # a fallback-tier deployment the search consulted
    assert router.decide(_request(), ctx).model == "google/flash"
    breaker.down = set()
    _same(router.decide(_request(), ctx), healthy)  # searched again, and kept
    calls_now = calls[0]
    _same(router.decide(_request(), ctx), healthy)
    assert calls[0] == calls_now


def test_budget_spend_crossing_a_threshold_reaches_the_next_decision() -> None:
    router, budgets = _budget_router()
    for _ in range(2):
        assert router.decide(_request(), SUPPORT).tier == 3
    other = Budgets(budgets.budgets, budgets.store)  # e.g. the dispatcher's instance
    other.settle(other.reserve(Decimal("0.01"), SUPPORT), Decimal("0.81"))
    assert router.decide(_request(), SUPPORT).tier == 2
    other.settle(other.reserve(Decimal("0.01"), SUPPORT), Decimal("0.15"))
    assert router.decide(_request(), SUPPORT).model == "google/flash"
    other.settle(other.reserve(Decimal("0.01"), SUPPORT), Decimal("0.04"))
    with pytest.raises(BudgetExceeded):
        router.decide(_request(), SUPPORT)


def test_rule_text_tests_are_remembered_per_text() -> None:
    router = _rule_router(
        {"name": "sql", "when": {"regex": r"\bSQL\b"}, "then": {"tier": 1}},
        {"name": "refund", "when": {"keywords": ["refund"]}, "then": {"tier": 3}},
    )
    texts = ["write SQL", "a refund!", "sql or so", "write SQL", "a refund!", "sql or so"]
    tiers = [router.decide(_request(text), RouteContext()).tier for text in texts]
    assert tiers == [1, 3, 3, 1, 3, 3]  # (no rule: the requested model's tier 3)


@pytest.mark.parametrize(
    ("text", "matched"),
    [
        ("write SQL for me", True),
        ("SELECT * FROM t", True),
        ("write sql for me", False),  # the regex is case-sensitive
        ("NoSQL stores", False),  # the literal is there, the word boundary is not
        ("nothing relevant", False),
    ],
)
def test_rule_regex_behind_its_literal_prefilter_matches_as_the_regex_does(
    text: str, matched: bool
) -> None:
    router = _rule_router(
        {"name": "sql", "when": {"regex": r"\bSELECT\b|\bSQL\b"}, "then": {"tier": 1}}
    )
    assert (router.decide(_request(text), RouteContext()).tier == 1) is matched


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(["hi", "write SQL for the report", "w " * 40, "x" * 3000]),
            st.sampled_from(["openai/big", "openai/mini", "google/pro", "nope/none"]),
            st.none() | st.sampled_from([16, 300, 4000]),
            st.booleans(),
            st.none() | st.integers(1, 3),
            st.none() | st.sampled_from([65.0, 400.0, 900.0]),
            st.sampled_from(["support", "chat", None]),
            st.booleans(),
        ),
        min_size=1,
        max_size=25,
    ),
    strategy=st.sampled_from(["cheapest", "fastest", "balanced"]),
    down=st.frozensets(st.sampled_from(["google/flash", "openai/mid", "anthropic/sonnet"])),
)
def test_remembering_router_decides_like_a_fresh_one(
    calls: list[tuple[str, str, int | None, bool, int | None, float | None, str | None, bool]],
    strategy: str,
    down: frozenset[str],
) -> None:
    stats = MemoryStatsStore()
    for key, latency in [("google/flash", 700.0), ("openai/mini", 300.0), ("google/pro", 50.0)]:
        for _ in range(25):
            stats.record(key, latency_ms=latency, ttft_ms=latency / 10)
    stats.record("x/y", latency_ms=1.0, feature="support", output_tokens=700)
    config = _config(
        strategy=strategy,
        stats_refresh_s=0,
        rules=[{"name": "sql", "when": {"regex": r"\bSQL\b"}, "then": {"tier": 2}}],
        budgets=[{"name": "chat", "scope": "feature", "value": "chat", "limit_usd": "0.0005"}],
    )
    budgets = Budgets(config.budgets)
    breaker = _Breaker(set())
    router = Router(_catalog(), config, stats=stats, budgets=budgets, health=breaker)
    # Three times through: from the third time round most selections are kept ones.
    for i, (text, model, max_tokens, stream, tier, sla, feature, flip) in enumerate(calls * 3):
        if flip:
            breaker.down = set(down) if not breaker.down else set()
        request = _request(text, model=model, max_tokens=max_tokens, stream=stream)
        ctx = RouteContext(tier=tier, max_latency_ms=sla, feature=feature)
        fresh = Router(_catalog(), config, stats=stats, budgets=budgets, health=breaker)
        outcomes = []
        for each in (router, fresh):
            try:
                outcomes.append(each.decide(request, ctx))
            except (NoRouteAvailable, BudgetExceeded) as exc:
                outcomes.append(repr(exc))  # type: ignore[arg-type]
        if isinstance(outcomes[0], Decision) and isinstance(outcomes[1], Decision):
            _same(outcomes[0], outcomes[1])
        else:
            assert outcomes[0] == outcomes[1]
        if i % 4 == 3:  # spend moves the chat budget through its thresholds
            with contextlib.suppress(BudgetExceeded):  # (once it is spent)
                spend = RouteContext(feature="chat")
                budgets.settle(budgets.reserve(Decimal("0.000001"), spend), Decimal("0.00012"))


def test_rules_remembered_per_token_band_groups_and_tags() -> None:
    router = _rule_router(
        {"name": "short", "when": {"max_input_tokens": 10}, "then": {"tier": 1}},
        {"name": "long", "when": {"min_input_tokens": 12}, "then": {"tier": 3}},
        {"name": "staff", "when": {"user_groups": ["staff"]}, "then": {"min_quality": 85}},
    )

    def decide(chars: int, groups: frozenset[str] | None = None) -> Decision:
        request = _request("x" * chars, model="openai/mid")  # tier 2 when no rule sets one
        return router.decide(request, RouteContext(user_groups=groups, allow_upgrade=True))

    # 7 tokens of framing plus a quarter of the characters, rounded up: 10, 11, 12 tokens.
    cases = [(12, 1), (13, 2), (17, 3), (9, 1), (16, 2), (40, 3), (12, 1), (13, 2), (17, 3)]
    for chars, tier in cases:
        decision = decide(chars)
        assert (decision.input_tokens, decision.tier) == (7 + (chars + 3) // 4, tier)
    staff = frozenset({"staff"})
    assert decide(13, staff).reason_codes[0] == "rule"
    assert decide(13).reason_codes[0] != "rule"
    assert decide(13, staff).reason_codes[0] == "rule"


def test_max_tokens_beyond_the_expected_output_still_sizes_the_window() -> None:
    # The expected output (256) is the same with max_tokens 10,000 as without, but the
    # context window needed is not: a kept selection must not be reused across them.
    router = Router(
        Catalog(
            [
                _model("a/small", "0.1", "0.4", tier=1, quality=60, window=8_000),
                _model("b/large", "0.2", "0.8", tier=1, quality=60, window=128_000),
            ]
        ),
        _no_classifier(),
    )
    ctx = RouteContext(tier=1)
    for _ in range(3):
        assert router.decide(_request(model="b/large"), ctx).model == "a/small"
    wide = router.decide(_request(model="b/large", max_tokens=10_000), ctx)
    assert (wide.model, wide.output_tokens) == ("b/large", 256)


def test_decision_is_built_whole() -> None:
    # decide() fills a Decision field by field: every field must be set, and the
    # result must be what the dataclass constructor makes of the same values.
    router = Router(_catalog(), _no_classifier())
    for mode in ("enforce", "observe"):
        decision = router.decide(_request(), RouteContext(tier=2, mode=mode))  # type: ignore[arg-type]
        values = {f.name: getattr(decision, f.name) for f in dataclasses.fields(Decision)}
        rebuilt = Decision(**values)
        assert decision == rebuilt
        assert hash(decision) == hash(rebuilt)
        assert repr(decision) == repr(rebuilt)
        with pytest.raises(dataclasses.FrozenInstanceError):
            decision.tier = 1  # type: ignore[misc]


def test_a_swapped_config_drops_kept_selections() -> None:
    router = Router(_catalog(), _no_classifier())
    ctx = RouteContext(tier=1)
    for _ in range(3):
        assert len(router.decide(_request(), ctx).fallbacks) == 3
    router.config = _no_classifier(max_fallbacks=1)
    assert len(router.decide(_request(), ctx).fallbacks) == 1


@settings(max_examples=500, deadline=None)
@given(
    pin=st.decimals(min_value=0, max_value=200, places=6),
    pout=st.decimals(min_value=0, max_value=200, places=6),
    tokens_in=st.integers(0, 2_000_000),
    tokens_out=st.integers(0, 200_000),
)
def test_integer_costs_equal_the_decimal_ones(
    pin: Decimal, pout: Decimal, tokens_in: int, tokens_out: int
) -> None:
    model = _model("openai/m", str(pin), str(pout), tier=1, quality=60)
    expected = _expected_cost(model, tokens_in, tokens_out)
    units = _list_units(model)
    if units is None:  # a price finer than 1e-10 USD per token: the Decimal path
        assert (pin.scaleb(4) % 1) or (pout.scaleb(4) % 1)
        return
    for cost_of_units in COST_PATHS:
        cost, text = cost_of_units(tokens_in * units[0] + tokens_out * units[1])
        assert (cost, str(cost), text) == (expected, str(expected), _usd(expected))


@pytest.mark.parametrize(
    "total",
    [
        *(0, 1, 4_999, 5_000, 5_001, 15_000, 25_000, 35_000, 10**10, 123_456_785_000),
        *(9_999_985_000, 9_999_995_000, 10**10 + 5_000, 19_999_995_000, 20_000_005_000),
        *(10**16 + 5_000, 10**16 + 15_000, 2**62, 2**63 - 5_001),  # past a dollar, up to 64 bits
    ],
)
@pytest.mark.parametrize("cost_of_units", COST_PATHS)
def test_integer_cost_text_rounds_half_to_even_as_decimal_formatting_does(
    total: int, cost_of_units: Callable[[int], tuple[Decimal, str]]
) -> None:
    cost, text = cost_of_units(total)
    assert cost == Decimal(total) / 10**10
    assert str(cost) == str(Decimal(total).scaleb(-10))  # (the same exponent too)
    assert text == _usd(cost)


@pytest.mark.skipif(_CostWriter is None, reason="the C cost writer is not built")
def test_the_c_cost_writer_leaves_what_it_cannot_hold_to_python() -> None:
    for total in (-5, -(10**12), 2**63 - 1, 2**63, 10**30):
        assert _cost_of_units(total) == _py_cost_of_units(total)
    with pytest.raises(TypeError, match="is an int, not float"):
        _cost_of_units(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="one total"):
        _cost_of_units()  # type: ignore[call-arg]
    with pytest.raises(RuntimeError, match="not initialised"):
        _CostWriter.__new__(_CostWriter)(5)
    with pytest.raises(RuntimeError, match="initialised already"):
        _cost_of_units.__init__(Decimal, Decimal(1), Decimal(0), _py_cost_of_units)  # type: ignore[misc]
    assert _cost_of_units(15_000) == (Decimal("0.0000015000"), "$0.000002")


# ------------------------------------------------------------------ stats refresh


class _GatedStats(MemoryStatsStore):
    """A memory store whose snapshot waits for ``gate`` and notes who took it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.threads: list[int] = []
        self.running = self.most_running = 0
        self._count = threading.Lock()

    def snapshot(self) -> StatsSnapshot:
        with self._count:
            self.threads.append(threading.get_ident())
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            assert self.gate.wait(10)
            if self.fail is not None:
                raise self.fail
            return super().snapshot()
        finally:
            with self._count:
                self.running -= 1


def _until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def _decide_in_thread(router: Router, ctx: RouteContext, timeout: float = 5.0) -> str:
    """The model ``router`` picks, decided on another thread that must finish in time."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: router.decide(_request(), ctx).model).result(timeout)


def _slow_flash(stats: MemoryStatsStore) -> None:
    for _ in range(20):
        stats.record("google/flash", latency_ms=2300.0, ttft_ms=100.0)


def test_a_due_snapshot_is_taken_off_the_request_thread_and_swapped_in() -> None:
    stats = _GatedStats()
    router = Router(_catalog(), _config(stats_refresh_s=0.02), stats=stats)
    ctx = RouteContext(tier=1, max_latency_ms=800)
    assert router.decide(_request(), ctx).model == "google/flash"  # first: taken here
    assert stats.threads == [threading.get_ident()]
    _slow_flash(stats)
    stats.gate.clear()
    time.sleep(0.03)
    # Due: the decision starts a refresh and returns on the figures it had, while the
    # snapshot is still blocked.
    assert _decide_in_thread(router, ctx) == "google/flash"
    assert _until(lambda: len(stats.threads) == 2)
    assert stats.threads[1] != threading.get_ident()
    assert _decide_in_thread(router, ctx) == "google/flash"
    stats.gate.set()
    assert _until(lambda: router.decide(_request(), ctx).model == "openai/mini")
    assert len(stats.threads) == 2 or all(t == stats.threads[1] for t in stats.threads[1:])


def test_close_waits_for_a_snapshot_in_flight_and_starts_no_more() -> None:
    stats = _GatedStats()
    router = Router(_catalog(), _config(stats_refresh_s=0.02), stats=stats)
    ctx = RouteContext(tier=1)
    router.decide(_request(), ctx)  # the first snapshot, on this thread
    stats.gate.clear()
    time.sleep(0.03)
    router.decide(_request(), ctx)  # due: a background snapshot starts and blocks
    assert _until(lambda: stats.running == 1)
    closing = threading.Thread(target=router.close)
    closing.start()
    time.sleep(0.05)
    assert closing.is_alive()  # waiting for the snapshot in flight
    stats.gate.set()
    closing.join(5)
    assert not closing.is_alive()
    assert stats.running == 0
    taken = len(stats.threads)
    time.sleep(0.03)
    router.decide(_request(), ctx)  # due again, but closed: no snapshot
    time.sleep(0.05)
    assert len(stats.threads) == taken


def test_one_refresh_at_a_time_under_concurrent_decisions() -> None:
    stats = _GatedStats()
    router = Router(_catalog(), _config(stats_refresh_s=0.001), stats=stats)
    ctx = RouteContext(tier=1)
    router.decide(_request(), ctx)
    stats.gate.clear()
    deciders: set[int] = set()
    stop = threading.Event()

    def decide() -> int:
        deciders.add(threading.get_ident())
        count = 0
        while not stop.is_set():
            stats.record("openai/mini", latency_ms=float(count % 97))
            router.decide(_request(), ctx)
            count += 1
        return count

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(decide) for _ in range(8)]
        assert _until(lambda: len(stats.threads) == 2)
        time.sleep(0.2)
        assert len(stats.threads) == 2  # the first snapshot and one blocked refresh
        stats.gate.set()
        time.sleep(0.3)
        stop.set()
        assert all(f.result(10) > 0 for f in futures)
    assert len(stats.threads) > 2  # refreshes went on once the snapshot returned
    assert stats.most_running == 1
    assert not deciders & set(stats.threads[1:])


def test_a_failing_refresh_keeps_the_view_logs_once_and_is_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = _GatedStats()
    router = Router(_catalog(), _config(stats_refresh_s=0.01), stats=stats)
    ctx = RouteContext(tier=1, max_latency_ms=800)
    router.decide(_request(), ctx)
    view = router._view
    _slow_flash(stats)
    stats.fail = ConnectionError("cannot reach redis://:hunter2@cache.internal:6379/0")
    with caplog.at_level(logging.WARNING, logger="llmroute.router"):
        for tries in (2, 3):
            assert _until(lambda: not router._refresher.busy)
            time.sleep(0.02)
            assert router.decide(_request(), ctx).model == "google/flash"
            assert _until(lambda: len(stats.threads) == tries)  # noqa: B023
    assert _until(lambda: not router._refresher.busy)
    assert router._view is view
    warnings = [r for r in caplog.records if r.name == "llmroute.router"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "ConnectionError" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text
    assert "redis://" not in caplog.text
    stats.fail = None
    assert _until(lambda: router.decide(_request(), ctx).model == "openai/mini")


def test_without_a_refresh_period_every_decision_snapshots_on_its_own_thread() -> None:
    stats = _GatedStats()
    router = Router(_catalog(), _config(stats_refresh_s=0), stats=stats)
    ctx = RouteContext(tier=1, max_latency_ms=800)
    assert router.decide(_request(), ctx).model == "google/flash"
    _slow_flash(stats)
    assert router.decide(_request(), ctx).model == "openai/mini"  # seen at once
    router.decide(_request(), ctx)
    assert stats.threads == [threading.get_ident()] * 3
    assert router._refresher.thread is None  # no thread was started
    stats.fail = ConnectionError("down")
    # a store outage does not fail decisions: they keep the figures there are
    assert router.decide(_request(), ctx).model == "openai/mini"
    assert router._refresher.failing


def test_refresh_makes_the_next_decision_take_the_snapshot_itself() -> None:
    stats = _GatedStats()
    router = Router(_catalog(), _config(stats_refresh_s=1000.0), stats=stats)
    ctx = RouteContext(tier=1, max_latency_ms=800)
    assert router.decide(_request(), ctx).model == "google/flash"
    _slow_flash(stats)
    assert router.decide(_request(), ctx).model == "google/flash"  # not due yet
    router.refresh()
    assert router.decide(_request(), ctx).model == "openai/mini"
    assert stats.threads == [threading.get_ident()] * 2
