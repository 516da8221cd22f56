"""Where llmroute keeps its records in the host's database.

``LLMCall`` holds one row per call attempt (a stored ``UsageRecord``), ``DailyUsage``
a rollup the sink maintains as it writes, ``Budget`` the limits edited in the admin
and ``ApiKey`` the gateway's per-user keys (only a hash is stored).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

if TYPE_CHECKING:
    from routing_middleware.budgets import Budget as CoreBudget

__all__ = [
    "API_KEY_PREFIX",
    "NO_TIER",
    "ApiKey",
    "ApiKeyManager",
    "Budget",
    "CostReport",
    "DailySummary",
    "DailyUsage",
    "LLMCall",
    "RollupSums",
    "RoutingDecision",
]

#: Plaintext gateway keys start with this, so they are recognisable in logs and scanners.
API_KEY_PREFIX = "llmr_"
_SHOWN_PREFIX_LENGTH = len(API_KEY_PREFIX) + 6

MONEY = {"max_digits": 20, "decimal_places": 10}


class LLMCall(models.Model):
    """One attempt of one LLM call: who, what, which model and why, tokens, cost, time."""

    class Status(models.TextChoices):
        OK = "ok", "ok"
        ERROR = "error", "error"
        BLOCKED = "blocked", "blocked"
        CACHE_HIT = "cache_hit", "cache hit"

    record_id = models.CharField("record id", max_length=64, unique=True)
    call_id = models.CharField("call id", max_length=64)
    attempt = models.PositiveIntegerField(default=1)
    attempts = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField("time")
    request_id = models.CharField("request id", max_length=128, null=True, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="llm_calls",
    )
    user_ref = models.CharField(
        "user id", max_length=150, null=True, blank=True, help_text="User id as recorded."
    )
    api_key_ref = models.CharField("API key id", max_length=64, null=True, blank=True)
    feature = models.CharField(max_length=128, null=True, blank=True)
    route = models.CharField("view", max_length=255, null=True, blank=True)
    tags = models.JSONField(default=list, blank=True)
    tier = models.SmallIntegerField(null=True, blank=True)
    mode = models.CharField(max_length=16, default="enforce")
    endpoint = models.CharField(max_length=32, default="chat")
    requested_model = models.CharField(max_length=128)
    chosen_model = models.CharField("model", max_length=128)
    provider = models.CharField(max_length=64)
    deployment = models.CharField(max_length=128, null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OK)
    error_kind = models.CharField(max_length=64, null=True, blank=True)
    fallback_from = models.CharField(max_length=128, null=True, blank=True)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    usage_estimated = models.BooleanField("estimated usage", default=False)
    cost = models.DecimalField(default=Decimal(0), **MONEY)
    requested_cost = models.DecimalField("requested-model cost", null=True, blank=True, **MONEY)
    cache_saved_cost = models.DecimalField(null=True, blank=True, **MONEY)
    routed_model = models.CharField(
        "routed model",
        max_length=128,
        null=True,
        blank=True,
        help_text="Observe mode: the model routing picked (the requested one was used).",
    )
    routed_cost = models.DecimalField(
        "routed-model cost",
        null=True,
        blank=True,
        help_text="Observe mode: this call's usage at the routed model's list prices.",
        **MONEY,
    )
    latency_ms = models.FloatField(null=True, blank=True)
    ttft_ms = models.FloatField("time to first token (ms)", null=True, blank=True)
    streamed = models.BooleanField(default=False)
    stitched = models.BooleanField(default=False)
    reasons = models.JSONField("decision reasons", default=list, blank=True)
    extra = models.JSONField(default=dict, blank=True)
    prompt = models.TextField(null=True, blank=True)
    completion = models.TextField(null=True, blank=True)

    class Meta:
        verbose_name = "LLM call"
        verbose_name_plural = "LLM calls"
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=("call_id", "attempt"), name="llmroute_call_attempt_unique"
            ),
        ]
        indexes = [
            models.Index(fields=("created_at",), name="llmroute_call_created"),
            models.Index(fields=("feature", "created_at"), name="llmroute_call_feature"),
            models.Index(fields=("chosen_model", "created_at"), name="llmroute_call_model"),
            models.Index(fields=("provider", "created_at"), name="llmroute_call_provider"),
            models.Index(fields=("user", "created_at"), name="llmroute_call_user"),
            models.Index(fields=("user_ref", "created_at"), name="llmroute_call_userref"),
            models.Index(fields=("status", "created_at"), name="llmroute_call_status"),
            models.Index(fields=("request_id",), name="llmroute_call_request"),
            # Percentiles walk this from the top (p95 reads 5% of it, index only).
            models.Index(fields=("latency_ms", "created_at"), name="llmroute_call_latency"),
        ]

    def __str__(self) -> str:
        return f"{self.chosen_model} · {self.created_at:%Y-%m-%d %H:%M:%S} · ${self.cost}"

    @property
    def saved_cost(self) -> Decimal:
        """What routing saved against the requested model (zero when unknown)."""
        if self.requested_cost is None:
            return Decimal(0)
        return self.requested_cost - self.cost


class CostReport(LLMCall):
    """Proxy of :class:`LLMCall` behind the admin's cost report page."""

    class Meta:
        proxy = True
        verbose_name = "cost report"
        verbose_name_plural = "cost report"


class RoutingDecision(LLMCall):
    """Proxy of :class:`LLMCall` behind the admin's routing decisions page."""

    class Meta:
        proxy = True
        verbose_name = "routing decision"
        verbose_name_plural = "routing decisions"


#: ``tier`` in the rollups when the call had none (keys must not be NULL to stay unique).
NO_TIER = -1


class RollupSums(models.Model):
    """The totals both rollups keep for their key.

    The ``observed_*`` sums cover the calls made in observe mode only (they are
    also in ``calls``, ``cost``, ``requested_cost`` and ``saved_cost``):
    ``observed_routed_cost`` is what routing would have cost them — each call's
    ``routed_cost``, or its own ``cost`` when that is unknown, which
    ``observed_unpriced`` counts.
    """

    NO_TIER = NO_TIER

    date = models.DateField()
    feature = models.CharField(max_length=128, blank=True, default="")
    provider = models.CharField(max_length=64, blank=True, default="")
    model = models.CharField(max_length=128)
    tier = models.SmallIntegerField(default=NO_TIER)
    calls = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    cache_hits = models.PositiveBigIntegerField(default=0)
    fallbacks = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(default=Decimal(0), **MONEY)
    requested_cost = models.DecimalField(default=Decimal(0), **MONEY)
    saved_cost = models.DecimalField(default=Decimal(0), **MONEY)
    latency_ms_sum = models.FloatField(default=0)
    latency_count = models.PositiveBigIntegerField(default=0)
    observed_calls = models.PositiveBigIntegerField(default=0)
    observed_cost = models.DecimalField(default=Decimal(0), **MONEY)
    observed_requested_cost = models.DecimalField(default=Decimal(0), **MONEY)
    observed_routed_cost = models.DecimalField(default=Decimal(0), **MONEY)
    observed_unpriced = models.PositiveBigIntegerField(default=0)

    class Meta:
        abstract = True


class DailyUsage(RollupSums):
    """Per-day totals by user, feature, provider, model and tier, kept by the sink.

    Missing user or feature is stored as the empty string and a missing tier as
    ``-1``, so the key stays unique. ``date`` is the local date (``TIME_ZONE``).
    """

    user_ref = models.CharField("user id", max_length=150, blank=True, default="")

    class Meta:
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        ordering = ("-date",)
        constraints = [
            models.UniqueConstraint(
                fields=("date", "user_ref", "feature", "provider", "model", "tier"),
                name="llmroute_daily_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.date} {self.model} {self.feature or '-'} {self.user_ref or '-'}"


class DailySummary(RollupSums):
    """:class:`DailyUsage` without the user: a few rows a day whatever the user count,
    which is what reports over long ranges read."""

    class Meta:
        verbose_name = "daily summary"
        verbose_name_plural = "daily summaries"
        ordering = ("-date",)
        constraints = [
            models.UniqueConstraint(
                fields=("date", "feature", "provider", "model", "tier"),
                name="llmroute_summary_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.date} {self.model} {self.feature or '-'}"


def _validate_thresholds(value: Any) -> None:
    if not isinstance(value, list):
        raise ValidationError(
            'Thresholds are a list like [[0.8, "downgrade"], [0.95, "cheapest"]].'
        )
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not isinstance(item[0], int | float)
            or isinstance(item[0], bool)
            or not 0 < item[0] <= 1
            or not isinstance(item[1], str)
        ):
            raise ValidationError(
                'Each threshold is [fraction between 0 and 1, action], e.g. [0.8, "downgrade"].'
            )


class Budget(models.Model):
    """A spend limit for a scope over a period, with soft thresholds before the limit."""

    class Scope(models.TextChoices):
        GLOBAL = "global", "global"
        USER = "user", "user"
        FEATURE = "feature", "feature"
        TAG = "tag", "tag"
        API_KEY = "api_key", "API key"

    class Period(models.TextChoices):
        DAY = "day", "day"
        WEEK = "week", "week"
        MONTH = "month", "month"
        ROLLING = "rolling", "rolling hours"

    class Action(models.TextChoices):
        BLOCK = "block", "block"
        CHEAPEST = "cheapest", "route to the cheapest model"

    name = models.CharField(max_length=100, unique=True, help_text="No spaces, nor any of | { }.")
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.GLOBAL)
    scope_value = models.CharField(
        max_length=150,
        blank=True,
        default="",
        help_text="User id, feature, tag or key id. Empty: each one separately.",
    )
    period = models.CharField(max_length=16, choices=Period.choices, default=Period.MONTH)
    hours = models.PositiveIntegerField(
        null=True, blank=True, help_text="Window length for a rolling budget."
    )
    limit_usd = models.DecimalField("limit (USD)", **MONEY)
    thresholds = models.JSONField(
        default=list,
        blank=True,
        validators=[_validate_thresholds],
        help_text='Soft thresholds, e.g. [[0.8, "downgrade"], [0.95, "cheapest"]].',
    )
    action = models.CharField(max_length=16, choices=Action.choices, default=Action.BLOCK)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Validate with the core's own rules (one definition of a valid budget)."""
        super().clean()
        if self.period == self.Period.ROLLING and not self.hours:
            raise ValidationError({"hours": "A rolling budget needs its window in hours."})
        if self.period != self.Period.ROLLING and self.hours:
            raise ValidationError({"hours": "Only a rolling budget has a window in hours."})
        if self.limit_usd is None:
            return
        try:
            self.to_core()
        except (ValueError, TypeError) as exc:
            errors = getattr(exc, "errors", None)
            if callable(errors):  # a pydantic ValidationError: one message per problem
                raise ValidationError(
                    [
                        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}".lstrip(": ")
                        for e in errors()
                    ]
                ) from exc
            raise ValidationError(str(exc)) from exc

    def period_start(self, now: datetime | None = None) -> datetime:
        """Start of the current period, as the core counts it.

        UTC calendar day, ISO week (from Monday) and month; a rolling window is the
        current hour and the ``hours - 1`` before it (the core's hourly buckets).
        """
        from .reports import aware

        now = aware(now or timezone.now()).astimezone(UTC)
        if self.period == self.Period.ROLLING:
            hour = now.replace(minute=0, second=0, microsecond=0)
            return hour - timedelta(hours=(self.hours or 1) - 1)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period == self.Period.WEEK:
            return day - timedelta(days=day.weekday())
        if self.period == self.Period.MONTH:
            return day.replace(day=1)
        return day

    def spent(self, now: datetime | None = None) -> Decimal:
        """What the scope has spent in the current period, from the stored records.

        A user / feature / tag / API-key budget without a value covers each subject
        separately; then this is the highest subject's spend.
        """
        from .reports import budget_spent

        return budget_spent(self, now=now)

    def fraction_used(self, now: datetime | None = None, *, spent: Decimal | None = None) -> float:
        """Spent over limit, for display (0 when the limit is zero and nothing spent).

        ``spent``: what :meth:`spent` returned, when the caller has it already.
        """
        if spent is None:
            spent = self.spent(now)
        if not self.limit_usd:
            return 1.0 if spent > 0 else 0.0
        return float(spent / self.limit_usd)

    def core_fields(self) -> dict[str, Any]:
        """Keyword arguments of the core's ``Budget`` for this budget."""
        rolling = self.period == self.Period.ROLLING
        return {
            "name": self.name,
            "scope": self.scope,
            "value": self.scope_value or None,
            "period": self.period,
            "rolling_hours": self.hours if rolling else None,
            "limit_usd": self.limit_usd,
            "thresholds": tuple((float(f), str(a)) for f, a in self.thresholds or ()),
            "on_limit": self.action,
        }

    def to_core(self) -> CoreBudget:
        """This budget as a core :class:`routing_middleware.budgets.Budget`.

        Raises the core's validation error when the fields make no valid budget.
        """
        from routing_middleware.budgets import Budget as CoreBudget

        return CoreBudget(**self.core_fields())


def _hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


class ApiKeyManager(models.Manager["ApiKey"]):
    """Creates keys (returning the plaintext once) and authenticates presented keys."""

    @staticmethod
    def new_secret() -> tuple[str, str, str]:
        """A fresh key as ``(plaintext, shown prefix, SHA-256 hex digest)``."""
        plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
        return plaintext, plaintext[:_SHOWN_PREFIX_LENGTH], _hash_key(plaintext)

    def create_key(self, owner: Any, name: str, **fields: Any) -> tuple[ApiKey, str]:
        """Make a new key for ``owner``; returns the saved key and its plaintext.

        The plaintext is not stored anywhere: show it to the user now or never.
        """
        plaintext, prefix, digest = self.new_secret()
        key = self.create(owner=owner, name=name, prefix=prefix, key_hash=digest, **fields)
        return key, plaintext

    def authenticate(self, plaintext: str) -> ApiKey | None:
        """The active key matching ``plaintext``, or ``None`` (revoked keys never match)."""
        if not isinstance(plaintext, str) or not plaintext.startswith(API_KEY_PREFIX):
            return None
        digest = _hash_key(plaintext)
        found: ApiKey | None = None
        for candidate in self.filter(prefix=plaintext[:_SHOWN_PREFIX_LENGTH]):
            if hmac.compare_digest(candidate.key_hash, digest):
                found = candidate
        if found is None or found.revoked:
            return None
        now = timezone.now()
        if found.last_used_at is None or now - found.last_used_at > timedelta(minutes=1):
            self.filter(pk=found.pk).update(last_used_at=now)
            found.last_used_at = now
        return found


class ApiKey(models.Model):
    """A gateway API key. Only its SHA-256 hash and a short prefix are stored."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="llm_api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    budget = models.ForeignKey(
        Budget,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="api_keys",
        help_text="Holds this key's calls to the budget's limit on their own (each key given "
        "a budget has its own count), besides what the budget's scope covers.",
    )
    allow_hint_headers = models.BooleanField(
        default=False, help_text="Let clients send routing hints as request headers."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked = models.BooleanField(default=False)

    objects = ApiKeyManager()

    class Meta:
        verbose_name = "API key"
        verbose_name_plural = "API keys"
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix})"

    @property
    def display_prefix(self) -> str:
        """The prefix as shown to people, e.g. ``llmr_ab12cd…``."""
        return f"{self.prefix}…"
