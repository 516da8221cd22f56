"""Builders of usage records and checks shared by the tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.db.models import Count, Sum

from django_llmroute.models import DailySummary, DailyUsage, LLMCall
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


def spool_lines(path: Path) -> int:
    """Records waiting in the spool (the live file and any file renamed for replay)."""
    files = [path, *path.parent.glob(path.name + ".replaying-*")] if path.parent.exists() else []
    return sum(len(p.read_bytes().splitlines()) for p in files if p.exists())


def assert_rollup_matches_calls() -> None:
    """The daily rollup equals the totals of the stored calls, key by key."""
    calls = {
        (row["chosen_model"], row["feature"] or ""): row
        for row in LLMCall.objects.values("chosen_model", "feature").annotate(
            n=Count("id"), cost=Sum("cost"), tokens=Sum("input_tokens")
        )
    }
    for model in (DailyUsage, DailySummary):
        rollup = {
            (row["model"], row["feature"]): row
            for row in model.objects.values("model", "feature").annotate(
                n=Sum("calls"), cost=Sum("cost"), tokens=Sum("input_tokens")
            )
        }
        assert calls.keys() == rollup.keys(), model
        for key, row in calls.items():
            assert rollup[key]["n"] == row["n"], (model, key)
            assert rollup[key]["tokens"] == row["tokens"], (model, key)
            assert Decimal(rollup[key]["cost"]).quantize(Decimal("1e-8")) == Decimal(
                row["cost"]
            ).quantize(Decimal("1e-8")), (model, key)
