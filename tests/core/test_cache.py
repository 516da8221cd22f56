"""The exact-match response cache: what is cacheable, keys, stores, replay as a stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import anyio
import pytest

from routing_middleware.cache import (
    CacheEntry,
    MemoryCacheStore,
    RedisCacheStore,
    ResponseCache,
    assemble,
    is_cacheable,
    replay_chunks,
)
from routing_middleware.schema import (
    ChatRequest,
    ChatResponse,
    Choice,
    FinishReason,
    Message,
    ToolCall,
    Usage,
)
from tests.core.redis_helpers import drop_keys, redis_url_or_skip


def request(**kw: object) -> ChatRequest:
    fields: dict[str, object] = {
        "model": "gpt-a",
        "messages": [Message(role="user", content="What is 2 + 2?")],
        "temperature": 0,
    }
    fields.update(kw)
    return ChatRequest.model_validate(fields)


def response(text: str = "4", **kw: object) -> ChatResponse:
    return ChatResponse(
        id="resp-1",
        model="gpt-a",
        provider="openai",
        choices=[Choice(message=Message(role="assistant", content=text, **kw))],  # type: ignore[arg-type]
        usage=Usage(input_tokens=12, output_tokens=3),
    )


class Timer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_only_deterministic_or_hinted_requests_are_cacheable() -> None:
    assert is_cacheable(request(temperature=0))
    assert not is_cacheable(request(temperature=0.7))
    assert not is_cacheable(request(temperature=None))
    assert is_cacheable(request(temperature=0.7), hint=True)
    assert not is_cacheable(request(temperature=0), hint=False)


def test_key_ignores_what_does_not_change_the_answer() -> None:
    cache = ResponseCache()
    base = cache.key(request(), "openai/gpt-a")
    assert cache.key(request(stream=True), "openai/gpt-a") == base
    assert cache.key(request(user="u-1", metadata={"a": "b"}), "openai/gpt-a") == base
    assert cache.key(request(model="alias-of-a"), "openai/gpt-a") == base


def test_key_changes_with_what_does() -> None:
    cache = ResponseCache()
    base = cache.key(request(), "openai/gpt-a")
    assert cache.key(request(), "openai/gpt-b") != base
    assert cache.key(request(max_tokens=5), "openai/gpt-a") != base
    assert cache.key(request(temperature=0.5), "openai/gpt-a") != base
    other = request(messages=[Message(role="user", content="What is 3 + 3?")])
    assert cache.key(other, "openai/gpt-a") != base
    assert ResponseCache(namespace="v2").key(request(), "openai/gpt-a") != base


def test_entries_round_trip_through_json() -> None:
    entry = CacheEntry(response("four"), Decimal("0.0000123"))
    again = CacheEntry.from_json(entry.to_json())
    assert again.response.text == "four"
    assert again.response.usage == Usage(input_tokens=12, output_tokens=3)
    assert again.cost == Decimal("0.0000123")


def test_memory_store_expires_entries() -> None:
    timer = Timer()
    cache = ResponseCache(MemoryCacheStore(ttl_s=60, timer=timer))
    cache.set("k", CacheEntry(response(), Decimal(1)))
    timer.now = 59
    assert cache.get("k") is not None
    timer.now = 61
    assert cache.get("k") is None


def test_memory_store_evicts_the_least_recently_used() -> None:
    store = MemoryCacheStore(maxsize=2)
    store.set("a", CacheEntry(response("a"), Decimal(0)))
    store.set("b", CacheEntry(response("b"), Decimal(0)))
    assert store.get("a") is not None  # touch a: b is now the oldest
    store.set("c", CacheEntry(response("c"), Decimal(0)))
    assert store.get("b") is None
    assert store.get("a") is not None
    assert len(store) == 2


class Broken:
    def get(self, key: str) -> CacheEntry | None:
        raise ConnectionError("down")

    def set(self, key: str, entry: CacheEntry) -> None:
        raise ConnectionError("down")

    async def aget(self, key: str) -> CacheEntry | None:
        raise ConnectionError("down")

    async def aset(self, key: str, entry: CacheEntry) -> None:
        raise ConnectionError("down")


def test_a_broken_store_is_a_miss_not_a_failure() -> None:
    cache = ResponseCache(Broken())
    cache.set("k", CacheEntry(response(), Decimal(0)))
    assert cache.get("k") is None

    async def scenario() -> None:
        await cache.aset("k", CacheEntry(response(), Decimal(0)))
        assert await cache.aget("k") is None

    anyio.run(scenario)


def test_replay_then_assemble_gives_back_the_response() -> None:
    original = response(
        "The answer is 4.",
        reasoning="2 + 2",
        tool_calls=[ToolCall(id="c1", name="add", arguments='{"a":2}')],
    )
    original.choices[0].finish_reason = FinishReason.TOOL_CALLS
    chunks = list(replay_chunks(original))
    assert chunks[0].role == "assistant"
    assert chunks[-1].usage == original.usage
    rebuilt = assemble(chunks, response_id="x", model="gpt-a", provider="openai")
    assert rebuilt.text == "The answer is 4."
    message = rebuilt.choices[0].message
    assert message.reasoning == "2 + 2"
    assert message.tool_calls == [ToolCall(id="c1", name="add", arguments='{"a":2}')]
    assert rebuilt.choices[0].finish_reason is FinishReason.TOOL_CALLS
    assert rebuilt.usage == original.usage


# ------------------------------------------------------------------ redis


@pytest.fixture
def redis_store() -> Iterator[RedisCacheStore]:
    url = redis_url_or_skip()
    prefix = f"llmroute-test:{uuid.uuid4().hex}:cache:"
    store = RedisCacheStore(url, prefix=prefix, ttl_s=30)
    yield store
    drop_keys(store._redis.sync_client(), prefix)
    store.close()


@pytest.mark.redis
def test_redis_store_round_trip(redis_store: RedisCacheStore) -> None:
    cache = ResponseCache(redis_store)
    key = cache.key(request(), "openai/gpt-a")
    assert cache.get(key) is None
    cache.set(key, CacheEntry(response("four"), Decimal("0.5")))
    hit = cache.get(key)
    assert hit is not None
    assert hit.response.text == "four"
    assert hit.cost == Decimal("0.5")
    ttl = redis_store._redis.sync_client().ttl(redis_store.prefix + key)
    assert 0 < ttl <= 30


@pytest.mark.redis
def test_redis_store_async(redis_store: RedisCacheStore) -> None:
    async def scenario() -> None:
        cache = ResponseCache(redis_store)
        await cache.aset("k1", CacheEntry(response("async"), Decimal(2)))
        hit = await cache.aget("k1")
        assert hit is not None
        assert hit.response.text == "async"
        assert await cache.aget("missing") is None
        await redis_store.aclose()

    anyio.run(scenario)
