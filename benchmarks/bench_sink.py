"""Throughput of the Django ORM sink, against raw ``bulk_create`` of the same rows.

Both write ``--records`` usage records into a throwaway database (PostgreSQL when
``LLMROUTE_TEST_DATABASE_URL`` is set, SQLite otherwise) in the same run:

- baseline: ``LLMCall.objects.bulk_create`` of the rows, in batches, nothing else;
- sink: ``DjangoSink.emit`` for every record, then ``flush()`` — the sink also
  de-duplicates, resolves users and keeps the daily rollup, on its own thread.

It also counts the queries ``emit`` runs on the caller's thread (must be 0) and the
caller-side cost of one ``emit``. Target: >= 5,000 records/s through the sink.

Usage: ``python benchmarks/bench_sink.py [--records N] [--batch-size N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_PER_S = 5_000


def setup_django(database_name: str) -> Any:
    """Configure the test settings project and create a fresh database for the run."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.settings")
    import django

    django.setup()
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        db["TEST"]["NAME"] = os.path.join(tempfile.gettempdir(), f"{database_name}.sqlite3")
    else:
        db["TEST"]["NAME"] = database_name
    connection.llmroute_original_name = db["NAME"]  # type: ignore[attr-defined]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    return connection


def make_records(n: int) -> list[Any]:
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from routing_middleware.metering import UsageRecord
    from routing_middleware.schema import Usage

    start = datetime(2026, 11, 1, tzinfo=UTC)
    features = ("search", "chat", "summaries", "tagging", "support")
    models = ("gpt-4o-mini", "gpt-4o", "claude-haiku", "claude-sonnet", "gemini-flash")
    return [
        UsageRecord(
            requested_model="gpt-4o",
            chosen_model=models[i % 5],
            provider="openai" if i % 5 < 2 else "anthropic" if i % 5 < 4 else "google",
            usage=Usage(input_tokens=800 + i % 400, output_tokens=150 + i % 90),
            cost=Decimal("0.0000010000") * (i % 997 + 1),
            requested_cost=Decimal("0.0000040000") * (i % 997 + 1),
            created_at=start + timedelta(seconds=i * 7),
            user_id=f"user-{i % 200}",
            feature=features[i % 5],
            tier=i % 3,
            latency_ms=float(200 + i % 800),
            reasons=(("cheapest_fit", "cheapest model meeting the quality floor"),),
        )
        for i in range(n)
    ]


def truncate() -> None:
    from django.db import connection

    from django_llmroute.models import DailyUsage, LLMCall

    with connection.cursor() as cursor:
        for model in (LLMCall, DailyUsage):
            table = connection.ops.quote_name(model._meta.db_table)
            if connection.vendor == "postgresql":
                cursor.execute(f"TRUNCATE {table}")
            else:
                cursor.execute(f"DELETE FROM {table}")


def bench_baseline(records: list[Any], batch_size: int) -> float:
    from django.db import transaction

    from django_llmroute.models import LLMCall
    from django_llmroute.sinks import record_to_call

    started = time.perf_counter()
    for i in range(0, len(records), batch_size):
        rows = [record_to_call(r) for r in records[i : i + batch_size]]
        with transaction.atomic():
            LLMCall.objects.bulk_create(rows)
    return time.perf_counter() - started


def bench_sink(records: list[Any], batch_size: int, spool: Path) -> tuple[float, list[float]]:
    from django_llmroute.sinks import DjangoSink, SinkOptions

    sink = DjangoSink(
        SinkOptions(
            buffer_size=len(records) + 1,
            batch_size=batch_size,
            flush_interval_ms=50,
            spool_path=spool,
        )
    )
    emit_costs: list[float] = []
    started = time.perf_counter()
    for record in records:
        t0 = time.perf_counter()
        sink.emit(record)
        emit_costs.append(time.perf_counter() - t0)
    if not sink.flush(timeout=600):
        raise SystemExit("the sink did not drain in 10 minutes")
    elapsed = time.perf_counter() - started
    sink.close()
    return elapsed, emit_costs


def count_emit_queries(records: list[Any], spool: Path) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from django_llmroute.sinks import DjangoSink, SinkOptions

    sink = DjangoSink(SinkOptions(spool_path=spool, flush_interval_ms=10))
    with CaptureQueriesContext(connection) as queries:
        for record in records:
            sink.emit(record)
    sink.close()
    return len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    connection = setup_django("llmroute_bench_sink")
    try:
        from django_llmroute.models import DailyUsage, LLMCall

        records = make_records(args.records)
        spool = Path(tempfile.mkdtemp()) / "bench-spool.jsonl"

        baseline_s = bench_baseline(records, args.batch_size)
        assert LLMCall.objects.count() == len(records)
        truncate()

        sink_s, emit_costs = bench_sink(records, args.batch_size, spool)
        stored = LLMCall.objects.count()
        rollup_calls = sum(DailyUsage.objects.values_list("calls", flat=True))
        assert stored == len(records), (stored, len(records))
        assert rollup_calls == len(records), rollup_calls
        assert not spool.exists() or spool.stat().st_size == 0, "records were spooled"
        truncate()

        queries = count_emit_queries(make_records(1_000), spool)
        truncate()

        emit_us = sorted(c * 1e6 for c in emit_costs)
        result = {
            "database": connection.vendor,
            "records": len(records),
            "batch_size": args.batch_size,
            "baseline_bulk_create_per_s": round(len(records) / baseline_s),
            "sink_per_s": round(len(records) / sink_s),
            "sink_vs_baseline": round(baseline_s / sink_s, 2),
            "emit_us_median": round(statistics.median(emit_us), 2),
            "emit_us_p99": round(emit_us[int(len(emit_us) * 0.99)], 2),
            "emit_queries_on_caller_thread_per_1000": queries,
            "target_per_s": TARGET_PER_S,
        }
        result["meets_target"] = result["sink_per_s"] >= TARGET_PER_S and queries == 0
    finally:
        connection.creation.destroy_test_db(
            connection.llmroute_original_name, verbosity=0, keepdb=False
        )
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:42} {value}")


if __name__ == "__main__":
    main()
