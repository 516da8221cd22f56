"""The aggregation queries behind the admin's cost and decisions pages and ``llmroute_report``.

Totals and breakdowns come from :class:`~django_llmroute.models.LLMCall` for a
filtered queryset, or from the :class:`~django_llmroute.models.DailyUsage` rollup
when the question is only "which days" (and optionally which feature, model or
provider) — the rollup answers those exactly with far fewer rows. Latency
percentiles and the tier split always come from the calls.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.db.models import (
    Aggregate,
    Avg,
    Count,
    DecimalField,
    F,
    FloatField,
    Min,
    Q,
    QuerySet,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from .models import NO_TIER, DailySummary, DailyUsage, LLMCall

if TYPE_CHECKING:
    from .models import Budget

__all__ = [
    "BREAKDOWNS",
    "Decisions",
    "Figures",
    "Row",
    "Totals",
    "as_decimal",
    "as_stored",
    "aware",
    "breakdown",
    "budget_spent",
    "cost_figures",
    "csv_cell",
    "date_range",
    "decisions",
    "format_money",
    "grouped_rows",
    "percentile",
    "rollup_breakdown",
    "rollup_spend_per_day",
    "rollup_tier_distribution",
    "rollup_totals",
    "saving_text",
    "spend_per_day",
    "tier_distribution",
    "totals",
    "user_labels",
]

_MONEY = DecimalField(max_digits=30, decimal_places=10)
_ZERO = Value(Decimal(0), output_field=_MONEY)
_OBSERVE = Q(mode="observe")


def _observed_of_calls() -> dict[str, Any]:
    """Aggregates of the observe-mode calls (their routed cost, or their own cost)."""
    return {
        "observed_calls": Count("id", filter=_OBSERVE),
        "observed_spend": Coalesce(Sum("cost", filter=_OBSERVE), _ZERO),
        "observed_requested": Coalesce(
            Sum(Coalesce("requested_cost", "cost"), filter=_OBSERVE), _ZERO
        ),
        "observed_routed": Coalesce(Sum(Coalesce("routed_cost", "cost"), filter=_OBSERVE), _ZERO),
    }


def _observed_of_rollup() -> dict[str, Any]:
    """:func:`_observed_of_calls` from the rollup's sums."""
    return {
        "observed_calls": Coalesce(Sum("observed_calls"), 0),
        "observed_spend": Coalesce(Sum("observed_cost"), _ZERO),
        "observed_requested": Coalesce(Sum("observed_requested_cost"), _ZERO),
        "observed_routed": Coalesce(Sum("observed_routed_cost"), _ZERO),
    }


#: Breakdown names and the LLMCall / DailyUsage field each groups by.
BREAKDOWNS: dict[str, tuple[str, str]] = {
    "feature": ("feature", "feature"),
    "user": ("user_ref", "user_ref"),
    "model": ("chosen_model", "model"),
    "provider": ("provider", "provider"),
}


def format_money(value: Decimal | float | int | None) -> str:
    """Dollars for people: ``$1,234.57``, ``$0.0123``, ``$0.001234`` (never float maths)."""
    if value is None:
        return "—"
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount >= 1 or amount == 0:
        places = Decimal("0.01")
    elif amount >= Decimal("0.01"):
        places = Decimal("0.0001")
    else:
        places = Decimal("0.000001")
    rounded = amount.quantize(places, rounding=ROUND_HALF_UP)
    return f"{sign}${rounded:,}"


def as_decimal(value: Any) -> Decimal:
    """A database sum as Decimal (SQLite hands back floats for decimal sums)."""
    if value is None:
        return Decimal(0)
    if isinstance(value, Decimal):
        return value
    return Decimal(str(value)).quantize(Decimal("1e-10"))


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _percent(part: Decimal, whole: Decimal) -> float:
    return float(part / whole * 100) if whole else 0.0


def saving_text(amount: Decimal, whole: Decimal) -> str:
    """``$1.23 (45.6%)``: a saving and its share of ``whole``."""
    return f"{format_money(amount)} ({_percent(amount, whole):.1f}%)"


@dataclass(slots=True)
class Totals:
    """Headline figures for a set of calls.

    The ``observed_*`` figures cover the calls made in observe mode, which went to
    the requested model: their spend, what their requested models would have
    billed, what routing would have cost them (a call's own cost when its routed
    cost is unknown — ``observed_unpriced`` counts those) and their number.
    """

    spend: Decimal = Decimal(0)
    requested: Decimal = Decimal(0)
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    errors: int = 0
    cache_hits: int = 0
    fallbacks: int = 0
    avg_latency_ms: float | None = None
    p95_latency_ms: float | None = None
    source: str = "calls"
    observed_calls: int = 0
    observed_spend: Decimal = Decimal(0)
    observed_requested: Decimal = Decimal(0)
    observed_routed: Decimal = Decimal(0)
    observed_unpriced: int = 0

    @property
    def enforced_spend(self) -> Decimal:
        """What the calls routing decided (not observe mode) cost."""
        return self.spend - self.observed_spend

    @property
    def enforced_requested(self) -> Decimal:
        """What the requested models would have billed for those calls."""
        return self.requested - self.observed_requested

    @property
    def savings(self) -> Decimal:
        """What routing saved: requested-model cost minus spend, of the enforced calls."""
        return self.enforced_requested - self.enforced_spend

    @property
    def savings_pct(self) -> float:
        return _percent(self.savings, self.enforced_requested)

    @property
    def would_save(self) -> Decimal:
        """What routing the observe-mode calls would have saved."""
        return self.observed_spend - self.observed_routed

    @property
    def would_save_pct(self) -> float:
        return _percent(self.would_save, self.observed_spend)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def error_rate(self) -> float:
        return _rate(self.errors, self.calls)

    def display(self) -> dict[str, str]:
        """The figures formatted for people, by name."""
        return {
            "spend": format_money(self.spend),
            "calls": f"{self.calls:,}",
            "tokens": f"{self.input_tokens:,} / {self.output_tokens:,}",
            "savings": saving_text(self.savings, self.enforced_requested),
            "observed_calls": f"{self.observed_calls:,}",
            "observed_spend": format_money(self.observed_spend),
            "observed_routed": format_money(self.observed_routed),
            "would_save": saving_text(self.would_save, self.observed_spend),
            "observed_unpriced": f"{self.observed_unpriced:,}",
            "cache_hit_rate": f"{self.cache_hit_rate * 100:.1f}%",
            "fallback_rate": f"{self.fallback_rate * 100:.1f}%",
            "error_rate": f"{self.error_rate * 100:.1f}%",
            "avg_latency": _ms(self.avg_latency_ms),
            "p95_latency": _ms(self.p95_latency_ms),
        }

    @property
    def cache_hit_rate(self) -> float:
        return _rate(self.cache_hits, self.calls)

    @property
    def fallback_rate(self) -> float:
        return _rate(self.fallbacks, self.calls)


@dataclass(slots=True)
class Row:
    """One line of a breakdown.

    ``savings`` is what routing saved on the line's enforced calls; the
    ``observed_*`` figures are its observe-mode calls, as in :class:`Totals`.
    """

    key: Any
    label: str
    spend: Decimal
    calls: int
    tokens: int
    savings: Decimal = Decimal(0)
    extra: dict[str, Any] = field(default_factory=dict)
    observed_calls: int = 0
    observed_spend: Decimal = Decimal(0)
    observed_routed: Decimal = Decimal(0)

    @property
    def would_save(self) -> Decimal:
        """What routing the line's observe-mode calls would have saved."""
        return self.observed_spend - self.observed_routed

    @property
    def would_save_text(self) -> str:
        if not self.observed_calls:
            return "—"
        return saving_text(self.would_save, self.observed_spend)

    @property
    def spend_text(self) -> str:
        return format_money(self.spend)

    @property
    def savings_text(self) -> str:
        return format_money(self.savings)

    @property
    def calls_text(self) -> str:
        return f"{self.calls:,}"

    @property
    def tokens_text(self) -> str:
        return f"{self.tokens:,}"


class _PercentileCont(Aggregate):
    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: Any, fraction: float) -> None:
        super().__init__(expression)
        self.extra["fraction"] = float(fraction)


def percentile(
    qs: QuerySet[Any],
    field_name: str,
    fraction: float,
    *,
    method: str = "auto",
    count: int | None = None,
) -> float | None:
    """The ``fraction`` percentile of ``field_name``, interpolated like PostgreSQL's
    ``percentile_cont``.

    ``method="aggregate"`` (the default on PostgreSQL) sorts in the database with
    ``percentile_cont``; ``method="offset"`` (the default elsewhere) counts, then
    fetches the two neighbouring values from the nearer end of the ordering — with
    the ``(latency_ms, created_at)`` index that reads a few percent of an index
    instead of sorting every row. ``count``, when known, saves the offset method
    its count (it must be the number of non-null values in ``qs``).
    """
    qs = qs.filter(**{f"{field_name}__isnull": False}).order_by()
    if method == "auto":
        method = "aggregate" if connections[qs.db].vendor == "postgresql" else "offset"
    if method == "aggregate":
        value = qs.aggregate(p=_PercentileCont(F(field_name), fraction))["p"]
        return None if value is None else float(value)
    n = qs.count() if count is None else count
    if n == 0:
        return None
    position = fraction * (n - 1)
    low, high = math.floor(position), math.ceil(position)
    if fraction >= 0.5:  # walk down from the top: fewer rows to skip
        values = list(
            qs.order_by(f"-{field_name}").values_list(field_name, flat=True)[n - 1 - high : n - low]
        )[::-1]
    else:
        values = list(qs.order_by(field_name).values_list(field_name, flat=True)[low : high + 1])
    if not values:  # the count did not match the rows (changed meanwhile)
        return percentile(qs, field_name, fraction, method=method) if count is not None else None
    lower, upper = float(values[0]), float(values[-1])
    return lower + (upper - lower) * (position - low)


def totals(qs: QuerySet[LLMCall], *, with_p95: bool = True) -> Totals:
    """Headline figures of the calls in ``qs``, in one aggregate query (+ one for p95)."""
    data = qs.order_by().aggregate(
        spend=Coalesce(Sum("cost"), _ZERO),
        requested=Coalesce(Sum(Coalesce("requested_cost", "cost")), _ZERO),
        calls=Count("id"),
        input_tokens=Coalesce(Sum("input_tokens"), 0),
        output_tokens=Coalesce(Sum("output_tokens"), 0),
        cached_input_tokens=Coalesce(Sum("cached_input_tokens"), 0),
        errors=Count("id", filter=Q(status=LLMCall.Status.ERROR)),
        cache_hits=Count("id", filter=Q(status=LLMCall.Status.CACHE_HIT)),
        fallbacks=Count("id", filter=Q(fallback_from__isnull=False)),
        avg_latency_ms=Avg("latency_ms"),
        observed_unpriced=Count("id", filter=_OBSERVE & Q(routed_cost__isnull=True)),
        **_observed_of_calls(),
    )
    result = Totals(
        spend=as_decimal(data["spend"]),
        requested=as_decimal(data["requested"]),
        calls=data["calls"],
        input_tokens=int(data["input_tokens"]),
        output_tokens=int(data["output_tokens"]),
        cached_input_tokens=int(data["cached_input_tokens"]),
        errors=data["errors"],
        cache_hits=data["cache_hits"],
        fallbacks=data["fallbacks"],
        avg_latency_ms=data["avg_latency_ms"],
        observed_unpriced=data["observed_unpriced"],
        **_observed(data),
    )
    if with_p95:
        result.p95_latency_ms = percentile(qs, "latency_ms", 0.95)
    return result


def rollup_totals(rollup: QuerySet[Any]) -> Totals:
    """Headline figures from rollup rows (no percentile: the rollup keeps no latencies)."""
    data = rollup.order_by().aggregate(
        spend=Coalesce(Sum("cost"), _ZERO),
        requested=Coalesce(Sum("requested_cost"), _ZERO),
        calls=Coalesce(Sum("calls"), 0),
        input_tokens=Coalesce(Sum("input_tokens"), 0),
        output_tokens=Coalesce(Sum("output_tokens"), 0),
        cached_input_tokens=Coalesce(Sum("cached_input_tokens"), 0),
        errors=Coalesce(Sum("errors"), 0),
        cache_hits=Coalesce(Sum("cache_hits"), 0),
        fallbacks=Coalesce(Sum("fallbacks"), 0),
        latency_sum=Coalesce(Sum("latency_ms_sum"), 0.0),
        latency_count=Coalesce(Sum("latency_count"), 0),
        observed_unpriced=Coalesce(Sum("observed_unpriced"), 0),
        **_observed_of_rollup(),
    )
    return Totals(
        spend=as_decimal(data["spend"]),
        requested=as_decimal(data["requested"]),
        calls=int(data["calls"]),
        input_tokens=int(data["input_tokens"]),
        output_tokens=int(data["output_tokens"]),
        cached_input_tokens=int(data["cached_input_tokens"]),
        errors=int(data["errors"]),
        cache_hits=int(data["cache_hits"]),
        fallbacks=int(data["fallbacks"]),
        avg_latency_ms=(
            float(data["latency_sum"]) / int(data["latency_count"])
            if data["latency_count"]
            else None
        ),
        source="rollup",
        observed_unpriced=int(data["observed_unpriced"]),
        **_observed(data),
    )


def _observed(data: dict[str, Any]) -> dict[str, Any]:
    """The ``observed_*`` fields of :class:`Totals` from an aggregate's results."""
    return {
        "observed_calls": int(data["observed_calls"]),
        "observed_spend": as_decimal(data["observed_spend"]),
        "observed_requested": as_decimal(data["observed_requested"]),
        "observed_routed": as_decimal(data["observed_routed"]),
    }


def _row(key: Any, spend: Decimal, requested: Decimal, calls: int, tokens: int, data: Any) -> Row:
    """A breakdown row: ``requested`` covers every call, ``data`` the observed sums."""
    observed = _observed(data)
    return Row(
        key,
        "",
        spend,
        calls,
        tokens,
        (requested - observed["observed_requested"]) - (spend - observed["observed_spend"]),
        observed_calls=observed["observed_calls"],
        observed_spend=observed["observed_spend"],
        observed_routed=observed["observed_routed"],
    )


def user_labels(refs: set[str]) -> dict[str, str]:
    """Usernames for recorded user ids that belong to existing users."""
    user_model = get_user_model()
    pks = []
    pk_field = user_model._meta.pk
    assert pk_field is not None
    for ref in refs:
        try:
            pks.append(pk_field.to_python(ref))
        except Exception:
            continue
    if not pks:
        return {}
    found = user_model._default_manager.filter(pk__in=pks)
    return {str(u.pk): u.get_username() for u in found}


def _label_rows(kind: str, rows: list[Row]) -> list[Row]:
    names = user_labels({r.key for r in rows if r.key}) if kind == "user" else {}
    for row in rows:
        if row.key in (None, ""):
            row.label = "—"
        else:
            row.label = names.get(str(row.key), str(row.key))
    return rows


def _call_sums() -> dict[str, Any]:
    """Per-group sums of calls: what :func:`_summed_row` reads."""
    return {
        "spend": Coalesce(Sum("cost"), _ZERO),
        "requested": Coalesce(Sum(Coalesce("requested_cost", "cost")), _ZERO),
        "n_calls": Count("id"),
        "n_in": Coalesce(Sum("input_tokens"), 0),
        "n_out": Coalesce(Sum("output_tokens"), 0),
        **_observed_of_calls(),
    }


def _rollup_sums() -> dict[str, Any]:
    """:func:`_call_sums` from the rollup."""
    return {
        "spend": Coalesce(Sum("cost"), _ZERO),
        "saved": Coalesce(Sum("saved_cost"), _ZERO),
        "n_calls": Coalesce(Sum("calls"), 0),
        "n_in": Coalesce(Sum("input_tokens"), 0),
        "n_out": Coalesce(Sum("output_tokens"), 0),
        **_observed_of_rollup(),
    }


def _summed_row(key: Any, data: dict[str, Any], *, rollup: bool) -> Row:
    spend = as_decimal(data["spend"])
    requested = spend + as_decimal(data["saved"]) if rollup else as_decimal(data["requested"])
    n_in, n_out = int(data["n_in"]), int(data["n_out"])
    row = _row(key, spend, requested, int(data["n_calls"]), n_in + n_out, data)
    row.extra.update(input_tokens=n_in, output_tokens=n_out)
    return row


def breakdown(qs: QuerySet[LLMCall], kind: str, *, limit: int = 15) -> list[Row]:
    """Spend, calls, tokens and savings per feature / user / model / provider."""
    column = BREAKDOWNS[kind][0]
    data = qs.order_by().values(column).annotate(**_call_sums()).order_by("-spend", column)[:limit]
    return _label_rows(kind, [_summed_row(d[column], d, rollup=False) for d in data])


def rollup_breakdown(rollup: QuerySet[Any], kind: str, *, limit: int = 15) -> list[Row]:
    """:func:`breakdown` from the rollup."""
    column = BREAKDOWNS[kind][1]
    data = (
        rollup.order_by()
        .values(column)
        .annotate(**_rollup_sums())
        .order_by("-spend", column)[:limit]
    )
    return _label_rows(kind, [_summed_row(d[column], d, rollup=True) for d in data])


def grouped_rows(source: QuerySet[Any], columns: Sequence[str], *, rollup: bool) -> list[Row]:
    """Breakdown rows of ``source`` for every combination of ``columns``, unlabelled.

    ``source`` holds calls, or rollup rows when ``rollup``; each row's ``key`` is
    the tuple of its ``columns``' values and its ``extra`` holds ``input_tokens``
    and ``output_tokens``. The figures are summed as :func:`breakdown` and
    :func:`rollup_breakdown` sum them, so a single column gives their rows.
    """
    data = (
        source.order_by().values(*columns).annotate(**(_rollup_sums() if rollup else _call_sums()))
    )
    return [_summed_row(tuple(d[c] for c in columns), d, rollup=rollup) for d in data]


def spend_per_day(qs: QuerySet[LLMCall], *, days: int = 92) -> list[Row]:
    """Spend and calls per local day (the latest ``days`` days that have calls)."""
    data = (
        qs.order_by()
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(spend=Coalesce(Sum("cost"), _ZERO), calls=Count("id"))
        .order_by("-day")[:days]
    )
    rows = [
        Row(d["day"], d["day"].isoformat(), as_decimal(d["spend"]), d["calls"], 0) for d in data
    ]
    return rows[::-1]


def rollup_spend_per_day(rollup: QuerySet[Any], *, days: int = 92) -> list[Row]:
    """:func:`spend_per_day` from the rollup."""
    data = (
        rollup.order_by()
        .values("date")
        .annotate(spend=Coalesce(Sum("cost"), _ZERO), n=Coalesce(Sum("calls"), 0))
        .order_by("-date")[:days]
    )
    rows = [
        Row(d["date"], d["date"].isoformat(), as_decimal(d["spend"]), int(d["n"]), 0) for d in data
    ]
    return rows[::-1]


def tier_distribution(qs: QuerySet[LLMCall]) -> list[Row]:
    """Calls and spend per routing tier."""
    data = (
        qs.order_by()
        .values("tier")
        .annotate(spend=Coalesce(Sum("cost"), _ZERO), calls=Count("id"))
        .order_by("tier")
    )
    return [
        Row(
            d["tier"],
            _tier_label(d["tier"]),
            as_decimal(d["spend"]),
            d["calls"],
            0,
        )
        for d in data
    ]


def _tier_label(tier: int | None) -> str:
    return "no tier" if tier is None or tier == NO_TIER else f"tier {tier}"


def rollup_tier_distribution(rollup: QuerySet[Any]) -> list[Row]:
    """:func:`tier_distribution` from the rollup."""
    data = (
        rollup.order_by()
        .values("tier")
        .annotate(spend=Coalesce(Sum("cost"), _ZERO), n=Coalesce(Sum("calls"), 0))
        .order_by("tier")
    )
    return [
        Row(d["tier"], _tier_label(d["tier"]), as_decimal(d["spend"]), int(d["n"]), 0) for d in data
    ]


@dataclass(slots=True)
class Figures:
    """Everything the cost report shows: totals, breakdowns, spend per day, tiers."""

    totals: Totals
    breakdowns: dict[str, list[Row]]
    per_day: list[Row]
    tiers: list[Row]


# Dimensions of the one-pass PostgreSQL report: name, LLMCall column, DailyUsage column.
_DIMENSIONS = (
    ("feature", "feature", "feature"),
    ("user", "user_ref", "user_ref"),
    ("model", "chosen_model", "model"),
    ("provider", "provider", "provider"),
    ("day", "day", "date"),
    ("tier", "tier", "tier"),
)
_CALL_MEASURES = (
    "COALESCE(SUM(s.cost), 0)",
    "COALESCE(SUM(COALESCE(s.requested_cost, s.cost)), 0)",
    "COUNT(*)",
    "COALESCE(SUM(s.input_tokens), 0)",
    "COALESCE(SUM(s.output_tokens), 0)",
    "COALESCE(SUM(s.cached_input_tokens), 0)",
    "COUNT(*) FILTER (WHERE s.status = 'error')",
    "COUNT(*) FILTER (WHERE s.status = 'cache_hit')",
    "COUNT(*) FILTER (WHERE s.fallback_from IS NOT NULL)",
    "COALESCE(SUM(s.latency_ms), 0)",
    "COUNT(s.latency_ms)",
    "COUNT(*) FILTER (WHERE s.mode = 'observe')",
    "COALESCE(SUM(s.cost) FILTER (WHERE s.mode = 'observe'), 0)",
    "COALESCE(SUM(COALESCE(s.requested_cost, s.cost)) FILTER (WHERE s.mode = 'observe'), 0)",
    "COALESCE(SUM(COALESCE(s.routed_cost, s.cost)) FILTER (WHERE s.mode = 'observe'), 0)",
    "COUNT(*) FILTER (WHERE s.mode = 'observe' AND s.routed_cost IS NULL)",
)
_ROLLUP_MEASURES = tuple(
    f"COALESCE(SUM(s.{c}), 0)"
    for c in (
        "cost",
        "requested_cost",
        "calls",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "errors",
        "cache_hits",
        "fallbacks",
        "latency_ms_sum",
        "latency_count",
        "observed_calls",
        "observed_cost",
        "observed_requested_cost",
        "observed_routed_cost",
        "observed_unpriced",
    )
)


def _grouped_figures(source: QuerySet[Any], *, rollup: bool, limit: int, days: int) -> Figures:
    """Totals and every breakdown in one scan, with ``GROUPING SETS`` (PostgreSQL).

    A rollup without users (:class:`DailySummary`) gives no user breakdown.
    """
    has_user = not rollup or source.model is DailyUsage
    dimensions = [d for d in _DIMENSIONS if has_user or d[0] != "user"]
    if rollup:
        columns = [d[2] for d in dimensions]
        inner = source.order_by().values(
            *columns,
            "cost",
            "requested_cost",
            "calls",
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "errors",
            "cache_hits",
            "fallbacks",
            "latency_ms_sum",
            "latency_count",
            "observed_calls",
            "observed_cost",
            "observed_requested_cost",
            "observed_routed_cost",
            "observed_unpriced",
        )
        measures = _ROLLUP_MEASURES
    else:
        columns = [d[1] for d in dimensions]
        inner = (
            source.order_by()
            .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
            .values(
                *columns,
                "cost",
                "requested_cost",
                "input_tokens",
                "output_tokens",
                "cached_input_tokens",
                "status",
                "fallback_from",
                "latency_ms",
                "mode",
                "routed_cost",
            )
        )
        measures = _CALL_MEASURES
    inner_sql, params = inner.query.sql_with_params()
    dims = ", ".join(f"s.{c}" for c in columns)
    sets = ", ".join(f"(s.{c})" for c in columns)
    sql = (
        f"SELECT {dims}, GROUPING({dims}), {', '.join(measures)} "
        f"FROM ({inner_sql}) s GROUP BY GROUPING SETS ({sets}, ())"
    )
    connection = connections[source.db]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        result = cursor.fetchall()
    width = len(columns)
    everything = (1 << width) - 1
    totals = Totals(source="rollup" if rollup else "calls")
    grouped: dict[str, list[Row]] = {d[0]: [] for d in _DIMENSIONS}
    for line in result:
        keys, g, m = line[:width], line[width], line[width + 1 :]
        spend, requested = as_decimal(m[0]), as_decimal(m[1])
        observed = {
            "observed_calls": m[11],
            "observed_spend": m[12],
            "observed_requested": m[13],
            "observed_routed": m[14],
        }
        if g == everything:
            totals.spend, totals.requested, totals.calls = spend, requested, int(m[2])
            totals.input_tokens, totals.output_tokens = int(m[3]), int(m[4])
            totals.cached_input_tokens = int(m[5])
            totals.errors, totals.cache_hits, totals.fallbacks = int(m[6]), int(m[7]), int(m[8])
            totals.avg_latency_ms = float(m[9]) / int(m[10]) if m[10] else None
            for attribute, value in _observed(observed).items():
                setattr(totals, attribute, value)
            totals.observed_unpriced = int(m[15])
            continue
        index = next(i for i in range(width) if not g & (1 << (width - 1 - i)))
        name = dimensions[index][0]
        grouped[name].append(
            _row(keys[index], spend, requested, int(m[2]), int(m[3]) + int(m[4]), observed)
        )
    breakdowns = {}
    for kind in BREAKDOWNS:
        if kind == "user" and not has_user:
            continue
        rows = sorted(grouped[kind], key=lambda r: (-r.spend, str(r.key)))[:limit]
        breakdowns[kind] = _label_rows(kind, rows)
    per_day = sorted((r for r in grouped["day"] if r.key is not None), key=lambda r: r.key)
    per_day = per_day[-days:]
    for row in per_day:
        row.label = row.key.isoformat()
        row.tokens = 0
    tiers = sorted(grouped["tier"], key=lambda r: (r.key is None or r.key == NO_TIER, r.key or 0))
    for row in tiers:
        row.label = _tier_label(row.key)
        row.tokens = 0
    return Figures(totals, breakdowns, per_day, tiers)


def cost_figures(
    qs: QuerySet[LLMCall],
    rollup_filters: dict[str, Any] | None = None,
    *,
    limit: int = 15,
    days: int = 92,
) -> Figures:
    """The cost report's figures for the calls in ``qs``.

    ``rollup_filters`` (lookups on the rollups' fields) says that the rollups,
    filtered so, select exactly the calls in ``qs`` (the admin decides): then they
    answer everything but the latency percentile — :class:`DailySummary` unless
    a user is filtered on, :class:`DailyUsage` for the users. Otherwise the calls
    are read. On PostgreSQL each source is read in one ``GROUPING SETS`` pass.
    """
    postgres = connections[qs.db].vendor == "postgresql"
    if rollup_filters is None:
        if postgres:
            figures = _grouped_figures(qs, rollup=False, limit=limit, days=days)
        else:
            figures = Figures(
                totals(qs, with_p95=False),
                {kind: breakdown(qs, kind, limit=limit) for kind in BREAKDOWNS},
                spend_per_day(qs, days=days),
                tier_distribution(qs),
            )
        figures.totals.p95_latency_ms = percentile(qs, "latency_ms", 0.95)
        return figures
    usage = DailyUsage.objects.using(qs.db).filter(**rollup_filters)
    by_user = any(key.split("__")[0] == "user_ref" for key in rollup_filters)
    rollup: QuerySet[Any] = (
        usage if by_user else DailySummary.objects.using(qs.db).filter(**rollup_filters)
    )
    if postgres:
        figures = _grouped_figures(rollup, rollup=True, limit=limit, days=days)
    else:
        figures = Figures(
            rollup_totals(rollup),
            {
                kind: rollup_breakdown(rollup, kind, limit=limit)
                for kind in BREAKDOWNS
                if kind != "user" or by_user
            },
            rollup_spend_per_day(rollup, days=days),
            rollup_tier_distribution(rollup),
        )
    if "user" not in figures.breakdowns:
        figures.breakdowns["user"] = rollup_breakdown(usage, "user", limit=limit)
        figures.breakdowns = {kind: figures.breakdowns[kind] for kind in BREAKDOWNS}
    # Over a long range the index walk beats sorting every latency, and the rollup
    # counts the latencies.
    figures.totals.p95_latency_ms = percentile(
        qs, "latency_ms", 0.95, method="offset", count=_latency_count(qs, rollup)
    )
    return figures


def _latency_count(qs: QuerySet[LLMCall], rollup: QuerySet[Any]) -> int:
    """Calls with a latency in ``qs``, mostly from the rollup selecting the same calls.

    Pruning deletes old calls but keeps their rollup, so only rollup days after the
    first day that still has calls count; that first day is counted in the calls.
    """
    first = qs.order_by().aggregate(first=Min("created_at"))["first"]
    if first is None:
        return 0
    tz = timezone.get_default_timezone()
    # Naive when USE_TZ is False: then already the local time.
    boundary = first.date() if timezone.is_naive(first) else timezone.localdate(first, tz)
    start, end = date_range(boundary, boundary)
    on_boundary = (
        qs.order_by()
        .filter(created_at__gte=start, created_at__lt=end, latency_ms__isnull=False)
        .count()
    )
    later = rollup.order_by().filter(date__gt=boundary).aggregate(n=Sum("latency_count"))["n"]
    return on_boundary + int(later or 0)


# --------------------------------------------------------------------------- decisions


@dataclass(slots=True)
class Decisions:
    """What the routing decisions said, over the latest ``examined`` calls."""

    examined: int = 0
    reasons: list[tuple[str, int]] = field(default_factory=list)
    budget_downgrades: list[tuple[str, int]] = field(default_factory=list)
    sla_exclusions: list[tuple[str, int]] = field(default_factory=list)
    fallback_pairs: list[tuple[str, str, int]] = field(default_factory=list)
    rerouted: int = 0


_BUDGET_NAME = re.compile(r"budget '([^']+)'")
_EXCLUDED_MODEL = re.compile(r"^(\S+) excluded\b")


def _budget_key(code: str, sentence: str) -> str | None:
    """``"team: downgrade"`` for the router's ``budget_*`` reasons, else ``None``."""
    if not code.startswith("budget"):
        return None
    found = _BUDGET_NAME.search(sentence)
    action = code.removeprefix("budget").strip("_") or "budget"
    return f"{found.group(1) if found else sentence}: {action}"


def _sla_key(code: str, sentence: str) -> str | None:
    """The model an SLA reason excluded (the router's ``excluded_sla``), else ``None``."""
    if "sla" not in code and "latency" not in code:
        return None
    found = _EXCLUDED_MODEL.match(sentence)
    return found.group(1) if found else sentence


def decisions(qs: QuerySet[LLMCall], *, sample: int = 50_000, limit: int = 20) -> Decisions:
    """Reason codes, budget downgrades, SLA exclusions and fallback pairs.

    Reasons are counted over the latest ``sample`` calls of ``qs`` (JSON lists do not
    aggregate portably); fallback pairs and reroutes over all of ``qs``. Budget
    actions are the ``budget_*`` reasons, counted by budget and action; SLA
    exclusions the reasons whose code mentions ``sla`` or ``latency``, counted by
    the model they excluded.
    """
    codes: Counter[str] = Counter()
    budget: Counter[str] = Counter()
    sla: Counter[str] = Counter()
    examined = 0
    latest = qs.order_by("-created_at").values_list("reasons", flat=True)[:sample]
    for reasons in latest.iterator(chunk_size=2000):
        examined += 1
        for pair in reasons or ():
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                continue
            code, sentence = str(pair[0]), str(pair[1])
            codes[code] += 1
            budget_key = _budget_key(code, sentence)
            if budget_key is not None:
                budget[budget_key] += 1
            sla_key = _sla_key(code, sentence)
            if sla_key is not None:
                sla[sla_key] += 1
    pairs = (
        qs.order_by()
        .filter(fallback_from__isnull=False)
        .values("fallback_from", "chosen_model")
        .annotate(n=Count("id"))
        .order_by("-n", "fallback_from")[:limit]
    )
    rerouted = qs.order_by().exclude(requested_model=F("chosen_model")).count()
    return Decisions(
        examined=examined,
        reasons=codes.most_common(limit),
        budget_downgrades=budget.most_common(limit),
        sla_exclusions=sla.most_common(limit),
        fallback_pairs=[(p["fallback_from"], p["chosen_model"], p["n"]) for p in pairs],
        rerouted=rerouted,
    )


# --------------------------------------------------------------------------- budgets


def _period_is_whole_days(start: datetime) -> bool:
    local = timezone.localtime(start, timezone.get_default_timezone())
    return (local.hour, local.minute, local.second, local.microsecond) == (0, 0, 0, 0)


def _highest(qs: QuerySet[Any], column: str) -> Decimal:
    """The largest per-``column`` sum of ``cost`` (subjects with no value left out)."""
    top = (
        qs.order_by()
        .exclude(**{column: ""})
        .exclude(**{f"{column}__isnull": True})
        .values(column)
        .annotate(s=Sum("cost"))
        .order_by("-s")[:1]
    )
    return max((as_decimal(row["s"]) for row in top), default=Decimal(0))


def budget_spent(budget: Budget, now: datetime | None = None) -> Decimal:
    """What ``budget``'s scope spent from the start of its current period up to ``now``.

    A budget without a value for a user / feature / tag / API-key scope counts each
    subject on its own: this is then the highest subject's spend. Calendar periods
    of global, user and feature budgets read the rollups when their days line up
    with the period; the rest reads the calls.
    """
    now = aware(now or timezone.now())
    start = budget.period_start(now)
    scope, value = budget.scope, budget.scope_value or None
    tz = timezone.get_default_timezone()
    if (
        scope in ("global", "user", "feature")
        and budget.period != "rolling"
        and _period_is_whole_days(start)
        and timezone.localdate(now, tz) == timezone.localdate(aware(timezone.now()), tz)
    ):
        since = timezone.localdate(start, tz)
        if scope == "global":
            return as_decimal(
                DailySummary.objects.filter(date__gte=since).aggregate(s=Sum("cost"))["s"]
            )
        column = "user_ref" if scope == "user" else "feature"
        model: type[Any] = DailyUsage if scope == "user" else DailySummary
        rollup = model.objects.filter(date__gte=since)
        if value is None:
            return _highest(rollup, column)
        return as_decimal(rollup.filter(**{column: value}).aggregate(s=Sum("cost"))["s"])
    calls = LLMCall.objects.filter(created_at__gte=as_stored(start), created_at__lte=as_stored(now))
    if scope == "tag":
        if value is not None and connections[calls.db].vendor == "postgresql":
            return as_decimal(calls.filter(tags__contains=[value]).aggregate(s=Sum("cost"))["s"])
        per_tag: dict[str, Decimal] = {}
        for tags, cost in calls.values_list("tags", "cost").iterator():
            for tag in tags or ():
                if value is None or tag == value:
                    per_tag[tag] = per_tag.get(tag, Decimal(0)) + as_decimal(cost)
        return max(per_tag.values(), default=Decimal(0))
    column = {"user": "user_ref", "feature": "feature", "api_key": "api_key_ref"}.get(scope)
    if column is None:
        return as_decimal(calls.aggregate(s=Sum("cost"))["s"])
    if value is None:
        return _highest(calls, column)
    return as_decimal(calls.filter(**{column: value}).aggregate(s=Sum("cost"))["s"])


#: What a spreadsheet reads as the start of a formula in a CSV cell.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` for a CSV cell: ``None`` empty, and text that a spreadsheet would run
    as a formula (a feature, user id or model name a caller chose, starting with ``=``,
    ``+``, ``-`` or ``@``) kept as text by a leading ``'``. Numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def aware(moment: datetime) -> datetime:
    """``moment`` made aware: a naive one (``USE_TZ`` False) is a ``TIME_ZONE`` time."""
    if timezone.is_aware(moment):
        return moment
    return timezone.make_aware(moment, timezone.get_default_timezone())


def as_stored(moment: datetime) -> datetime:
    """``moment`` as ``created_at`` holds it: naive local time when ``USE_TZ`` is False."""
    if settings.USE_TZ:
        return moment
    return timezone.make_naive(aware(moment), timezone.get_default_timezone())


def date_range(since: date, until: date) -> tuple[datetime, datetime]:
    """Aware datetimes bounding the local days ``since`` … ``until`` (inclusive);
    naive local ones when ``USE_TZ`` is False, as the database holds then."""
    tz = timezone.get_default_timezone() if settings.USE_TZ else None
    start = datetime.combine(since, datetime.min.time(), tzinfo=tz)
    end = datetime.combine(until + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    return start, end
