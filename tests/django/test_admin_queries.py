"""Admin changelists run a fixed number of queries whatever the number of rows."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_llmroute.models import ApiKey, Budget

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(root)
    return client, root


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured)


def test_api_key_list_does_not_query_per_key(admin_client):
    client, _root = admin_client

    def add_keys(n: int) -> None:
        for _ in range(n):
            i = ApiKey.objects.count()
            budget = Budget.objects.create(name=f"key-{i}", limit_usd=Decimal(5))
            owner = get_user_model().objects.create_user(f"owner-{i}")
            ApiKey.objects.create_key(owner, f"k{i}", budget=budget)

    add_keys(2)
    few = _queries(client, "/admin/django_llmroute/apikey/")
    add_keys(5)
    many = _queries(client, "/admin/django_llmroute/apikey/")
    assert many == few


def test_budget_list_reads_each_budget_spend_once(admin_client):
    client, _root = admin_client
    Budget.objects.create(name="first", limit_usd=Decimal(5))
    few = _queries(client, "/admin/django_llmroute/budget/")
    with CaptureQueriesContext(connection) as one:
        Budget.objects.get(name="first").spent()
    per_spent = len(one) - 1  # less the get()
    assert per_spent >= 1
    for i in range(4):
        Budget.objects.create(name=f"more-{i}", limit_usd=Decimal(5))
    many = _queries(client, "/admin/django_llmroute/budget/")
    # "spent this period" and the "used" bar show the same figure: one read per row.
    assert many - few == 4 * per_spent
