"""Test helpers for the tests that run against a real Redis (marked ``redis``)."""

from __future__ import annotations

import os
from typing import Any

import pytest


def redis_url_or_skip() -> str:
    """``LLMROUTE_TEST_REDIS_URL``; the test is skipped when it is not set."""
    url = os.environ.get("LLMROUTE_TEST_REDIS_URL")
    if not url:
        pytest.skip("set LLMROUTE_TEST_REDIS_URL to run")
    return url


def drop_keys(client: Any, prefix: str) -> None:
    """Delete every key under ``prefix`` (a test's own, unique prefix)."""
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
