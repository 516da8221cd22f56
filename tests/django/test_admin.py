"""Admin pages: call log, cost report, decisions, budgets, API keys, and who may see them."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db.models import Count, Sum
from django.utils import timezone

from django_llmroute.admin import cost_report_context
from django_llmroute.models import ApiKey, Budget, LLMCall
from django_llmroute.reports import format_money, percentile
from django_llmroute.sinks import store_records
from routing_middleware.schema import Usage

from .factories import make_record

pytestmark = pytest.mark.django_db

REPORT = "/admin/django_llmroute/costreport/"
DECISIONS = "/admin/django_llmroute/routingdecision/"
CALLS = "/admin/django_llmroute/llmcall/"


@pytest.fixture
def superuser():
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def calls(superuser):
    """Calls over two months, two users, three features, with errors, hits and fallbacks."""
    nov = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
    oct_ = datetime(2026, 10, 15, 9, 0, tzinfo=UTC)
    records = []
    for i in range(12):
        records.append(
            make_record(
                created_at=nov + timedelta(days=i % 4, minutes=i),
                feature=("summaries", "search", "chat")[i % 3],
                chosen_model=("gpt-4o-mini", "claude-haiku")[i % 2],
                provider=("openai", "anthropic")[i % 2],
                user_id=str(superuser.pk) if i % 2 else "guest-7",
                cost=Decimal("0.0100000000") * (i + 1),
                requested_cost=Decimal("0.0300000000") * (i + 1),
                latency_ms=100.0 * (i + 1),
                status="error" if i == 5 else "cache_hit" if i in (2, 7) else "ok",
                fallback_from="gpt-4o" if i == 9 else None,
                tier=i % 3,
                reasons=(
                    ("budget_downgrade", f"budget 'team' at {80 + i}% → downgraded from tier 3"),
                    ("excluded_sla", "claude-opus excluded: p95 2.4 s > SLA 2 s"),
                )
                if i % 4 == 0
                else (("cheapest_fit", "cheapest model meeting the quality floor"),),
            )
        )
    for i in range(5):
        records.append(
            make_record(
                created_at=oct_ + timedelta(hours=i),
                feature="summaries",
                cost=Decimal("1.2500000000"),
                requested_cost=None,
                latency_ms=50.0,
            )
        )
    store_records(records)
    return records


def _money_of(html: str, name: str) -> str:
    match = re.search(rf'data-total="{name}">([^<]*)<', html)
    assert match, name
    return match.group(1)


def _expected(qs) -> dict[str, str]:
    data = qs.aggregate(spend=Sum("cost"), n=Count("id"))
    return {"spend": format_money(Decimal(str(data["spend"]))), "calls": f"{data['n']:,}"}


class TestCostReport:
    def test_totals_match_the_call_log(self, admin_client, calls):
        response = admin_client.get(REPORT)
        assert response.status_code == 200
        html = response.content.decode()
        expected = _expected(LLMCall.objects.all())
        assert _money_of(html, "spend") == expected["spend"] == "$7.03"
        assert _money_of(html, "calls") == "17"
        # savings: requested (3x cost for Nov, equal for Oct) minus spend
        assert _money_of(html, "savings") == "$1.56 (18.2%)"
        assert _money_of(html, "error-rate") == f"{1 / 17 * 100:.1f}%"
        assert _money_of(html, "cache-hit-rate") == f"{2 / 17 * 100:.1f}%"
        assert _money_of(html, "fallback-rate") == f"{1 / 17 * 100:.1f}%"
        p95 = percentile(LLMCall.objects.all(), "latency_ms", 0.95)
        assert _money_of(html, "p95-latency") == f"{p95:,.0f} ms"

    def test_charts_are_inline_svg_with_bars(self, admin_client, calls):
        html = admin_client.get(REPORT).content.decode()
        assert html.count('<svg class="llmroute-chart"') == 6  # per day, 4 breakdowns, tiers
        assert "<script" not in html.split('id="llmroute-cost-report"')[1].split("</div>")[0]
        widths = [float(w) for w in re.findall(r'<rect x="180" y="\d+" width="([\d.]+)"', html)]
        assert widths
        assert max(widths) > 0
        assert "<title>summaries: $" in html
        heights = [
            float(h)
            for h in re.findall(
                r'class="llmroute-bar" x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', html
            )
        ]
        assert len(heights) == 5  # 5 days with calls
        assert min(heights) > 0

    def test_date_filter_changes_the_totals(self, admin_client, calls):
        html = admin_client.get(
            REPORT + "?created_at__year=2026&created_at__month=11"
        ).content.decode()
        november = LLMCall.objects.filter(created_at__month=11)
        assert _money_of(html, "spend") == _expected(november)["spend"] == "$0.7800"
        assert _money_of(html, "calls") == "12"
        html = admin_client.get(
            REPORT + "?created_at__year=2026&created_at__month=10"
        ).content.decode()
        assert _money_of(html, "spend") == "$6.25"

    def test_filters_and_search_narrow_the_figures(self, admin_client, calls):
        html = admin_client.get(REPORT + "?feature=search").content.decode()
        assert (
            _money_of(html, "spend") == _expected(LLMCall.objects.filter(feature="search"))["spend"]
        )
        html = admin_client.get(REPORT + "?status__exact=error").content.decode()
        assert _money_of(html, "calls") == "1"
        html = admin_client.get(REPORT + "?q=claude-haiku").content.decode()
        assert _money_of(html, "calls") == "6"

    def test_breakdown_tables_name_users_and_features(self, admin_client, calls):
        html = admin_client.get(REPORT).content.decode()
        user_table = html.split('id="llmroute-table-user"')[1].split("</table>")[0]
        assert ">root<" in user_table
        assert ">guest-7<" in user_table
        feature_table = html.split('id="llmroute-table-feature"')[1].split("</table>")[0]
        summaries = LLMCall.objects.filter(feature="summaries").aggregate(s=Sum("cost"))["s"]
        assert format_money(Decimal(str(summaries))) in feature_table

    def test_rollup_and_call_log_agree(self, calls):
        qs = LLMCall.objects.all()
        from_rollup = cost_report_context(qs, {})
        from_calls = cost_report_context(qs, None)
        assert from_rollup["summary"].source == "rollup"
        assert from_rollup["shown"] == from_calls["shown"]
        for a, b in zip(from_rollup["sections"], from_calls["sections"], strict=True):
            assert [(r.label, r.spend_text, r.calls) for r in a["rows"]] == [
                (r.label, r.spend_text, r.calls) for r in b["rows"]
            ]

    def test_date_navigation_comes_from_the_rollup(self, admin_client, calls):
        html = admin_client.get(REPORT).content.decode()
        nav = re.split(r"<nav class=\"toplinks\"[^>]*>", html)[1].split("</nav>")[0]
        assert "created_at__month=10" in nav
        assert "created_at__month=11" in nav
        html = admin_client.get(
            REPORT + "?created_at__year=2026&created_at__month=11"
        ).content.decode()
        nav = re.split(r"<nav class=\"toplinks\"[^>]*>", html)[1].split("</nav>")[0]
        days = sorted(int(d) for d in re.findall(r"created_at__day=(\d+)", nav))
        assert days == [3, 4, 5, 6]

    def test_user_and_tier_filters(self, admin_client, calls, superuser):
        html = admin_client.get(REPORT + f"?user={superuser.pk}").content.decode()
        mine = LLMCall.objects.filter(user_ref=str(superuser.pk))
        assert _money_of(html, "calls") == str(mine.count())
        assert _money_of(html, "spend") == _expected(mine)["spend"]
        html = admin_client.get(REPORT + "?tier=2").content.decode()
        assert _money_of(html, "calls") == str(LLMCall.objects.filter(tier=2).count())
        filters = admin_client.get(REPORT).content.decode().split('id="changelist-filter"')[1]
        assert ">root<" in filters  # users listed by name

    def test_links_to_the_decisions_with_the_same_filters(self, admin_client, calls):
        html = admin_client.get(REPORT + "?feature=search").content.decode()
        assert f'href="{DECISIONS}?feature=search"' in html

    def test_empty_report(self, admin_client):
        html = admin_client.get(REPORT).content.decode()
        assert _money_of(html, "spend") == "$0.00"
        assert "No data" in html

    def test_bad_filter_redirects_without_aggregating(self, admin_client, calls):
        response = admin_client.get(REPORT + "?nonsense=1")
        assert response.status_code == 302
        assert "e=1" in response["Location"]


def test_decisions_view(admin_client, calls):
    html = admin_client.get(DECISIONS).content.decode()
    reasons = html.split('id="llmroute-table-reasons"')[1].split("</table>")[0]
    assert re.search(r"<td>cheapest_fit</td><td class=\"num\">9</td>", reasons)
    assert re.search(r"<td>budget_downgrade</td><td class=\"num\">3</td>", reasons)
    budget = html.split('id="llmroute-table-budget"')[1].split("</table>")[0]
    assert re.search(r"<td>team: downgrade</td><td class=\"num\">3</td>", budget)
    sla = html.split('id="llmroute-table-sla"')[1].split("</table>")[0]
    assert re.search(r"<td>claude-opus</td><td class=\"num\">3</td>", sla)
    fallbacks = html.split('id="llmroute-table-fallbacks"')[1].split("</table>")[0]
    assert re.search(r"<td>gpt-4o</td><td>claude-haiku</td><td class=\"num\">1</td>", fallbacks)


class TestCallLog:
    def test_changelist_is_read_only_and_shows_money(self, admin_client, calls):
        response = admin_client.get(CALLS)
        assert response.status_code == 200
        assert "$0.0100" in response.content.decode()
        assert admin_client.get(CALLS + "add/").status_code == 403
        call = LLMCall.objects.first()
        page = admin_client.get(f"{CALLS}{call.pk}/change/")
        assert page.status_code == 200
        assert b'name="cost"' not in page.content  # view only

    def test_csv_export_streams_the_selection(self, admin_client, calls):
        chosen = list(LLMCall.objects.filter(feature="summaries").values_list("pk", flat=True))
        response = admin_client.post(
            CALLS, {"action": "export_csv", "_selected_action": [str(pk) for pk in chosen]}
        )
        assert response.status_code == 200
        assert response.streaming
        body = b"".join(response.streaming_content).decode()
        rows = list(csv.DictReader(io.StringIO(body)))
        assert len(rows) == len(chosen) == 9
        assert {r["feature"] for r in rows} == {"summaries"}
        assert sum(Decimal(r["cost"]) for r in rows) == LLMCall.objects.filter(
            feature="summaries"
        ).aggregate(s=Sum("cost"))["s"] or pytest.fail("sum differs")

    def test_filters_search_and_date_hierarchy(self, admin_client, calls):
        for query in (
            "?model=claude-haiku",
            "?provider=openai",
            "?tier__exact=1",
            "?usage_estimated__exact=0",
            "?q=summaries",
            "?created_at__year=2026",
        ):
            assert admin_client.get(CALLS + query).status_code == 200, query


class TestBudgetAdmin:
    def test_progress_bar_reflects_spend_and_thresholds(self, admin_client):
        Budget.objects.create(
            name="team",
            scope="global",
            period="month",
            limit_usd=Decimal("1"),
            thresholds=[[0.8, "downgrade"], [0.95, "cheapest"]],
        )
        store_records([make_record(created_at=timezone.now(), cost=Decimal("0.85"))])
        html = admin_client.get("/admin/django_llmroute/budget/").content.decode()
        assert 'aria-valuenow="85"' in html
        assert "background:#c9a227" in html  # past the first soft threshold
        assert "$0.85" in html

    def test_spent_by_scope_and_period(self):
        now = timezone.now()
        store_records(
            [
                make_record(
                    created_at=now,
                    cost=Decimal("0.5"),
                    feature="a",
                    user_id="u1",
                    tags=("beta",),
                    api_key_id="k1",
                ),
                make_record(
                    created_at=now - timedelta(hours=3),
                    cost=Decimal("0.25"),
                    feature="b",
                    user_id="u2",
                ),
                make_record(created_at=now - timedelta(days=40), cost=Decimal("9"), feature="a"),
            ]
        )

        def spent(**kw):
            return Budget(name="x", limit_usd=1, **kw).spent(now)

        assert (
            spent(scope="feature", scope_value="a", period="month") == Decimal("0.5")
            or now.day == 1
        )
        assert spent(scope="user", scope_value="u2", period="rolling", hours=4) == Decimal("0.25")
        assert spent(scope="user", scope_value="u2", period="rolling", hours=2) == 0
        assert spent(scope="tag", scope_value="beta", period="rolling", hours=1) == Decimal("0.5")
        assert spent(scope="api_key", scope_value="k1", period="rolling", hours=1) == Decimal("0.5")
        assert spent(scope="global", period="rolling", hours=24 * 60) == Decimal("9.75")
        # without a value, each subject on its own: the highest one's spend
        assert spent(scope="user", period="rolling", hours=24) == Decimal("0.5")
        assert spent(scope="tag", period="rolling", hours=24) == Decimal("0.5")
        assert spent(scope="feature", period="day") == Decimal("0.5")

    def test_thresholds_are_validated(self, admin_client):
        response = admin_client.post(
            "/admin/django_llmroute/budget/add/",
            {
                "name": "b",
                "scope": "global",
                "scope_value": "",
                "period": "day",
                "limit_usd": "5",
                "thresholds": '[[2, "x"]]',
                "action": "block",
                "active": "on",
            },
        )
        assert response.status_code == 200
        assert not Budget.objects.exists()
        response = admin_client.post(
            "/admin/django_llmroute/budget/add/",
            {
                "name": "b",
                "scope": "global",
                "scope_value": "",
                "period": "day",
                "limit_usd": "5",
                "thresholds": '[[0.8, "downgrade"]]',
                "action": "block",
                "active": "on",
            },
        )
        assert response.status_code == 302
        assert Budget.objects.get().thresholds == [[0.8, "downgrade"]]


class TestApiKeys:
    def test_plaintext_is_shown_once(self, admin_client, superuser):
        response = admin_client.post(
            "/admin/django_llmroute/apikey/add/",
            {"owner": superuser.pk, "name": "ci", "allow_hint_headers": "on"},
        )
        assert response.status_code == 200
        assert "no-store" in response["Cache-Control"]
        plaintext = re.search(r'value="(llmr_[^"]+)"', response.content.decode()).group(1)
        key = ApiKey.objects.get()
        assert ApiKey.objects.authenticate(plaintext) == key
        assert key.key_hash != plaintext
        page = admin_client.get(f"/admin/django_llmroute/apikey/{key.pk}/change/").content.decode()
        assert plaintext not in page
        assert key.display_prefix in page
        listing = admin_client.get("/admin/django_llmroute/apikey/").content.decode()
        assert plaintext not in listing
        assert key.display_prefix in listing

    def test_authenticate(self, superuser):
        key, plaintext = ApiKey.objects.create_key(superuser, "k")
        assert ApiKey.objects.authenticate(plaintext) == key
        assert ApiKey.objects.get().last_used_at is not None
        assert (
            ApiKey.objects.authenticate(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B"))
            is None
        )
        assert ApiKey.objects.authenticate("not-a-key") is None
        key.revoked = True
        key.save()
        assert ApiKey.objects.authenticate(plaintext) is None


class TestPermissions:
    @pytest.mark.parametrize("url", [REPORT, DECISIONS, CALLS, "/admin/django_llmroute/budget/"])
    def test_anonymous_is_sent_to_login(self, client, url):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")

    def test_non_staff_is_sent_to_login(self, client):
        user = get_user_model().objects.create_user("visitor", password="pw")
        user.user_permissions.add(Permission.objects.get(codename="view_costreport"))
        client.force_login(user)
        response = client.get(REPORT)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")

    def test_staff_needs_the_view_permission(self, client, calls):
        user = get_user_model().objects.create_user("staff", password="pw", is_staff=True)
        client.force_login(user)
        assert client.get(REPORT).status_code == 403
        assert client.get(DECISIONS).status_code == 403
        user.user_permissions.add(Permission.objects.get(codename="view_llmcall"))
        assert client.get(REPORT).status_code == 403  # the report has its own permission
        user = get_user_model().objects.get(pk=user.pk)
        user.user_permissions.add(Permission.objects.get(codename="view_costreport"))
        client.force_login(user)
        response = client.get(REPORT)
        assert response.status_code == 200
        assert _money_of(response.content.decode(), "spend") == "$7.03"
        assert client.get(DECISIONS).status_code == 403


def test_usage_without_requested_cost_has_no_savings(admin_client):
    store_records(
        [make_record(requested_cost=None, cost=Decimal("2"), usage=Usage(input_tokens=5))]
    )
    html = admin_client.get(REPORT).content.decode()
    assert _money_of(html, "savings") == "$0.00 (0.0%)"


@pytest.mark.django_db
def test_csv_cells_a_spreadsheet_would_run_are_kept_as_text(admin_client):
    from django_llmroute.reports import csv_cell

    hostile = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    assert [csv_cell(v) for v in hostile] == ["'" + v for v in hostile]
    assert [csv_cell(v) for v in ("plain", "", None, 3, Decimal("-1.5"))] == [
        "plain",
        "",
        "",
        3,
        Decimal("-1.5"),
    ]
    LLMCall.objects.create(
        record_id="r-formula",
        call_id="c-formula",
        created_at=timezone.now(),
        feature="=1+1",
        requested_model="@m",
        chosen_model="m",
        provider="p",
        cost=Decimal("-0.5"),
    )
    pk = LLMCall.objects.get(record_id="r-formula").pk
    response = admin_client.post(
        "/admin/django_llmroute/llmcall/",
        {"action": "export_csv", "_selected_action": [str(pk)]},
    )
    [row] = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert row["feature"] == "'=1+1"
    assert row["requested_model"] == "'@m"
    assert Decimal(row["cost"]) == Decimal("-0.5")  # a number is left alone
