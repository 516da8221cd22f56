"""Circuit breakers per deployment: stop sending calls to a deployment that keeps failing.

A breaker is *closed* (calls flow) until the deployment fails ``consecutive_failures``
times in a row, or its error rate over the sliding ``window_s`` reaches
``error_rate`` with at least ``min_calls`` calls. It then *opens* for
``cooldown_s`` (configurable per deployment): no calls. After the cooldown it is
*half-open*: exactly one caller gets to probe (:meth:`CircuitBreaker.acquire`); a
successful probe closes it, a failed one opens it for another cooldown. A probe
that never reports back frees its slot after ``probe_timeout_s``.

Calls sent before the breaker opened may end while the probe is out. To keep their
outcomes from freeing the probe's slot or deciding in its place, a caller admits a
call with :meth:`CircuitBreaker.admit` and reports it with that call's *ticket*
(``record(deployment, ok, ticket)``): only the probe's own ticket frees or resolves
the half-open state. Outcomes reported without a ticket act as before.

The transition logic is one pure function (:func:`transition`) over a small state;
stores only keep that state: :class:`MemoryBreakerStore` in-process, and
:class:`RedisBreakerStore` shared by every worker (optimistic ``WATCH``
transactions, one JSON value per deployment).

:class:`CircuitBreaker` implements the router's health protocol,
``is_available(deployment) -> bool``.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from ._outage import StoreOutage, outage_of
from ._redis import RedisClients

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "BreakerStore",
    "CircuitBreaker",
    "MemoryBreakerStore",
    "RedisBreakerStore",
    "deployment_key",
    "transition",
]

State = Literal["closed", "open", "half_open"]
Event = Literal["success", "failure", "neutral", "acquire"]


def deployment_key(deployment: object) -> str:
    """The breaker key of a deployment: a string as is, else ``provider/name``.

    Objects with a ``key`` attribute (a string) use it.
    """
    if isinstance(deployment, str):
        return deployment
    key = getattr(deployment, "key", None)
    if isinstance(key, str):
        return key
    return f"{getattr(deployment, 'provider', '?')}/{getattr(deployment, 'name', '?')}"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a deployment's breaker opens and for how long."""

    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_calls: int = 10
    window_s: float = 60.0
    buckets: int = 6
    cooldown_s: float = 30.0
    probe_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.min_calls < 1 or self.buckets < 1:
            raise ValueError("consecutive_failures, min_calls and buckets must be 1 or more")
        if not 0 < self.error_rate <= 1:
            raise ValueError("error_rate must be in (0, 1]")
        if self.window_s <= 0 or self.cooldown_s < 0 or self.probe_timeout_s <= 0:
            raise ValueError("window_s and probe_timeout_s must be positive, cooldown_s >= 0")

    @property
    def bucket_s(self) -> float:
        return self.window_s / self.buckets


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One deployment's breaker, as stored.

    ``open_until`` is when the cooldown ends (``0`` when closed); ``probe_until``
    when the current half-open probe's lease expires (``0`` when none is out).
    ``window`` maps a bucket number to ``(successes, failures)``. Times are wall
    clock seconds so every worker reads them alike.
    """

    opened: bool = False
    open_until: float = 0.0
    probe_until: float = 0.0
    consecutive: int = 0
    window: tuple[tuple[int, int, int], ...] = ()

    @property
    def pristine(self) -> bool:
        """Closed with no failure in the window (a success changes nothing worth storing)."""
        return not self.opened and not self.consecutive and not any(b[2] for b in self.window)

    def phase(self, now: float) -> State:
        if not self.opened:
            return "closed"
        return "half_open" if now >= self.open_until else "open"

    def available(self, now: float) -> bool:
        """Whether a call may go now (without claiming the half-open probe)."""
        phase = self.phase(now)
        return phase == "closed" or (phase == "half_open" and self.probe_until <= now)

    def to_json(self) -> str:
        return json.dumps(
            [
                int(self.opened),
                self.open_until,
                self.probe_until,
                self.consecutive,
                [list(b) for b in self.window],
            ],
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> BreakerState:
        if not raw:
            return _CLOSED
        opened, until, probe, consecutive, window = json.loads(raw)
        return cls(
            bool(opened),
            float(until),
            float(probe),
            int(consecutive),
            tuple((int(b), int(s), int(f)) for b, s, f in window),
        )


_CLOSED = BreakerState()
#: Optimistic-transaction retries before a Redis update gives up.
_MAX_CONFLICTS = 32


def transition(
    state: BreakerState,
    event: Event,
    now: float,
    policy: BreakerPolicy,
    ticket: float | None = None,
) -> tuple[BreakerState, bool]:
    """The state after ``event`` at ``now``, and whether the event was granted.

    ``acquire`` asks to send a call: granted when closed, or when half-open with
    no probe out (the caller becomes the probe). ``success`` / ``failure`` report
    an outcome; ``neutral`` an outcome that says nothing about health (frees a
    probe slot). Only ``acquire`` can be refused.

    ``ticket`` says which call an outcome is from: the probe's ``probe_until`` as
    granted (see :meth:`CircuitBreaker.admit`), ``0`` for a call admitted while
    closed. Once the breaker has opened, an outcome with a ticket that is not the
    current probe's changes nothing. ``None`` (no ticket): as any call, the old way.
    """
    phase = state.phase(now)
    if ticket is not None and event != "acquire" and state.opened:
        if not ticket or ticket != state.probe_until:
            # a call sent before the breaker opened (or a probe whose lease ran out
            # and was handed on): it may not free, close or re-open the probe's state
            return state, True
        # the probe's own outcome, whatever phase a skewed clock reads
        phase = "half_open"
    if event == "acquire":
        if phase == "closed":
            return state, True
        if phase == "half_open" and state.probe_until <= now:
            return replace(state, probe_until=now + policy.probe_timeout_s), True
        return state, False
    if event == "neutral":
        if state.probe_until:
            return replace(state, probe_until=0.0), True
        return state, True
    if phase != "closed":
        if event == "success" and phase == "half_open":
            return _CLOSED, True
        if event == "failure" and phase == "half_open":
            return replace(state, open_until=now + policy.cooldown_s, probe_until=0.0), True
        return state, True  # a straggler from before the breaker opened
    bucket = int(now // policy.bucket_s)
    oldest = bucket - policy.buckets + 1
    window = [b for b in state.window if b[0] >= oldest]
    # The bucket may not be the last one: workers sharing a store read skewed clocks.
    for i in range(len(window) - 1, -1, -1):
        if window[i][0] == bucket:
            _, ok, bad = window[i]
            window[i] = (bucket, ok + (event == "success"), bad + (event == "failure"))
            break
    else:
        window.append((bucket, int(event == "success"), int(event == "failure")))
    if event == "success":
        return BreakerState(consecutive=0, window=tuple(window)), True
    consecutive = state.consecutive + 1
    calls = sum(ok + bad for _, ok, bad in window)
    failures = sum(bad for _, _, bad in window)
    if consecutive >= policy.consecutive_failures or (
        calls >= policy.min_calls and failures >= policy.error_rate * calls
    ):
        return BreakerState(opened=True, open_until=now + policy.cooldown_s), True
    return BreakerState(consecutive=consecutive, window=tuple(window)), True


class BreakerStore(Protocol):
    """Keeps breaker states; ``apply`` runs :func:`transition` atomically per key.

    ``ticket`` is passed only when the outcome carries one (a store without it
    still serves callers that never pass tickets)."""

    def apply(
        self, key: str, event: Event, now: float, policy: BreakerPolicy, ticket: float | None = None
    ) -> tuple[BreakerState, bool]: ...

    def get(self, key: str) -> BreakerState: ...

    async def aget(self, key: str) -> BreakerState: ...

    async def aapply(
        self, key: str, event: Event, now: float, policy: BreakerPolicy, ticket: float | None = None
    ) -> tuple[BreakerState, bool]: ...


class MemoryBreakerStore:
    """Breaker states of one process, guarded by one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, BreakerState] = {}

    def get(self, key: str) -> BreakerState:
        return self._states.get(key, _CLOSED)

    async def aget(self, key: str) -> BreakerState:
        return self._states.get(key, _CLOSED)

    def apply(
        self, key: str, event: Event, now: float, policy: BreakerPolicy, ticket: float | None = None
    ) -> tuple[BreakerState, bool]:
        with self._lock:
            old = self._states.get(key, _CLOSED)
            new, granted = transition(old, event, now, policy, ticket)
            if new is not old:
                if new == _CLOSED:
                    self._states.pop(key, None)
                else:
                    self._states[key] = new
            return new, granted

    async def aapply(
        self, key: str, event: Event, now: float, policy: BreakerPolicy, ticket: float | None = None
    ) -> tuple[BreakerState, bool]:
        return self.apply(key, event, now, policy, ticket)


class RedisBreakerStore:
    """Breaker states in Redis, shared by every worker.

    Each deployment is one string key ``{prefix}{deployment}`` holding the JSON
    state, updated with an optimistic ``WATCH``/``MULTI`` transaction (retried on
    conflict) so the one transition function is the only logic. ``get`` (used by
    :meth:`CircuitBreaker.is_available` on every routing decision) is served from
    a local copy refreshed at most every ``refresh_s`` seconds; outcomes and probe
    claims always go to Redis. Pass a ``url`` or ready clients (``client`` sync,
    ``async_client`` from ``redis.asyncio``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        async_client: Any = None,
        prefix: str = "llmroute:breaker:",
        refresh_s: float = 1.0,
        ttl_s: int = 86_400,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if url is None and client is None and async_client is None:
            raise ValueError("RedisBreakerStore needs a url or a client")
        self._redis = RedisClients("RedisBreakerStore", url, client, async_client)
        #: The outage state of this store's Redis (see :class:`~._outage.StoreOutage`).
        self.outage: StoreOutage = self._redis.outage
        self.prefix = prefix
        self.refresh_s = refresh_s
        self.ttl_s = ttl_s
        self._clock = clock
        self._local: dict[str, tuple[float, BreakerState]] = {}

    def close(self) -> None:
        """Close the sync client this store opened itself (not one it was given)."""
        self._redis.close()

    async def aclose(self) -> None:
        """Close the clients this store opened itself (not ones it was given)."""
        self.close()
        await self._redis.aclose()

    def _remember(self, key: str, state: BreakerState) -> None:
        if len(self._local) > 4096:
            self._local.clear()
        self._local[key] = (self._clock() + self.refresh_s, state)

    def get(self, key: str) -> BreakerState:
        cached = self._local.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        state = BreakerState.from_json(self._redis.sync_client().get(self.prefix + key))
        self._remember(key, state)
        return state

    async def aget(self, key: str) -> BreakerState:
        cached = self._local.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        state = BreakerState.from_json(await self._redis.async_client().get(self.prefix + key))
        self._remember(key, state)
        return state

    def apply(
        self, key: str, event: Event, now: float, policy: BreakerPolicy, ticket: float | None = None
    ) -> tuple[BreakerState, bool]:
        import redis

        name = self.prefix + key
        with self._redis.sync_client().pipeline() as pipe:
            old = _CLOSED
            for _ in range(_MAX_CONFLICTS):
                try:
                    pipe.watch(name)
                    old = BreakerState.from_json(pipe.get(name))
                    new, granted = transition(old, event, now, policy, ticket)
                    if new != old:
                        pipe.multi()
                        pipe.set(name, new.to_json(), ex=self.ttl_s)
                        pipe.execute()
                    else:
                        pipe.unwatch()
                    break
                except redis.WatchError:
                    continue
            else:  # lost every race: refuse a probe, drop an outcome
                return old, False
        self._remember(key, new)
        return new, granted

    async def aapply(
        self, key: str, event: Event, now: float, policy: BreakerPolicy, ticket: float | None = None
    ) -> tuple[BreakerState, bool]:
        import redis

        name = self.prefix + key
        async with self._redis.async_client().pipeline() as pipe:
            old = _CLOSED
            for _ in range(_MAX_CONFLICTS):
                try:
                    await pipe.watch(name)
                    old = BreakerState.from_json(await pipe.get(name))
                    new, granted = transition(old, event, now, policy, ticket)
                    if new != old:
                        pipe.multi()
                        pipe.set(name, new.to_json(), ex=self.ttl_s)
                        await pipe.execute()
                    else:
                        await pipe.unwatch()
                    break
                except redis.WatchError:
                    continue
            else:  # lost every race: refuse a probe, drop an outcome
                return old, False
        self._remember(key, new)
        return new, granted


@dataclass(slots=True)
class CircuitBreaker:
    """Breakers for every deployment over one store.

    ``policies`` overrides ``policy`` per deployment key (``provider/name``), e.g.
    a longer cooldown for a provider whose outages last. ``clock`` is wall time
    (shared across workers with a Redis store).

    A store that fails (down, or not answering within its timeout) does not take
    routing down: for :data:`~._outage.STORE_RETRY_S` at a time every deployment
    counts as healthy and outcomes go unrecorded, with one warning per outage.
    :meth:`state` still raises its error.
    """

    store: BreakerStore = field(default_factory=MemoryBreakerStore)
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    policies: Mapping[str, BreakerPolicy] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    _outage: StoreOutage = field(init=False, repr=False, compare=False)
    _tickets: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._outage = outage_of(self.store, "breaker store", "deployments count as healthy")
        # A store written before tickets (``apply(key, event, now, policy)``) still
        # serves, the old way: outcomes reach it without the ticket it cannot take.
        self._tickets = _takes_ticket(self.store.apply) and _takes_ticket(self.store.aapply)

    def policy_for(self, deployment: object) -> BreakerPolicy:
        return self.policies.get(deployment_key(deployment), self.policy)

    def state(self, deployment: object) -> State:
        """``closed``, ``open`` or ``half_open``."""
        return self.store.get(deployment_key(deployment)).phase(self.clock())

    def is_available(self, deployment: object) -> bool:
        """Whether a call may be routed to ``deployment`` now (the router's health check).

        Does not claim the half-open probe; the dispatcher does that with
        :meth:`acquire` right before it sends.
        """
        key = deployment_key(deployment)
        return self._outage.run(lambda: self.store.get(key).available(self.clock()), True)

    def _apply(
        self, deployment: object, event: Event, ticket: float | None = None
    ) -> tuple[BreakerState, bool]:
        key = deployment_key(deployment)
        if ticket is None or not self._tickets:  # (see ``__post_init__``)
            return self.store.apply(key, event, self.clock(), self.policy_for(key))
        return self.store.apply(key, event, self.clock(), self.policy_for(key), ticket)

    async def _aapply(
        self, deployment: object, event: Event, ticket: float | None = None
    ) -> tuple[BreakerState, bool]:
        key = deployment_key(deployment)
        if ticket is None or not self._tickets:
            return await self.store.aapply(key, event, self.clock(), self.policy_for(key))
        return await self.store.aapply(key, event, self.clock(), self.policy_for(key), ticket)

    def acquire(self, deployment: object) -> bool:
        """Ask to send one call; in half-open state only one caller gets ``True``."""
        return self._outage.run(lambda: self._acquire(deployment), True)

    def _acquire(self, deployment: object) -> bool:
        if self.store.get(deployment_key(deployment)).phase(self.clock()) == "closed":
            return True
        return self._apply(deployment, "acquire")[1]

    async def aacquire(self, deployment: object) -> bool:
        """Async twin of :meth:`acquire`."""
        return await self._outage.arun(lambda: self._aacquire(deployment), True)

    async def _aacquire(self, deployment: object) -> bool:
        state = await self.store.aget(deployment_key(deployment))
        if state.phase(self.clock()) == "closed":
            return True
        return (await self._aapply(deployment, "acquire"))[1]

    def admit(self, deployment: object) -> float | None:
        """:meth:`acquire`, giving the call's ticket to pass to :meth:`record`.

        ``None``: refused. ``0.0``: admitted while closed. Else the call is the
        half-open probe, and only an outcome with this ticket frees its slot,
        closes the breaker or re-opens it; outcomes of calls sent before the
        breaker opened (ticket ``0.0``) no longer can.
        """
        return self._outage.run(lambda: self._admit(deployment), _ADMITTED)

    def _admit(self, deployment: object) -> float | None:
        if self.store.get(deployment_key(deployment)).phase(self.clock()) == "closed":
            return 0.0
        return _ticket(*self._apply(deployment, "acquire"))

    async def aadmit(self, deployment: object) -> float | None:
        """Async twin of :meth:`admit`."""
        return await self._outage.arun(lambda: self._aadmit(deployment), _ADMITTED)

    async def _aadmit(self, deployment: object) -> float | None:
        state = await self.store.aget(deployment_key(deployment))
        if state.phase(self.clock()) == "closed":
            return 0.0
        return _ticket(*(await self._aapply(deployment, "acquire")))

    def record(self, deployment: object, ok: bool | None, ticket: float | None = None) -> None:
        """Report an outcome: ``True`` success, ``False`` failure, ``None`` no verdict.

        ``ticket``: what :meth:`admit` gave the call (see there); without it the
        outcome may free or resolve a half-open probe whichever call it is from.

        A success on a healthy breaker (closed, no failure in the window) is not
        written: the error rate is then measured from the first failure on, which
        keeps the store off the path of every successful call.
        """
        self._outage.run(lambda: self._record(deployment, ok, ticket), None)

    def _record(self, deployment: object, ok: bool | None, ticket: float | None) -> None:
        if ok and self.store.get(deployment_key(deployment)).pristine:
            return
        self._apply(deployment, _event(ok), ticket)

    async def arecord(
        self, deployment: object, ok: bool | None, ticket: float | None = None
    ) -> None:
        """Async twin of :meth:`record`."""
        await self._outage.arun(lambda: self._arecord(deployment, ok, ticket), None)

    async def _arecord(self, deployment: object, ok: bool | None, ticket: float | None) -> None:
        if ok and (await self.store.aget(deployment_key(deployment))).pristine:
            return
        await self._aapply(deployment, _event(ok), ticket)


#: the ticket of a call admitted while closed (also while the store is out)
_ADMITTED: float | None = 0.0


def _ticket(state: BreakerState, granted: bool) -> float | None:
    """The ticket of a granted ``acquire``: the probe lease it took, or ``0.0`` closed."""
    if not granted:
        return None
    return state.probe_until if state.opened else 0.0


def _event(ok: bool | None) -> Event:
    return "success" if ok else "neutral" if ok is None else "failure"


def _takes_ticket(apply: Callable[..., Any]) -> bool:
    """Whether a store's ``apply``/``aapply`` takes the ``ticket`` argument."""
    try:
        parameters = inspect.signature(apply).parameters
    except (TypeError, ValueError):  # (no signature to read: assume the current one)
        return True
    return (
        "ticket" in parameters
        or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters.values())
        or len(parameters) >= 5
    )
