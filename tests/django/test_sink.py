"""The ORM sink: off the caller's thread, outside the request's transaction, none lost."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_llmroute.models import Budget, DailyUsage, LLMCall
from django_llmroute.signals import llm_call_recorded
from django_llmroute.sinks import SinkOptions, replay_spool, store_records
from django_llmroute.spool import Spool, record_from_dict, record_to_dict

from . import views
from .factories import assert_rollup_matches_calls, make_record, spool_lines

pytestmark = pytest.mark.django_db(transaction=True)


def _rename_calls_table(to_unavailable: bool) -> None:
    """Make the calls table unavailable (or available again) for real."""
    table = LLMCall._meta.db_table
    names = (table, f"{table}_away") if to_unavailable else (f"{table}_away", table)
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {qn(names[0])} RENAME TO {qn(names[1])}")
    connection.close()


def test_emit_does_no_query_on_the_callers_thread(make_sink):
    sink = make_sink()
    records = [make_record() for _ in range(20)]
    with CaptureQueriesContext(connection) as queries:
        for record in records:
            sink.emit(record)
    assert len(queries) == 0
    assert sink.flush(timeout=10)
    stored = set(LLMCall.objects.values_list("record_id", flat=True))
    assert stored == {r.id for r in records}


def test_written_by_the_flusher_thread(make_sink):
    sink = make_sink()
    seen: list[tuple[str, int, str]] = []

    def receiver(sender, instance, record, **kwargs):
        seen.append((threading.current_thread().name, instance.pk, record.id))

    llm_call_recorded.connect(receiver)
    record = make_record()
    try:
        sink.emit(record)
        assert sink.flush(timeout=10)
    finally:
        llm_call_recorded.disconnect(receiver)
    stored = LLMCall.objects.get(record_id=record.id)
    assert seen == [("llmroute-sink-flusher", stored.pk, record.id)]


def test_record_survives_the_rollback_of_an_atomic_request(make_sink, client):
    views.SINK = make_sink()
    client.raise_request_exception = False
    try:
        response = client.get("/record-then-fail/?rid=r-1")
        assert response.status_code == 500
        assert views.SINK.flush(timeout=10)
    finally:
        views.SINK = None
    assert not Budget.objects.filter(name="doomed-r-1").exists()  # the request rolled back
    call = LLMCall.objects.get(request_id="r-1")
    assert call.feature == "doomed-view"


def test_full_buffer_spills_to_the_spool_then_comes_back(make_sink, spool_path):
    sink = make_sink(buffer_size=2, batch_size=100, flush_interval_ms=60_000)
    records = [make_record() for _ in range(5)]
    for record in records:
        sink.emit(record)
    assert spool_lines(spool_path) == 3
    assert LLMCall.objects.count() == 0
    assert sink.flush(timeout=10)
    assert set(LLMCall.objects.values_list("record_id", flat=True)) == {r.id for r in records}
    assert spool_lines(spool_path) == 0
    assert_rollup_matches_calls()


def test_outage_is_spooled_then_replayed_exactly_once(make_sink, spool_path):
    sink = make_sink(retries=2)
    before = [make_record(feature="before") for _ in range(3)]
    for record in before:
        sink.emit(record)
    assert sink.flush(timeout=10)

    _rename_calls_table(to_unavailable=True)
    during = [make_record(feature="during") for _ in range(7)]
    try:
        for record in during:
            sink.emit(record)
        assert sink.flush(timeout=20)
        assert spool_lines(spool_path) == 7
    finally:
        _rename_calls_table(to_unavailable=False)

    after = make_record(feature="after")
    sink.emit(after)  # the first good write makes the flusher replay the spool
    assert sink.flush(timeout=20)
    expected = {r.id for r in [*before, *during, after]}
    assert set(LLMCall.objects.values_list("record_id", flat=True)) == expected
    assert LLMCall.objects.count() == 11
    assert spool_lines(spool_path) == 0
    assert sink.last_replay is not None
    assert sink.last_replay.inserted == 7

    # Replaying the same lines again (as after a crash mid-replay) adds nothing.
    Spool(spool_path).append(during)
    again = replay_spool(spool_path)
    assert (again.read, again.inserted, again.skipped) == (7, 0, 7)
    assert LLMCall.objects.count() == 11
    assert_rollup_matches_calls()
    assert DailyUsage.objects.filter(feature="during").get().calls == 7


def test_sync_durability_writes_before_emit_returns(make_sink):
    sink = make_sink(durability="sync", flush_interval_ms=60_000)
    record = make_record()
    sink.emit(record)
    assert LLMCall.objects.filter(record_id=record.id).exists()


def test_close_flushes_and_the_sink_restarts_on_next_emit(make_sink):
    sink = make_sink(flush_interval_ms=60_000)
    first, second = make_record(), make_record()
    sink.emit(first)
    assert sink.close(timeout=10)
    assert LLMCall.objects.filter(record_id=first.id).exists()
    sink.emit(second)
    assert sink.flush(timeout=10)
    assert LLMCall.objects.filter(record_id=second.id).exists()


def test_emit_never_raises_even_when_spooling_is_impossible(make_sink, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    sink = make_sink(buffer_size=1, flush_interval_ms=60_000, spool_path=blocker / "s.jsonl")
    sink.emit(make_record())
    sink.emit(make_record())  # buffer full and the spool cannot be written: logged, no raise
    assert sink.flush(timeout=10)
    assert LLMCall.objects.count() == 1


def test_options_are_validated():
    with pytest.raises(ValueError, match="durability"):
        SinkOptions(durability="eventually")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        SinkOptions(batch_size=0)


class TestStoreRecords:
    def test_is_idempotent_on_record_id_and_on_call_attempt(self):
        record = make_record()
        twin = make_record(call_id=record.call_id, attempt=record.attempt)
        first = store_records([record])
        second = store_records([record, twin])
        assert (len(first.inserted), first.skipped) == (1, 0)
        assert (len(second.inserted), second.skipped) == (0, 2)
        assert LLMCall.objects.count() == 1
        assert DailyUsage.objects.get().calls == 1

    def test_fields_and_lazy_user_resolution(self):
        user = get_user_model().objects.create_user("ada")
        known = make_record(
            user_id=str(user.pk),
            tags=("beta", "eu"),
            reasons=(("budget_downgrade", "80% of budget"),),
            cost=Decimal("0.0000012345"),
            status="cache_hit",
            fallback_from="gpt-4o",
            prompt="hi",
        )
        unknown = make_record(user_id="not-a-user")
        store_records([known, unknown])
        stored = LLMCall.objects.get(record_id=known.id)
        assert stored.user == user
        assert stored.user_ref == str(user.pk)
        assert stored.tags == ["beta", "eu"]
        assert stored.reasons == [["budget_downgrade", "80% of budget"]]
        assert stored.cost == Decimal("0.0000012345")
        assert stored.input_tokens == known.usage.input_tokens
        assert stored.prompt == "hi"
        other = LLMCall.objects.get(record_id=unknown.id)
        assert other.user is None
        assert other.user_ref == "not-a-user"
        assert other.prompt is None
        rollup = DailyUsage.objects.get(user_ref=str(user.pk))
        assert (rollup.cache_hits, rollup.fallbacks) == (1, 1)

    def test_rollup_adds_up_across_batches(self):
        store_records([make_record(cost=Decimal("0.25")) for _ in range(3)])
        store_records(
            [make_record(cost=Decimal("0.50"), requested_cost=Decimal("1")) for _ in range(2)]
        )
        row = DailyUsage.objects.get()
        assert row.calls == 5
        assert row.cost == Decimal("1.75")
        assert row.saved_cost == 3 * (Decimal("0.01") - Decimal("0.25")) + 2 * Decimal("0.5")
        assert_rollup_matches_calls()


class TestSpool:
    def test_round_trip_keeps_money_exact(self, spool_path: Path):
        record = make_record(cost=Decimal("0.0000000001"), tags=("a",), reasons=(("x", "y"),))
        Spool(spool_path).append([record])
        line = json.loads(spool_path.read_text().splitlines()[0])
        assert line["cost"] == "1E-10"
        assert record_from_dict(line) == record
        assert record_from_dict(record_to_dict(record)) == record

    def test_every_record_field_is_spooled(self):
        from dataclasses import fields

        from routing_middleware.metering import UsageRecord

        assert set(record_to_dict(make_record())) == {f.name for f in fields(UsageRecord)}

    def test_crash_mid_replay_never_duplicates(self, spool_path: Path):
        records = [make_record() for _ in range(4)]
        store_records(records[:2])  # the crashed replay got this far
        left = spool_path.with_name(spool_path.name + ".replaying-1-1")
        Spool(left).append(records)
        with left.open("ab") as handle:
            handle.write(b'{"id": "torn')  # the crash also tore the last line
        result = replay_spool(spool_path)
        assert (result.inserted, result.skipped, result.rejected) == (2, 2, 1)
        assert not left.exists()
        assert LLMCall.objects.count() == 4
        assert_rollup_matches_calls()


@pytest.mark.postgres
def test_copy_path_reports_duplicates_as_integrity_errors():
    from django.db import IntegrityError, transaction

    from django_llmroute.sinks import _copy_calls, call_values

    record = make_record()
    store_records([record])
    with pytest.raises(IntegrityError), transaction.atomic():
        assert _copy_calls([call_values(record)], "default")
    assert LLMCall.objects.count() == 1


def test_exit_hook_writes_what_is_buffered(make_sink):
    sink = make_sink(flush_interval_ms=60_000)
    records = [make_record() for _ in range(3)]
    for record in records:
        sink.emit(record)
    sink._at_exit()  # what the interpreter runs at exit
    assert LLMCall.objects.count() == 3
    assert sink._thread is None


def test_exit_hook_spools_when_the_database_hangs(make_sink, spool_path):
    sink = make_sink(retries=50, retry_backoff_ms=20, shutdown_timeout_s=0.3)
    _rename_calls_table(to_unavailable=True)
    try:
        records = [make_record() for _ in range(4)]
        for record in records:
            sink.emit(record)
        sink._at_exit()
        assert spool_lines(spool_path) >= 4
    finally:
        sink.close(timeout=30)  # the stuck writer gives up and spools too
        _rename_calls_table(to_unavailable=False)
    result = replay_spool(spool_path)
    assert result.inserted == 4
    assert set(LLMCall.objects.values_list("record_id", flat=True)) == {r.id for r in records}


def test_sync_emit_from_the_flusher_thread_does_not_wait_on_itself(make_sink):
    sink = make_sink(durability="sync", sync_timeout_s=30)
    inner = make_record(feature="inner")

    def receiver(sender, instance, record, **kwargs):
        if record.feature == "outer":
            sink.emit(inner)

    llm_call_recorded.connect(receiver)
    try:
        sink.emit(make_record(feature="outer"))
        assert sink.flush(timeout=10)
    finally:
        llm_call_recorded.disconnect(receiver)
    assert LLMCall.objects.filter(record_id=inner.id).exists()


def test_sync_durability_never_blocks_an_event_loop(make_sink, monkeypatch):
    import asyncio

    sink = make_sink(durability="sync", flush_interval_ms=20, sync_timeout_s=30)
    written = threading.Event()
    original = sink._write

    def slow_write(*args, **kwargs):
        written.wait(5)  # the database is slow until the loop has moved on
        return original(*args, **kwargs)

    monkeypatch.setattr(sink, "_write", slow_write)
    record = make_record()

    async def view() -> float:
        started = time.monotonic()
        sink.emit(record)
        return time.monotonic() - started

    waited = asyncio.run(view())
    written.set()
    assert waited < 2  # queued, not waited for (the write takes until `written` is set)
    assert sink.flush(timeout=10)
    assert LLMCall.objects.filter(record_id=record.id).exists()
