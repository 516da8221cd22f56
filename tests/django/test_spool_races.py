"""Two replays of one spool at once (the flusher and ``llmroute_replay``, or the
flushers of two workers) both finish: a file the other one removed is done, not an error."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from django_llmroute.spool import Spool
from routing_middleware.metering import UsageRecord

from .factories import make_record


def test_a_file_the_other_replay_removed_is_not_an_error(spool_path):
    Spool(spool_path).append([make_record(), make_record()])
    inside, go_on = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_write(records: Sequence[UsageRecord]) -> tuple[int, int]:
        inside.set()
        go_on.wait(10)
        return len(records), 0

    def first() -> None:
        try:
            Spool(spool_path).replay(slow_write)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(10)
        # The first replay has read its file and is writing it: the second one
        # reads it too (the writes are idempotent) and removes it first.
        second = Spool(spool_path).replay(lambda records: (0, len(records)))
    finally:
        go_on.set()
        thread.join(10)
    assert (second.read, second.skipped, second.files) == (2, 2, 1)
    assert errors == []
    assert Spool(spool_path).pending() is False
