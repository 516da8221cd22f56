"""Shared test configuration.

PostgreSQL- and Redis-backed tests run when ``LLMROUTE_TEST_DATABASE_URL`` /
``LLMROUTE_TEST_REDIS_URL`` are set (``.ci/run`` sets both) and are skipped otherwise.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Property tests check correctness, not speed: no per-example deadline (a loaded CI
# machine would make timing flaky), and failures print the example to replay.
settings.register_profile(
    "llmroute", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("llmroute")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs = {
        "postgres": "LLMROUTE_TEST_DATABASE_URL",
        "redis": "LLMROUTE_TEST_REDIS_URL",
    }
    for item in items:
        for marker, variable in needs.items():
            if item.get_closest_marker(marker) and not os.environ.get(variable):
                item.add_marker(pytest.mark.skip(reason=f"set {variable} to run"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
