"""One FakeProvider model served over a real socket, and a dispatcher pointed at it.

Shared by the tests of the upstream senders (httpx's pool, aiohttp).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from routing_middleware.catalog import Catalog, ModelInfo, Price
from routing_middleware.dispatch import Dispatcher
from routing_middleware.metering import MemorySink
from routing_middleware.providers.registry import provider_config
from routing_middleware.router import Decision, Deployment
from routing_middleware.schema import ChatRequest, Message
from routing_middleware.testing import FakeModel, FakeProvider

KEY = "sk-test-served-0001"
TEXT = "Four, over a real socket."
PRICE = Price(Decimal("1"), Decimal("2"))
CATALOG = Catalog([ModelInfo("openai/gpt-a", "openai", "gpt-a", PRICE, 16_000)])
A = Deployment("openai/gpt-a", "openai", "gpt-a")


@contextmanager
def served_fake() -> Iterator[tuple[FakeProvider, str]]:
    """The fake (model ``gpt-a``, key :data:`KEY`) and its base URL."""
    fake = FakeProvider([FakeModel("gpt-a", content=TEXT, price=PRICE)], require_key=KEY)
    with fake.serve() as url:
        yield fake, url


def chat(stream: bool = False) -> ChatRequest:
    return ChatRequest(
        model="openai/gpt-a",
        messages=[Message(role="user", content="What is two plus two?")],
        max_tokens=32,
        stream=stream,
    )


def decision() -> Decision:
    return Decision(
        primary=A,
        fallbacks=(),
        tier=1,
        estimated_cost=None,
        requested_model="openai/gpt-a",
        requested_cost=None,
        mode="enforce",
        reasons=(),
    )


def dispatcher(url: str, sink: MemorySink | None = None, **kw: Any) -> Dispatcher:
    """A dispatcher with one provider, ``openai``, at ``url``."""
    providers = {"openai": provider_config("openai", api_key=KEY, base_url=f"{url}/v1")}
    return Dispatcher(providers, catalog=CATALOG, sink=sink or MemorySink(), **kw)
