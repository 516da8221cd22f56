from __future__ import annotations

import math
import os
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator

import pytest

from routing_middleware import stats as stats_module
from routing_middleware.router import Deployment
from routing_middleware.stats import (
    AlwaysAvailable,
    HealthCheck,
    MemoryStatsStore,
    RedisStatsStore,
    StatsStore,
    percentile,
)


def test_percentile_nearest_rank() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.95) == 95
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    assert math.isnan(percentile([], 0.5))


def test_memory_store_percentiles_and_error_rate() -> None:
    store = MemoryStatsStore(window=1000)
    for ms in range(1, 101):
        store.record("openai/gpt", latency_ms=float(ms), ttft_ms=float(ms) / 10)
    for _ in range(25):
        store.record("openai/gpt", latency_ms=5000.0, error=True)
    stats = store.snapshot().deployments["openai/gpt"]
    assert stats.samples == 100
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms) == (50, 95, 99)
    assert stats.ttft_p95_ms == pytest.approx(9.5)
    # errors don't pollute latency, but count in the error rate
    assert stats.error_rate == pytest.approx(25 / 125)


def test_window_is_rolling_and_bounded() -> None:
    store = MemoryStatsStore(window=50)
    for _ in range(50):
        store.record("d", latency_ms=10_000.0)
    for _ in range(50):
        store.record("d", latency_ms=100.0)
    stats = store.snapshot().deployments["d"]
    assert stats.samples == 50
    assert stats.p99_ms == 100  # the slow era has rolled out


def test_memory_stays_flat_under_many_records() -> None:
    store = MemoryStatsStore(window=128)
    for i in range(2000):
        store.record("d", latency_ms=float(i), ttft_ms=1.0, feature="f", output_tokens=10)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(50_000):
        store.record("d", latency_ms=float(i), ttft_ms=1.0, feature="f", output_tokens=10)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 64 * 1024


def test_in_flight_counts() -> None:
    store = MemoryStatsStore()
    store.started("d")
    store.started("d")
    store.finished("d")
    assert store.in_flight("d") == 1
    store.finished("d")
    store.finished("d")  # never negative
    assert store.in_flight("d") == 0
    assert store.in_flight("unknown") == 0


def test_expected_output_tokens_is_an_ewma_per_feature() -> None:
    store = MemoryStatsStore()
    assert store.expected_output_tokens("summaries") is None
    store.record("d", latency_ms=1.0, feature="summaries", output_tokens=100)
    assert store.expected_output_tokens("summaries") == 100
    store.record("d", latency_ms=1.0, feature="summaries", output_tokens=200)
    assert store.expected_output_tokens("summaries") == pytest.approx(110)
    store.record("d", latency_ms=1.0, error=True, feature="summaries", output_tokens=9999)
    assert store.expected_output_tokens("summaries") == pytest.approx(110)
    assert store.expected_output_tokens(None) is None
    assert store.snapshot().output_tokens == {"summaries": pytest.approx(110)}


def test_concurrent_records_are_all_counted() -> None:
    store = MemoryStatsStore(window=100_000)

    def work() -> None:
        for _ in range(1000):
            store.record("d", latency_ms=1.0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.snapshot().deployments["d"].samples == 8000


def test_default_health_is_always_available() -> None:
    health: HealthCheck = AlwaysAvailable()
    assert health.is_available(Deployment("m", "p", "n"))


def test_memory_store_satisfies_protocol() -> None:
    store: StatsStore = MemoryStatsStore()
    store.record("x", latency_ms=1.0)
    assert "x" in store.snapshot().deployments


REDIS_URL = os.environ.get("LLMROUTE_TEST_REDIS_URL", "")


@pytest.fixture
def redis_store() -> Iterator[RedisStatsStore]:
    import redis

    prefix = f"llmroute-test:stats:{uuid.uuid4().hex}:"
    store = RedisStatsStore(REDIS_URL, prefix=prefix, window=100)
    yield store
    store.close()
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


@pytest.mark.redis
def test_redis_store_shares_one_view(redis_store: RedisStatsStore) -> None:
    other = RedisStatsStore(REDIS_URL, prefix=redis_store.prefix, window=100)
    try:
        for ms in range(1, 101):
            (redis_store if ms % 2 else other).record("a/b", latency_ms=float(ms), ttft_ms=1.0)
        other.record("a/b", latency_ms=9.0, error=True)
        stats = redis_store.snapshot().deployments["a/b"]
        assert stats.samples == 100  # failed calls add no latency sample
        assert stats.p95_ms == 95
        assert stats.error_rate == pytest.approx(1 / 100)  # 101 flags, window keeps 100
        redis_store.started("a/b")
        other.started("a/b")
        other.finished("a/b")
        assert redis_store.in_flight("a/b") == 1
        redis_store.finished("a/b")
        redis_store.finished("a/b")
        assert other.in_flight("a/b") == 0
        redis_store.record("a/b", latency_ms=1.0, feature="f", output_tokens=100)
        other.record("a/b", latency_ms=1.0, feature="f", output_tokens=200)
        assert redis_store.expected_output_tokens("f") == pytest.approx(110)
        assert other.snapshot().output_tokens["f"] == pytest.approx(110)
    finally:
        other.close()


def test_memory_store_keeps_a_bounded_number_of_features(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stats_module, "MAX_FEATURES", 3)
    store = MemoryStatsStore()
    for i in range(5):
        store.record("d", latency_ms=1.0, feature=f"f{i}", output_tokens=100 + i)
    store.record("d", latency_ms=1.0, feature="f4", output_tokens=204)  # known: no eviction
    assert store.snapshot().output_tokens == {
        "f2": 102,
        "f3": 103,
        "f4": pytest.approx(114),
    }
    assert store.expected_output_tokens("f0") is None  # let go: starts again
    store.record("d", latency_ms=1.0, feature="f0", output_tokens=50)
    assert store.expected_output_tokens("f0") == 50
    assert len(store.snapshot().output_tokens) == 3


@pytest.mark.redis
def test_redis_store_keeps_a_bounded_number_of_features(
    redis_store: RedisStatsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats_module, "MAX_FEATURES", 3)
    for i in range(20):
        redis_store.record("d", latency_ms=1.0, feature=f"f{i}", output_tokens=100 + i)
    kept = redis_store.snapshot().output_tokens
    assert len(kept) == 3
    assert kept["f19"] == 119  # the newest is always kept
    redis_store.record("d", latency_ms=1.0, feature="f19", output_tokens=219)
    assert redis_store.expected_output_tokens("f19") == pytest.approx(129)
    assert len(redis_store.snapshot().output_tokens) == 3


@pytest.mark.redis
def test_redis_window_is_bounded(redis_store: RedisStatsStore) -> None:
    for ms in range(300):
        redis_store.record("d", latency_ms=float(ms))
    stats = redis_store.snapshot().deployments["d"]
    assert stats.samples == 100
    assert stats.p50_ms >= 200  # only the most recent 100 remain


@pytest.mark.anyio
async def test_memory_store_async_twins() -> None:
    store = MemoryStatsStore()
    await store.astarted("d")
    assert store.in_flight("d") == 1
    await store.arecord("d", latency_ms=12.0, feature="f", output_tokens=40)
    await store.afinished("d")
    assert store.in_flight("d") == 0
    assert store.snapshot().deployments["d"].p50_ms == 12
    assert store.expected_output_tokens("f") == 40


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_store_async_twins_share_the_sync_view(redis_store: RedisStatsStore) -> None:
    try:
        await redis_store.astarted("a/b")
        assert redis_store.in_flight("a/b") == 1
        for ms in (10.0, 20.0, 30.0):
            await redis_store.arecord("a/b", latency_ms=ms, ttft_ms=ms / 2)
        await redis_store.arecord("a/b", latency_ms=1.0, feature="f", output_tokens=80)
        await redis_store.arecord("a/b", latency_ms=99.0, error=True)
        await redis_store.afinished("a/b")
        await redis_store.afinished("a/b")
        assert redis_store.in_flight("a/b") == 0
        stats = redis_store.snapshot().deployments["a/b"]
        assert stats.samples == 4
        assert stats.ttft_samples == 3
        assert stats.error_rate == pytest.approx(1 / 5)
        assert redis_store.expected_output_tokens("f") == 80
    finally:
        await redis_store.aclose()


def test_redis_window_must_keep_at_least_one_call() -> None:
    # LTRIM 0 -1 keeps the whole list: a window of 0 would grow without bound.
    for window in (0, -5):
        with pytest.raises(ValueError):
            RedisStatsStore("redis://127.0.0.1:1/0", window=window)


def test_redis_in_flight_makes_no_round_trip() -> None:
    redis = pytest.importorskip("redis")
    # Nothing listens on port 1: any command would raise a connection error.
    store = RedisStatsStore(client=redis.Redis(host="127.0.0.1", port=1, socket_timeout=0.2))
    assert store.in_flight("a/b") == 0
    store.started("a/b")  # counted here even though the write failed to reach Redis
    assert store.in_flight("a/b") == 1
    assert store.outage.down  # (the write was dropped, see the class)


def test_a_failed_redis_snapshot_keeps_this_process_in_flight_counts() -> None:
    redis = pytest.importorskip("redis")
    from routing_middleware._outage import StoreUnavailable

    store = RedisStatsStore(client=redis.Redis(host="127.0.0.1", port=1, socket_timeout=0.2))
    store._count_here("a/b", 2)  # (as started() counts before writing)
    with pytest.raises(redis.ConnectionError):
        store.snapshot()
    assert store.in_flight("a/b") == 2
    with pytest.raises(StoreUnavailable):
        store.snapshot()  # left alone now: not asked again
    assert store.in_flight("a/b") == 2


@pytest.mark.redis
def test_redis_in_flight_is_the_last_snapshot_plus_own_changes(
    redis_store: RedisStatsStore,
) -> None:
    other = RedisStatsStore(REDIS_URL, prefix=redis_store.prefix, window=100)
    try:
        other.started("a/b")
        other.started("a/b")
        redis_store.started("a/b")
        assert redis_store.in_flight("a/b") == 1  # another worker's calls: not seen yet
        snapshot = redis_store.snapshot()
        assert snapshot.in_flight["a/b"] == 3
        assert redis_store.in_flight("a/b") == 3  # own call counted once, not twice
        redis_store.finished("a/b")
        other.finished("a/b")
        assert redis_store.in_flight("a/b") == 2  # own change at once, the other's later
        redis_store.snapshot()
        assert redis_store.in_flight("a/b") == 1
    finally:
        other.close()


@pytest.mark.redis
def test_redis_in_flight_of_a_dead_worker_ages_out(redis_store: RedisStatsStore) -> None:
    # A worker killed mid-call (or whose finish Redis did not take) never takes its
    # call off the shared count: the count forgets it after in_flight_ttl_s, even
    # while other workers keep starting calls on that deployment.
    redis_store.in_flight_ttl_s = 1
    dead = RedisStatsStore(REDIS_URL, prefix=redis_store.prefix, window=100)
    dead.in_flight_ttl_s = 1
    dead.started("a/b")
    dead.close()
    assert redis_store.snapshot().in_flight["a/b"] == 1
    end = time.monotonic() + 1.6
    while time.monotonic() < end:
        redis_store.started("a/b")
        redis_store.finished("a/b")
        time.sleep(0.1)
    redis_store.started("a/b")  # a live call still counts
    assert redis_store.snapshot().in_flight["a/b"] == 1
    redis_store.finished("a/b")
    assert redis_store.snapshot().in_flight["a/b"] == 0


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_async_snapshot_equals_the_sync_one(redis_store: RedisStatsStore) -> None:
    try:
        for ms in (5.0, 15.0, 25.0):
            await redis_store.arecord(
                "a/b", latency_ms=ms, ttft_ms=1.0, feature="f", output_tokens=9
            )
        await redis_store.arecord("c/d", latency_ms=7.0)
        await redis_store.astarted("c/d")
        got = await redis_store.asnapshot()
        assert got == redis_store.snapshot()
        assert got.deployments["a/b"].samples == 3
        assert got.in_flight == {"a/b": 0, "c/d": 1}
        assert got.output_tokens == {"f": 9}
    finally:
        await redis_store.aclose()
