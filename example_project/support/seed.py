"""Demo data: tickets, agents, an admin account, budgets and 30 days of LLM traffic.

The traffic is made of the same :class:`UsageRecord` objects llmroute's engine emits,
stored with the ORM sink's :func:`store_records`, so the call log and the daily
rollups agree exactly, as they would after a month of real use. Costs are the
catalog's list prices for the generated token counts.

Seeding is idempotent: record ids are derived from a fixed seed, and a database
that already holds the demo traffic is left as it is.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_UP, Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from django_llmroute.models import Budget, LLMCall
from django_llmroute.sinks import store_records
from routing_middleware.metering import UsageRecord
from routing_middleware.pricing import cost_of
from routing_middleware.schema import Usage

from ..demo_login import ADMIN_PASSWORD, ADMIN_USERNAME
from .models import Ticket

__all__ = ["SeedResult", "seed", "traffic"]

AGENTS = ("alice", "bob", "carol", "dmitri")
INTEGRATION_USER = "helpcenter-bot"
RECORD_PREFIX = "seed-"
_NAMESPACE = uuid.UUID("5b0b7d36-8d47-4b52-9d35-2f1d5a5f0c11")

TICKETS = (
    (
        "Invoice charged twice in October",
        "Hi, our card was charged twice for the October invoice (INV-2291). "
        "Can you refund the duplicate? We are on the Team plan.",
        "Maria Okafor",
        "maria@northwind.example",
        "open",
    ),
    (
        "API returns 502 on large uploads",
        "Uploads above 80 MB fail with a 502 from the storage API since yesterday's "
        "deploy. Smaller files work. Request id: 7f3a-22c1.",
        "Jun Watanabe",
        "jun@pixelforge.example",
        "open",
    ),
    (
        "Data processing agreement for our EU customers",
        "Our legal team needs a signed data processing agreement before we renew the "
        "contract. We also need confirmation that backups stay in the EU under GDPR.",
        "Elena Rossi",
        "elena.rossi@veritaslaw.example",
        "open",
    ),
    (
        "How do I rotate an access token?",
        "What is the safest way to rotate the access token our CI uses without downtime?",
        "Sam Patel",
        "sam@brightpath.example",
        "pending",
    ),
    (
        "Cancel my subscription and delete my account",
        "Please cancel my subscription at the end of the month and delete all my data.",
        "Lukas Becker",
        "lukas.becker@mailbox.example",
        "open",
    ),
    (
        "Dashboard graphs are empty after timezone change",
        "After switching the organisation timezone to Asia/Kolkata the usage graphs show "
        "no data for the last week.",
        "Priya Nair",
        "priya@quantumleaf.example",
        "open",
    ),
    (
        "Threatening a chargeback over outage credits",
        "Last week's outage cost us a day of sales. If you do not credit us under the SLA "
        "we will file a chargeback and talk to our lawyer about the contract.",
        "Tom Hughes",
        "tom@hughesandco.example",
        "pending",
    ),
    (
        "Feature request: export invoices as CSV",
        "Our accountant would love a CSV export of all invoices for the year.",
        "Ana Lima",
        "ana@solaris.example",
        "closed",
    ),
)


@dataclass(frozen=True, slots=True)
class _Route:
    model: str
    provider: str
    weight: float
    ttft_ms: float
    tokens_per_s: float


@dataclass(frozen=True, slots=True)
class _Feature:
    name: str
    share: float
    requested: str
    tier: int | None
    routes: tuple[_Route, ...]
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    streamed: bool = False
    cacheable: bool = False
    gateway: bool = False
    #: ``observe``: routing decides but the requested model answers (see
    #: :func:`_observed_call`).
    mode: str = "enforce"


_FLASH_LITE = _Route("gemini/gemini-2.5-flash-lite", "gemini", 0.7, 280, 190)
_GPT5_MINI = _Route("openai/gpt-5-mini", "openai", 0.3, 420, 110)
_FLASH = _Route("gemini/gemini-2.5-flash", "gemini", 0.6, 330, 160)
_GPT54_MINI = _Route("openai/gpt-5.4-mini", "openai", 0.4, 450, 95)
_GPT54 = _Route("openai/gpt-5.4", "openai", 0.55, 780, 62)
_SONNET = _Route("anthropic/claude-sonnet-4-6", "anthropic", 0.45, 690, 70)
_OPUS = _Route("anthropic/claude-opus-4-7", "anthropic", 1.0, 950, 48)
#: Where observe mode's calls go: the requested model, by name.
_REQUESTED_ROUTES = {_OPUS.model: _OPUS}

FEATURES = (
    _Feature(
        "ticket-summary",
        0.36,
        "openai/gpt-5.4",
        1,
        (_FLASH_LITE, _GPT5_MINI),
        (1500, 6000),
        (60, 180),
        cacheable=True,
    ),
    _Feature(
        "ticket-reply",
        0.24,
        "openai/gpt-5.4",
        2,
        (_FLASH, _GPT54_MINI),
        (2500, 9000),
        (180, 520),
        streamed=True,
    ),
    _Feature(
        "ticket-classify",
        0.22,
        "openai/gpt-5.4",
        None,
        (_FLASH_LITE, _GPT5_MINI, _FLASH),
        (400, 1800),
        (2, 8),
        cacheable=True,
    ),
    # Legal keeps its model while the team reads what routing would have saved.
    _Feature(
        "legal-review",
        0.08,
        "anthropic/claude-opus-4-7",
        3,
        (_GPT54, _SONNET),
        (4000, 14000),
        (250, 800),
        mode="observe",
    ),
    _Feature(
        "help-center",
        0.10,
        "openai/gpt-5.4-mini",
        2,
        (_FLASH, _GPT54_MINI),
        (1200, 5000),
        (80, 300),
        gateway=True,
        cacheable=True,
    ),
)

_ERRORS = (
    ("rate_limit", "429 from the provider"),
    ("timeout", "attempt timed out"),
    ("server_error", "503 from the provider"),
)
_FALLBACK_FOR = {
    "gemini/gemini-2.5-flash-lite": _GPT5_MINI,
    "openai/gpt-5-mini": _FLASH_LITE,
    "gemini/gemini-2.5-flash": _GPT54_MINI,
    "openai/gpt-5.4-mini": _FLASH,
    "openai/gpt-5.4": _SONNET,
    "anthropic/claude-sonnet-4-6": _GPT54,
}


@dataclass(frozen=True, slots=True)
class SeedResult:
    """What :func:`seed` did."""

    created_users: int
    created_tickets: int
    created_calls: int
    budgets: int
    already_seeded: bool


def _money(value: Decimal) -> str:
    return f"${value:.6f}".rstrip("0").rstrip(".")


def _reasons(
    feature: _Feature, tier: int, route: _Route, usage: Usage
) -> tuple[tuple[str, str], ...]:
    reasons: list[tuple[str, str]] = []
    if feature.tier is None:
        reasons.append(("classifier", f"classifier → tier {tier}"))
    elif feature.gateway:
        reasons.append(("requested_tier", f"{feature.requested} is tier {tier}"))
    else:
        reasons.append(("hint_tier", f"hint → tier {tier}"))
    cost = cost_of(usage, route.model)
    requested = cost_of(usage, feature.requested)
    if route.model == feature.requested:
        reasons.append(("chosen", f"chose {route.model} (tier {tier}) at ~{_money(cost)}"))
    else:
        reasons.append(
            (
                "chosen",
                f"chose {route.model} (tier {tier}) at ~{_money(cost)} vs {_money(requested)} "
                f"on {feature.requested}",
            )
        )
    return tuple(reasons)


def _pick(rng: random.Random, routes: tuple[_Route, ...]) -> _Route:
    return rng.choices(routes, weights=[r.weight for r in routes])[0]


def _timestamps(rng: random.Random, day: datetime, count: int) -> list[datetime]:
    """``count`` times in a working day, busiest late morning and mid afternoon."""
    times = []
    for _ in range(count):
        hour = min(max(rng.gauss(13.0, 3.2), 0.0), 23.99)
        times.append(day + timedelta(hours=hour, seconds=rng.random()))
    return sorted(times)


def traffic(now: datetime, users: dict[str, str], *, days: int = 30) -> list[UsageRecord]:
    """The demo's LLM calls over the ``days`` before ``now`` (deterministic for a day)."""
    rng = random.Random(20260101)
    start = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    records: list[UsageRecord] = []
    agents = [users[name] for name in AGENTS]
    serial = 0
    for offset in range(days):
        day = start + timedelta(days=offset)
        weekend = day.weekday() >= 5
        volume = int(
            (24 if weekend else 80) * (0.75 + 0.5 * offset / days) * rng.uniform(0.85, 1.15)
        )
        for when in _timestamps(rng, day, volume):
            if when > now:
                continue
            feature = rng.choices(FEATURES, weights=[f.share for f in FEATURES])[0]
            serial += 1
            records.extend(_call(rng, serial, when, feature, agents, users, offset >= days - 4))
    return records


def _call(
    rng: random.Random,
    serial: int,
    when: datetime,
    feature: _Feature,
    agents: list[str],
    users: dict[str, str],
    budget_pressure: bool,
) -> list[UsageRecord]:
    route = _pick(rng, feature.routes)
    tier = feature.tier or (1 if route.model != _FLASH.model else 2)
    downgraded = budget_pressure and feature.name == "help-center" and rng.random() < 0.6
    if downgraded:  # the help-center budget passed its soft threshold
        route, tier = _pick(rng, (_FLASH_LITE, _GPT5_MINI)), 1
    usage = Usage(
        input_tokens=rng.randint(*feature.input_tokens),
        output_tokens=rng.randint(*feature.output_tokens),
    )
    if rng.random() < 0.3:  # a shared system prompt read from the provider's prompt cache
        cached = min(usage.input_tokens // 2, 1024)
        usage = usage.model_copy(update={"cached_input_tokens": cached})
    call_id = uuid.uuid5(_NAMESPACE, f"call-{serial}").hex
    common: dict[str, Any] = {
        "requested_model": feature.requested,
        "call_id": call_id,
        "feature": feature.name,
        "route": f"support.views.{feature.name.replace('-', '_')}"
        if not feature.gateway
        else "/v1/chat/completions",
        "tier": tier,
        "streamed": feature.streamed,
        "user_id": users[INTEGRATION_USER] if feature.gateway else rng.choice(agents),
        "api_key_id": "helpcenter-prod" if feature.gateway else None,
        "request_id": uuid.uuid5(_NAMESPACE, f"request-{serial}").hex[:16],
        "tags": ("support",) if not feature.gateway else ("support", "gateway"),
    }
    reasons = _reasons(feature, tier, route, usage)
    if downgraded:
        reasons = (
            ("requested_tier", f"{feature.requested} is tier 2"),
            ("budget_downgrade", "budget 'help-center-30d' at 86% → downgraded from tier 2"),
            *reasons[1:],
        )

    def record(n: int, **fields: Any) -> UsageRecord:
        values = {**common, **fields}
        return UsageRecord(
            id=RECORD_PREFIX + uuid.uuid5(_NAMESPACE, f"record-{serial}-{n}").hex,
            created_at=when + timedelta(milliseconds=n * 50),
            **values,
        )

    def latency(r: _Route) -> float:
        return round(
            r.ttft_ms * rng.uniform(0.8, 1.6) + usage.output_tokens / r.tokens_per_s * 1000, 1
        )

    roll = rng.random()
    if feature.mode == "observe":
        return [_observed_call(rng, record, feature, route, usage, reasons, latency)]
    if feature.cacheable and roll < 0.07:
        return [
            record(
                1,
                chosen_model=route.model,
                provider=route.provider,
                usage=usage,
                cost=Decimal(0),
                requested_cost=cost_of(usage, feature.requested),
                cache_saved_cost=cost_of(usage, route.model),
                status="cache_hit",
                latency_ms=round(rng.uniform(2, 9), 1),
                reasons=(*reasons, ("cache_hit", "answered from the response cache")),
            )
        ]
    if roll > 0.996:  # every deployment failed: the caller got the error
        return [_failed_call(rng, record, route, reasons)]
    ok_route, attempts = route, 1
    out: list[UsageRecord] = []
    if roll > 0.955:  # the first choice failed; the fallback answered
        out.append(_failed_call(rng, record, route, reasons, latency=(300, 6000), attempts=1))
        ok_route, attempts = _FALLBACK_FOR[route.model], 2
    took = latency(ok_route)
    out.append(
        record(
            attempts,
            attempt=attempts,
            attempts=attempts,
            chosen_model=ok_route.model,
            provider=ok_route.provider,
            usage=usage,
            cost=cost_of(usage, ok_route.model),
            requested_cost=cost_of(usage, feature.requested),
            fallback_from=route.model if attempts > 1 else None,
            latency_ms=took,
            ttft_ms=round(ok_route.ttft_ms * rng.uniform(0.8, 1.4), 1)
            if feature.streamed
            else None,
            reasons=reasons,
        )
    )
    return out


def _failed_call(
    rng: random.Random,
    record: Callable[..., UsageRecord],
    route: _Route,
    reasons: tuple[tuple[str, str], ...],
    latency: tuple[float, float] = (900, 30000),
    **fields: Any,
) -> UsageRecord:
    """A failed attempt on ``route``, taking a time in the ``latency`` range (ms)."""
    kind, _ = rng.choice(_ERRORS)
    return record(
        1,
        chosen_model=route.model,
        provider=route.provider,
        usage=Usage(input_tokens=0, output_tokens=0),
        cost=Decimal(0),
        requested_cost=Decimal(0),
        status="error",
        error_kind=kind,
        latency_ms=round(rng.uniform(*latency), 1),
        reasons=reasons,
        **fields,
    )


def _observed_call(
    rng: random.Random,
    record: Callable[..., UsageRecord],
    feature: _Feature,
    route: _Route,
    usage: Usage,
    reasons: tuple[tuple[str, str], ...],
    latency: Callable[[_Route], float],
) -> UsageRecord:
    """A call observe mode kept on the requested model, as the engine records it.

    Routing still chose ``route``; an answered call carries that choice and its
    list price for this usage in ``extra``, which the cost report sums into what
    routing would have saved. Observe mode keeps no fallbacks: a failure is the
    caller's error, and it has no routed price.
    """
    kept = _REQUESTED_ROUTES[feature.requested]
    reasons = (*reasons, ("observe", f"observe mode: keeping {feature.requested}"))
    if rng.random() < 0.015:
        return _failed_call(rng, record, kept, reasons, mode="observe")
    cost = cost_of(usage, feature.requested)
    return record(
        1,
        mode="observe",
        chosen_model=kept.model,
        provider=kept.provider,
        usage=usage,
        cost=cost,
        requested_cost=cost,
        latency_ms=latency(kept),
        reasons=reasons,
        extra={"routed_model": route.model, "routed_cost": str(cost_of(usage, route.model))},
    )


def _users() -> tuple[dict[str, str], int]:
    """User ids (as records carry them) by username; and how many were created."""
    model = get_user_model()
    created = 0
    admin = model._default_manager.filter(username=ADMIN_USERNAME).first()
    if admin is None:
        model._default_manager.create_superuser(ADMIN_USERNAME, "admin@example.com", ADMIN_PASSWORD)
        created += 1
    ids: dict[str, str] = {}
    for name in (*AGENTS, INTEGRATION_USER):
        user, made = model._default_manager.get_or_create(
            username=name, defaults={"email": f"{name}@example.com"}
        )
        if made:
            user.set_unusable_password()
            user.save(update_fields=["password"])
            created += 1
        ids[name] = str(user.pk)
    return ids, created


def _tickets(now: datetime) -> int:
    created = 0
    for n, (subject, body, customer, email, status) in enumerate(TICKETS):
        ticket, made = Ticket.objects.get_or_create(
            subject=subject,
            defaults={
                "body": body,
                "customer": customer,
                "customer_email": email,
                "status": status,
            },
        )
        if made:  # opened over the last few days, the first one first
            opened = now - timedelta(hours=9 * (len(TICKETS) - n), minutes=17 * n)
            Ticket.objects.filter(pk=ticket.pk).update(created_at=opened)
        created += made
    return created


def _budgets(now: datetime) -> int:
    """A budget close to its soft threshold, and a roomy global one."""
    helpdesk, _ = Budget.objects.get_or_create(
        name="help-center-30d",
        defaults={
            "scope": Budget.Scope.FEATURE,
            "scope_value": "help-center",
            "period": Budget.Period.ROLLING,
            "hours": 720,
            "limit_usd": Decimal(1),
            "thresholds": [[0.8, "downgrade"], [0.95, "cheapest"]],
            "action": Budget.Action.BLOCK,
        },
    )
    spent = helpdesk.spent(now)
    if spent > 0 and helpdesk.limit_usd == Decimal(1):
        # 86% used: past the downgrade threshold, short of the next one.
        helpdesk.limit_usd = (spent / Decimal("0.86")).quantize(Decimal("0.01"), rounding=ROUND_UP)
        helpdesk.save(update_fields=["limit_usd"])
    Budget.objects.get_or_create(
        name="support-monthly",
        defaults={
            "scope": Budget.Scope.GLOBAL,
            "period": Budget.Period.MONTH,
            "limit_usd": Decimal(15),
            "thresholds": [[0.8, "downgrade"]],
            "action": Budget.Action.CHEAPEST,
        },
    )
    return Budget.objects.count()


def seed(*, days: int = 30, now: datetime | None = None) -> SeedResult:
    """Create the demo's users, tickets, traffic and budgets unless they exist."""
    now = now or timezone.now()
    with transaction.atomic():
        users, created_users = _users()
        created_tickets = _tickets(now)
    already = LLMCall.objects.filter(record_id__startswith=RECORD_PREFIX).exists()
    created_calls = 0
    if not already:
        result = store_records(traffic(now, users, days=days), send_signals=False)
        created_calls = len(result.inserted)
    budgets = _budgets(now)
    return SeedResult(created_users, created_tickets, created_calls, budgets, already)
