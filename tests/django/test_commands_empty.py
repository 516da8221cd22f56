"""The management commands on a database that holds no call yet (or none in the period)."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--by", "user,day,tier"],
        ["--source", "calls", "--by", "day,model"],
        ["--since", "2020-01-01", "--until", "2020-01-31"],
    ],
)
def test_report_on_no_calls(args):
    out = io.StringIO()
    call_command("llmroute_report", *args, stdout=out)
    text = out.getvalue()
    assert "total: $0.00 over 0 calls" in text
    assert "saved by routing (enforced calls): $0.00 (0.0%)" in text


def test_report_csv_on_no_calls():
    out = io.StringIO()
    call_command("llmroute_report", "--format", "csv", stdout=out)
    assert out.getvalue().splitlines() == [
        "feature,calls,input_tokens,output_tokens,spend_usd,saved_usd,observed_calls,"
        "observed_spend_usd,observed_routed_usd,would_save_usd"
    ]


def test_prune_and_replay_on_nothing(tmp_path):
    out = io.StringIO()
    call_command("llmroute_prune", "--older-than-days", "1", stdout=out)
    call_command("llmroute_replay", "--path", str(tmp_path / "none.jsonl"), stdout=out)
    assert "deleted 0 calls" in out.getvalue()
    assert "read 0, inserted 0" in out.getvalue()
