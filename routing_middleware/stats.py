"""Live measurements per deployment: latency percentiles, in-flight calls, error rate.

Each deployment keeps the last ``window`` calls in fixed ring buffers: recording is
O(1) and memory is bounded; percentiles are computed on read. The router reads one
:class:`StatsSnapshot` at a time and keeps it for a short while, so percentile
sorting never sits on a decision's path. Expected output tokens per feature are an
EWMA, used to price a request before it runs.

:class:`MemoryStatsStore` serves one process; :class:`RedisStatsStore` lets every
worker share one view. Health (open circuit breakers) is a separate
:class:`HealthCheck` protocol; :class:`AlwaysAvailable` is the default.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ._outage import StoreOutage
from ._redis import BLOCKING_POOL, RedisClients

if TYPE_CHECKING:
    from .router import Deployment

__all__ = [
    "MAX_FEATURES",
    "AlwaysAvailable",
    "DeploymentStats",
    "HealthCheck",
    "MemoryStatsStore",
    "RedisStatsStore",
    "StatsSnapshot",
    "StatsStore",
    "percentile",
]

_EWMA_ALPHA = 0.1
#: Features whose expected output tokens a store keeps. Features are names an app
#: picks (or an API key allowed to send ``X-LLMRoute-Feature``): past this many, one
#: is let go for each new one, so names made per request cannot grow the store (and
#: every snapshot, which copies them) without bound. A feature let go starts again
#: from its next call.
MAX_FEATURES = 10_000


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) of already sorted values, nearest-rank."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class DeploymentStats:
    """Latency percentiles (ms) and error rate of one deployment over its window."""

    samples: int
    ttft_samples: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    ttft_p99_ms: float
    error_rate: float

    @classmethod
    def from_samples(
        cls, totals: Sequence[float], ttfts: Sequence[float], errors: int, calls: int
    ) -> DeploymentStats:
        t = sorted(totals)
        f = sorted(ttfts)
        return cls(
            samples=len(t),
            ttft_samples=len(f),
            p50_ms=percentile(t, 0.5),
            p95_ms=percentile(t, 0.95),
            p99_ms=percentile(t, 0.99),
            ttft_p50_ms=percentile(f, 0.5),
            ttft_p95_ms=percentile(f, 0.95),
            ttft_p99_ms=percentile(f, 0.99),
            error_rate=errors / calls if calls else 0.0,
        )


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Everything the router reads from stats, taken at one moment."""

    deployments: dict[str, DeploymentStats] = field(default_factory=dict)
    output_tokens: dict[str, float] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)


class StatsStore(Protocol):
    """Where latency, errors, in-flight counts and output sizes are recorded.

    Deployments are named by :attr:`Deployment.key`. ``record`` takes the total
    latency of a finished call, its time to first token when it streamed, whether
    it failed, and, for successful calls, the feature and output tokens used for
    the per-feature estimate.
    """

    def record(
        self,
        deployment: str,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        error: bool = False,
        feature: str | None = None,
        output_tokens: int | None = None,
    ) -> None: ...

    def started(self, deployment: str) -> None: ...

    def finished(self, deployment: str) -> None: ...

    def in_flight(self, deployment: str) -> int: ...

    def expected_output_tokens(self, feature: str | None) -> float | None: ...

    def snapshot(self) -> StatsSnapshot: ...

    async def arecord(
        self,
        deployment: str,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        error: bool = False,
        feature: str | None = None,
        output_tokens: int | None = None,
    ) -> None: ...

    async def astarted(self, deployment: str) -> None: ...

    async def afinished(self, deployment: str) -> None: ...


class HealthCheck(Protocol):
    """Says whether a deployment may take calls now (a circuit breaker implements it)."""

    def is_available(self, deployment: Deployment) -> bool: ...


class AlwaysAvailable:
    """The default health check: every deployment is available."""

    def is_available(self, deployment: Deployment) -> bool:
        return True


class _Ring:
    """A fixed-size ring of floats; O(1) append, bounded memory."""

    __slots__ = ("_next", "_size", "values")

    def __init__(self, size: int) -> None:
        self.values: list[float] = []
        self._size = size
        self._next = 0

    def add(self, value: float) -> None:
        if len(self.values) < self._size:
            self.values.append(value)
        else:
            self.values[self._next] = value
            self._next = (self._next + 1) % self._size


class _Deployment:
    __slots__ = ("errors", "in_flight", "summary", "totals", "ttfts", "version")

    def __init__(self, window: int) -> None:
        self.totals = _Ring(window)
        self.ttfts = _Ring(window)
        self.errors = _Ring(window)
        self.in_flight = 0
        self.version = 0
        # (version, stats) computed at the last snapshot; reused while nothing changed
        self.summary: tuple[int, DeploymentStats] | None = None


class MemoryStatsStore:
    """Per-process stats over the last ``window`` calls of each deployment."""

    def __init__(self, window: int = 512) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self._lock = threading.Lock()
        self._deployments: dict[str, _Deployment] = {}
        self._output: dict[str, float] = {}

    def _get(self, deployment: str) -> _Deployment:
        found = self._deployments.get(deployment)
        if found is None:
            found = self._deployments.setdefault(deployment, _Deployment(self.window))
        return found

    def record(
        self,
        deployment: str,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        error: bool = False,
        feature: str | None = None,
        output_tokens: int | None = None,
    ) -> None:
        with self._lock:
            entry = self._get(deployment)
            entry.version += 1
            entry.errors.add(1.0 if error else 0.0)
            if not error:
                entry.totals.add(latency_ms)
                if ttft_ms is not None:
                    entry.ttfts.add(ttft_ms)
                if output_tokens is not None:
                    key = feature or ""
                    output = self._output
                    old = output.get(key)
                    if old is None:
                        if len(output) >= MAX_FEATURES:
                            del output[next(iter(output))]  # the one kept longest
                        output[key] = float(output_tokens)
                    else:
                        output[key] = old + _EWMA_ALPHA * (output_tokens - old)

    def started(self, deployment: str) -> None:
        with self._lock:
            self._get(deployment).in_flight += 1

    def finished(self, deployment: str) -> None:
        with self._lock:
            entry = self._get(deployment)
            entry.in_flight = max(0, entry.in_flight - 1)

    def in_flight(self, deployment: str) -> int:
        found = self._deployments.get(deployment)
        return 0 if found is None else found.in_flight

    def expected_output_tokens(self, feature: str | None) -> float | None:
        return self._output.get(feature or "")

    async def arecord(
        self,
        deployment: str,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        error: bool = False,
        feature: str | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Async twin of :meth:`record` (in-process: no I/O to wait for)."""
        self.record(
            deployment,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            error=error,
            feature=feature,
            output_tokens=output_tokens,
        )

    async def astarted(self, deployment: str) -> None:
        self.started(deployment)

    async def afinished(self, deployment: str) -> None:
        self.finished(deployment)

    def snapshot(self) -> StatsSnapshot:
        """Percentiles of every deployment; only those with new records are re-sorted."""
        stale: list[tuple[_Deployment, int, list[float], list[float], list[float]]] = []
        with self._lock:
            entries = list(self._deployments.items())
            for _, d in entries:
                if d.summary is None or d.summary[0] != d.version:
                    stale.append(
                        (d, d.version, list(d.totals.values), list(d.ttfts.values),
                         list(d.errors.values))
                    )  # fmt: skip
            in_flight = {key: d.in_flight for key, d in entries}
            output = dict(self._output)
        for d, version, totals, ttfts, errors in stale:
            d.summary = (
                version,
                DeploymentStats.from_samples(totals, ttfts, int(sum(errors)), len(errors)),
            )
        deployments = {key: d.summary[1] for key, d in entries if d.summary is not None}
        return StatsSnapshot(deployments=deployments, output_tokens=output, in_flight=in_flight)


# KEYS: output hash. ARGV: feature, tokens, alpha, most features kept. A new feature
# past the most lets another, picked at random, go.
_EWMA_LUA = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local x = tonumber(ARGV[2])
if old == nil then
  old = x
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[1], redis.call('HRANDFIELD', KEYS[1]))
  end
else
  old = old + tonumber(ARGV[3]) * (x - old)
end
redis.call('HSET', KEYS[1], ARGV[1], tostring(old))
return tostring(old)
"""


class RedisStatsStore:
    """Stats shared by every worker through Redis.

    Pass a ``url`` or ready clients (``client`` sync, ``async_client`` from
    ``redis.asyncio``); clients made from the url share a blocking pool. Per
    deployment, capped lists hold the last ``window`` total latencies, TTFTs and
    error flags (``LPUSH`` + ``LTRIM``); calls in flight a sorted set of one entry
    per call, stamped with its start, so that a call whose end never reached Redis
    (its worker died, or Redis did not answer) stops counting after
    ``in_flight_ttl_s``; output tokens per feature an EWMA updated by a script.
    Keys expire after ``ttl_s`` without traffic.

    :meth:`in_flight` makes no round trip: it is the count read by the last
    :meth:`snapshot` plus what this process started and finished since, so
    ``least_busy`` balancing sees its own calls at once and other workers' as of the
    last snapshot (the router takes one every ``stats_refresh_s``).

    Writes are best-effort: when Redis fails (down, or not answering within its
    timeout) they are dropped for :data:`~._outage.STORE_RETRY_S` at a time, with one
    warning per outage, instead of failing or slowing the calls they describe.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        async_client: Any = None,
        prefix: str = "llmroute:stats:",
        window: int = 512,
        ttl_s: int = 86_400,
        in_flight_ttl_s: float = 3600.0,
    ) -> None:
        if url is None and client is None and async_client is None:
            raise ValueError("RedisStatsStore needs a url or a client")
        if window < 1:  # (LTRIM to -1 would keep every sample)
            raise ValueError("window must be at least 1")
        self._clients = RedisClients(
            "RedisStatsStore", url, client, async_client, pool=BLOCKING_POOL
        )
        self.prefix = prefix
        self.window = window
        self.ttl_s = ttl_s
        self.in_flight_ttl_s = in_flight_ttl_s
        # In-flight counts as of the last snapshot, and this process's changes since.
        self._flying_seen: dict[str, int] = {}
        self._flying_here: dict[str, int] = {}
        self._flying_lock = threading.Lock()
        # The set entries of this process's calls in flight, per deployment.
        self._worker = uuid.uuid4().hex
        self._serial = itertools.count()
        self._tokens: dict[str, list[str]] = {}
        #: The outage state of this store's Redis (see :class:`~._outage.StoreOutage`).
        self.outage: StoreOutage = self._clients.outage

    def close(self) -> None:
        """Close the sync client this store opened (not one passed in)."""
        self._clients.close()

    async def aclose(self) -> None:
        """Close the async client this store opened (not one passed in)."""
        await self._clients.aclose()

    def _redis(self) -> Any:
        return self._clients.sync_client()

    def _send(self, queue: Callable[[Any], object]) -> None:
        """Run the commands ``queue`` adds to a pipeline (see the class on failures)."""

        def send() -> None:
            pipe = self._redis().pipeline(transaction=False)
            queue(pipe)
            pipe.execute()

        self.outage.run(send, None)

    async def _asend(self, queue: Callable[[Any], object]) -> None:
        """Async twin of :meth:`_send`."""

        async def send() -> None:
            pipe = self._async().pipeline(transaction=False)
            queue(pipe)
            await pipe.execute()

        await self.outage.arun(send, None)

    def _async(self) -> Any:
        return self._clients.async_client()

    def _key(self, kind: str, deployment: str = "") -> str:
        return f"{self.prefix}{kind}:{deployment}"

    def _queue_record(
        self,
        pipe: Any,
        deployment: str,
        latency_ms: float,
        ttft_ms: float | None,
        error: bool,
        feature: str | None,
        output_tokens: int | None,
    ) -> None:
        """Queue one call's writes on a (sync or async) pipeline: one round trip."""
        pipe.sadd(self._key("deployments"), deployment)
        pipe.expire(self._key("deployments"), self.ttl_s)
        series = [("err", 1.0 if error else 0.0)]
        if not error:
            series.append(("total", latency_ms))
            if ttft_ms is not None:
                series.append(("ttft", ttft_ms))
        for kind, value in series:
            key = self._key(kind, deployment)
            pipe.lpush(key, repr(float(value)))
            pipe.ltrim(key, 0, self.window - 1)
            pipe.expire(key, self.ttl_s)
        if not error and output_tokens is not None:
            output = self._key("output")
            pipe.eval(_EWMA_LUA, 1, output, feature or "", output_tokens, _EWMA_ALPHA, MAX_FEATURES)
            pipe.expire(output, self.ttl_s)

    def _queue_started(self, pipe: Any, deployment: str, token: str) -> None:
        # Listed at once, so snapshots carry its in-flight count before its first record.
        pipe.sadd(self._key("deployments"), deployment)
        pipe.expire(self._key("deployments"), self.ttl_s)
        # One entry per call rather than one counter: a counter's TTL, renewed by every
        # start, never let a lost end age out. ("flying", not the old counter's name.)
        key = self._key("flying", deployment)
        now = time.time()
        pipe.zremrangebyscore(key, "-inf", now - self.in_flight_ttl_s)
        pipe.zadd(key, {token: now})
        pipe.expire(key, max(1, math.ceil(self.in_flight_ttl_s)))

    def _queue_finished(self, pipe: Any, deployment: str, token: str) -> None:
        pipe.zrem(self._key("flying", deployment), token)

    def _start_token(self, deployment: str) -> str:
        token = f"{self._worker}:{next(self._serial)}"
        with self._flying_lock:
            self._tokens.setdefault(deployment, []).append(token)
        return token

    def _end_token(self, deployment: str) -> str | None:
        """One of this process's entries on ``deployment`` (``None``: none left)."""
        with self._flying_lock:
            tokens = self._tokens.get(deployment)
            return tokens.pop() if tokens else None

    def record(
        self,
        deployment: str,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        error: bool = False,
        feature: str | None = None,
        output_tokens: int | None = None,
    ) -> None:
        self._send(
            lambda pipe: self._queue_record(
                pipe, deployment, latency_ms, ttft_ms, error, feature, output_tokens
            )
        )

    async def arecord(
        self,
        deployment: str,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        error: bool = False,
        feature: str | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Async twin of :meth:`record`."""
        await self._asend(
            lambda pipe: self._queue_record(
                pipe, deployment, latency_ms, ttft_ms, error, feature, output_tokens
            )
        )

    def started(self, deployment: str) -> None:
        self._count_here(deployment, 1)
        token = self._start_token(deployment)
        self._send(lambda pipe: self._queue_started(pipe, deployment, token))

    async def astarted(self, deployment: str) -> None:
        self._count_here(deployment, 1)
        token = self._start_token(deployment)
        await self._asend(lambda pipe: self._queue_started(pipe, deployment, token))

    def finished(self, deployment: str) -> None:
        self._count_here(deployment, -1)
        token = self._end_token(deployment)
        if token is not None:
            self._send(lambda pipe: self._queue_finished(pipe, deployment, token))

    async def afinished(self, deployment: str) -> None:
        self._count_here(deployment, -1)
        token = self._end_token(deployment)
        if token is not None:
            await self._asend(lambda pipe: self._queue_finished(pipe, deployment, token))

    def _count_here(self, deployment: str, delta: int) -> None:
        with self._flying_lock:
            here = self._flying_here
            here[deployment] = here.get(deployment, 0) + delta

    def in_flight(self, deployment: str) -> int:
        """Calls in flight on ``deployment``, without a round trip (see the class)."""
        with self._flying_lock:
            count = self._flying_seen.get(deployment, 0) + self._flying_here.get(deployment, 0)
        return max(0, count)

    def expected_output_tokens(self, feature: str | None) -> float | None:
        value = self._redis().hget(self._key("output"), feature or "")
        return float(value) if value is not None else None

    def snapshot(self) -> StatsSnapshot:
        """Every deployment's figures, read in one pipeline. While the store is down
        (see the class) raises :class:`~._outage.StoreUnavailable` without asking it."""
        self.outage.check()
        client = self._redis()
        with self._flying_lock:
            before = self._flying_here
            here = self._flying_here = {}  # (what changes while this is read)
        try:
            names = sorted(_text(n) for n in client.smembers(self._key("deployments")))
            pipe = client.pipeline(transaction=False)
            self._queue_snapshot(pipe, names)
            read = pipe.execute()
        except Exception as exc:
            self._unread(before, exc)
            raise
        return self._snapshot_of(names, read, here)

    async def asnapshot(self) -> StatsSnapshot:
        """Async twin of :meth:`snapshot`."""
        self.outage.check()
        client = self._async()
        with self._flying_lock:
            before = self._flying_here
            here = self._flying_here = {}  # (what changes while this is read)
        try:
            names = sorted(_text(n) for n in await client.smembers(self._key("deployments")))
            pipe = client.pipeline(transaction=False)
            self._queue_snapshot(pipe, names)
            read = await pipe.execute()
        except Exception as exc:
            self._unread(before, exc)
            raise
        return self._snapshot_of(names, read, here)

    def _unread(self, before: dict[str, int], error: BaseException) -> None:
        """A snapshot failed with ``error``: what this process started and finished
        ``before`` it still counts, and the store is left alone for a while."""
        with self._flying_lock:
            now = self._flying_here
            for deployment, delta in before.items():
                now[deployment] = now.get(deployment, 0) + delta
        self.outage.failed(error)

    def _queue_snapshot(self, pipe: Any, names: list[str]) -> None:
        since = time.time() - self.in_flight_ttl_s
        for name in names:
            for kind in ("total", "ttft", "err"):
                pipe.lrange(self._key(kind, name), 0, -1)
            pipe.zcount(self._key("flying", name), since, "+inf")
        pipe.hgetall(self._key("output"))

    def _snapshot_of(
        self, names: list[str], results: list[Any], here: dict[str, int]
    ) -> StatsSnapshot:
        """The snapshot made of ``results``; the in-flight counts read become the base
        of :meth:`in_flight`, with ``here`` (changes made since the read began)."""
        deployments: dict[str, DeploymentStats] = {}
        in_flight: dict[str, int] = {}
        for i, name in enumerate(names):
            totals, ttfts, errs, flying = results[i * 4 : i * 4 + 4]
            flags = [float(e) for e in errs]
            deployments[name] = DeploymentStats.from_samples(
                [float(v) for v in totals], [float(v) for v in ttfts], int(sum(flags)), len(flags)
            )
            in_flight[name] = max(0, int(flying)) if flying is not None else 0
        output = {_text(k): float(v) for k, v in results[-1].items()}
        with self._flying_lock:
            if self._flying_here is here:  # no newer snapshot began meanwhile
                self._flying_seen = dict(in_flight)
        return StatsSnapshot(deployments=deployments, output_tokens=output, in_flight=in_flight)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
