"""Admin pages: the call log, the cost report, routing decisions, budgets and API keys.

The reports are proxy models with their own admin: ``changelist_view`` lets Django
build the filtered changelist, then aggregates over *that* queryset, so every
filter, the date hierarchy and the search box narrow the figures too.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.db.models import Max, Min, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.text import capfirst

from . import charts, reports
from .models import (
    NO_TIER,
    ApiKey,
    Budget,
    CostReport,
    DailySummary,
    DailyUsage,
    LLMCall,
    RollupSums,
    RoutingDecision,
)

_NONE = "__none__"


# --------------------------------------------------------------------------- filters


class _RollupValuesFilter(admin.SimpleListFilter):
    """Choices from the small rollup table, not a DISTINCT over every call."""

    call_field = ""
    rollup_field = ""
    rollup_model: type[RollupSums] = DailySummary

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = (
            self.rollup_model._default_manager.order_by(self.rollup_field)
            .values_list(self.rollup_field, flat=True)
            .distinct()[:200]
        )
        return [(v or _NONE, v or "—") for v in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        if value == _NONE:
            return queryset.filter(
                Q(**{f"{self.call_field}__isnull": True}) | Q(**{self.call_field: ""})
            )
        return queryset.filter(**{self.call_field: value})

    def rollup_lookup(self) -> dict[str, Any] | None:
        """The same filter on the rollup, when it is active."""
        value = self.value()
        if value is None:
            return None
        return {self.rollup_field: "" if value == _NONE else value}


class ModelFilter(_RollupValuesFilter):
    title = "model"
    parameter_name = "model"
    call_field = "chosen_model"
    rollup_field = "model"


class FeatureFilter(_RollupValuesFilter):
    title = "feature"
    parameter_name = "feature"
    call_field = "feature"
    rollup_field = "feature"


class ProviderFilter(_RollupValuesFilter):
    title = "provider"
    parameter_name = "provider"
    call_field = "provider"
    rollup_field = "provider"


class UserFilter(_RollupValuesFilter):
    title = "user"
    parameter_name = "user"
    call_field = "user_ref"
    rollup_field = "user_ref"
    rollup_model = DailyUsage

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        choices = super().lookups(request, model_admin)
        names = reports.user_labels({value for value, _ in choices if value != _NONE})
        return [(value, names.get(value, label)) for value, label in choices]


class TierFilter(_RollupValuesFilter):
    title = "tier"
    parameter_name = "tier"
    call_field = "tier"
    rollup_field = "tier"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = DailySummary.objects.order_by("tier").values_list("tier", flat=True).distinct()
        return [(_NONE, "no tier") if v == NO_TIER else (str(v), f"tier {v}") for v in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        if value == _NONE:
            return queryset.filter(tier__isnull=True)
        try:
            return queryset.filter(tier=int(value))
        except ValueError:
            return queryset.none()

    def rollup_lookup(self) -> dict[str, Any] | None:
        value = self.value()
        if value is None:
            return None
        try:
            return {"tier": NO_TIER if value == _NONE else int(value)}
        except ValueError:
            return {"pk__in": []}


LIST_FILTERS: tuple[Any, ...] = (
    ModelFilter,
    ProviderFilter,
    FeatureFilter,
    TierFilter,
    "status",
    UserFilter,
    "usage_estimated",
    "streamed",
)


class CappedCountPaginator(Paginator):
    """Counts at most ``cap`` rows: the report pages list the latest calls, and
    their totals come from the report, so an exact count over millions is waste."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        return int(self.object_list[: self.cap].count())


def _search_fields() -> tuple[str, ...]:
    username = getattr(get_user_model(), "USERNAME_FIELD", "username")
    return (
        "=request_id",
        "feature",
        "chosen_model",
        "requested_model",
        "user_ref",
        f"user__{username}",
    )


# --------------------------------------------------------------------------- the call log


def _date_out_of_range(request: HttpRequest, field: str) -> bool:
    """Whether the date hierarchy's year / month / day name a period whose bounds no
    datetime holds (year 9999's end is year 10000): Django's changelist would fail on
    it with a server error. Malformed numbers and impossible dates are not this:
    Django refuses those itself, as bad filters.
    """
    try:
        year, month, day = (
            int(request.GET.get(f"{field}__{unit}") or 1) for unit in ("year", "month", "day")
        )
        first = datetime(year, month, day)
    except ValueError:
        return False
    try:
        # The range Django's changelist filters on, as it computes it.
        if request.GET.get(f"{field}__day"):
            after = first + timedelta(days=1)
        elif request.GET.get(f"{field}__month"):
            after = (first + timedelta(days=32)).replace(day=1)
        else:
            after = first.replace(year=first.year + 1)
        if settings.USE_TZ:
            for bound in (first, after):
                timezone.make_aware(bound).astimezone(UTC)  # as the database gets it
    except (ValueError, OverflowError):
        return True
    return False


class _ReadOnlyAdmin(admin.ModelAdmin):
    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        field = self.date_hierarchy
        if field and f"{field}__year" in request.GET and _date_out_of_range(request, field):
            messages.warning(
                request,
                "That date filter reaches past the last date that can be filtered on "
                "(31 December 9999), so it was removed.",
            )
            kept = request.GET.copy()
            for unit in ("year", "month", "day"):
                kept.pop(f"{field}__{unit}", None)
            query = kept.urlencode()
            return HttpResponseRedirect(f"{request.path}?{query}" if query else request.path)
        return super().changelist_view(request, extra_context)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


#: The call log's CSV columns, in order; names are the :class:`LLMCall` fields and stay
#: stable. Money columns are US dollars; an empty cell is a missing value. ``mode`` is
#: ``enforce`` or ``observe``; ``requested_cost`` is what the requested model would have
#: billed; ``routed_model`` and ``routed_cost`` are observe mode's: the model routing
#: picked (the requested one was used) and this call's usage at its list prices (empty
#: when unpriced, and on enforced calls).
CSV_COLUMNS = (
    "created_at",
    "record_id",
    "call_id",
    "attempt",
    "request_id",
    "user_ref",
    "api_key_ref",
    "feature",
    "route",
    "tier",
    "mode",
    "endpoint",
    "requested_model",
    "chosen_model",
    "provider",
    "deployment",
    "status",
    "error_kind",
    "fallback_from",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "usage_estimated",
    "cost",
    "requested_cost",
    "cache_saved_cost",
    "routed_model",
    "routed_cost",
    "latency_ms",
    "ttft_ms",
    "streamed",
    "stitched",
)


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_rows(queryset: QuerySet[LLMCall]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    rows = queryset.order_by("created_at", "pk").values_list(*CSV_COLUMNS)
    for row in rows.iterator(chunk_size=2000):
        yield writer.writerow([reports.csv_cell(v) for v in row])


@admin.register(LLMCall)
class LLMCallAdmin(_ReadOnlyAdmin):
    """The call log: read-only, filterable, exportable as CSV."""

    date_hierarchy = "created_at"
    list_display = (
        "created_at",
        "user_label",
        "feature",
        "requested_model",
        "chosen_model",
        "provider",
        "status",
        "tokens",
        "money",
        "latency",
    )
    list_filter = LIST_FILTERS
    list_select_related = ("user",)
    list_per_page = 50
    show_full_result_count = False
    actions = ("export_csv",)

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        return _search_fields()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    @admin.display(description="user", ordering="user_ref")
    def user_label(self, obj: LLMCall) -> str:
        if obj.user is not None:
            return obj.user.get_username()
        return obj.user_ref or "—"

    @admin.display(description="tokens")
    def tokens(self, obj: LLMCall) -> str:
        return f"{obj.input_tokens:,} → {obj.output_tokens:,}"

    @admin.display(description="cost", ordering="cost")
    def money(self, obj: LLMCall) -> str:
        return reports.format_money(obj.cost)

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, obj: LLMCall) -> str:
        return "—" if obj.latency_ms is None else f"{obj.latency_ms:,.0f} ms"

    @admin.action(description="Export selected calls as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[LLMCall]) -> HttpResponse:
        """The selected calls as CSV, oldest first, one row each, columns :data:`CSV_COLUMNS`.

        Over the rows whose ``mode`` is ``observe``, the sum of ``cost - routed_cost``
        (``routed_cost`` taken as ``cost`` where empty) is the cost report's "would
        have saved".
        """
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response = StreamingHttpResponse(_csv_rows(queryset), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="llm-calls-{stamp}.csv"'
        return response


# --------------------------------------------------------------------------- reports


def _changelist(response: Any) -> Any:
    """The ChangeList of a changelist response, or ``None`` (redirects, errors)."""
    context = getattr(response, "context_data", None)
    if not context:
        return None
    return context.get("cl")


def _rollup_for(cl: Any) -> tuple[dict[str, Any], bool]:
    """Lookups selecting, in the rollups, the changelist's calls; and whether exactly.

    Exact when only the date hierarchy and rollup-backed filters (model, feature,
    provider, tier, user) are in use — no search, no other filter — and the
    request's time zone is the one the rollup's dates are in. Inexact lookups still
    serve the date navigation.
    """
    params = dict(cl.get_filters_params())
    lookups: dict[str, Any] = {}
    for spec in cl.filter_specs:
        if isinstance(spec, _RollupValuesFilter):
            params.pop(spec.parameter_name, None)
            lookups.update(spec.rollup_lookup() or {})
    field = cl.date_hierarchy
    year, month, day = (params.pop(f"{field}__{unit}", None) for unit in ("year", "month", "day"))
    if year:
        # A range, as the date hierarchy filters the calls: indexes serve it.
        try:
            first = date(int(year[-1]), int(month[-1]) if month else 1, int(day[-1]) if day else 1)
        except ValueError:
            return {"pk__in": []}, False
        if day:
            after = first + timedelta(days=1)
        elif month:
            after = (first + timedelta(days=32)).replace(day=1)
        else:
            after = first.replace(year=first.year + 1)
        lookups.update(date__gte=first, date__lt=after)
    exact = (
        not params and not cl.query and timezone.get_current_timezone_name() == settings.TIME_ZONE
    )
    return lookups, exact


def _rollup_rows(lookups: dict[str, Any]) -> QuerySet[Any]:
    if any(key.startswith("user_ref") for key in lookups):
        return DailyUsage.objects.filter(**lookups)
    return DailySummary.objects.filter(**lookups)


def date_navigation(cl: Any, lookups: dict[str, Any]) -> dict[str, Any]:
    """Django's date hierarchy links, found in the rollup instead of every call.

    Same query parameters as the admin's own ``date_hierarchy`` (so filtering is
    Django's), without its ``SELECT DISTINCT`` over all the calls.
    """
    rollup = _rollup_rows(lookups)
    field = cl.date_hierarchy
    year_field, month_field, day_field = f"{field}__year", f"{field}__month", f"{field}__day"
    year, month, day = (cl.params.get(f) for f in (year_field, month_field, day_field))

    def link(filters: dict[str, Any]) -> str:
        return str(cl.get_query_string(filters, [f"{field}__"]))

    if not (year or month or day):
        bounds = rollup.aggregate(first=Min("date"), last=Max("date"))
        first, last = bounds["first"], bounds["last"]
        if first and last and first.year == last.year:
            year = first.year
            if first.month == last.month:
                month = first.month
    if year and month and day:
        when = date(int(year), int(month), int(day))
        return {
            "show": True,
            "back": {
                "link": link({year_field: year, month_field: month}),
                "title": capfirst(formats.date_format(when, "YEAR_MONTH_FORMAT")),
            },
            "choices": [{"title": capfirst(formats.date_format(when, "MONTH_DAY_FORMAT"))}],
        }
    if year and month:
        days = rollup.dates("date", "day")
        return {
            "show": True,
            "back": {"link": link({year_field: year}), "title": str(year)},
            "choices": [
                {
                    "link": link({year_field: year, month_field: month, day_field: d.day}),
                    "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT")),
                }
                for d in days
            ],
        }
    if year:
        months = rollup.dates("date", "month")
        return {
            "show": True,
            "back": {"link": link({}), "title": "All dates"},
            "choices": [
                {
                    "link": link({year_field: year, month_field: m.month}),
                    "title": capfirst(formats.date_format(m, "YEAR_MONTH_FORMAT")),
                }
                for m in months
            ],
        }
    years = rollup.dates("date", "year")
    return {
        "show": True,
        "back": None,
        "choices": [{"link": link({year_field: str(y.year)}), "title": str(y.year)} for y in years],
    }


def _bars(rows: list[reports.Row], what: str) -> list[charts.Bar]:
    return [
        charts.Bar(
            r.label,
            r.spend,
            f"{r.label}: {reports.format_money(r.spend)} over {r.calls:,} {what}",
        )
        for r in rows
    ]


def cost_report_context(
    qs: QuerySet[LLMCall], rollup_filters: dict[str, Any] | None
) -> dict[str, Any]:
    """Everything the cost report template shows, for the calls in ``qs``."""
    figures = reports.cost_figures(qs, rollup_filters)
    summary, tables, per_day, tiers = (
        figures.totals,
        figures.breakdowns,
        figures.per_day,
        figures.tiers,
    )
    money = reports.format_money
    sections = [
        {
            "title": f"Spend by {kind}",
            "kind": kind,
            "rows": rows,
            "chart": charts.horizontal_bar_chart(
                _bars(rows, "calls"), title=f"Spend by {kind}", value_text=money
            ),
        }
        for kind, rows in tables.items()
    ]
    return {
        "summary": summary,
        "shown": summary.display(),
        "sections": sections,
        "per_day": per_day,
        "per_day_chart": charts.column_chart(
            _bars(per_day, "calls"), title="Spend per day", value_text=money
        ),
        "tiers": tiers,
        "tier_chart": charts.horizontal_bar_chart(
            [charts.Bar(t.label, t.calls, f"{t.label}: {t.calls:,} calls") for t in tiers],
            title="Calls per tier",
            value_text=lambda v: f"{v:,}",
        ),
    }


@admin.register(CostReport)
class CostReportAdmin(_ReadOnlyAdmin):
    """Spend, savings and rates for whatever the filters select."""

    change_list_template = "django_llmroute/admin/cost_report.html"
    paginator = CappedCountPaginator
    date_hierarchy = "created_at"
    list_display = ("created_at", "feature", "chosen_model", "provider", "status", "money")
    list_filter = LIST_FILTERS
    list_per_page = 20
    show_full_result_count = False
    actions = None

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        return _search_fields()

    @admin.display(description="cost", ordering="cost")
    def money(self, obj: LLMCall) -> str:
        return reports.format_money(obj.cost)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        response = super().changelist_view(request, extra_context)
        cl = _changelist(response)
        if cl is None:
            return response
        lookups, exact = _rollup_for(cl)
        response.context_data.update(cost_report_context(cl.queryset, lookups if exact else None))
        response.context_data["date_nav"] = date_navigation(cl, lookups)
        return response


@admin.register(RoutingDecision)
class RoutingDecisionAdmin(_ReadOnlyAdmin):
    """Why calls went where they went: reason codes, downgrades, exclusions, fallbacks."""

    change_list_template = "django_llmroute/admin/decisions.html"
    paginator = CappedCountPaginator
    date_hierarchy = "created_at"
    list_display = (
        "created_at",
        "feature",
        "requested_model",
        "chosen_model",
        "fallback_from",
        "status",
    )
    list_filter = LIST_FILTERS
    list_per_page = 20
    show_full_result_count = False
    actions = None

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        return _search_fields()

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        response = super().changelist_view(request, extra_context)
        cl = _changelist(response)
        if cl is None:
            return response
        found = reports.decisions(cl.queryset)
        lookups, _exact = _rollup_for(cl)
        response.context_data.update(
            {
                "date_nav": date_navigation(cl, lookups),
                "decisions": found,
                "examined_text": f"{found.examined:,}",
                "rerouted_text": f"{found.rerouted:,}",
                "reason_chart": charts.horizontal_bar_chart(
                    [charts.Bar(code, n, f"{code}: {n:,} decisions") for code, n in found.reasons],
                    title="Decision reasons by code",
                    value_text=lambda v: f"{v:,}",
                ),
            }
        )
        return response


# --------------------------------------------------------------------------- budgets


def _bar_colour(budget: Budget, fraction: float) -> str:
    if fraction >= 1:
        return "#b55d4c"
    marks = [float(t[0]) for t in budget.thresholds or () if isinstance(t, list | tuple) and t]
    if marks and fraction >= min(marks):
        return "#c9a227"
    return "#5b8c5a"


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    """Budgets, with what each has spent in its current period."""

    list_display = (
        "name",
        "scope",
        "scope_value",
        "period",
        "limit",
        "spent_now",
        "progress",
        "action",
        "active",
    )
    list_filter = ("scope", "period", "action", "active")
    search_fields = ("name", "scope_value")

    @admin.display(description="limit", ordering="limit_usd")
    def limit(self, obj: Budget) -> str:
        return reports.format_money(obj.limit_usd)

    @staticmethod
    def _spent(obj: Budget) -> Decimal:
        # "spent this period" and the "used" bar show the same figure: read it once
        # per row (kept on the row's instance, which lives for this page only).
        spent: Decimal | None = getattr(obj, "_llmroute_spent", None)
        if spent is None:
            spent = obj.spent()
            obj._llmroute_spent = spent  # type: ignore[attr-defined]
        return spent

    @admin.display(description="spent this period")
    def spent_now(self, obj: Budget) -> str:
        return reports.format_money(self._spent(obj))

    @admin.display(description="used")
    def progress(self, obj: Budget) -> str:
        fraction = obj.fraction_used(spent=self._spent(obj))
        shown = min(fraction, 1.0) * 100
        return format_html(
            '<div class="llmroute-progress" role="progressbar" aria-valuemin="0" '
            'aria-valuemax="100" aria-valuenow="{}" title="{}% used" '
            'style="width:10em;height:0.9em;background:#e6e6e6;border-radius:3px;overflow:hidden">'
            '<div style="width:{}%;height:100%;background:{}"></div></div> {}%',
            f"{fraction * 100:.0f}",
            f"{fraction * 100:.1f}",
            f"{shown:.1f}",
            _bar_colour(obj, fraction),
            f"{fraction * 100:.0f}",
        )


# --------------------------------------------------------------------------- API keys


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Gateway keys: the plaintext is shown once, right after creation, never again."""

    list_display = (
        "name",
        "owner",
        "shown_prefix",
        "budget",
        "created_at",
        "last_used_at",
        "revoked",
    )
    list_filter = ("revoked", "allow_hint_headers")
    # Named: Django's own select_related() would skip the nullable budget (a query a row).
    list_select_related = ("owner", "budget")
    search_fields = ("name", "prefix")
    raw_id_fields = ("owner",)
    fields = (
        "owner",
        "name",
        "budget",
        "allow_hint_headers",
        "revoked",
        "shown_prefix",
        "created_at",
        "last_used_at",
    )
    readonly_fields = ("shown_prefix", "created_at", "last_used_at")

    @admin.display(description="key")
    def shown_prefix(self, obj: ApiKey) -> str:
        return obj.display_prefix if obj.prefix else "—"

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            plaintext, obj.prefix, obj.key_hash = ApiKey.objects.new_secret()
            # Kept on this request only, to show it once in the response below.
            request._llmroute_new_key = plaintext  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        plaintext = getattr(request, "_llmroute_new_key", None)
        if plaintext is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API key created",
            "key": obj,
            "plaintext": plaintext,
        }
        response = TemplateResponse(request, "django_llmroute/admin/apikey_created.html", context)
        response["Cache-Control"] = "no-store"
        return response
