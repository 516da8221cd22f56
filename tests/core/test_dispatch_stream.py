"""Streaming through the dispatcher: transparent failover before content, honest errors
after it, ``continue`` mode, early close and cancellation, cache replay.

Uses the two fake providers of ``test_dispatch``; every scenario runs sync and async.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
import httpx
import pytest

from routing_middleware import _deferred
from routing_middleware.budgets import Budget, Budgets, MemoryBudgetStore
from routing_middleware.cache import ResponseCache
from routing_middleware.context import RouteContext
from routing_middleware.dispatch import AsyncDispatchStream, Dispatcher, DispatchStream
from routing_middleware.metering import MemorySink
from routing_middleware.pricing import cost_of
from routing_middleware.providers.registry import provider_config
from routing_middleware.retry import RetryPolicy
from routing_middleware.schema import (
    ChatRequest,
    LLMError,
    Overloaded,
    StreamChunk,
    UpstreamProtocolError,
)
from routing_middleware.testing import Failure, FakeModel

from .test_dispatch import (
    CATALOG,
    KEY_A,
    PRICE_B,
    TEXT_A,
    TEXT_B,
    A,
    B,
    Env,
    chat,
    decision,
    metered,
)


@pytest.fixture(params=["sync", "async"])
def env(request: pytest.FixtureRequest) -> Env:
    return Env(flavor=request.param)


@dataclass
class Outcome:
    chunks: list[StreamChunk]
    error: LLMError | None
    stream: DispatchStream | AsyncDispatchStream

    @property
    def text(self) -> str:
        return "".join(c.text or "" for c in self.chunks)


def consume(
    env: Env,
    d: Dispatcher,
    request: ChatRequest,
    dec: Any,
    *,
    stop_after: int | None = None,
    **kw: Any,
) -> Outcome:
    """Iterate a stream (stopping after ``stop_after`` text chunks), catching a mid-stream
    LLMError, and close it."""

    def keep(chunks: list[StreamChunk], chunk: StreamChunk) -> bool:
        chunks.append(chunk)
        return stop_after is not None and sum(1 for c in chunks if c.text) >= stop_after

    def sync() -> Outcome:
        stream = d.stream(request, dec, **kw)
        chunks: list[StreamChunk] = []
        error = None
        try:
            for chunk in stream:
                if keep(chunks, chunk):
                    break
        except LLMError as exc:
            error = exc
        finally:
            stream.close()
        return Outcome(chunks, error, stream)

    async def async_() -> Outcome:
        stream = await d.astream(request, dec, **kw)
        chunks: list[StreamChunk] = []
        error = None
        try:
            async for chunk in stream:
                if keep(chunks, chunk):
                    break
        except LLMError as exc:
            error = exc
        finally:
            await stream.aclose()
        return Outcome(chunks, error, stream)

    return env.run(sync, async_)


# ------------------------------------------------------------------ the happy path


def test_streams_the_answer_and_records_it_once(env: Env) -> None:
    out = consume(env, env.dispatcher(), chat(), decision())
    assert out.error is None
    assert out.text == TEXT_A
    assert out.chunks[-1].usage is not None
    (record,) = env.records
    assert record.streamed
    assert record.status == "ok"
    assert record.ttft_ms is not None
    assert not record.usage.estimated
    assert record.usage == out.stream.usage
    assert record.cost == env.billed()
    assert out.stream.call_id == record.call_id
    assert out.stream.records == (record,)


# ------------------------------------------------------------------ before content: transparent


def test_an_error_status_falls_back_transparently(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.overloaded(), Failure.overloaded(), Failure.overloaded())
    out = consume(env, env.dispatcher(), chat(), decision())
    assert out.error is None
    assert out.text == TEXT_B  # nothing of A leaked into the stream
    assert [r.status for r in env.records] == ["error"] * 3 + ["ok"]
    assert metered(env.records) == env.billed()
    assert out.stream.deployment == B


def test_a_stream_cut_before_content_falls_back_transparently(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.cut(after=1))  # only the role chunk came
    d = env.dispatcher(retry=RetryPolicy(max_retries=0))
    out = consume(env, d, chat(), decision())
    assert out.error is None
    assert out.text == TEXT_B
    cut = env.records[0]
    assert cut.error_kind == "UpstreamProtocolError"
    assert cut.usage.estimated  # the prompt was read upstream: it is metered
    assert cut.cost > 0


def test_a_stream_cut_after_three_held_chunks_falls_back_transparently(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.cut(after=3))  # role + two pieces of text
    d = env.dispatcher(retry=RetryPolicy(max_retries=0), stream_holdback=3)
    out = consume(env, d, chat(), decision())
    assert out.error is None
    assert out.text == TEXT_B
    assert len(env.records) == 2


def test_an_error_event_before_content_falls_back(env: Env) -> None:
    env.fb.inject("claude-b", Failure.stream_error(after=3))  # start, ping, block start, error
    d = env.dispatcher(retry=RetryPolicy(max_retries=0))
    out = consume(env, d, chat(), decision(primary=B, fallbacks=(A,)))
    assert out.error is None
    assert out.text == TEXT_A
    assert env.records[0].error_kind == "Overloaded"


def test_nothing_working_raises_before_the_stream_starts(env: Env) -> None:
    env.fa.inject("gpt-a", always=Failure.unavailable())
    env.fb.inject("claude-b", always=Failure.overloaded())
    d = env.dispatcher(retry=RetryPolicy(max_retries=0))
    with pytest.raises(Overloaded):
        consume(env, d, chat(), decision())
    assert [r.status for r in env.records] == ["error", "error"]


# ------------------------------------------------------------------ after content: honest


def test_a_cut_after_content_raises_after_the_delivered_chunks(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.cut(after=3))
    out = consume(env, env.dispatcher(), chat(), decision())
    assert isinstance(out.error, UpstreamProtocolError)
    assert out.text == "Answer from "
    assert TEXT_A.startswith(out.text)
    assert len(env.fb.calls) == 0  # no silent switch to another answer
    (record,) = env.records
    assert record.status == "error"
    assert record.usage.estimated
    assert record.usage.output_tokens > 0
    assert record.cost > 0


def test_an_error_event_after_content_raises_it(env: Env) -> None:
    env.fb.inject("claude-b", Failure.stream_error(after=6))
    out = consume(env, env.dispatcher(), chat(), decision(primary=B, fallbacks=(A,)))
    assert isinstance(out.error, Overloaded)
    assert out.text
    assert TEXT_B.startswith(out.text)
    assert len(env.fa.calls) == 0
    assert env.records[-1].error_kind == "Overloaded"


def test_a_dropped_connection_after_content_raises(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.cut(after=3, abort=True))
    out = consume(env, env.dispatcher(), chat(), decision())
    assert out.error is not None
    assert out.error.retryable
    assert out.text == "Answer from "
    assert env.records[-1].status == "error"


def test_continue_mode_stitches_the_fallback_into_the_same_stream(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.cut(after=3))
    d = env.dispatcher(stream_failover="continue", retry=RetryPolicy(max_retries=0))
    out = consume(env, d, chat(), decision())
    assert out.error is None
    assert out.text == "Answer from " + TEXT_B
    assert sum(1 for c in out.chunks if c.role) == 1  # one role chunk, from the start
    sent = env.fb.calls[0].body["messages"]
    assert sent[-1]["role"] == "assistant"
    prefix = sent[-1]["content"]
    prefix = prefix if isinstance(prefix, str) else "".join(p["text"] for p in prefix)
    assert prefix == "Answer from"  # no trailing whitespace: Anthropic rejects it
    first, second = env.records
    assert (first.status, first.stitched) == ("error", False)
    assert (second.status, second.stitched) == ("ok", True)
    usage = out.chunks[-1].usage
    assert usage is not None
    assert usage.output_tokens == first.usage.output_tokens + second.usage.output_tokens
    assert usage.estimated


# ------------------------------------------------------------------ closing and cancelling


def test_an_early_break_produces_exactly_one_record(env: Env) -> None:
    budgets = Budgets([Budget(name="daily", limit_usd=Decimal("10"))])
    d = env.dispatcher(budgets=budgets)
    out = consume(env, d, chat(), decision(), stop_after=2)
    assert out.text == "Answer from "
    (record,) = env.records
    assert record.status == "error"
    assert record.error_kind == "ConsumerClosed"
    assert record.usage.estimated
    assert record.usage.output_tokens > 0
    assert budgets.status(RouteContext())[0].spent == record.cost  # hold settled, not leaked


def test_closing_twice_or_after_the_end_adds_no_record() -> None:
    env = Env()
    stream = env.dispatcher().stream(chat(), decision())
    with stream:
        assert "".join(c.text or "" for c in stream) == TEXT_A
    stream.close()
    assert len(env.records) == 1
    early = env.dispatcher().stream(chat(), decision())
    early.close()
    early.close()
    assert len(env.records) == 2
    assert env.records[-1].error_kind == "ConsumerClosed"


class Stall(httpx.AsyncByteStream):
    """An OpenAI stream that sends one piece of text, then waits forever."""

    def __init__(self) -> None:
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield (
            b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-a","choices":'
            b'[{"index":0,"delta":{"role":"assistant","content":"Hello "}}]}\n\n'
        )
        await anyio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


def test_cancelling_the_consumer_still_records_and_closes_upstream() -> None:
    body = Stall()

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    sink = MemorySink()
    d = Dispatcher(
        {"openai": provider_config("openai", api_key=KEY_A, base_url="https://s.fake/v1")},
        catalog=CATALOG,
        async_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        sink=sink,
    )
    got: list[str] = []

    async def main() -> None:
        stream = await d.astream(chat(), decision(fallbacks=()))
        with anyio.CancelScope() as scope:
            async for chunk in stream:
                if chunk.text:
                    got.append(chunk.text)
                    scope.cancel()  # cancelled at the next await: waiting for more bytes

    anyio.run(main)
    assert got == ["Hello "]
    assert body.closed
    (record,) = sink.records
    assert record.status == "error"
    assert record.error_kind == "CancelledError"
    assert record.usage.output_tokens > 0


# ------------------------------------------------------------------ cache


def test_a_cache_hit_is_replayed_as_a_stream(env: Env) -> None:
    d = env.dispatcher(cache=ResponseCache())
    env.dispatch(d, chat(temperature=0), decision())
    out = consume(env, d, chat(temperature=0), decision())
    assert out.text == TEXT_A
    assert out.chunks[0].role == "assistant"
    assert out.chunks[-1].usage is not None
    assert len(env.fa.calls) == 1
    paid, hit = env.records
    assert (hit.status, hit.cost, hit.streamed) == ("cache_hit", 0, True)
    assert hit.cache_saved_cost == paid.cost


def test_a_streamed_answer_fills_the_cache(env: Env) -> None:
    d = env.dispatcher(cache=ResponseCache())
    consume(env, d, chat(temperature=0), decision())
    answer = env.dispatch(d, chat(temperature=0), decision())
    assert answer.text == TEXT_A
    assert len(env.fa.calls) == 1
    assert env.records[-1].status == "cache_hit"


def test_a_broken_stream_is_not_cached(env: Env) -> None:
    d = env.dispatcher(cache=ResponseCache())
    env.fa.inject("gpt-a", Failure.cut(after=3))
    consume(env, d, chat(temperature=0), decision())
    env.dispatch(d, chat(temperature=0), decision())
    assert len(env.fa.calls) == 2


def test_streams_through_httpx2_clients(env: Env) -> None:
    httpx2 = pytest.importorskip("httpx2")
    env.fa.inject("gpt-a", Failure.cut(after=1))
    d = env.dispatcher(
        client=httpx2.Client(transport=env.fa.transport(lib="httpx2")),
        async_client=httpx2.AsyncClient(transport=env.fa.async_transport(lib="httpx2")),
    )
    first = consume(env, d, chat(), decision(fallbacks=()))
    assert first.text == TEXT_A  # the cut before content was retried transparently
    env.fa.inject("gpt-a", Failure.cut(after=3, abort=True))
    second = consume(env, d, chat(), decision(fallbacks=()))
    assert second.text == "Answer from "
    assert second.error is not None
    assert second.error.kind == "UpstreamUnavailable"


def test_an_end_marker_without_a_finish_reason_is_a_cut(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.cut(after=1, terminal=True))
    d = env.dispatcher(retry=RetryPolicy(max_retries=0))
    before = consume(env, d, chat(), decision())
    assert before.text == TEXT_B  # nothing delivered yet: transparent
    env.fa.inject("gpt-a", Failure.cut(after=3, terminal=True))
    after = consume(env, d, chat(), decision())
    assert after.text == "Answer from "
    assert isinstance(after.error, UpstreamProtocolError)


def test_continue_mode_does_not_double_the_whitespace_at_the_seam(env: Env) -> None:
    env.fb.add_model(FakeModel("claude-b", content=" B says four.", price=PRICE_B))
    env.fa.inject("gpt-a", Failure.cut(after=3))
    d = env.dispatcher(stream_failover="continue", retry=RetryPolicy(max_retries=0))
    out = consume(env, d, chat(), decision())
    assert out.text == "Answer from B says four."


def test_a_stream_without_usage_ends_with_an_estimate(env: Env) -> None:
    env.fa.inject("gpt-a", Failure.no_usage())
    out = consume(env, env.dispatcher(), chat(), decision())
    assert out.text == TEXT_A
    last = out.chunks[-1].usage
    assert last is not None
    assert last.estimated
    assert last.output_tokens > 0
    (record,) = env.records
    assert record.usage == last
    assert record.cost > 0


# ------------------------------------------------------------------ money: holds and savings


def _held(budgets: Budgets) -> int:
    store = budgets.store
    assert isinstance(store, MemoryBudgetStore)
    return sum(int(entry[1]) for entry in store._counters.values())


@pytest.mark.parametrize("how", ["close", "gc"])
def test_a_dropped_stream_settles_its_hold_to_the_recorded_cost(how: str) -> None:
    import gc

    env = Env()
    budgets = Budgets([Budget(name="daily", limit_usd=Decimal("10"))])
    stream = env.dispatcher(budgets=budgets).stream(chat(), decision())
    next(stream)
    assert _held(budgets) > 0
    if how == "close":
        stream.close()
    else:
        del stream
        gc.collect()
        assert _deferred.drain()
    (record,) = env.records
    assert record.error_kind == ("ConsumerClosed" if how == "close" else "GeneratorExit")
    assert _held(budgets) == 0
    assert budgets.status(RouteContext())[0].spent == record.cost
    assert record.cost > 0


class _LockedStore(MemoryBudgetStore):
    """A budget store whose lock a test can hold, noting the threads that settle."""

    def __init__(self) -> None:
        super().__init__()
        self.settled_on: list[int] = []

    def settle(self, *args: Any, **kwargs: Any) -> None:
        self.settled_on.append(threading.get_ident())
        if not self._lock.acquire(timeout=2):  # (the old cleanup waited here forever)
            raise AssertionError("settled while the lock was held")
        self._lock.release()
        super().settle(*args, **kwargs)


def test_a_stream_collected_while_its_store_lock_is_held_is_cleaned_up_elsewhere() -> None:
    # The collector runs inside whatever allocation triggers it, here while this
    # thread holds the budget store's lock: cleaning up on the spot would wait on it.
    env = Env()
    store = _LockedStore()
    budgets = Budgets([Budget(name="daily", limit_usd=Decimal("10"))], store)
    stream = env.dispatcher(budgets=budgets).stream(chat(), decision())
    next(stream)
    with store._lock:
        before = datetime.now(UTC)
        del stream  # (the last reference: collected here, lock held)
        after = datetime.now(UTC)
        assert env.records == []
        time.sleep(0.01)
    assert _deferred.drain()
    (record,) = env.records
    assert record.error_kind == "GeneratorExit"
    assert before <= record.created_at <= after  # when it was dropped, not recorded
    assert store.settled_on
    assert threading.get_ident() not in store.settled_on
    assert _held(budgets) == 0
    assert budgets.status(RouteContext())[0].spent == record.cost > 0


def test_continue_mode_prices_the_requested_model_on_the_input_once(env: Env) -> None:
    from routing_middleware.schema import Usage

    env.fa.inject("gpt-a", Failure.cut(after=3))
    d = env.dispatcher(stream_failover="continue", retry=RetryPolicy(max_retries=0))
    consume(env, d, chat(), decision())
    first, second = env.records
    whole = Usage(
        input_tokens=first.usage.input_tokens,
        output_tokens=first.usage.output_tokens + second.usage.output_tokens,
    )
    requested = cost_of(whole, CATALOG.get("openai/gpt-a"))
    assert first.requested_cost is None
    assert second.requested_cost == requested - first.cost
    saved = sum((r.saved_cost for r in env.records), Decimal(0))
    assert saved == requested - (first.cost + second.cost)
