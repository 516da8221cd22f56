"""What the page shows after an LLM call: who answered, for how much, and why.

llmroute adds ``x-llmroute-*`` headers to every response it intercepts (model,
provider, cost, the requested model's cost, the decision's reason codes); the SDKs
expose them through ``with_raw_response``. The call's usage records, collected
while it runs, add the decision's reasons in words. What a header leaves out (a
stream's cost is known only at its end) is priced from the token usage with the
catalog's list prices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from routing_middleware.metering import UsageRecord
from routing_middleware.pricing import cost_of
from routing_middleware.schema import Usage

__all__ = ["REASON_CODES", "RoutedAnswer", "parse_reasons", "price"]


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
        records: Sequence[UsageRecord] = (),
        latency_ms: float | None = None,
        streamed: bool = False,
        answered_by: str | None = None,
    ) -> RoutedAnswer:
        """Read llmroute's headers and the call's usage records, and price what is missing.

        ``records`` are the call's usage records (``collect_records()``); they carry
        the decision's reasons as sentences, where the header has only their codes.
        """
        model = headers.get("x-llmroute-model") or answered_by or requested_model
        cost = _decimal(headers.get("x-llmroute-cost-usd"))
        requested_cost = _decimal(headers.get("x-llmroute-requested-cost-usd"))
        if records:
            if cost is None:
                cost = sum((r.cost for r in records), Decimal(0))
            if requested_cost is None and all(r.requested_cost is not None for r in records):
                requested_cost = sum((r.requested_cost or Decimal(0) for r in records), Decimal(0))
        if cost is None:
            cost = price(usage, model)
        if requested_cost is None:
            requested_cost = price(usage, requested_model)
        sentences = next((list(r.reasons) for r in reversed(records) if r.reasons), [])
        reasons = [message for _, message in sentences] or parse_reasons(
            headers.get("x-llmroute-decision")
        )
        return cls(
            text=text,
            requested_model=requested_model,
            model=model,
            provider=headers.get("x-llmroute-provider") or "—",
            cost=cost,
            requested_cost=requested_cost,
            reasons=reasons,
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


#: What the reason codes of ``x-llmroute-decision`` mean, for when only the header is known.
REASON_CODES = {
    "hint_tier": "the view's tier hint chose the tier",
    "classifier": "the complexity classifier chose the tier",
    "requested_tier": "the tier of the requested model",
    "default_tier": "no tier given: the balanced tier",
    "rule": "a routing rule matched",
    "budget_downgrade": "a budget near its limit downgraded the tier",
    "budget_cheapest": "a budget near its limit sent it to the cheapest model",
    "excluded_sla": "a model too slow for the latency SLA was excluded",
    "excluded_unavailable": "an unavailable deployment was excluded",
    "chosen": "the cheapest eligible model in the tier was chosen",
    "observe": "observe mode: the requested model was kept",
}


def parse_reasons(header: str | None) -> list[str]:
    """Explain the comma-separated reason codes of an ``x-llmroute-decision`` header."""
    if not header:
        return []
    codes = [code.strip() for code in header.split(",") if code.strip()]
    return [f"{REASON_CODES.get(code, code)} ({code})" for code in codes]


def _decimal(value: str | None) -> Decimal | None:
    if not value:
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None
