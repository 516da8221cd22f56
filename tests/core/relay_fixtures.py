"""A relay in front of a dispatcher with one fixed decision, and the FakeProvider
models behind it: shared by the tests that compare forwarded answers (JSON and
streams) with decoded ones."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol, cast

import httpx2

from routing_middleware.catalog import Catalog, ModelInfo, Price
from routing_middleware.dispatch import Dispatcher
from routing_middleware.engine import Completion, LLMRoute
from routing_middleware.metering import MemorySink
from routing_middleware.providers.registry import provider_config
from routing_middleware.relay import Relay
from routing_middleware.retry import RetryPolicy
from routing_middleware.router import Decision, Deployment
from routing_middleware.schema import ChatRequest
from routing_middleware.testing import FakeModel, FakeProvider, FakeToolCall

KEY = "sk-forward-0001"
PRICE = Price(Decimal("1"), Decimal("2"))
CATALOG = Catalog(
    [
        ModelInfo("openai/gpt-a", "openai", "gpt-a", PRICE, 16_000),
        ModelInfo("openai/gpt-b", "openai", "gpt-b", PRICE, 16_000),
        ModelInfo("openai/gpt-tools", "openai", "gpt-tools", PRICE, 16_000),
        ModelInfo("anthropic/claude-a", "anthropic", "claude-a", PRICE, 16_000),
    ]
)
A = Deployment("openai/gpt-a", "openai", "gpt-a")
B = Deployment("openai/gpt-b", "openai", "gpt-b")
TOOLS = Deployment("openai/gpt-tools", "openai", "gpt-tools")
CLAUDE = Deployment("anthropic/claude-a", "anthropic", "claude-a")
#: Quotes, a backslash, a newline and non-ASCII: escapes in the JSON strings.
TEXT = 'Four, said the "calculator" \\ über alles.\nThat is all, ☀ friends.'
CALL = FakeToolCall("weather", {"city": "Paris", "days": 2})


def fake_provider() -> FakeProvider:
    return FakeProvider(
        [
            FakeModel("gpt-a", content=TEXT, price=PRICE),
            FakeModel("gpt-b", content="B answers instead.", price=PRICE),
            FakeModel("gpt-tools", tool_calls=(CALL,), price=PRICE),
            FakeModel("claude-a", content=TEXT, price=PRICE),
        ],
        require_key=KEY,
    )


class Handler(Protocol):
    """A mock transport's handler, sync and async."""

    def __call__(self, request: httpx2.Request) -> httpx2.Response: ...

    async def handle_async(self, request: httpx2.Request) -> httpx2.Response: ...


class StubEngine:
    """What the relay needs of an engine: one fixed decision, one dispatcher."""

    def __init__(self, dispatcher: Dispatcher, decision: Decision) -> None:
        self.dispatcher = dispatcher
        self.decision = decision
        self.catalog = CATALOG

    def decide(self, request: ChatRequest, context: Any = None) -> Decision:
        return self.decision

    async def adecide(self, request: ChatRequest, context: Any = None) -> Decision:
        return self.decision

    def complete(self, request: ChatRequest, context: Any = None, **kw: Any) -> Completion:
        sink = cast("MemorySink", self.dispatcher.sink)
        before = len(sink.records)
        response = self.dispatcher.dispatch(request, self.decision, context)
        return Completion(response, self.decision, tuple(sink.records[before:]))

    async def acomplete(self, request: ChatRequest, context: Any = None, **kw: Any) -> Completion:
        sink = cast("MemorySink", self.dispatcher.sink)
        before = len(sink.records)
        response = await self.dispatcher.adispatch(request, self.decision, context)
        return Completion(response, self.decision, tuple(sink.records[before:]))

    def stream(self, request: ChatRequest, context: Any = None, **kw: Any) -> Any:
        return self.decision, self.dispatcher.stream(request, self.decision, context)

    async def astream(self, request: ChatRequest, context: Any = None, **kw: Any) -> Any:
        return self.decision, await self.dispatcher.astream(request, self.decision, context)


def make_relay(
    upstream: Handler, primary: Deployment = A, fallbacks: tuple[Deployment, ...] = (), **kw: Any
) -> tuple[Relay, Dispatcher]:
    """A relay whose every call gets ``primary`` then ``fallbacks``, sent through mock
    transports to ``upstream``; ``kw`` goes to the dispatcher (no retries unless set)."""
    providers = {
        "openai": provider_config("openai", api_key=KEY, base_url="https://fake.invalid/v1"),
        "anthropic": provider_config("anthropic", api_key=KEY, base_url="https://fake.invalid"),
    }
    kw.setdefault("retry", RetryPolicy(max_retries=0))
    dispatcher = Dispatcher(
        providers,
        catalog=CATALOG,
        sink=MemorySink(),
        client=httpx2.Client(transport=httpx2.MockTransport(upstream)),
        async_client=httpx2.AsyncClient(transport=httpx2.MockTransport(upstream.handle_async)),
        **kw,
    )
    decision = Decision(
        primary=primary,
        fallbacks=fallbacks,
        tier=1,
        estimated_cost=None,
        requested_model=primary.key,
        requested_cost=None,
        mode="enforce",
        reasons=(),
    )
    return Relay(cast("LLMRoute", StubEngine(dispatcher, decision))), dispatcher
