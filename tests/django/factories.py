"""Builders of usage records for the tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from routing_middleware.metering import UsageRecord
from routing_middleware.schema import Usage

_counter = itertools.count(1)


def make_record(**overrides: Any) -> UsageRecord:
    """A plausible record; any field can be overridden."""
    n = next(_counter)
    usage = overrides.pop(
        "usage",
        Usage(input_tokens=1000 + n, output_tokens=200, cached_input_tokens=100),
    )
    fields: dict[str, Any] = {
        "requested_model": "gpt-4o",
        "chosen_model": "gpt-4o-mini",
        "provider": "openai",
        "usage": usage,
        "cost": Decimal("0.0012345678"),
        "requested_cost": Decimal("0.0100000000"),
        "feature": "summaries",
        "user_id": None,
        "tier": 1,
        "latency_ms": 120.0 + n % 50,
        "ttft_ms": 40.0,
        "created_at": datetime(2026, 11, 20, 12, 0, tzinfo=UTC),
        "reasons": (("tier_hint", "tier 1 requested"),),
    }
    fields.update(overrides)
    return UsageRecord(**fields)
