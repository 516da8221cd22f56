"""What the page shows after an LLM call: who answered, for how much, and why.

llmroute adds ``x-llmroute-*`` headers to every response it intercepts; the SDKs
expose them through ``with_raw_response``. The cost the requested model would
have had is priced here from the same token usage, with the catalog's list prices.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from routing_middleware.pricing import cost_of
from routing_middleware.schema import Usage

__all__ = ["RoutedAnswer", "parse_reasons", "price"]


@dataclass(frozen=True, slots=True)
class RoutedAnswer:
    """One answered call as the demo page shows it."""

    text: str
    requested_model: str
    model: str
    provider: str
    cost: Decimal | None
    requested_cost: Decimal | None
    reasons: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float | None = None
    streamed: bool = False

    @property
    def saved(self) -> Decimal | None:
        """What routing saved against the requested model, when both costs are known."""
        if self.cost is None or self.requested_cost is None:
            return None
        return self.requested_cost - self.cost

    @property
    def rerouted(self) -> bool:
        """True when another model than the requested one answered."""
        return self.model.rsplit("/", 1)[-1] != self.requested_model.rsplit("/", 1)[-1]

    @classmethod
    def build(
        cls,
        *,
        text: str,
        headers: Mapping[str, str],
        requested_model: str,
        usage: Usage,
        latency_ms: float | None = None,
        streamed: bool = False,
        answered_by: str | None = None,
    ) -> RoutedAnswer:
        """Read llmroute's headers, and price what they leave out from ``usage``."""
        model = headers.get("x-llmroute-model") or answered_by or requested_model
        cost = _decimal(headers.get("x-llmroute-cost-usd"))
        if cost is None:
            cost = price(usage, model)
        return cls(
            text=text,
            requested_model=requested_model,
            model=model,
            provider=headers.get("x-llmroute-provider") or "—",
            cost=cost,
            requested_cost=price(usage, requested_model),
            reasons=parse_reasons(headers.get("x-llmroute-decision")),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            latency_ms=latency_ms,
            streamed=streamed,
        )


def price(usage: Usage, model: str) -> Decimal | None:
    """List-price cost of ``usage`` on ``model``; ``None`` for a model the catalog lacks."""
    try:
        return cost_of(usage, model)
    except Exception:  # an unknown or unpriced model: show "unknown", not an error page
        return None


def parse_reasons(header: str | None) -> list[str]:
    """The decision's reasons from the ``x-llmroute-decision`` header, as sentences.

    Accepts a JSON document (a list of reasons, or an object with ``reasons``;
    each reason a string, a ``[code, sentence]`` pair or ``{"code", "message"}``)
    and falls back to ``;``-separated text.
    """
    if not header:
        return []
    try:
        data: Any = json.loads(header)
    except ValueError:
        return [part.strip() for part in header.split(";") if part.strip()]
    if isinstance(data, dict):
        data = data.get("reasons", [])
    if not isinstance(data, list):
        return [str(data)]
    out: list[str] = []
    for item in data:
        if isinstance(item, list | tuple) and item:
            out.append(str(item[-1]))
        elif isinstance(item, dict):
            out.append(str(item.get("message") or item.get("code") or item))
        else:
            out.append(str(item))
    return out


def _decimal(value: str | None) -> Decimal | None:
    if not value:
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None
