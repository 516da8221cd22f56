"""Fixtures for the Django tests: sinks that always get closed, users, record helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from django_llmroute.sinks import DjangoSink, SinkOptions


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "records.jsonl"


@pytest.fixture
def make_sink(spool_path: Path) -> Iterator[Callable[..., DjangoSink]]:
    """Build sinks spooling under the test's temp dir; all are closed at teardown."""
    made: list[DjangoSink] = []

    def build(**options: Any) -> DjangoSink:
        options.setdefault("spool_path", spool_path)
        options.setdefault("flush_interval_ms", 20)
        options.setdefault("retry_backoff_ms", 1)
        sink = DjangoSink(SinkOptions(**options))
        made.append(sink)
        return sink

    yield build
    for sink in made:
        sink.close(timeout=10)
