"""Speed of the admin cost report over 1,000,000 stored calls, in PostgreSQL.

Fills a throwaway database with ``--rows`` calls spread over 90 days (one
``INSERT … SELECT FROM generate_series``: 500 users using two features each, two
models per feature, tier by feature) and the matching daily rollup, then
times, as medians over ``--repeat`` runs after one warm-up:

- baseline: ``SELECT COUNT(*)`` over the calls, in the same run;
- the report's queries for the whole range (rollup totals and breakdowns, p95 and
  tiers from the calls), for one month (date hierarchy), and for a filtered view
  that must read the calls (one feature and status, via the changelist's filters);
- the full admin page render through the test client.

Target: the unfiltered report's queries < 300 ms.

Usage: ``LLMROUTE_TEST_DATABASE_URL=postgresql://… python benchmarks/bench_report.py
[--rows N] [--repeat N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 300

FEATURES = ["search", "chat", "summaries", "tagging", "support", "docs", "triage", "translate"]
MODELS = [
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("gpt-4.1-nano", "openai"),
    ("claude-haiku", "anthropic"),
    ("claude-sonnet", "anthropic"),
    ("gemini-flash", "google"),
    ("gemini-pro", "google"),
    ("mistral-small", "mistral"),
    ("deepseek-chat", "deepseek"),
    ("llama-3.3-70b", "groq"),
]


def setup_django(database_name: str, *, keep: bool = False) -> Any:
    """Configure the test settings project and create (or, with ``keep``, reuse) a database."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.settings")
    import django

    django.setup()
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("set LLMROUTE_TEST_DATABASE_URL to a PostgreSQL database")
    connection.llmroute_original_name = connection.settings_dict["NAME"]  # type: ignore[attr-defined]
    connection.settings_dict["TEST"]["NAME"] = database_name
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False, keepdb=keep)
    return connection


def _array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join(f"'{v}'" for v in values) + "]"


def fill(rows: int) -> float:
    """Insert ``rows`` calls and their rollup; returns the seconds it took."""
    from django.db import connection

    from django_llmroute.models import DailySummary, DailyUsage, LLMCall

    calls = LLMCall._meta.db_table
    daily = DailyUsage._meta.db_table
    summary = DailySummary._meta.db_table
    models = _array([m for m, _ in MODELS])
    providers = _array([p for _, p in MODELS])
    features = _array(FEATURES)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {calls} (
                record_id, call_id, attempt, attempts, created_at, request_id, user_ref,
                feature, route, tags, tier, mode, endpoint, requested_model, chosen_model,
                provider, status, error_kind, fallback_from, input_tokens, cached_input_tokens,
                cache_write_tokens, output_tokens, reasoning_tokens, usage_estimated, cost,
                requested_cost, latency_ms, ttft_ms, streamed, stitched, reasons, extra)
            SELECT
                'r' || i, 'c' || i, 1, 1,
                now() - make_interval(secs => (i * 7.77) %% (90 * 86400)),
                'req-' || i, 'user-' || (i %% 500),
                ({features})[1 + f], 'app.views.assist', '[]'::jsonb, f %% 4,
                'enforce', 'chat', 'gpt-4o', ({models})[1 + (f + i %% 2) %% 10],
                ({providers})[1 + (f + i %% 2) %% 10],
                CASE WHEN i %% 50 = 0 THEN 'error' WHEN i %% 13 = 0 THEN 'cache_hit' ELSE 'ok' END,
                CASE WHEN i %% 50 = 0 THEN 'RateLimited' END,
                CASE WHEN i %% 40 = 0 THEN 'gpt-4o' END,
                500 + i %% 3000, (i %% 5) * 100, 0, 100 + i %% 700, 0, i %% 97 = 0,
                ((500 + i %% 3000) * 0.00000015 + (100 + i %% 700) * 0.0000006)::numeric(20, 10),
                ((500 + i %% 3000) * 0.0000025 + (100 + i %% 700) * 0.00001)::numeric(20, 10),
                200 + (i * 37) %% 3000, 80 + (i * 13) %% 900, i %% 3 = 0, false,
                CASE WHEN i %% 10 = 0
                     THEN '[["budget_downgrade", "budget team at 85%%"]]'::jsonb
                     ELSE '[["cheapest_fit", "cheapest model meeting the quality floor"]]'::jsonb
                END,
                '{{}}'::jsonb
            FROM generate_series(1, %s) AS i,
                 LATERAL (SELECT ((i %% 500) + (i / 500) %% 2) %% 8 AS f) AS shape
            """,
            [rows],
        )
        sums = """
            count(*), count(*) FILTER (WHERE status = 'error'),
            count(*) FILTER (WHERE status = 'cache_hit'),
            count(*) FILTER (WHERE fallback_from IS NOT NULL),
            sum(input_tokens), sum(cached_input_tokens), sum(output_tokens),
            sum(reasoning_tokens), sum(cost), sum(coalesce(requested_cost, cost)),
            sum(coalesce(requested_cost, cost) - cost),
            coalesce(sum(latency_ms), 0), count(latency_ms)"""
        sum_columns = """
            calls, errors, cache_hits, fallbacks, input_tokens, cached_input_tokens,
            output_tokens, reasoning_tokens, cost, requested_cost, saved_cost,
            latency_ms_sum, latency_count"""
        cursor.execute(
            f"""
            INSERT INTO {daily} (date, user_ref, feature, provider, model, tier, {sum_columns})
            SELECT (created_at AT TIME ZONE 'UTC')::date, coalesce(user_ref, ''),
                   coalesce(feature, ''), provider, chosen_model, coalesce(tier, -1), {sums}
            FROM {calls} GROUP BY 1, 2, 3, 4, 5, 6
            """
        )
        cursor.execute(
            f"""
            INSERT INTO {summary} (date, feature, provider, model, tier, {sum_columns})
            SELECT (created_at AT TIME ZONE 'UTC')::date, coalesce(feature, ''), provider,
                   chosen_model, coalesce(tier, -1), {sums}
            FROM {calls} GROUP BY 1, 2, 3, 4, 5
            """
        )
        cursor.execute(f"VACUUM ANALYZE {calls}")
        cursor.execute(f"VACUUM ANALYZE {daily}")
        cursor.execute(f"VACUUM ANALYZE {summary}")
    return time.perf_counter() - started


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median milliseconds of ``fn`` over ``repeat`` runs, after one warm-up."""
    fn()
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(runs), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--keep", action="store_true", help="keep the filled database and reuse it next time"
    )
    args = parser.parse_args()

    connection = setup_django("llmroute_bench_report", keep=args.keep)
    try:
        from django.contrib.auth import get_user_model
        from django.db import connection as db
        from django.test import Client
        from django.utils import timezone

        from django_llmroute.admin import cost_report_context
        from django_llmroute.models import DailySummary, DailyUsage, LLMCall

        fill_s = 0.0
        if LLMCall.objects.count() != args.rows:
            with db.cursor() as cursor:
                for model in (LLMCall, DailyUsage, DailySummary):
                    cursor.execute(f"TRUNCATE {model._meta.db_table}")
            fill_s = fill(args.rows)
        with db.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {DailyUsage._meta.db_table}")
            rollup_rows = cursor.fetchone()[0]
            cursor.execute(f"SELECT count(*) FROM {DailySummary._meta.db_table}")
            summary_rows = cursor.fetchone()[0]

        def count_all() -> None:
            with db.cursor() as cursor:
                cursor.execute(f"SELECT COUNT(*) FROM {LLMCall._meta.db_table}")
                cursor.fetchone()

        today = timezone.localdate()
        first = today.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
        # As the admin's date hierarchy filters: a range on the calls and the rollup.
        month = LLMCall.objects.filter(
            created_at__gte=datetime.combine(first, datetime.min.time(), tzinfo=UTC),
            created_at__lt=datetime.combine(after, datetime.min.time(), tzinfo=UTC),
        )
        month_rollup = {"date__gte": first, "date__lt": after}
        filtered = LLMCall.objects.filter(feature="search", status="ok")

        admin, _ = get_user_model().objects.get_or_create(
            username="bench", defaults={"is_staff": True, "is_superuser": True}
        )
        client = Client()
        client.force_login(admin)
        url = "/admin/django_llmroute/costreport/"

        def page(query: str = "") -> Callable[[], None]:
            def get() -> None:
                response = client.get(url + query)
                assert response.status_code == 200, response.status_code

            return get

        result: dict[str, Any] = {
            "rows": args.rows,
            "rollup_rows": rollup_rows,
            "summary_rows": summary_rows,
            "fill_s": round(fill_s, 1),
            "baseline_count_ms": timed(count_all, args.repeat),
            "report_queries_all_ms": timed(
                lambda: cost_report_context(LLMCall.objects.all(), {}),
                args.repeat,
            ),
            "report_queries_month_ms": timed(
                lambda: cost_report_context(month, month_rollup), args.repeat
            ),
            "report_queries_filtered_calls_ms": timed(
                lambda: cost_report_context(filtered, None), args.repeat
            ),
            "admin_page_all_ms": timed(page(), args.repeat),
            "admin_page_month_ms": timed(
                page(f"?created_at__year={today.year}&created_at__month={today.month}"),
                args.repeat,
            ),
            "admin_page_filtered_ms": timed(page("?feature=search&status__exact=ok"), args.repeat),
            "target_ms": TARGET_MS,
        }
        result["meets_target"] = result["report_queries_all_ms"] < TARGET_MS
    finally:
        connection.creation.destroy_test_db(
            connection.llmroute_original_name, verbosity=0, keepdb=args.keep
        )
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:36} {value}")


if __name__ == "__main__":
    main()
