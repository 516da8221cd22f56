"""A record the database refuses on its own never takes the other records with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from django_llmroute.models import DailySummary, DailyUsage, LLMCall
from django_llmroute.sinks import replay_spool, store_records
from django_llmroute.spool import Spool
from routing_middleware.schema import Usage

from .factories import assert_rollup_matches_calls, make_record, spool_lines

pytestmark = pytest.mark.django_db(transaction=True)


def _unstorable():
    # More tokens than a bigint column holds: refused by SQLite and PostgreSQL alike.
    return make_record(feature="odd", usage=Usage(input_tokens=2**63, output_tokens=1))


def _rejected(spool_path: Path) -> list[str]:
    path = spool_path.with_name(spool_path.name + ".rejected")
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_a_batch_with_an_unstorable_record_stores_the_others(make_sink, spool_path):
    sink = make_sink(retries=1, flush_interval_ms=60_000)
    good = [make_record() for _ in range(5)]
    odd = _unstorable()
    for record in [*good[:2], odd, *good[2:]]:
        sink.emit(record)
    assert sink.flush(timeout=20)
    assert set(LLMCall.objects.values_list("record_id", flat=True)) == {r.id for r in good}
    assert spool_lines(spool_path) == 0  # nothing left to replay again and again
    assert _rejected(spool_path) == [odd.id]  # set aside, not dropped
    assert_rollup_matches_calls()


def test_an_unstorable_spooled_record_does_not_block_the_replay(spool_path):
    first = [make_record() for _ in range(3)]
    odd = _unstorable()
    later = [make_record() for _ in range(2)]
    stuck = spool_path.with_name(spool_path.name + ".replaying-1-1")
    Spool(stuck).append([*first, odd, *first[:1]])
    Spool(spool_path).append(later)  # a newer file, replayed after the stuck one
    result = replay_spool(spool_path, batch_size=10)
    assert (result.inserted, result.skipped, result.rejected) == (5, 1, 1)
    assert spool_lines(spool_path) == 0
    assert set(LLMCall.objects.values_list("record_id", flat=True)) == {
        r.id for r in [*first, *later]
    }
    assert _rejected(spool_path) == [odd.id]
    assert_rollup_matches_calls()


def test_a_nul_character_in_the_text_is_stored_not_refused():
    # A user's prompt may hold U+0000; PostgreSQL text and jsonb cannot.
    record = make_record(
        prompt="a\x00b",
        completion="c\x00",
        feature="f\x00",
        tags=("t\x00",),
        reasons=(("code", "why\x00"),),
        extra={"note\x00": "x\x00"},
    )
    store_records([record])
    call = LLMCall.objects.get(record_id=record.id)
    assert call.prompt == "a\ufffdb"
    assert call.completion == "c\ufffd"
    assert call.feature == "f\ufffd"
    assert call.tags == ["t\ufffd"]
    assert call.reasons == [["code", "why\ufffd"]]
    assert call.extra == {"note\ufffd": "x\ufffd"}
    assert_rollup_matches_calls()


def test_text_too_long_for_its_column_is_cut_alike_in_calls_and_rollups():
    # A USER_ID hook may return a long e-mail address, code may name long features:
    # the rollups must hold the very key the call holds, or their filters find no call.
    record = make_record(
        user_id="u" * 200, feature="f" * 200, provider="p" * 80, chosen_model="m" * 200
    )
    store_records([record])
    call = LLMCall.objects.get(record_id=record.id)
    usage = DailyUsage.objects.get()
    assert (usage.user_ref, usage.feature, usage.provider, usage.model) == (
        call.user_ref,
        call.feature,
        call.provider,
        call.chosen_model,
    )
    summary = DailySummary.objects.get()
    assert (summary.feature, summary.provider, summary.model) == (
        call.feature,
        call.provider,
        call.chosen_model,
    )


def test_a_spooled_record_whose_money_does_not_parse_does_not_block_the_replay(spool_path):
    # A record without a cost (a provider adapter's bug) spooled during an outage is
    # written as "None", which is not a Decimal.
    good = [make_record() for _ in range(2)]
    Spool(spool_path).append([good[0], make_record(cost=None), good[1]])
    result = replay_spool(spool_path)
    assert (result.inserted, result.rejected) == (2, 1)
    assert spool_lines(spool_path) == 0
    assert set(LLMCall.objects.values_list("record_id", flat=True)) == {r.id for r in good}
