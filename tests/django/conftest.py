"""Fixtures for the Django tests: sinks that always get closed, users, record helpers.

The settings module is ``tests.django.settings``; it is chosen here too, so a plain
``pytest`` from the repository root runs these tests without ``--ds``.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.settings")

import django

django.setup()

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from django_llmroute.sinks import DjangoSink, SinkOptions  # noqa: E402


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
