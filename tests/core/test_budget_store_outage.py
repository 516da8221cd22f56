"""A budget store that fails or stops answering never takes routing or calls down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from decimal import Decimal

import pytest

from routing_middleware import budgets as budgets_module
from routing_middleware.budgets import Budget, BudgetLine, Budgets, MemoryBudgetStore
from routing_middleware.context import RouteContext
from routing_middleware.engine import LLMRoute
from routing_middleware.schema import BudgetExceeded, ChatRequest, Message

SECRET = "redis://:hunter2@10.0.0.9:6379/0"


class FlakyStore(MemoryBudgetStore):
    """A memory store that can be switched off; counts what it was asked while off."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.asked_while_down = 0

    def _check(self) -> None:
        if self.down:
            self.asked_while_down += 1
            raise ConnectionError(f"Error 111 connecting to {SECRET}")

    def totals(self, lines: Sequence[BudgetLine]) -> list[int]:
        self._check()
        return super().totals(lines)

    def totals_until(self, lines: Sequence[BudgetLine]) -> tuple[list[int], float]:
        self._check()
        return super().totals_until(lines)

    def reserve(self, lines: Sequence[BudgetLine], amount: int) -> int | None:
        self._check()
        return super().reserve(lines, amount)

    async def areserve(self, lines: Sequence[BudgetLine], amount: int) -> int | None:
        self._check()
        return await super().areserve(lines, amount)


def _request() -> ChatRequest:
    return ChatRequest(model="gpt-4o-mini", messages=[Message(role="user", content="hi")])


def _engine(store: FlakyStore) -> LLMRoute:
    budget = {"name": "all", "scope": "global", "limit_usd": "0.000001"}
    return LLMRoute(
        {"offline": "always", "offline_latency": "none", "routing": {"budgets": [budget]}},
        environ={},
        budget_store=store,
    )


def _spend(engine: LLMRoute) -> None:
    """Spend the engine's tiny budget, so a call with budgets applied is refused."""
    engine.budgets.settle(engine.budgets.reserve(Decimal(0)), Decimal("0.01"))


def test_calls_go_on_without_budgets_while_the_store_fails_and_it_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(budgets_module, "STORE_RETRY_S", 0.2)
    store = FlakyStore()
    engine = _engine(store)
    store.down = True
    with caplog.at_level(logging.WARNING, logger="llmroute"):
        for _ in range(5):
            assert engine.complete(_request()).response.text
        assert engine.budgets.store_down
        # asked once, then left alone until it is due again
        assert store.asked_while_down == 1
        time.sleep(0.25)
        assert engine.complete(_request()).response.text
        assert store.asked_while_down == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "failed (ConnectionError)" in w]) == 1
    assert not any("hunter2" in w or "10.0.0.9" in w for w in warnings)

    store.down = False
    time.sleep(0.25)
    _spend(engine)
    with caplog.at_level(logging.WARNING, logger="llmroute"):
        with pytest.raises(BudgetExceeded):
            engine.complete(_request())
    assert "answers again" in caplog.text
    assert not engine.budgets.store_down


def test_async_calls_skip_the_hold_while_the_store_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FlakyStore()
    engine = _engine(store)
    store.down = True

    async def main() -> str:
        done = await engine.acomplete(_request())
        return done.response.text

    assert asyncio.run(main())
    assert engine.budgets.store_down


def test_status_and_reserve_still_raise_the_store_error_to_their_callers() -> None:
    store = FlakyStore()
    budgets = Budgets([Budget(name="all", limit_usd=Decimal("1"))], store)
    store.down = True
    assert budgets.pressing(RouteContext()) == ()
    with pytest.raises(ConnectionError):
        budgets.status(RouteContext())
    with pytest.raises(ConnectionError):
        budgets.reserve(Decimal("0.01"), RouteContext())
