"""The engine's response cache on Redis with a sub-second ``cache.ttl_s``."""

from __future__ import annotations

import logging
import os
import uuid

import pytest

from routing_middleware.engine import LLMRoute
from routing_middleware.schema import ChatRequest, Message


@pytest.mark.redis
def test_a_sub_second_cache_ttl_still_caches_on_redis_and_leaves_redis_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = os.environ["LLMROUTE_TEST_REDIS_URL"]
    engine = LLMRoute(
        {"offline_latency": "none", "redis_url": url, "cache": {"ttl_s": 0.5}}, environ={}
    )
    request = ChatRequest(
        model="openai/gpt-5.4",
        messages=[Message(role="user", content=f"Say hello to {uuid.uuid4().hex}.")],
        temperature=0,
    )
    try:
        with caplog.at_level(logging.WARNING):
            first = engine.complete(request)
            second = engine.complete(request)
    finally:
        engine.close()
    assert first.records[-1].status == "ok"
    # Redis refuses an expiry of 0 s: storing the entry failed and the store
    # (shared with budgets, stats and breakers) was reported down.
    assert second.records[-1].status == "cache_hit"
    assert not [r for r in caplog.records if "Redis failed" in r.getMessage()]
