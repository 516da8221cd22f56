from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from decimal import Decimal

import pytest

from routing_middleware.context import (
    HINTS_ATTRIBUTE,
    RouteContext,
    current_context,
    hints_of,
    route_hint,
    use_context,
)


def test_empty_by_default_and_use_context_restores() -> None:
    assert current_context() == RouteContext()
    ctx = RouteContext(user_id="u1", feature="chat")
    with use_context(ctx) as inside:
        assert inside is ctx
        assert current_context() is ctx
    assert current_context() == RouteContext()


def test_use_context_restores_after_error() -> None:
    with pytest.raises(RuntimeError), use_context(RouteContext(user_id="u")):
        raise RuntimeError("boom")
    assert current_context().user_id is None


def test_hints_nest_field_by_field() -> None:
    with route_hint(tier=3, max_latency_ms=800, feature="support"):
        with route_hint(tier="cheap", min_quality=60):
            ctx = current_context()
            assert ctx.tier == "cheap"
            assert ctx.max_latency_ms == 800
            assert ctx.min_quality == 60
            assert ctx.feature == "support"
        ctx = current_context()
        assert ctx.tier == 3
        assert ctx.min_quality is None
    assert current_context() == RouteContext()


def test_hints_are_normalised() -> None:
    with route_hint(allow_models=["a", "b"], deny_models="c", tags=("x",), max_cost_per_call=0.05):
        ctx = current_context()
    assert ctx.allow_models == frozenset({"a", "b"})
    assert ctx.deny_models == frozenset({"c"})
    assert ctx.tags == frozenset({"x"})
    assert ctx.max_cost_per_call == Decimal("0.05")


@pytest.mark.parametrize(
    ("hints", "error"),
    [({"teir": 1}, TypeError), ({"mode": "shadow"}, ValueError), ({"tier": 0}, ValueError)],
)
def test_bad_hints_are_rejected(hints: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        route_hint(**hints)


def test_decorates_sync_function_and_annotates_it() -> None:
    @route_hint(tier=1, feature="summaries")
    def summarize(text: str) -> tuple[str, RouteContext]:
        """Summarize."""
        return text, current_context()

    text, ctx = summarize("hi")
    assert text == "hi"
    assert ctx.tier == 1
    assert ctx.feature == "summaries"
    assert current_context().tier is None
    assert summarize.__name__ == "summarize"
    assert summarize.__doc__ == "Summarize."
    assert getattr(summarize, HINTS_ATTRIBUTE) == {"tier": 1, "feature": "summaries"}
    assert hints_of(summarize) == {"tier": 1, "feature": "summaries"}


def test_stacked_decorators_inner_wins_in_attribute_and_at_runtime() -> None:
    @route_hint(tier=3, max_latency_ms=500)
    @route_hint(tier=1)
    def view() -> RouteContext:
        return current_context()

    assert hints_of(view) == {"tier": 1, "max_latency_ms": 500}
    ctx = view()
    assert ctx.tier == 1
    assert ctx.max_latency_ms == 500


def test_hints_of_plain_function_is_empty() -> None:
    def plain() -> None:
        return None

    assert hints_of(plain) == {}


@pytest.mark.anyio
async def test_decorated_coroutine_function_stays_a_coroutine_function() -> None:
    @route_hint(tier="premium")
    async def handler() -> RouteContext:
        await asyncio.sleep(0)
        return current_context()

    assert inspect.iscoroutinefunction(handler)
    ctx = await handler()
    assert ctx.tier == "premium"
    assert current_context().tier is None


@pytest.mark.anyio
async def test_async_with_and_concurrent_tasks_do_not_leak() -> None:
    async def worker(tier: int) -> object:
        async with route_hint(tier=tier):
            await asyncio.sleep(0.01)
            return current_context().tier

    results = await asyncio.gather(*(worker(t) for t in (1, 2, 3)))
    assert results == [1, 2, 3]
    assert current_context().tier is None


@pytest.mark.anyio
async def test_async_generator_sees_hints_but_consumer_does_not() -> None:
    @route_hint(feature="stream")
    async def produce() -> AsyncIterator[str | None]:
        for _ in range(2):
            yield current_context().feature
            await asyncio.sleep(0)

    assert inspect.isasyncgenfunction(produce)
    seen = []
    async for item in produce():
        seen.append(item)
        assert current_context().feature is None
    assert seen == ["stream", "stream"]


@pytest.mark.anyio
async def test_async_generator_closed_early_runs_cleanup() -> None:
    cleaned: list[str | None] = []

    @route_hint(feature="f")
    async def produce() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            cleaned.append(current_context().feature)

    gen = produce()
    async for _ in gen:
        break
    await gen.aclose()  # type: ignore[attr-defined]
    assert cleaned == ["f"]


def test_sync_generator_gets_hints_per_step() -> None:
    @route_hint(tier=2)
    def produce() -> Iterator[int | str | None]:
        yield current_context().tier
        yield current_context().tier

    assert list(produce()) == [2, 2]
    assert current_context().tier is None


def test_context_is_copied_into_threads() -> None:
    import concurrent.futures

    with route_hint(user_id="u9"):
        run = contextvars.copy_context().run
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            user = pool.submit(run, lambda: current_context().user_id).result()
    assert user == "u9"


def test_overlay_prefers_inner_set_fields() -> None:
    outer = RouteContext(user_id="u", tier=3, feature="a")
    inner = RouteContext(tier=1)
    merged = outer.overlay(inner)
    assert (merged.user_id, merged.tier, merged.feature) == ("u", 1, "a")


def test_route_hint_on_a_class_annotates_it_and_keeps_it_a_class() -> None:
    from routing_middleware.context import hints_of

    @route_hint(tier="cheap", feature="endpoint")
    class Endpoint:
        def get(self) -> str:
            return "ok"

    assert isinstance(Endpoint, type)
    assert Endpoint().get() == "ok"
    assert hints_of(Endpoint) == {"tier": "cheap", "feature": "endpoint"}


def test_set_and_reset_context_restore_the_previous_one() -> None:
    from routing_middleware.context import RouteContext, reset_context, set_context

    before = current_context()
    token = set_context(RouteContext(feature="inside"))
    assert current_context().feature == "inside"
    reset_context(token)
    assert current_context() == before


def test_generator_gets_sent_values_and_thrown_exceptions_with_its_hints() -> None:
    from contextlib import contextmanager

    log: list[tuple[str, str | None]] = []

    @contextmanager
    @route_hint(feature="tx")
    def transaction() -> Iterator[None]:
        try:
            yield
        except ValueError:
            log.append(("rollback", current_context().feature))
            raise

    with pytest.raises(ValueError, match="bad"), transaction():
        raise ValueError("bad")
    assert log == [("rollback", "tx")]

    @route_hint(feature="sum")
    def running_total() -> Generator[int, int, None]:
        total = 0
        while True:
            total += yield total

    gen = running_total()
    assert next(gen) == 0
    assert gen.send(2) == 2
    assert gen.send(3) == 5
    assert current_context().feature is None


@pytest.mark.anyio
async def test_async_generator_gets_sent_values_and_thrown_exceptions_with_its_hints() -> None:
    from contextlib import asynccontextmanager

    log: list[tuple[str, str | None]] = []

    @asynccontextmanager
    @route_hint(feature="tx")
    async def transaction() -> AsyncIterator[None]:
        try:
            yield
        except ValueError:
            log.append(("rollback", current_context().feature))
            raise

    with pytest.raises(ValueError, match="bad"):
        async with transaction():
            raise ValueError("bad")
    assert log == [("rollback", "tx")]

    @route_hint(feature="sum")
    async def running_total() -> AsyncGenerator[int, int]:
        total = 0
        while True:
            total += yield total

    agen = running_total()
    assert await agen.__anext__() == 0
    assert await agen.asend(2) == 2
    assert await agen.asend(3) == 5
    await agen.aclose()
    assert current_context().feature is None
