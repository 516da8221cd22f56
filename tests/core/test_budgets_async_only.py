"""Budgets on a store given only an async client: a settle that could not be sent
from a thread (a dropped stream's cleanup, the replay after an outage) is sent by the
next async operation, on its event loop, instead of leaving its worst case held."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Sequence
from decimal import Decimal

import pytest

from routing_middleware._dispatch_drivers import settle_now
from routing_middleware._outage import MissingClient
from routing_middleware.budgets import (
    Budget,
    BudgetLine,
    Budgets,
    MemoryBudgetStore,
    RedisBudgetStore,
)
from routing_middleware.context import RouteContext

from .redis_helpers import drop_keys, redis_url_or_skip

CTX = RouteContext(user_id="u1")


class AsyncOnly(MemoryBudgetStore):
    """A memory store used as a store given only an async client is: its blocking
    operations raise :class:`MissingClient`. ``fail`` makes async settles fail;
    ``gate``, when set, holds each async settle until it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.async_settles = 0

    def reserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        raise MissingClient("AsyncOnly got no sync client and no url")

    def settle(self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str) -> None:
        raise MissingClient("AsyncOnly got no sync client and no url")

    async def areserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        return MemoryBudgetStore.reserve(self, lines, amount, hold)

    async def asettle(
        self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str
    ) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("refused")
        self.async_settles += 1
        MemoryBudgetStore.settle(self, lines, reserved, actual, hold)


def _budgets(store: object) -> Budgets:
    return Budgets([Budget(name="all", limit_usd=Decimal("10"))], store)  # type: ignore[arg-type]


def _spent(budgets: Budgets) -> Decimal:
    return budgets.store.totals_until(budgets.lines(CTX))[0][0] / Decimal(1_000_000)  # type: ignore[attr-defined]


def _settle_from_a_thread(budgets: Budgets, reservation: object, amount: str) -> None:
    thread = threading.Thread(target=settle_now, args=(budgets, reservation, Decimal(amount)))
    thread.start()
    thread.join()


def test_a_settle_made_off_the_loop_is_sent_by_the_next_async_operation() -> None:
    store = AsyncOnly()
    budgets = _budgets(store)

    async def main() -> None:
        held = await budgets.areserve(Decimal("0.5"), CTX)
        _settle_from_a_thread(budgets, held, "0.1")  # a dropped stream's cleanup
        assert [r for r, _ in budgets._unsettled] == [held]
        assert budgets.outage.until is None  # a setup limit, not an outage
        assert _spent(budgets) == Decimal("0.5")  # the worst case, still held
        await budgets.areserve(Decimal("0.2"), CTX)  # the next call sends it
        assert budgets._replaying is not None
        await budgets._replaying
        assert budgets._unsettled == []
        assert _spent(budgets) == Decimal("0.3")  # 0.1 spent, 0.2 held

    asyncio.run(main())


def test_kept_settles_replayed_after_an_outage_go_through_the_loop() -> None:
    store = AsyncOnly()
    budgets = _budgets(store)

    async def main() -> None:
        held = [await budgets.areserve(Decimal("1"), CTX) for _ in range(3)]
        for reservation in held:
            budgets.settle_later(reservation, Decimal("0.25"))
        # the store answers again: the cleanup thread replays, and cannot
        thread = threading.Thread(target=budgets._settle_unsettled)
        thread.start()
        thread.join()
        assert len(budgets._unsettled) == 3
        store.fail = True
        await budgets.areserve(Decimal("0"), CTX)
        await budgets._replaying  # type: ignore[misc]
        assert len(budgets._unsettled) == 3  # failed: all kept, in order
        assert [r for r, _ in budgets._unsettled] == held
        assert budgets.outage.until is not None
        store.fail = False
        budgets.outage.until = None
        await budgets.asettle(await budgets.areserve(Decimal("0"), CTX), Decimal(0))
        await budgets._replaying  # type: ignore[misc]
        assert budgets._unsettled == []
        assert _spent(budgets) == Decimal("0.75")
        assert store.async_settles == 3 + 1

    asyncio.run(main())


def test_a_replay_cancelled_by_its_loop_keeps_what_it_had_not_sent() -> None:
    store = AsyncOnly()
    budgets = _budgets(store)

    async def main() -> None:
        held = [await budgets.areserve(Decimal("1"), CTX) for _ in range(2)]
        budgets.settle_on_loop([(r, Decimal("0.5")) for r in held])
        store.gate = asyncio.Event()
        await budgets.areserve(Decimal("0"), CTX)
        task = budgets._replaying
        assert task is not None
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [r for r, _ in budgets._unsettled] == held
        assert budgets._replay_async
        assert budgets._replaying is None
        store.gate = None
        await budgets.areserve(Decimal("0"), CTX)
        await budgets._replaying  # type: ignore[misc]
        assert _spent(budgets) == Decimal("1")

    asyncio.run(main())


@pytest.mark.redis
def test_an_async_only_redis_store_settles_what_a_thread_could_not() -> None:
    import redis
    import redis.asyncio

    url = redis_url_or_skip()
    prefix = f"llmroute:test:{uuid.uuid4().hex}:"
    sync = redis.Redis.from_url(url)

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(url)
        store = RedisBudgetStore(async_client=client, prefix=prefix)
        budgets = _budgets(store)
        try:
            held = await budgets.areserve(Decimal("0.5"), CTX)
            _settle_from_a_thread(budgets, held, "0.1")
            assert (await store.atotals(budgets.lines(CTX)))[0] == 500_000
            await budgets.areserve(Decimal("0.2"), CTX)
            await budgets._replaying  # type: ignore[misc]
            assert (await store.atotals(budgets.lines(CTX)))[0] == 300_000
        finally:
            await client.aclose()

    try:
        asyncio.run(main())
    finally:
        drop_keys(sync, prefix)
        sync.close()
