"""Retry-After through the whole dispatcher: HTTP dates, hints past the policy's cap."""

from __future__ import annotations

import time
from decimal import Decimal
from email.utils import formatdate

import httpx

from routing_middleware.catalog import Catalog, ModelInfo, Price
from routing_middleware.dispatch import Dispatcher
from routing_middleware.metering import MemorySink
from routing_middleware.providers.registry import provider_config
from routing_middleware.retry import ManualClock, RetryPolicy
from routing_middleware.router import Decision, Deployment
from routing_middleware.schema import ChatRequest, Message
from routing_middleware.testing import Failure, FakeModel, FakeProvider

from .test_dispatch import ByHost

KEY_A = "sk-test-aaaa-0001"
KEY_B = "sk-ant-test-bbbb-0002"
PRICE = Price(Decimal("1"), Decimal("2"))
A = Deployment("openai/gpt-a", "openai", "gpt-a")
B = Deployment("anthropic/claude-b", "anthropic", "claude-b")
CATALOG = Catalog(
    [
        ModelInfo("openai/gpt-a", "openai", "gpt-a", PRICE, 16_000),
        ModelInfo("anthropic/claude-b", "anthropic", "claude-b", PRICE, 200_000),
    ]
)


class RateLimitedOnce(httpx.BaseTransport):
    """Answers the first request 429 with ``headers``, then passes on to ``inner``."""

    def __init__(self, inner: httpx.BaseTransport, headers: dict[str, str]) -> None:
        self.inner = inner
        self.headers = headers
        self.seen = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.seen == 1:
            body = {"error": {"message": "Slow down.", "type": "rate_limit_exceeded"}}
            return httpx.Response(429, headers=self.headers, json=body)
        return self.inner.handle_request(request)


def chat() -> ChatRequest:
    return ChatRequest(
        model="openai/gpt-a", messages=[Message(role="user", content="Hi?")], max_tokens=64
    )


def decision(fallbacks: tuple[Deployment, ...] = (B,)) -> Decision:
    return Decision(
        primary=A,
        fallbacks=fallbacks,
        tier=1,
        estimated_cost=None,
        requested_model="openai/gpt-a",
        requested_cost=None,
        mode="enforce",
        reasons=(),
    )


def dispatcher(a: httpx.BaseTransport, b: httpx.BaseTransport, **kw: object) -> Dispatcher:
    return Dispatcher(
        {
            "openai": provider_config("openai", api_key=KEY_A, base_url="https://a.fake/v1"),
            "anthropic": provider_config("anthropic", api_key=KEY_B, base_url="https://b.fake"),
        },
        catalog=CATALOG,
        sink=MemorySink(),
        client=httpx.Client(transport=ByHost({"a.fake": a, "b.fake": b})),
        **kw,  # type: ignore[arg-type]
    )


def providers() -> tuple[FakeProvider, FakeProvider]:
    fa = FakeProvider([FakeModel("gpt-a", content="From A.", price=PRICE)], require_key=KEY_A)
    fb = FakeProvider([FakeModel("claude-b", content="From B.", price=PRICE)], require_key=KEY_B)
    return fa, fb


def test_a_retry_after_http_date_is_waited_for() -> None:
    fa, fb = providers()
    when = formatdate(time.time() + 20, usegmt=True)
    a = RateLimitedOnce(fa.transport(), {"retry-after": when})
    clock = ManualClock()
    d = dispatcher(a, fb.transport(), clock=clock)
    assert d.dispatch(chat(), decision()).text == "From A."
    (slept,) = clock.sleeps
    assert 17 <= slept <= 20  # (the date has whole seconds)
    assert not fb.calls


def test_a_retry_after_beyond_the_policy_cap_moves_on_even_with_a_long_cap() -> None:
    fa, fb = providers()
    fa.inject("gpt-a", always=Failure.rate_limit(retry_after=3600))
    clock = ManualClock()
    d = dispatcher(
        fa.transport(), fb.transport(), clock=clock, retry=RetryPolicy(max_retry_after=300)
    )
    assert d.dispatch(chat(), decision()).text == "From B."
    assert clock.sleeps == []  # one hour is past the 300 s the policy waits at most
    assert len(fa.calls) == 1
