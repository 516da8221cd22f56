"""Searches that reuse what they worked out before decide as a search from scratch."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest

from routing_middleware.catalog import Catalog, ModelInfo, Price
from routing_middleware.config import RoutingConfig
from routing_middleware.context import RouteContext
from routing_middleware.router import Reason, Router, _expected_cost, _usd
from routing_middleware.schema import ChatRequest, Message
from routing_middleware.stats import MemoryStatsStore

CAPS = frozenset({"streaming", "tools"})


def _model(model_id: str, pin: str, pout: str, tier: int = 1, quality: int = 60) -> ModelInfo:
    provider, name = model_id.split("/")
    return ModelInfo(
        id=model_id,
        provider=provider,
        name=name,
        price=Price(Decimal(pin), Decimal(pout)),
        context_window=128_000,
        capabilities=CAPS,
        quality=quality,
        tier=tier,
    )


MODELS = [
    _model("a/cheap", "0.10", "0.40"),
    _model("b/mid", "0.20", "0.80"),
    _model("c/dear", "0.40", "1.60"),
    _model("d/dearer", "0.80", "3.20"),
]


def _stats() -> MemoryStatsStore:
    """``a/cheap`` served from two regions, one slow; ``b/mid`` slow to answer but quick
    to start streaming."""
    stats = MemoryStatsStore()
    for _ in range(30):
        stats.record("a/cheap-east", latency_ms=400.0, ttft_ms=100.0)
        stats.record("a/cheap-west", latency_ms=2500.0, ttft_ms=1200.0)
        stats.record("b/mid", latency_ms=1800.0, ttft_ms=300.0)
        stats.record("c/dear", latency_ms=600.0, ttft_ms=150.0)
        stats.record("d/dearer", latency_ms=500.0, ttft_ms=100.0)
    return stats


def _router(stats: MemoryStatsStore, seed: int = 0) -> Router:
    config = RoutingConfig.model_validate(
        {
            "classifier": {"enabled": False},
            "max_fallbacks": 2,
            "stats_refresh_s": 1000.0,
            "deployments": [
                {"model": "a/cheap", "provider": "a", "name": "cheap-east"},
                {"model": "a/cheap", "provider": "a", "name": "cheap-west"},
            ],
        }
    )
    return Router(Catalog(MODELS), config, stats=stats, rng=random.Random(seed))


def test_sla_exclusions_worked_out_once_per_sla_decide_as_a_fresh_router() -> None:
    stats = _stats()
    shared = _router(stats)
    cases = [(1000.0, False), (3000.0, False), (1000.0, True), (2000.0, False), (1000.0, False)]
    for n, (sla, stream) in enumerate(cases * 2):
        # A new length each time: no remembered selection answers it.
        request = ChatRequest(
            model="d/dearer",
            messages=[Message(role="user", content="w " * (200 + 37 * n))],
            stream=stream,
        )
        ctx = RouteContext(tier=1, max_latency_ms=sla)
        shared._rng = random.Random(n)  # (the same pick between two regions as below)
        got = shared.decide(request, ctx)
        assert got == _router(stats, n).decide(request, ctx)
        excluded = [r.message for r in got.reasons if r.code == "excluded_sla"]
        if stream:
            assert excluded == ["a/cheap excluded: TTFT p95 1.2 s > SLA 1.0 s"]
        elif sla == 1000.0:
            assert excluded == [
                "a/cheap excluded: p95 2.5 s > SLA 1.0 s",
                "b/mid excluded: p95 1.8 s > SLA 1.0 s",
            ]
            assert got.primary.name == "cheap-east"
        elif sla == 2000.0:
            assert excluded == ["a/cheap excluded: p95 2.5 s > SLA 2.0 s"]
        else:
            assert excluded == []


def _searches_per_decision(monkeypatch: pytest.MonkeyPatch, lengths: tuple[int, ...]) -> list[int]:
    """How many searches one router runs for each request of these input lengths in
    turn, each decision checked against a fresh router's."""
    config = RoutingConfig.model_validate({"classifier": {"enabled": False}})
    router = Router(Catalog(MODELS), config)
    searches = [0]
    select = router._select

    def counting(*args: Any) -> Any:
        searches[0] += 1
        return select(*args)

    monkeypatch.setattr(router, "_select", counting)
    ctx = RouteContext(tier=1)
    counts = []
    for input_tokens in lengths:
        request = ChatRequest(
            model="d/dearer", messages=[Message(role="user", content="x" * (4 * input_tokens))]
        )
        before = searches[0]
        decision = router.decide(request, ctx)
        counts.append(searches[0] - before)
        assert decision.input_tokens - input_tokens == 7  # (framing)
        assert decision == Router(Catalog(MODELS), config).decide(request, ctx)
    return counts


def test_neighbouring_buckets_share_the_search_at_their_common_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 256 output tokens: 915-1004 input tokens fall in bucket 13 of the output share,
    # 1005-1109 in bucket 12; both end at a share of 13/64.
    counts = _searches_per_decision(monkeypatch, (950, 960, 1050, 1060, 1080, 990))
    # Bucket 13: searched, then checked at 13/64 and 14/64 (which answer it). Bucket
    # 12: searched, then checked at 12/64 only. Then both spans answer.
    assert counts == [1, 2, 1, 1, 0, 0]


@pytest.mark.parametrize(
    ("requested", "chosen", "cost_of_requested"),
    [
        ("c/dear", "a/cheap", "c/dear"),  # whole 1e-10 USD rates on both sides
        ("e/fine", "a/cheap", "e/fine"),  # a rate finer than that: Decimal arithmetic
        ("a/cheap", "a/cheap", None),  # the requested model itself: one cost
        ("f/unknown", "a/cheap", None),  # not in the catalog: no requested cost
    ],
)
def test_the_chosen_reason_states_both_costs_as_decimal_arithmetic_gives_them(
    requested: str, chosen: str, cost_of_requested: str | None
) -> None:
    models = [*MODELS, _model("e/fine", "0.000012345", "1.6", tier=2, quality=90)]
    config = RoutingConfig.model_validate({"classifier": {"enabled": False}})
    by_id = {m.id: m for m in models}
    for chars in (0, 3, 4_001, 50_000, 400_003):
        request = ChatRequest(model=requested, messages=[Message(role="user", content="x" * chars)])
        ctx = RouteContext(tier=1, allow_upgrade=True)  # (whatever the requested model costs)
        decision = Router(Catalog(models), config).decide(request, ctx)
        expected = _expected_cost(by_id[chosen], decision.input_tokens, decision.output_tokens)
        message = f"chose {chosen} (tier 1) at ~{_usd(expected)}"
        assert decision.estimated_cost == expected
        if cost_of_requested is not None:
            other = _expected_cost(
                by_id[cost_of_requested], decision.input_tokens, decision.output_tokens
            )
            message += f" vs {_usd(other)} on {requested}"
            assert decision.requested_cost == other
            assert str(decision.requested_cost) == str(other)
        elif requested in by_id:
            assert decision.requested_cost == expected
        else:
            assert decision.requested_cost is None
        assert str(decision.estimated_cost) == str(expected)
        assert decision.reasons[-1] == Reason("chosen", message)


def test_a_listed_tier_states_the_requested_models_own_cost_beside_its_pick() -> None:
    # Listed tiers rank copies of the catalog's candidates: the pick is the requested
    # model, yet not the object the request names, and the reason says both costs.
    config = RoutingConfig.model_validate(
        {"classifier": {"enabled": False}, "tiers": {"1": {"models": ["a/cheap", "b/mid"]}}}
    )
    request = ChatRequest(model="a/cheap", messages=[Message(role="user", content="x" * 999)])
    decision = Router(Catalog(MODELS), config).decide(request, RouteContext(tier=1))
    cost = _usd(_expected_cost(MODELS[0], decision.input_tokens, decision.output_tokens))
    assert decision.reasons[-1].message == f"chose a/cheap (tier 1) at ~{cost} vs {cost} on a/cheap"
    assert decision.requested_cost == decision.estimated_cost


def test_a_bucket_whose_ends_are_known_is_checked_the_first_time_it_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 256 output tokens: 837-914 input tokens fall in bucket 14 of the output share,
    # 915-1004 in bucket 13, 1005-1109 in bucket 12.
    counts = _searches_per_decision(monkeypatch, (850, 860, 1050, 1060, 950, 960))
    # Buckets 14 and 12: searched, then checked at both ends. Bucket 13, whose ends
    # (13/64 and 14/64) those checks found: its first request is answered by its span.
    assert counts == [1, 2, 1, 2, 0, 0]


def test_a_candidate_costing_as_much_as_the_last_pick_is_reported_whatever_the_rounding() -> None:
    flat = [("a/c1", "0.01"), ("b/c2", "0.02"), ("c/c3", "0.03"), ("x/fast", "0.1")]
    models = [_model(m, p, p) for m, p in [*flat, ("y/slow", "0.1"), ("z/dear", "1")]]
    stats = MemoryStatsStore()
    for model in models:
        for _ in range(30):
            stats.record(model.id, latency_ms=3000.0 if model.id == "y/slow" else 200.0)
    config = RoutingConfig.model_validate({"classifier": {"enabled": False}})
    router = Router(Catalog(models), config, stats=stats)
    # 533 input and 256 output tokens: at this share a flat 0.1 per token comes out
    # an ulp below 0.1, while the bound of the bucket (at its ends) is 0.1 exactly.
    share = 256 / (533 + 256)
    assert (1 - share) * 0.1 + share * 0.1 < 0.1
    request = ChatRequest(model="z/dear", messages=[Message(role="user", content="x" * 2104)])
    decision = router.decide(request, RouteContext(tier=1, max_latency_ms=1000))
    assert decision.input_tokens == 533
    assert [decision.model, *(d.model for d in decision.fallbacks)] == [m for m, _ in flat]
    excluded = [r.message for r in decision.reasons if r.code == "excluded_sla"]
    assert excluded == ["y/slow excluded: p95 3.0 s > SLA 1.0 s"]  # costs what x/fast does
