"""Fixtures shared by the integration tests: configure ``LLMROUTE``, reach the sink, clean up.

Import the fixtures a module needs (``from .llmroute_helpers import llmroute``).
Every test that uses them gets an empty cache, and the engine and its sink are
dropped at teardown so no flusher thread outlives the test database.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.db import connections
from django.test import override_settings

from django_llmroute import runtime
from django_llmroute.conf import reload_settings
from django_llmroute.models import LLMCall


class LLMRouteFixture:
    """``llmroute(**keys)`` sets ``LLMROUTE`` keys for the test; helpers around the sink."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._overrides: list[Any] = []

    def __call__(self, **keys: Any) -> dict[str, Any]:
        value = dict(settings.LLMROUTE)
        value.setdefault(
            "SINK",
            {
                "FLUSH_INTERVAL_MS": 10,
                "RETRY_BACKOFF_MS": 1,
                "SPOOL_PATH": str(self.tmp_path / "spool.jsonl"),
            },
        )
        value.update(keys)
        override = override_settings(LLMROUTE=value)
        override.enable()
        self._overrides.append(override)
        return value

    def flush(self) -> None:
        """Wait until every record emitted so far is in the database."""
        assert runtime.get_sink().flush(timeout=10)

    def calls(self, **filters: Any) -> list[LLMCall]:
        """Flush, then the stored calls matching ``filters`` (oldest first)."""
        self.flush()
        return list(LLMCall.objects.filter(**filters).order_by("created_at", "attempt"))

    def wait_for_calls(self, count: int, timeout: float = 10, **filters: Any) -> list[LLMCall]:
        """Poll until ``count`` stored calls match (streams record when they close)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.calls(**filters)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def close(self) -> None:
        for override in reversed(self._overrides):
            override.disable()
        self._overrides.clear()


@pytest.fixture
def llmroute(tmp_path: Path) -> Iterator[LLMRouteFixture]:
    """Configure ``LLMROUTE`` per test, starting from the test project's settings."""
    caches["default"].clear()
    runtime.reset(close_sink=True)
    reload_settings()
    fixture = LLMRouteFixture(tmp_path)
    fixture()  # the test's own spool and a fast flusher, even with no other keys
    try:
        yield fixture
    finally:
        runtime.reset(close_sink=True)
        fixture.close()
        reload_settings()
        caches["default"].clear()


@pytest.fixture
def make_user(django_user_model: Any) -> Callable[..., Any]:
    """Create users, optionally in groups."""
    from django.contrib.auth.models import Group

    def build(username: str = "alice", groups: tuple[str, ...] = (), **fields: Any) -> Any:
        user = django_user_model.objects.create_user(username=username, password="pw", **fields)
        for name in groups:
            user.groups.add(Group.objects.get_or_create(name=name)[0])
        return user

    return build


async def in_thread(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run blocking ORM code from an async test on a worker thread, closing its connection."""

    def run() -> Any:
        try:
            return func(*args, **kwargs)
        finally:
            connections.close_all()

    return await asyncio.to_thread(run)


async def close_async_connections() -> None:
    """Close the connections the async test client's sync parts opened.

    The test client keeps connections open between requests (so a test's transaction
    survives); an async test's requests run their sync parts on asgiref's shared
    thread, whose connection must be closed before the test database goes away.
    """
    await sync_to_async(connections.close_all)()


def closing_connections(test: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate an async test so it ends with :func:`close_async_connections`."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return await test(*args, **kwargs)
        finally:
            await close_async_connections()

    return run
