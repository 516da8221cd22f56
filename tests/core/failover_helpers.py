"""One fake deployment and its breaker's settings, shared by the failover tests (the
deployment, its catalog and decision are :mod:`served_upstream`'s)."""

from __future__ import annotations

from routing_middleware.breaker import BreakerPolicy

from .served_upstream import CATALOG, PRICE, A, decision

__all__ = ["CATALOG", "KEY", "POLICY", "PRICE", "A", "WallClock", "decision"]

KEY = "sk-test-aaaa-0001"
POLICY = BreakerPolicy(consecutive_failures=1, cooldown_s=10, probe_timeout_s=600)


class WallClock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now
