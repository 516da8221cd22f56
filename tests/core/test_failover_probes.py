"""The half-open probe and in-flight counts when a call ends without an answer.

A breaker lets exactly one call probe a deployment after its cooldown; whatever
ends that call (cancelled, the stream closed or dropped by its consumer, a budget
refusal) must hand the probe back, or the deployment stays unusable for the whole
probe lease although nothing is known against it.
"""

from __future__ import annotations

import gc
from decimal import Decimal
from typing import Any

import anyio
import httpx
import pytest

from routing_middleware import _deferred
from routing_middleware.breaker import CircuitBreaker
from routing_middleware.budgets import Budget, Budgets, MemoryBudgetStore
from routing_middleware.dispatch import Dispatcher
from routing_middleware.metering import MemorySink
from routing_middleware.providers.registry import provider_config
from routing_middleware.schema import ChatRequest, Message, Overloaded
from routing_middleware.stats import MemoryStatsStore
from routing_middleware.testing import Failure, FakeModel, FakeProvider

from .failover_helpers import CATALOG, KEY, POLICY, PRICE, A, WallClock, decision


def chat() -> ChatRequest:
    return ChatRequest(
        model="openai/gpt-a", messages=[Message(role="user", content="Hi?")], max_tokens=64
    )


def half_open(
    async_transport: httpx.AsyncBaseTransport | None = None, **kw: Any
) -> tuple[Dispatcher, CircuitBreaker, MemoryStatsStore]:
    """A dispatcher over one fake deployment whose breaker is half-open."""
    fake = FakeProvider([FakeModel("gpt-a", content="An answer.", price=PRICE)], require_key=KEY)
    clock = WallClock()
    breaker = CircuitBreaker(policy=POLICY, clock=clock)
    stats = MemoryStatsStore()
    d = Dispatcher(
        {"openai": provider_config("openai", api_key=KEY, base_url="https://a.fake/v1")},
        catalog=CATALOG,
        sink=MemorySink(),
        breaker=breaker,
        stats=stats,
        client=httpx.Client(transport=fake.transport()),
        async_client=httpx.AsyncClient(transport=async_transport or fake.async_transport()),
        **kw,
    )
    fake.inject("gpt-a", always=Failure.unavailable())
    with pytest.raises(Overloaded):  # (the failure that opens the breaker)
        d.dispatch(chat(), decision())
    fake.clear_failures()
    assert breaker.state(A) == "open"
    clock.now += POLICY.cooldown_s
    assert breaker.state(A) == "half_open"
    return d, breaker, stats


def test_a_probe_stream_closed_early_frees_the_probe() -> None:
    d, breaker, stats = half_open()
    stream = d.stream(chat(), decision())
    next(iter(stream))
    assert not breaker.is_available(A)  # the probe is out
    assert stats.in_flight(A.key) == 1
    stream.close()
    assert breaker.is_available(A)
    assert stats.in_flight(A.key) == 0
    assert stats.snapshot().deployments[A.key].error_rate == 1.0  # only the opening failure
    assert d.dispatch(chat(), decision()).text == "An answer."
    assert breaker.state(A) == "closed"


def test_a_cancelled_async_probe_frees_the_probe() -> None:
    arrived = anyio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        arrived.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    d, breaker, stats = half_open(httpx.MockTransport(hang))

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(d.adispatch, chat(), decision())
            await arrived.wait()
            assert not breaker.is_available(A)
            tasks.cancel_scope.cancel()

    anyio.run(main)
    assert breaker.is_available(A)
    assert stats.in_flight(A.key) == 0


def test_a_probe_stream_dropped_unclosed_frees_the_probe() -> None:
    d, breaker, stats = half_open()
    stream = d.stream(chat(), decision())
    next(iter(stream))
    assert not breaker.is_available(A)
    del stream
    gc.collect()
    assert _deferred.drain()
    assert stats.in_flight(A.key) == 0  # (the stats side is cleaned up)
    assert breaker.is_available(A)
    assert d.dispatch(chat(), decision()).text == "An answer."


class _SlowHolds(MemoryBudgetStore):
    """A budget store whose async hold waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = anyio.Event()

    async def areserve(self, lines: Any, amount: int, hold: str) -> int | None:
        self.reached.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


def test_a_probe_cancelled_while_its_budget_hold_is_taken_frees_the_probe() -> None:
    store = _SlowHolds()
    budgets = Budgets([Budget(name="daily", limit_usd=Decimal("10"))], store)
    d, breaker, _ = half_open(budgets=budgets)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(d.adispatch, chat(), decision())
            await store.reached.wait()
            tasks.cancel_scope.cancel()

    anyio.run(main)
    assert breaker.is_available(A)


class _NeverAnswers:
    """Awaiting it suspends its coroutine for good (no event loop needed to drive it)."""

    def __await__(self) -> Any:
        yield "waiting"
        raise AssertionError("unreachable")


class _StuckHolds(MemoryBudgetStore):
    async def areserve(self, lines: Any, amount: int, hold: str) -> int | None:
        await _NeverAnswers()
        raise AssertionError("unreachable")


def test_a_probe_abandoned_while_its_budget_hold_is_taken_frees_the_probe() -> None:
    # an async call dropped without being awaited to its end (its coroutine closed):
    # no effect can run any more, so the probe is handed back on the cleanup thread
    budgets = Budgets([Budget(name="daily", limit_usd=Decimal("10"))], _StuckHolds())
    d, breaker, _ = half_open(budgets=budgets)
    _deferred.prepare()
    call = d.adispatch(chat(), decision())
    assert call.send(None) == "waiting"
    assert not breaker.is_available(A)  # the probe is out, its hold being taken
    call.close()
    assert _deferred.drain()
    assert breaker.is_available(A)


class _SlowSettles(MemoryBudgetStore):
    """Settles that take a while (a store's round trip), announced as they start."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = anyio.Event()

    async def asettle(self, lines: Any, reserved: int, actual: int, hold: str) -> None:
        self.reached.set()
        await anyio.sleep(0.2)
        await super().asettle(lines, reserved, actual, hold)


def test_a_probe_cancelled_while_its_call_settles_still_reports_and_is_recorded() -> None:
    # the attempt answered: its end (settle, report, record) is under way when the
    # caller is cancelled; the settle runs on, and the rest must not be skipped
    store = _SlowSettles()
    budgets = Budgets([Budget(name="daily", limit_usd=Decimal("10"))], store)
    d, breaker, stats = half_open(budgets=budgets)
    assert isinstance(d.sink, MemorySink)
    before = len(d.sink.records)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(d.adispatch, chat(), decision())
            await store.reached.wait()
            tasks.cancel_scope.cancel()
        await anyio.sleep(0.3)  # (the settle that ran on)

    anyio.run(main)
    assert breaker.state(A) == "closed"  # the probe answered
    assert stats.in_flight(A.key) == 0
    (record,) = d.sink.records[before:]
    assert record.status == "ok"
    # the hold was replaced by what the call cost (micro-dollars)
    (total,) = store.totals(budgets.lines(None))
    assert 0 < total == round(record.cost * 1_000_000)
