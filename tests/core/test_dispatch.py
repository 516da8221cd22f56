"""The dispatcher on non-streamed calls, against FakeProvider's failure injection.

Every scenario runs through the sync and the async driver. Two fake providers
stand in for two real ones: ``openai`` (serves ``gpt-a``) and ``anthropic``
(serves ``claude-b``); each accepts only its own API key.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, TypeVar

import anyio
import httpx
import pytest

from routing_middleware.breaker import BreakerPolicy, CircuitBreaker
from routing_middleware.budgets import Budget, Budgets, MemoryBudgetStore
from routing_middleware.cache import ResponseCache
from routing_middleware.catalog import Catalog, ModelInfo, Price
from routing_middleware.context import RouteContext
from routing_middleware.dispatch import UPSTREAM_EXTENSION, Dispatcher
from routing_middleware.metering import MemorySink, UsageRecord
from routing_middleware.providers.registry import provider_config
from routing_middleware.retry import ManualClock, RetryPolicy
from routing_middleware.router import Decision, Deployment, Reason
from routing_middleware.schema import (
    AuthenticationFailed,
    BudgetExceeded,
    ChatRequest,
    ChatResponse,
    ContentFiltered,
    InvalidRequest,
    LLMError,
    Message,
    NoRouteAvailable,
    Overloaded,
    Usage,
)
from routing_middleware.stats import MemoryStatsStore
from routing_middleware.testing import Failure, FakeModel, FakeProvider
from tests.core.redis_helpers import drop_keys, redis_url_or_skip

T = TypeVar("T")
Flavor = Literal["sync", "async"]

PRICE_A = Price(Decimal("1"), Decimal("2"))
PRICE_B = Price(Decimal("3"), Decimal("15"))
FREE = Price(Decimal("0"), Decimal("0"))
A = Deployment("openai/gpt-a", "openai", "gpt-a")
A_SMALL = Deployment("openai/gpt-small", "openai", "gpt-small")
A_FREE = Deployment("openai/gpt-free", "openai", "gpt-free")
B = Deployment("anthropic/claude-b", "anthropic", "claude-b")
KEY_A = "sk-test-aaaa-0001"
KEY_B = "sk-ant-test-bbbb-0002"
TEXT_A = "Answer from A: two plus two is four."
TEXT_B = "Answer from B: the sum is four."

CATALOG = Catalog(
    [
        ModelInfo("openai/gpt-a", "openai", "gpt-a", PRICE_A, 16_000),
        ModelInfo("openai/gpt-small", "openai", "gpt-small", PRICE_A, 4_000),
        ModelInfo("openai/gpt-free", "openai", "gpt-free", FREE, 16_000),
        ModelInfo("anthropic/claude-b", "anthropic", "claude-b", PRICE_B, 200_000),
    ]
)


def chat(text: str = "What is two plus two?", **kw: Any) -> ChatRequest:
    return ChatRequest(
        model="openai/gpt-a", messages=[Message(role="user", content=text)], max_tokens=64, **kw
    )


def decision(
    primary: Deployment = A,
    fallbacks: tuple[Deployment, ...] = (B,),
    mode: Literal["enforce", "observe"] = "enforce",
) -> Decision:
    return Decision(
        primary=primary,
        fallbacks=fallbacks,
        tier=2,
        estimated_cost=None,
        requested_model="openai/gpt-a",
        requested_cost=Decimal("0.001"),
        mode=mode,
        reasons=(Reason("tier.hint", "The view asked for tier 2."),),
    )


class ByHost(httpx.BaseTransport):
    """Sends each request to the transport of its host (no default transport to build)."""

    def __init__(self, routes: dict[str, httpx.BaseTransport]) -> None:
        self.routes = routes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.routes[request.url.host].handle_request(request)


class AsyncByHost(httpx.AsyncBaseTransport):
    def __init__(self, routes: dict[str, httpx.AsyncBaseTransport]) -> None:
        self.routes = routes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.routes[request.url.host].handle_async_request(request)


@dataclass
class Env:
    """Two fake providers, a sink, a manual clock, and a dispatcher factory."""

    flavor: Flavor = "sync"
    fa: FakeProvider = field(
        default_factory=lambda: FakeProvider(
            [
                FakeModel("gpt-a", content=TEXT_A, price=PRICE_A),
                FakeModel("gpt-small", content=TEXT_A, price=PRICE_A),
                FakeModel("gpt-free", content=TEXT_A, price=FREE),
            ],
            require_key=KEY_A,
        )
    )
    fb: FakeProvider = field(
        default_factory=lambda: FakeProvider(
            [FakeModel("claude-b", content=TEXT_B, price=PRICE_B)], require_key=KEY_B
        )
    )
    sink: MemorySink = field(default_factory=MemorySink)
    clock: ManualClock = field(default_factory=ManualClock)
    key_a: str = KEY_A

    def providers(self) -> dict[str, Any]:
        return {
            "openai": provider_config("openai", api_key=self.key_a, base_url="https://a.fake/v1"),
            "anthropic": provider_config("anthropic", api_key=KEY_B, base_url="https://b.fake"),
        }

    def dispatcher(self, **kw: Any) -> Dispatcher:
        options: dict[str, Any] = {
            "catalog": CATALOG,
            "sink": self.sink,
            "clock": self.clock,
            "client": httpx.Client(
                transport=ByHost({"a.fake": self.fa.transport(), "b.fake": self.fb.transport()})
            ),
            "async_client": httpx.AsyncClient(
                transport=AsyncByHost(
                    {"a.fake": self.fa.async_transport(), "b.fake": self.fb.async_transport()}
                )
            ),
        }
        options.update(kw)
        providers = options.pop("providers", None) or self.providers()
        return Dispatcher(providers, **options)

    def run(self, sync: Callable[[], T], async_: Callable[[], Awaitable[T]]) -> T:
        if self.flavor == "sync":
            return sync()
        return anyio.run(async_)

    def dispatch(
        self, d: Dispatcher, request: ChatRequest, dec: Decision, **kw: Any
    ) -> ChatResponse:
        return self.run(
            lambda: d.dispatch(request, dec, **kw), lambda: d.adispatch(request, dec, **kw)
        )

    @property
    def records(self) -> list[UsageRecord]:
        return self.sink.records

    def billed(self) -> Decimal:
        return self.fa.ledger.billed_cost() + self.fb.ledger.billed_cost()


@pytest.fixture(params=["sync", "async"])
def env(request: pytest.FixtureRequest) -> Env:
    return Env(flavor=request.param)


def metered(records: list[UsageRecord]) -> Decimal:
    return sum((r.cost for r in records), Decimal(0))


# ------------------------------------------------------------------ retries and fallbacks


def test_rate_limit_waits_for_retry_after_then_succeeds(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.rate_limit(retry_after=1))
    answer = env.dispatch(env.dispatcher(), chat(), decision())
    assert answer.text == TEXT_A
    assert env.clock.sleeps == [1.0]
    assert len(env.fa.calls) == 2
    assert len(env.fb.calls) == 0
    first, second = env.records
    assert (first.status, first.error_kind, first.cost) == ("error", "RateLimited", Decimal(0))
    assert second.status == "ok"
    assert second.cost > 0
    assert [r.attempt for r in env.records] == [1, 2]
    assert {r.attempts for r in env.records} == {2}
    assert first.call_id == second.call_id


def test_overloaded_three_times_falls_back_to_the_next_provider(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.overloaded(), Failure.overloaded(), Failure.overloaded())
    answer = env.dispatch(env.dispatcher(), chat(), decision())
    assert answer.text == TEXT_B
    assert answer.provider == "anthropic"
    assert len(env.fa.calls) == 3  # first try plus two retries
    assert len(env.clock.sleeps) == 2
    records = env.records
    assert [(r.chosen_model, r.status) for r in records] == [
        ("openai/gpt-a", "error"),
        ("openai/gpt-a", "error"),
        ("openai/gpt-a", "error"),
        ("anthropic/claude-b", "ok"),
    ]
    assert {r.error_kind for r in records[:3]} == {"Overloaded"}
    assert len({r.call_id for r in records}) == 1
    assert {r.attempts for r in records} == {4}
    final = records[-1]
    assert final.fallback_from == "openai/gpt-a"
    assert final.reasons == (("tier.hint", "The view asked for tier 2."),)
    assert final.tier == 2
    assert final.requested_cost is not None
    assert final.requested_cost < final.cost  # B is pricier than the requested A
    assert metered(records) == env.billed()


def test_each_provider_gets_its_own_key(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.overloaded(), Failure.overloaded(), Failure.overloaded())
    env.dispatch(env.dispatcher(), chat(), decision())
    assert env.fa.ledger.api_keys() == {KEY_A}
    assert env.fb.ledger.api_keys() == {KEY_B}


def test_insufficient_quota_moves_on_without_retrying(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.insufficient_quota())
    answer = env.dispatch(env.dispatcher(), chat(), decision(fallbacks=(A_SMALL, B)))
    assert answer.text == TEXT_B
    assert len(env.fa.calls) == 1  # neither retried nor tried at another openai deployment
    assert env.clock.sleeps == []
    assert env.records[0].error_kind == "InsufficientQuota"


def test_invalid_request_is_neither_retried_nor_rerouted(env: Env) -> None:
    env.fa.inject("gpt-a", Failure(status=400, message="'foo' is not a valid parameter"))
    with pytest.raises(InvalidRequest):
        env.dispatch(env.dispatcher(), chat(), decision())
    assert len(env.fa.calls) == 1
    assert len(env.fb.calls) == 0
    assert [r.error_kind for r in env.records] == ["InvalidRequest"]


def test_a_fallback_rejecting_a_parameter_is_passed_over(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.overloaded(), Failure.overloaded(), Failure.overloaded())
    env.fb.inject(
        "claude-b", Failure(status=400, message="temperature: Extra inputs are not permitted")
    )
    answer = env.dispatch(env.dispatcher(), chat(), decision(fallbacks=(B, A_SMALL)))
    assert answer.text == TEXT_A
    assert env.records[3].error_kind == "InvalidRequest"
    assert env.records[-1].chosen_model == "openai/gpt-small"


def test_when_every_fallback_fails_the_caller_hears_the_original_failure(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.overloaded(), Failure.overloaded(), Failure.overloaded())
    env.fb.inject("claude-b", Failure(status=400, message="top_k: Extra inputs are not permitted"))
    with pytest.raises(Overloaded):
        env.dispatch(env.dispatcher(), chat(), decision())
    assert [r.error_kind for r in env.records] == ["Overloaded"] * 3 + ["InvalidRequest"]


def test_context_overflow_skips_fallbacks_with_a_window_too_small(env: Env) -> None:
    overflow = Failure(
        status=400,
        code="context_length_exceeded",
        message="This model's maximum context length is 16000 tokens.",
    )
    env.fa.inject("gpt-a", overflow)
    answer = env.dispatch(env.dispatcher(), chat(), decision(fallbacks=(A_SMALL, B)))
    assert answer.text == TEXT_B
    assert [c.model for c in env.fa.calls] == ["gpt-a"]  # gpt-small (4k) was skipped
    assert env.records[0].error_kind == "ContextWindowExceeded"


def test_content_filter_fails_unless_configured_to_fall_back(env: Env) -> None:
    blocked = Failure(status=400, code="content_filter", message="flagged by the filter")
    env.fa.inject("gpt-a", blocked)
    with pytest.raises(ContentFiltered):
        env.dispatch(env.dispatcher(), chat(), decision())
    assert len(env.fb.calls) == 0
    env.fa.inject("gpt-a", blocked)
    lenient = env.dispatcher(retry=RetryPolicy(fallback_on_content_filter=True))
    assert env.dispatch(lenient, chat(), decision()).text == TEXT_B


def test_a_rejected_deployment_key_falls_back_to_another_provider(env: Env) -> None:
    env.key_a = "sk-test-revoked-9999"
    answer = env.dispatch(env.dispatcher(), chat(), decision())
    assert answer.text == TEXT_B
    assert env.records[0].error_kind == "AuthenticationFailed"
    assert env.clock.sleeps == []


def test_connection_resets_are_retried(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.reset())
    answer = env.dispatch(env.dispatcher(), chat(), decision())
    assert answer.text == TEXT_A
    assert env.records[0].error_kind == "UpstreamUnavailable"


def test_timeouts_are_retried(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.timeout(hang=5))
    d = env.dispatcher(retry=RetryPolicy(attempt_timeout=0.02))
    assert env.dispatch(d, chat(), decision()).text == TEXT_A
    assert env.records[0].error_kind == "UpstreamTimeout"


def test_a_malformed_body_is_retried_and_its_likely_cost_recorded(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.malformed())
    answer = env.dispatch(env.dispatcher(), chat(), decision())
    assert answer.text == TEXT_A
    broken = env.records[0]
    assert broken.error_kind == "UpstreamProtocolError"
    assert broken.usage.estimated
    assert broken.usage.input_tokens > 0
    assert broken.cost > 0  # the provider answered 200: its prompt was billed


def test_every_provider_failing_raises_the_last_error(env: Env) -> None:
    env.fa.inject("gpt-a", always=Failure.unavailable())
    env.fb.inject("claude-b", always=Failure.overloaded())
    with pytest.raises(LLMError) as caught:
        env.dispatch(env.dispatcher(retry=RetryPolicy(max_retries=1)), chat(), decision())
    assert caught.value.provider == "anthropic"
    assert caught.value.retryable
    assert len(env.records) == 4
    assert {r.status for r in env.records} == {"error"}
    assert {r.attempts for r in env.records} == {4}


def test_deadline_moves_on_instead_of_waiting_past_it(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.rate_limit(retry_after=10))
    d = env.dispatcher(retry=RetryPolicy(deadline=5.0))
    assert env.dispatch(d, chat(), decision()).text == TEXT_B
    assert env.clock.sleeps == []


def test_a_deployment_without_a_configured_provider_is_skipped(env: Env) -> None:
    providers = {"anthropic": env.providers()["anthropic"]}
    answer = env.dispatch(env.dispatcher(providers=providers), chat(), decision())
    assert answer.text == TEXT_B
    assert len(env.fa.calls) == 0
    assert [r.attempt for r in env.records] == [1]


class CannotEncode:
    """A dialect that cannot express any request (like an image for a text-only API)."""

    name = "anthropic"

    def encode_request(self, request: ChatRequest, provider: Any, model: str) -> Any:
        raise InvalidRequest("this dialect has no place for that content", param="messages")


def test_a_fallback_that_cannot_express_the_request_is_passed_over(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.overloaded(), Failure.overloaded(), Failure.overloaded())
    d = env.dispatcher(dialects={"anthropic": CannotEncode()})
    answer = env.dispatch(d, chat(), decision(fallbacks=(B, A_SMALL)))
    assert answer.text == TEXT_A
    assert [c.model for c in env.fa.calls] == ["gpt-a"] * 3 + ["gpt-small"]
    assert len(env.fb.calls) == 0
    skipped = env.records[3]
    assert (skipped.chosen_model, skipped.error_kind, skipped.cost) == (
        "anthropic/claude-b",
        "InvalidRequest",
        Decimal(0),
    )
    assert env.records[-1].fallback_from == "anthropic/claude-b"


# ------------------------------------------------------------------ breakers


class WallClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_is_skipped_during_cooldown_and_closes_after_a_probe(env: Env) -> None:
    wall = WallClock()
    breaker = CircuitBreaker(
        policy=BreakerPolicy(consecutive_failures=2, cooldown_s=30), clock=wall
    )
    d = env.dispatcher(breaker=breaker, retry=RetryPolicy(max_retries=3))
    env.fa.inject("gpt-a", always=Failure.unavailable())
    assert env.dispatch(d, chat(), decision()).text == TEXT_B
    assert len(env.fa.calls) == 2  # the breaker opened after two failures, ending the retries
    assert breaker.state(A) == "open"
    assert not breaker.is_available(A)

    env.sink.clear()
    assert env.dispatch(d, chat(), decision()).text == TEXT_B
    assert len(env.fa.calls) == 2  # skipped while open
    assert [r.chosen_model for r in env.records] == ["anthropic/claude-b"]
    assert env.records[0].fallback_from == "openai/gpt-a"

    env.fa.clear_failures()
    wall.now += 31
    assert breaker.state(A) == "half_open"
    assert env.dispatch(d, chat(), decision()).text == TEXT_A
    assert breaker.state(A) == "closed"


def test_request_errors_do_not_trip_the_breaker(env: Env) -> None:
    breaker = CircuitBreaker(policy=BreakerPolicy(consecutive_failures=1), clock=WallClock())
    env.fa.inject("gpt-a", Failure(status=400, message="bad field"))
    with pytest.raises(InvalidRequest):
        env.dispatch(env.dispatcher(breaker=breaker), chat(), decision())
    assert breaker.state(A) == "closed"


def test_no_available_deployment_raises_no_route(env: Env) -> None:
    breaker = CircuitBreaker(
        policy=BreakerPolicy(consecutive_failures=1, cooldown_s=60), clock=WallClock()
    )
    breaker.record(A, False)
    breaker.record(B, False)
    with pytest.raises(NoRouteAvailable):
        env.dispatch(env.dispatcher(breaker=breaker), chat(), decision())
    assert len(env.fa.calls) + len(env.fb.calls) == 0
    assert env.records == []


# ------------------------------------------------------------------ budgets


def test_a_free_primary_does_not_let_a_paid_fallback_bypass_the_budget(env: Env) -> None:
    budgets = Budgets([Budget(name="tiny", limit_usd=Decimal("0.0005"))])
    env.fa.inject("gpt-free", always=Failure.overloaded())
    d = env.dispatcher(budgets=budgets, retry=RetryPolicy(max_retries=0))
    with pytest.raises(BudgetExceeded):
        env.dispatch(d, chat(), decision(primary=A_FREE))
    assert len(env.fa.calls) == 1
    assert len(env.fb.calls) == 0  # B's worst case (64 output tokens at $15/M) did not fit
    assert budgets.status(RouteContext())[0].spent == 0


def test_budget_holds_settle_to_the_actual_cost_of_every_attempt(env: Env) -> None:
    budgets = Budgets([Budget(name="daily", limit_usd=Decimal("10"))])
    env.fa.inject("gpt-a", Failure.overloaded(), Failure.overloaded(), Failure.overloaded())
    env.dispatch(env.dispatcher(budgets=budgets), chat(), decision())
    spent = budgets.status(RouteContext())[0].spent
    assert spent == metered(env.records)
    assert spent > 0


def test_a_blocked_call_is_recorded_as_blocked(env: Env) -> None:
    budgets = Budgets([Budget(name="tiny", limit_usd=Decimal("0.000001"))])
    with pytest.raises(BudgetExceeded):
        env.dispatch(env.dispatcher(budgets=budgets), chat(), decision())
    assert [(r.status, r.cost, r.attempt) for r in env.records] == [("blocked", Decimal(0), 0)]


def test_observe_mode_counts_spend_but_never_blocks(env: Env) -> None:
    budgets = Budgets([Budget(name="tiny", limit_usd=Decimal("0.000001"))])
    answer = env.dispatch(env.dispatcher(budgets=budgets), chat(), decision(mode="observe"))
    assert answer.text == TEXT_A
    (record,) = env.records
    assert budgets.status(RouteContext())[0].spent == record.cost > 0


# ------------------------------------------------------------------ cache


def test_a_cache_hit_costs_nothing_and_records_the_saving(env: Env) -> None:
    d = env.dispatcher(cache=ResponseCache())
    first = env.dispatch(d, chat(temperature=0), decision())
    second = env.dispatch(d, chat(temperature=0), decision())
    assert second.text == first.text == TEXT_A
    assert len(env.fa.calls) == 1
    paid, hit = env.records
    assert hit.status == "cache_hit"
    assert hit.cost == 0
    assert hit.cache_saved_cost == paid.cost
    assert hit.usage.total_tokens == 0
    assert hit.call_id != paid.call_id


def test_non_deterministic_requests_skip_the_cache_unless_hinted(env: Env) -> None:
    d = env.dispatcher(cache=ResponseCache())
    env.dispatch(d, chat(temperature=0.7), decision())
    env.dispatch(d, chat(temperature=0.7), decision())
    assert len(env.fa.calls) == 2
    env.dispatch(d, chat(temperature=0.7), decision(), cache=True)
    env.dispatch(d, chat(temperature=0.7), decision(), cache=True)
    assert len(env.fa.calls) == 3


# ------------------------------------------------------------------ metering and safety


def test_records_carry_mode_context_and_latency(env: Env) -> None:
    ctx = RouteContext(user_id="u-7", feature="faq", tags=frozenset({"b", "a"}), request_id="r-1")
    env.dispatch(env.dispatcher(), chat(), decision(mode="observe"), context=ctx)
    (record,) = env.records
    assert record.mode == "observe"
    assert (record.user_id, record.feature, record.tags, record.request_id) == (
        "u-7",
        "faq",
        ("a", "b"),
        "r-1",
    )
    assert record.deployment == "openai/gpt-a"
    assert record.latency_ms is not None
    assert record.latency_ms >= 0
    assert record.streamed is False


class ExplodingSink:
    def __init__(self) -> None:
        self.seen = 0

    def emit(self, record: UsageRecord) -> None:
        self.seen += 1
        raise RuntimeError("sink down")


def test_a_failing_sink_never_breaks_the_call(env: Env) -> None:
    sink = ExplodingSink()
    env.fa.inject("gpt-a", Failure.overloaded())
    assert env.dispatch(env.dispatcher(sink=sink), chat(), decision()).text == TEXT_A
    assert sink.seen == 2


def test_keys_never_leak(env: Env) -> None:
    env.key_a = "sk-test-revoked-9999"
    env.fb.inject("claude-b", Failure(status=401, message="invalid x-api-key"))
    d = env.dispatcher()
    with pytest.raises(AuthenticationFailed) as caught:
        env.dispatch(d, chat(), decision())
    texts = [repr(d), str(caught.value), repr(caught.value), *map(repr, env.records)]
    for secret in ("sk-test-revoked-9999", KEY_B):
        assert not any(secret in text for text in texts)


def test_stats_see_every_attempt(env: Env) -> None:
    stats = MemoryStatsStore()
    env.fa.inject("gpt-a", Failure.overloaded())
    env.dispatch(env.dispatcher(stats=stats), chat(), decision())
    snapshot = stats.snapshot()
    assert snapshot.deployments["openai/gpt-a"].error_rate == pytest.approx(0.5)
    assert snapshot.deployments["openai/gpt-a"].samples == 1  # latency of the success only
    assert stats.in_flight("openai/gpt-a") == 0


def test_request_errors_are_not_deployment_errors_in_stats(env: Env) -> None:
    stats = MemoryStatsStore()
    env.fa.inject("gpt-a", Failure(status=400, message="bad field"))
    with pytest.raises(InvalidRequest):
        env.dispatch(env.dispatcher(stats=stats), chat(), decision())
    seen = stats.snapshot().deployments["openai/gpt-a"]
    assert (seen.samples, seen.error_rate) == (0, 0.0)
    assert stats.in_flight("openai/gpt-a") == 0


def test_requests_carry_the_attempt_timeout_and_the_upstream_marker() -> None:
    seen: list[httpx.Request] = []
    body = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-a",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=body)

    d = Dispatcher(
        {"openai": provider_config("openai", api_key=KEY_A, base_url="https://m.fake/v1")},
        catalog=CATALOG,
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        retry=RetryPolicy(attempt_timeout=12.0, deadline=None),
    )
    assert d.dispatch(chat(), decision(fallbacks=())).text == "ok"
    (request,) = seen
    assert request.extensions[UPSTREAM_EXTENSION] is True
    assert request.extensions["timeout"]["read"] == 12.0
    assert json.loads(request.content)["model"] == "gpt-a"


# ------------------------------------------------------------------ concurrency


def test_one_dispatcher_serves_fifty_concurrent_async_calls() -> None:
    env = Env(flavor="async")
    env.fa.inject("gpt-a", *[Failure.overloaded()] * 12)
    d = env.dispatcher(retry=RetryPolicy(max_retries=1))
    answers: list[str] = []

    async def one(n: int) -> None:
        response = await d.adispatch(chat(f"question number {n}"), decision())
        answers.append(response.text)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            for n in range(50):
                tasks.start_soon(one, n)

    anyio.run(main)
    assert len(answers) == 50
    assert set(answers) <= {TEXT_A, TEXT_B}
    by_call: dict[str, list[UsageRecord]] = {}
    for record in env.records:
        by_call.setdefault(record.call_id, []).append(record)
    assert len(by_call) == 50
    for records in by_call.values():
        assert [r.status for r in records].count("ok") == 1
        assert sorted(r.attempt for r in records) == list(range(1, len(records) + 1))
        assert {r.attempts for r in records} == {len(records)}
    assert sum(1 for r in env.records if r.error_kind == "Overloaded") == 12
    assert metered(env.records) == env.billed()


# ------------------------------------------------------------------ httpx2


def test_works_with_httpx2_clients(env: Env) -> None:
    httpx2 = pytest.importorskip("httpx2")
    env.fa.inject("gpt-a", Failure.reset(), Failure.overloaded())
    client = httpx2.Client(transport=env.fa.transport(lib="httpx2"))
    async_client = httpx2.AsyncClient(transport=env.fa.async_transport(lib="httpx2"))
    d = env.dispatcher(client=client, async_client=async_client)
    answer = env.dispatch(d, chat(), decision(fallbacks=()))
    assert answer.text == TEXT_A
    assert [r.error_kind for r in env.records] == ["UpstreamUnavailable", "Overloaded", None]


# ------------------------------------------------------------------ shared breaker state


@pytest.fixture
def redis_breaker_store() -> Any:
    import uuid

    url = redis_url_or_skip()
    from routing_middleware.breaker import RedisBreakerStore

    prefix = f"llmroute-test:{uuid.uuid4().hex}:breaker:"
    store = RedisBreakerStore(url, prefix=prefix, refresh_s=0)
    yield store
    drop_keys(store._redis.sync_client(), prefix)
    store.close()


@pytest.mark.redis
def test_a_redis_breaker_is_shared_by_sync_and_async_dispatchers(
    redis_breaker_store: Any,
) -> None:
    wall = WallClock()
    policy = BreakerPolicy(consecutive_failures=2, cooldown_s=30)
    env = Env()
    env.fa.inject("gpt-a", always=Failure.unavailable())
    sync_d = env.dispatcher(
        breaker=CircuitBreaker(redis_breaker_store, policy, clock=wall),
        retry=RetryPolicy(max_retries=3),
    )
    assert sync_d.dispatch(chat(), decision()).text == TEXT_B
    assert len(env.fa.calls) == 2

    async def other_worker() -> None:
        async_d = env.dispatcher(breaker=CircuitBreaker(redis_breaker_store, policy, clock=wall))
        assert (await async_d.adispatch(chat(), decision())).text == TEXT_B
        assert len(env.fa.calls) == 2  # the open breaker was seen through Redis
        env.fa.clear_failures()
        wall.now += 31
        assert (await async_d.adispatch(chat(), decision())).text == TEXT_A
        await redis_breaker_store.aclose()

    anyio.run(other_worker)
    assert CircuitBreaker(redis_breaker_store, policy, clock=wall).state(A) == "closed"


def test_clients_made_by_the_dispatcher_are_closed_by_it() -> None:
    d = Dispatcher({}, catalog=CATALOG)
    client = d.sync_client()
    async_client = d.async_client()
    anyio.run(d.aclose)
    assert client.is_closed
    assert async_client.is_closed
    given = httpx.Client()
    Dispatcher({}, client=given).close()
    assert not given.is_closed
    given.close()


def test_a_cancelled_async_call_is_recorded_and_releases_its_hold() -> None:
    arrived = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        arrived.set()
        await anyio.Event().wait()  # the upstream never answers
        raise AssertionError("unreachable")

    sink = MemorySink()
    budgets = Budgets([Budget(name="daily", limit_usd=Decimal("10"))])
    d = Dispatcher(
        {"openai": provider_config("openai", api_key=KEY_A, base_url="https://h.fake/v1")},
        catalog=CATALOG,
        async_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        sink=sink,
        budgets=budgets,
    )

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(d.adispatch, chat(), decision(fallbacks=()))
            await arrived.wait()
            tasks.cancel_scope.cancel()

    anyio.run(main)
    (record,) = sink.records
    assert (record.status, record.error_kind, record.cost) == ("error", "CancelledError", 0)
    assert budgets.status(RouteContext())[0].spent == 0  # the hold was released


# ------------------------------------------------------------------ money: savings and prices


def test_a_cache_hit_is_no_routing_saving(env: Env) -> None:
    d = env.dispatcher(cache=ResponseCache())
    env.dispatch(d, chat(temperature=0), decision())
    env.dispatch(d, chat(temperature=0), decision())
    paid, hit = env.records
    assert hit.requested_cost is None
    assert hit.saved_cost == 0
    assert hit.cache_saved_cost == paid.cost


def test_an_answer_served_by_a_fallback_is_found_in_the_cache(env: Env) -> None:
    env.fa.inject("gpt-a", always=Failure.overloaded())
    d = env.dispatcher(cache=ResponseCache(), retry=RetryPolicy(max_retries=0))
    first = env.dispatch(d, chat(temperature=0), decision())
    second = env.dispatch(d, chat(temperature=0), decision())
    assert first.text == second.text == TEXT_B
    assert len(env.fb.calls) == 1
    assert env.records[-1].status == "cache_hit"


def test_a_provider_reported_cost_shows_no_fake_saving() -> None:
    from routing_middleware.pricing import cost_of

    d = Env().dispatcher()
    call = d._call(chat(), decision(), RouteContext(), False, None)
    usage = Usage(input_tokens=1000, output_tokens=100, provider_cost=Decimal("0.0009"))
    same = UsageRecord("openai/gpt-a", "openai/gpt-a", "openai", usage, Decimal("0.0009"))
    assert d._requested_cost(call, usage, same) == Decimal("0.0009")
    other = UsageRecord("openai/gpt-a", "anthropic/claude-b", "anthropic", usage, Decimal("0.004"))
    listed = usage.model_copy(update={"provider_cost": None})
    requested = d._requested_cost(call, usage, other)
    assert requested is not None
    saving = cost_of(listed, CATALOG.get("openai/gpt-a")) - cost_of(
        listed, CATALOG.get("anthropic/claude-b")
    )
    assert requested - other.cost == saving  # the list-price difference, cost as billed


def test_a_model_missing_from_the_catalog_is_marked_and_still_bound_by_budgets(
    env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from routing_middleware import _dispatch_machine
    from routing_middleware.pricing import cost_of

    monkeypatch.setattr(_dispatch_machine, "_UNPRICED_WARNED", set())
    dear = ModelInfo("openai/gpt-dear", "openai", "gpt-dear", Price(Decimal(5), Decimal(20)), 8000)
    catalog = Catalog([dear, *(m for m in CATALOG if m.id != "openai/gpt-a")])
    budgets = Budgets([Budget(name="daily", limit_usd=Decimal("10"))])
    d = env.dispatcher(catalog=catalog, budgets=budgets)
    with caplog.at_level(logging.WARNING, logger="llmroute.dispatch"):
        env.dispatch(d, chat(), decision())
        env.dispatch(d, chat(), decision())
    first, second = env.records
    assert first.cost == 0
    assert first.extra["unpriced"] is True
    assert first.requested_cost is None  # no made-up saving against a $0 cost
    warnings = [r for r in caplog.records if "not in the catalog" in r.getMessage()]
    assert len(warnings) == 1
    spent = budgets.status(RouteContext())[0].spent
    expected = cost_of(first.usage, dear) + cost_of(second.usage, dear)
    assert spent > 0
    assert abs(spent - expected) <= Decimal("0.000001")
    tiny = Budgets([Budget(name="tiny", limit_usd=Decimal("0.000001"))])
    with pytest.raises(BudgetExceeded):
        env.dispatch(env.dispatcher(catalog=catalog, budgets=tiny), chat(), decision())


class FlakyStore(MemoryBudgetStore):
    """Fails the first ``failures`` settles."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def settle(self, lines: Any, reserved: int, actual: int, hold: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store blip")
        super().settle(lines, reserved, actual, hold)

    async def asettle(self, lines: Any, reserved: int, actual: int, hold: str) -> None:
        self.settle(lines, reserved, actual, hold)


def held(budgets: Budgets) -> int:
    store = budgets.store
    assert isinstance(store, MemoryBudgetStore)
    return sum(int(entry[1]) for entry in store._counters.values())


def test_a_settle_that_fails_once_is_retried(env: Env) -> None:
    budgets = Budgets([Budget(name="daily", limit_usd=Decimal("10"))], FlakyStore(1))
    env.dispatch(env.dispatcher(budgets=budgets), chat(), decision())
    assert held(budgets) == 0
    assert budgets.status(RouteContext())[0].spent == metered(env.records)


def test_a_settle_that_keeps_failing_is_applied_once_the_store_answers(
    env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging
    import time

    from routing_middleware import _deferred, _outage

    monkeypatch.setattr(_outage, "STORE_RETRY_S", 0.05)
    budgets = Budgets([Budget(name="daily", limit_usd=Decimal("10"))], FlakyStore(2))
    with caplog.at_level(logging.WARNING, logger="llmroute"):
        answer = env.dispatch(env.dispatcher(budgets=budgets), chat(), decision())
    assert answer.text == TEXT_A
    assert "budget store FlakyStore failed (ConnectionError)" in caplog.text
    assert held(budgets) > 0  # kept for later
    time.sleep(0.06)
    budgets.pressing(RouteContext())  # the store answers: the kept settle is applied
    assert _deferred.drain()
    assert held(budgets) == 0
    assert budgets.status(RouteContext())[0].spent == metered(env.records)
