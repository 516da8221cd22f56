"""With ``USE_TZ = False`` the database holds naive local times: records, reports and
budgets must work in them, as Django does."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from django_llmroute.models import Budget, DailySummary, LLMCall
from django_llmroute.sinks import store_records

from .factories import make_record

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("no_tz"),
]

REPORT = "/admin/django_llmroute/costreport/"


@pytest.fixture
def no_tz():
    with override_settings(USE_TZ=False, TIME_ZONE="America/New_York"):
        yield


def test_records_are_stored_in_local_time():
    # 02:00 UTC on the 21st is 21:00 on the 20th in New York.
    record = make_record(created_at=datetime(2026, 11, 21, 2, 0, tzinfo=UTC))
    store_records([record])
    call = LLMCall.objects.get(record_id=record.id)
    assert call.created_at == datetime(2026, 11, 20, 21, 0)
    assert DailySummary.objects.get().date.isoformat() == "2026-11-20"


def test_the_admin_reports_render(client):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    store_records(
        [
            make_record(created_at=datetime(2026, 11, 21, 2, 0, tzinfo=UTC), cost=Decimal("1.5")),
            make_record(created_at=datetime(2026, 11, 22, 2, 0, tzinfo=UTC), cost=Decimal("2")),
        ]
    )
    for url in (REPORT, f"{REPORT}?created_at__year=2026&created_at__month=11"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.context["summary"].spend == Decimal("3.5")
        assert [r.label for r in response.context["per_day"]] == ["2026-11-20", "2026-11-21"]
        assert response.context["summary"].p95_latency_ms is not None
    for page in ("routingdecision", "llmcall", "budget"):
        assert client.get(f"/admin/django_llmroute/{page}/").status_code == 200, page


@pytest.mark.parametrize(("period", "hours"), [("rolling", 2), ("day", None)])
def test_budgets_count_what_was_spent(period, hours):
    now = timezone.now()  # naive local time here
    recent = timezone.make_aware(now - timedelta(minutes=5)).astimezone(UTC)
    store_records([make_record(created_at=recent, cost=Decimal("0.25"))])
    budget = Budget.objects.create(
        name="b", period=period, hours=hours, limit_usd=Decimal(1), scope="global"
    )
    assert budget.spent() == Decimal("0.25")


def test_the_report_command_runs():
    store_records([make_record(created_at=datetime.now(UTC), cost=Decimal("0.75"))])
    for source in ("rollup", "calls"):
        out = io.StringIO()
        call_command("llmroute_report", "--source", source, stdout=out)
        assert "total: $0.7500 over 1 calls" in out.getvalue(), source
