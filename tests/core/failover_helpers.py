"""One fake deployment and its breaker's settings, shared by the failover tests."""

from __future__ import annotations

from decimal import Decimal

from routing_middleware.breaker import BreakerPolicy
from routing_middleware.catalog import Catalog, ModelInfo, Price
from routing_middleware.router import Decision, Deployment

KEY = "sk-test-aaaa-0001"
A = Deployment("openai/gpt-a", "openai", "gpt-a")
PRICE = Price(Decimal("1"), Decimal("2"))
CATALOG = Catalog([ModelInfo("openai/gpt-a", "openai", "gpt-a", PRICE, 16_000)])
POLICY = BreakerPolicy(consecutive_failures=1, cooldown_s=10, probe_timeout_s=600)


class WallClock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def decision() -> Decision:
    """Deployment ``A`` and nothing to fall back to."""
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
