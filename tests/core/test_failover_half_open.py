"""The half-open probe against calls that were already out when the breaker opened.

A breaker lets exactly one call probe a deployment after its cooldown. A call sent
while it was still closed may end only then: its outcome (a success, a failure, no
verdict) says nothing about the probe and must neither free the probe's slot nor
close or re-open the breaker; only the probe's own outcome does.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import anyio
import httpx
import pytest

from routing_middleware.breaker import BreakerPolicy, CircuitBreaker, MemoryBreakerStore
from routing_middleware.dispatch import Dispatcher
from routing_middleware.metering import MemorySink
from routing_middleware.providers.registry import provider_config
from routing_middleware.retry import RetryPolicy
from routing_middleware.schema import ChatRequest, LLMError, Message
from routing_middleware.testing import FakeModel, FakeProvider

from .failover_helpers import CATALOG, KEY, POLICY, PRICE, A, WallClock, decision


def chat(tag: str) -> ChatRequest:
    return ChatRequest(
        model="openai/gpt-a", messages=[Message(role="user", content=tag)], max_tokens=64
    )


def _tag(request: httpx.Request) -> str:
    return str(json.loads(request.content)["messages"][-1]["content"])


def _unavailable() -> httpx.Response:
    return httpx.Response(503, json={"error": {"message": "down", "type": "server_error"}})


class Upstream:
    """The fake deployment behind gates: a request whose message is ``bad`` gets a
    503; one whose message names a gate waits there until the test opens it with
    an outcome (``ok``: the fake's answer, ``fail``: a 503)."""

    def __init__(self, *tags: str) -> None:
        self.fake = FakeProvider(
            [FakeModel("gpt-a", content="An answer.", price=PRICE)], require_key=KEY
        )
        self.sync_fake, self.async_fake = self.fake.transport(), self.fake.async_transport()
        self.arrived = {tag: threading.Event() for tag in tags}
        self.released = {tag: threading.Event() for tag in tags}
        self.aarrived: dict[str, anyio.Event] = {}
        self.areleased: dict[str, anyio.Event] = {}
        self.outcome: dict[str, str] = {}

    def release(self, tag: str, outcome: str) -> None:
        self.outcome[tag] = outcome
        self.released[tag].set()

    async def arelease(self, tag: str, outcome: str) -> None:
        self.outcome[tag] = outcome
        self.areleased[tag].set()

    def handle(self, request: httpx.Request) -> httpx.Response:
        tag = _tag(request)
        if tag == "bad":
            return _unavailable()
        if tag in self.arrived:
            self.arrived[tag].set()
            assert self.released[tag].wait(10)
            if self.outcome[tag] == "fail":
                return _unavailable()
        response: httpx.Response = self.sync_fake.handle_request(request)
        return response

    async def ahandle(self, request: httpx.Request) -> httpx.Response:
        tag = _tag(request)
        if tag == "bad":
            return _unavailable()
        if tag in self.arrived:
            self.aarrived.setdefault(tag, anyio.Event()).set()
            await self.areleased.setdefault(tag, anyio.Event()).wait()
            if self.outcome[tag] == "fail":
                return _unavailable()
        response: httpx.Response = await self.async_fake.handle_async_request(request)
        return response

    async def areached(self, tag: str) -> None:
        await self.aarrived.setdefault(tag, anyio.Event()).wait()


def dispatcher(upstream: Upstream) -> tuple[Dispatcher, CircuitBreaker, WallClock]:
    clock = WallClock()
    breaker = CircuitBreaker(policy=POLICY, clock=clock)
    d = Dispatcher(
        {"openai": provider_config("openai", api_key=KEY, base_url="https://a.fake/v1")},
        catalog=CATALOG,
        sink=MemorySink(),
        breaker=breaker,
        retry=RetryPolicy(max_retries=0),
        client=httpx.Client(transport=httpx.MockTransport(upstream.handle)),
        async_client=httpx.AsyncClient(transport=httpx.MockTransport(upstream.ahandle)),
    )
    return d, breaker, clock


def _open_then_half_open(d: Dispatcher, breaker: CircuitBreaker, clock: WallClock) -> None:
    with pytest.raises(LLMError):
        d.dispatch(chat("bad"), decision())
    assert breaker.state(A) == "open"
    clock.now += POLICY.cooldown_s
    assert breaker.is_available(A)


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# ------------------------------------------------------------------ sync


@pytest.mark.parametrize("old_outcome", ["ok", "fail"])
def test_an_old_call_ending_while_the_probe_is_out_decides_nothing(old_outcome: str) -> None:
    upstream = Upstream("old", "probe")
    d, breaker, clock = dispatcher(upstream)
    old, old_out = _in_thread(lambda: d.dispatch(chat("old"), decision()))
    assert upstream.arrived["old"].wait(10)  # sent while the breaker was closed
    _open_then_half_open(d, breaker, clock)
    probe, probe_out = _in_thread(lambda: d.dispatch(chat("probe"), decision()))
    assert upstream.arrived["probe"].wait(10)
    assert not breaker.is_available(A)  # the probe is out

    upstream.release("old", old_outcome)
    old.join(10)
    assert old_out
    assert old_out[0].text if old_outcome == "ok" else isinstance(old_out[0], LLMError)
    # neither closed (on the old success) nor re-opened or freed (on the old failure)
    assert breaker.state(A) == "half_open"
    assert not breaker.is_available(A)

    upstream.release("probe", "ok")
    probe.join(10)
    assert probe_out[0].text == "An answer."
    assert breaker.state(A) == "closed"  # the probe's own success closes it


def test_an_old_stream_closed_while_the_probe_is_out_keeps_the_probe_slot() -> None:
    upstream = Upstream("probe")
    d, breaker, clock = dispatcher(upstream)
    stream = d.stream(chat("old"), decision())
    next(iter(stream))  # sent while the breaker was closed
    _open_then_half_open(d, breaker, clock)
    probe, probe_out = _in_thread(lambda: d.dispatch(chat("probe"), decision()))
    assert upstream.arrived["probe"].wait(10)

    stream.close()  # no verdict, from a call that is not the probe
    assert not breaker.is_available(A)  # a second probe may not go out

    upstream.release("probe", "fail")
    probe.join(10)
    assert isinstance(probe_out[0], LLMError)
    assert breaker.state(A) == "open"  # the probe's own failure re-opens it


def test_the_probes_own_stream_closed_early_still_frees_it() -> None:
    upstream = Upstream()
    d, breaker, clock = dispatcher(upstream)
    _open_then_half_open(d, breaker, clock)
    stream = d.stream(chat("probe"), decision())
    next(iter(stream))
    assert not breaker.is_available(A)
    stream.close()
    assert breaker.is_available(A)
    assert breaker.state(A) == "half_open"


# ------------------------------------------------------------------ async


@pytest.mark.parametrize("old_outcome", ["ok", "fail", "cancel"])
def test_an_old_async_call_ending_while_the_probe_is_out_decides_nothing(
    old_outcome: str,
) -> None:
    upstream = Upstream("old", "probe")
    d, breaker, clock = dispatcher(upstream)
    results: dict[str, Any] = {}

    async def call(tag: str, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                results[tag] = await d.adispatch(chat(tag), decision())
            except LLMError as exc:
                results[tag] = exc

    async def main() -> None:
        old_scope, probe_scope = anyio.CancelScope(), anyio.CancelScope()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, "old", old_scope)
            await upstream.areached("old")
            _open_then_half_open(d, breaker, clock)
            tasks.start_soon(call, "probe", probe_scope)
            await upstream.areached("probe")
            assert not breaker.is_available(A)

            if old_outcome == "cancel":
                old_scope.cancel()
            else:
                await upstream.arelease("old", old_outcome)
            while "old" not in results and not old_scope.cancel_called:
                await anyio.sleep(0.01)
            await anyio.sleep(0.05)
            assert breaker.state(A) == "half_open"
            assert not breaker.is_available(A)
            assert not await breaker.aacquire(A)  # still no second probe

            await upstream.arelease("probe", "ok")

    anyio.run(main)
    assert results["probe"].text == "An answer."
    assert breaker.state(A) == "closed"


class _StoreBeforeTickets(MemoryBreakerStore):
    """A custom store written before tickets: ``apply`` takes no ``ticket``."""

    def apply(  # type: ignore[override]
        self, key: str, event: Any, now: float, policy: BreakerPolicy
    ) -> Any:
        return super().apply(key, event, now, policy)

    async def aapply(  # type: ignore[override]
        self, key: str, event: Any, now: float, policy: BreakerPolicy
    ) -> Any:
        return super().apply(key, event, now, policy)


def test_a_store_written_before_tickets_still_serves_the_dispatcher() -> None:
    clock = WallClock()
    breaker = CircuitBreaker(_StoreBeforeTickets(), policy=POLICY, clock=clock)
    upstream = Upstream()
    d = Dispatcher(
        {"openai": provider_config("openai", api_key=KEY, base_url="https://a.fake/v1")},
        catalog=CATALOG,
        sink=MemorySink(),
        breaker=breaker,
        client=httpx.Client(transport=httpx.MockTransport(upstream.handle)),
        retry=RetryPolicy(max_retries=0),
    )
    assert d.dispatch(chat("hi"), decision()).text == "An answer."
    with pytest.raises(LLMError):
        d.dispatch(chat("bad"), decision())
    # the failure reached the store (it opened), which never counted as an outage
    assert breaker.state(A) == "open"
    assert breaker._outage.until is None
