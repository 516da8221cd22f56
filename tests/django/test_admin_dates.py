"""Out-of-range dates in the report pages' date filter are no server error."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from django_llmroute.sinks import store_records

from .factories import make_record

pytestmark = pytest.mark.django_db

PAGES = [
    "/admin/django_llmroute/costreport/",
    "/admin/django_llmroute/routingdecision/",
    "/admin/django_llmroute/llmcall/",
]


@pytest.fixture
def admin_client():
    client = Client(raise_request_exception=False)
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(root)
    store_records([make_record()])
    return client


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize(
    "query",
    [
        "created_at__year=9999",
        "created_at__year=9999&created_at__month=12",
        "created_at__year=9999&created_at__month=12&created_at__day=31",
    ],
)
def test_a_date_past_the_last_one_drops_the_date_filter_with_a_message(admin_client, page, query):
    response = admin_client.get(f"{page}?{query}&feature=summaries")
    assert response.status_code == 302, response.status_code
    # The other filters stay; the date ones go.
    assert response["Location"] == f"{page}?feature=summaries"
    shown = admin_client.get(response["Location"], follow=True)
    assert shown.status_code == 200
    assert shown.redirect_chain == []  # the kept filters are fine as they are
    assert "31 December 9999" in shown.content.decode()


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize(
    "query",
    [
        "created_at__year=9999&created_at__month=11",
        "created_at__year=9999&created_at__month=12&created_at__day=30",
        "created_at__year=1&created_at__month=1&created_at__day=1",
    ],
)
def test_dates_near_the_ends_still_filter(admin_client, page, query):
    response = admin_client.get(f"{page}?{query}")
    assert response.status_code == 200


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize(
    "query",
    [
        "created_at__year=99999",
        "created_at__year=2026&created_at__month=13",
        "created_at__year=2026&created_at__month=2&created_at__day=30",
        "created_at__year=-5",
        "created_at__year=x",
    ],
)
def test_an_impossible_date_is_a_bad_filter_not_a_server_error(admin_client, page, query):
    response = admin_client.get(f"{page}?{query}")
    # Django's answer to a filter it cannot use: back to the list, flagged (?e=1).
    assert response.status_code == 302, response.status_code
    assert "e=1" in response["Location"]
