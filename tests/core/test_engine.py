from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from routing_middleware import _deferred
from routing_middleware.context import route_hint
from routing_middleware.engine import LLMRoute, collect_records, collected_records
from routing_middleware.metering import MemorySink
from routing_middleware.schema import ChatRequest, Message
from routing_middleware.settings import LLMRouteConfig

FAST = {"offline_latency": "none"}


def _request(model: str = "openai/gpt-5.4", **extra: object) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=[Message(role="user", content="Summarize: the printer jams on page two.")],
        **extra,  # type: ignore[arg-type]
    )


def test_no_keys_means_every_provider_is_served_offline() -> None:
    engine = LLMRoute(FAST, environ={})
    assert engine.is_offline
    assert {"openai", "anthropic", "gemini", "deepseek"} <= engine.offline_providers
    # Self-hosted servers and Azure need explicit configuration.
    assert not {"vllm", "ollama", "azure"} & set(engine.providers)


def test_keys_in_the_environment_select_live_providers_only() -> None:
    engine = LLMRoute(FAST, environ={"OPENAI_API_KEY": "sk-test-openai"})
    assert set(engine.providers) == {"openai"}
    assert engine.offline_providers == set()
    assert engine.providers["openai"].api_key == "sk-test-openai"
    assert "sk-test-openai" not in repr(engine)
    assert "sk-test-openai" not in repr(engine.providers["openai"])


def test_configured_providers_without_keys_follow_the_offline_setting() -> None:
    config = {**FAST, "providers": {"openai": {"api_key": "sk-live"}, "anthropic": {}}}
    engine = LLMRoute(config, environ={})
    assert set(engine.providers) == {"openai", "anthropic"}
    assert engine.offline_providers == {"anthropic"}
    never = LLMRoute({**config, "offline": "never"}, environ={})
    assert set(never.providers) == {"openai"}
    custom_env = {**FAST, "providers": {"anthropic": {"api_key_env": "CLAUDE_KEY"}}}
    assert LLMRoute(custom_env, environ={"CLAUDE_KEY": "k"}).offline_providers == set()


def test_config_errors_name_the_bad_key() -> None:
    with pytest.raises(ValidationError, match="unknown provider"):
        LLMRouteConfig.model_validate({"providers": {"opneai": {}}})
    with pytest.raises(ValidationError, match="stream_failover"):
        LLMRouteConfig.model_validate({"stream_failover": "retry"})
    with pytest.raises(ValidationError, match="not_a_setting"):
        LLMRouteConfig.model_validate({"not_a_setting": 1})
    secret = LLMRouteConfig.model_validate({"providers": {"openai": {"api_key": "sk-hidden"}}})
    assert "sk-hidden" not in repr(secret)
    # A key put where a dict belongs must not be echoed by the error either.
    with pytest.raises(ValidationError) as caught:
        LLMRouteConfig.model_validate({"providers": {"openai": "sk-misplaced-secret"}})
    assert "sk-misplaced-secret" not in str(caught.value)


def test_complete_routes_a_cheap_hint_down_and_meters_it() -> None:
    sink = MemorySink()
    engine = LLMRoute(FAST, environ={}, sink=sink)
    with route_hint(tier="cheap", feature="summaries"):
        done = engine.complete(_request())
    assert done.decision.tier == 1
    assert done.decision.primary.model != "openai/gpt-5.4"
    assert done.response.text
    assert len(done.records) == 1
    assert sink.records == list(done.records)
    record = done.records[0]
    assert record.feature == "summaries"
    assert record.chosen_model == done.decision.primary.model
    assert record.requested_cost is not None
    assert record.requested_cost > record.cost > 0
    assert done.cost == record.cost
    assert done.served_by is record


def test_observe_mode_keeps_the_requested_model_but_says_what_routing_would_do() -> None:
    engine = LLMRoute({**FAST, "mode": "observe"}, environ={})
    with route_hint(tier="cheap"):
        done = engine.complete(_request())
    assert done.decision.primary.model == "openai/gpt-5.4"
    assert done.decision.routed is not None
    assert done.decision.routed.model != "openai/gpt-5.4"
    assert done.records[0].mode == "observe"


def test_stream_delivers_text_and_records_on_close() -> None:
    engine = LLMRoute(FAST, environ={})
    decision, stream = engine.stream(_request(stream=True))
    with stream:
        text = "".join(chunk.text or "" for chunk in stream)
    assert text
    assert len(stream.records) == 1
    assert stream.records[0].streamed
    assert stream.records[0].chosen_model == decision.primary.model


@pytest.mark.anyio
async def test_async_complete_and_stream() -> None:
    engine = LLMRoute(FAST, environ={})
    done = await engine.acomplete(_request())
    assert done.response.text
    assert done.cost > Decimal(0)
    _, stream = await engine.astream(_request(stream=True))
    parts = [chunk.text or "" async for chunk in stream]
    await stream.aclose()
    assert "".join(parts) == done.response.text
    await engine.aclose()


def test_collect_records_nests_and_outer_blocks_see_inner_calls() -> None:
    engine = LLMRoute(FAST, environ={})
    assert collected_records() is None
    with collect_records() as outer:
        first = engine.complete(_request())
        with collect_records() as inner:
            second = engine.complete(_request())
            assert collected_records() is inner
        assert inner == list(second.records)
    assert outer == [*first.records, *second.records]
    assert collected_records() is None


def test_a_given_budget_store_counts_the_engines_spend() -> None:
    from routing_middleware.budgets import MemoryBudgetStore

    store = MemoryBudgetStore()
    budget = {"name": "all", "scope": "global", "limit_usd": "5"}
    config = {**FAST, "routing": {"budgets": [budget]}}
    engine = LLMRoute(config, environ={}, budget_store=store)
    assert engine.budgets.store is store
    done = engine.complete(_request())
    spent = engine.budgets.store.totals(engine.budgets.lines())
    assert sum(spent) > 0
    assert done.cost > 0


def test_the_engine_caches_budget_status_for_a_second() -> None:
    engine = LLMRoute(FAST, environ={})
    assert engine.budgets._status_ttl == 1.0


def test_a_stream_dropped_from_the_engine_releases_its_budget_hold() -> None:
    import gc

    from routing_middleware.budgets import MemoryBudgetStore

    store = MemoryBudgetStore()
    budget = {"name": "all", "scope": "global", "limit_usd": "5"}
    engine = LLMRoute({**FAST, "routing": {"budgets": [budget]}}, environ={}, budget_store=store)
    _, stream = engine.stream(_request())
    next(stream)
    assert sum(int(e[1]) for e in store._counters.values()) > 0
    del stream
    gc.collect()
    assert _deferred.drain()
    assert sum(int(e[1]) for e in store._counters.values()) == 0
    records = [r for r in engine.sink.records if r.streamed]  # type: ignore[attr-defined]
    assert len(records) == 1
    assert store.totals(engine.budgets.lines()) == [round(records[0].cost * 1_000_000)]


def test_content_is_stored_only_when_the_config_says_so() -> None:
    plain = LLMRoute(FAST, environ={})
    done = plain.complete(_request())
    assert done.records[0].prompt is None
    assert done.records[0].completion is None

    keeping = LLMRoute({**FAST, "store_content": True}, environ={})
    done = keeping.complete(_request())
    record = done.records[0]
    assert record.prompt == "user: Summarize: the printer jams on page two."
    assert record.completion == done.response.text

    _, stream = keeping.stream(_request(stream=True))
    with stream:
        text = "".join(chunk.text or "" for chunk in stream)
    [streamed] = stream.records
    assert streamed.completion == text
    assert streamed.prompt == record.prompt


def test_a_call_the_router_blocks_is_recorded_as_blocked() -> None:
    from routing_middleware.schema import BudgetExceeded

    sink = MemorySink()
    budget = {"name": "tiny", "scope": "global", "limit_usd": "0.01"}
    engine = LLMRoute({**FAST, "routing": {"budgets": [budget]}}, environ={}, sink=sink)
    spent = engine.budgets.reserve(Decimal("0.01"))
    engine.budgets.settle(spent, Decimal("0.01"))  # the whole budget is spent
    with route_hint(feature="reports"), pytest.raises(BudgetExceeded):
        engine.complete(_request())
    [record] = sink.records
    assert record.status == "blocked"
    assert record.error_kind == "BudgetExceeded"
    assert record.feature == "reports"
    assert record.cost == 0
    assert record.chosen_model == "openai/gpt-5.4"
    assert record.reasons[0][0] == "budget_blocked"


@pytest.mark.redis
@pytest.mark.anyio
async def test_aclose_closes_the_async_redis_clients_the_engine_opened() -> None:
    import os

    from routing_middleware.stats import RedisStatsStore

    url = os.environ["LLMROUTE_TEST_REDIS_URL"]
    engine = LLMRoute({**FAST, "redis_url": url}, environ={})
    done = await engine.acomplete(_request())
    assert done.cost > 0
    [stats] = [s for s in engine._redis_stores if isinstance(s, RedisStatsStore)]
    assert stats._clients._async is not None  # the async call path opened one
    await engine.aclose()
    assert stats._clients._async is None
    assert engine._redis_stores == []


def test_replacing_budgets_keeps_spend_and_what_the_engine_learned() -> None:
    from routing_middleware.budgets import Budget
    from routing_middleware.schema import BudgetExceeded

    config = {
        "offline": "always",
        "offline_latency": "none",
        "routing": {"budgets": [{"name": "team", "limit_usd": "1"}]},
    }
    engine = LLMRoute(config, sink=MemorySink(), environ={})
    request = ChatRequest(model="openai/gpt-4o-mini", messages=[Message(role="user", content="hi")])
    engine.complete(request)
    [spent] = engine.budgets.store.totals(engine.budgets.lines())
    assert spent > 0
    stats, breaker, cache = engine.stats, engine.breaker, engine.dispatcher.cache

    # A lower limit under the same name: the spend so far counts against it.
    engine.replace_budgets([Budget(name="team", limit_usd=Decimal("0.0000001"))])
    assert engine.budgets.store.totals(engine.budgets.lines()) == [spent]
    assert engine.config.routing.budgets[0].limit_usd == Decimal("0.0000001")
    with pytest.raises(BudgetExceeded):
        engine.decide(request)
    assert (engine.stats, engine.breaker, engine.dispatcher.cache) == (stats, breaker, cache)

    engine.replace_budgets([])
    assert engine.dispatcher.budgets is None
    assert engine.decide(request).model  # nothing blocks it any more


def test_observe_mode_records_the_routed_model_and_its_cost() -> None:
    from routing_middleware.pricing import cost_of

    config = {"offline": "always", "offline_latency": "none", "mode": "observe"}
    sink = MemorySink()
    engine = LLMRoute(config, sink=sink, environ={})
    request = ChatRequest(
        model="openai/gpt-4o", messages=[Message(role="user", content="Summarize: ok.")]
    )
    with route_hint(tier="cheap"):
        done = engine.complete(request)
    assert done.decision.mode == "observe"
    [record] = sink.records
    assert record.chosen_model == "openai/gpt-4o"  # sent where the code sent it
    routed = record.extra["routed_model"]
    assert routed != record.chosen_model
    assert Decimal(record.extra["routed_cost"]) == cost_of(record.usage, routed)
    assert Decimal(record.extra["routed_cost"]) < record.cost


def test_async_calls_read_shared_budget_totals_without_blocking_the_loop() -> None:
    """With a shared budget store, the async path reads totals through the store's
    async client; the router's synchronous read then finds them in memory."""
    import asyncio

    from routing_middleware.budgets import MemoryBudgetStore

    class SharedStore(MemoryBudgetStore):
        """Stands in for a networked store: a sync read on the event loop is a bug."""

        sync_reads_in_loop = 0

        def totals(self, lines: Any) -> Any:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                SharedStore.sync_reads_in_loop += 1
            return super().totals(lines)

        async def atotals(self, lines: Any) -> Any:
            return MemoryBudgetStore.totals(self, lines)  # the "network" read, awaited

    budget = {"name": "team", "scope": "global", "limit_usd": "5"}
    config = {**FAST, "routing": {"budgets": [budget]}}
    engine = LLMRoute(config, environ={}, budget_store=SharedStore())
    request = ChatRequest(model="openai/gpt-4o-mini", messages=[Message(role="user", content="hi")])

    async def calls() -> None:
        for _ in range(3):
            await engine.acomplete(request)
            _, stream = await engine.astream(request.model_copy(update={"stream": True}))
            async for _chunk in stream:
                pass

    asyncio.run(calls())
    assert SharedStore.sync_reads_in_loop == 0
    assert engine.budgets.store.totals(engine.budgets.lines())[0] > 0


@pytest.mark.anyio
async def test_adecide_takes_the_first_stats_snapshot_through_the_async_client() -> None:
    from tests.core.test_router import _AsyncOnlySnapshots

    engine = LLMRoute(FAST, environ={})
    stats = engine.router.stats = _AsyncOnlySnapshots()
    await engine.adecide(_request())
    await engine.adecide(_request())
    assert (stats.async_snapshots, stats.sync_snapshots) == (1, 0)
    engine.close()


def test_a_deployment_on_an_unknown_provider_is_a_config_error_naming_it() -> None:
    # It was accepted, then silently left out of every decision.
    deployment = {"model": "openai/gpt-5.4", "provider": "opneai", "name": "gpt-eu"}
    with pytest.raises(ValidationError, match=r"routing.deployments.0 .*unknown provider 'opneai'"):
        LLMRoute({**FAST, "routing": {"deployments": [deployment]}}, environ={})
    engine = LLMRoute(
        {**FAST, "routing": {"deployments": [{**deployment, "provider": "OpenAI"}]}}, environ={}
    )
    engine.close()  # provider names are case-insensitive, as the router reads them
