"""Circuit breakers: opening, cooldown, the single half-open probe, and shared Redis state."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from routing_middleware.breaker import (
    BreakerPolicy,
    BreakerState,
    BreakerStore,
    CircuitBreaker,
    MemoryBreakerStore,
    RedisBreakerStore,
    deployment_key,
    transition,
)
from routing_middleware.router import Deployment
from tests.core.redis_helpers import drop_keys, redis_url_or_skip

POLICY = BreakerPolicy(
    consecutive_failures=3,
    error_rate=0.5,
    min_calls=6,
    window_s=60,
    buckets=6,
    cooldown_s=30,
    probe_timeout_s=10,
)
DEP = Deployment("openai/gpt-a", "openai", "gpt-a")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def run(state: BreakerState, *events: str, now: float = 0.0) -> BreakerState:
    for event in events:
        state, _ = transition(state, event, now, POLICY)  # type: ignore[arg-type]
    return state


# ------------------------------------------------------------------ pure transitions


def test_opens_after_consecutive_failures() -> None:
    state = run(BreakerState(), "failure", "failure")
    assert state.phase(0) == "closed"
    state = run(state, "failure")
    assert state.phase(0) == "open"
    assert state.open_until == 30


def test_a_success_resets_the_consecutive_count() -> None:
    state = run(BreakerState(), "failure", "failure", "success", "failure", "failure")
    assert state.phase(0) == "closed"


def test_opens_on_error_rate_over_the_window() -> None:
    # alternate so the consecutive rule never fires: 3 failures in 6 calls = 50 %
    state = run(BreakerState(), "success", "failure", "success", "failure", "success")
    assert state.phase(0) == "closed"
    state = run(state, "failure")
    assert state.phase(0) == "open"


def test_error_rate_needs_enough_calls() -> None:
    state = run(BreakerState(), "failure", "success", "failure", "success")
    assert state.phase(0) == "closed"


def test_old_buckets_slide_out_of_the_window() -> None:
    state = run(BreakerState(), "success", "failure", "success", "failure", "success", now=0)
    # a minute later those calls are forgotten: one failure among one call is < min_calls
    state = run(state, "failure", now=61)
    assert state.phase(61) == "closed"
    assert sum(ok + bad for _, ok, bad in state.window) == 1


def test_skewed_clocks_share_one_bucket_per_period() -> None:
    # Workers sharing a Redis breaker read slightly different wall clocks: around a
    # bucket boundary their outcomes land alternately in two buckets. Each bucket
    # must be counted once, not appended again on every event (a state that grew
    # with the traffic, read and rewritten whole on every outcome).
    policy = BreakerPolicy(consecutive_failures=1000, min_calls=1000)
    state = BreakerState()
    for i in range(200):
        now = 100.1 - 0.2 * (i % 2)  # one worker 0.2 s behind: buckets 10 and 9
        state, _ = transition(state, "failure" if i % 7 == 0 else "success", now, policy)
    assert sorted(b for b, _, _ in state.window) == [9, 10]
    assert sum(ok + bad for _, ok, bad in state.window) == 200
    assert sum(bad for _, _, bad in state.window) == 29


def test_rejects_during_cooldown_then_lets_exactly_one_probe() -> None:
    state = run(BreakerState(), "failure", "failure", "failure", now=0)
    state, granted = transition(state, "acquire", 10, POLICY)
    assert not granted
    assert not state.available(10)
    assert state.available(30)
    state, granted = transition(state, "acquire", 31, POLICY)
    assert granted
    assert state.phase(31) == "half_open"
    _, second = transition(state, "acquire", 32, POLICY)
    assert not second
    assert not state.available(32)


def test_a_successful_probe_closes() -> None:
    state = run(BreakerState(), "failure", "failure", "failure", now=0)
    state, _ = transition(state, "acquire", 31, POLICY)
    state, _ = transition(state, "success", 32, POLICY)
    assert state == BreakerState()
    assert state.available(32)


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    state = run(BreakerState(), "failure", "failure", "failure", now=0)
    state, _ = transition(state, "acquire", 31, POLICY)
    state, _ = transition(state, "failure", 33, POLICY)
    assert state.phase(33) == "open"
    assert state.open_until == 63
    assert not state.available(62)


def test_a_lost_probe_frees_its_slot_after_the_lease() -> None:
    state = run(BreakerState(), "failure", "failure", "failure", now=0)
    state, _ = transition(state, "acquire", 31, POLICY)
    assert not transition(state, "acquire", 40, POLICY)[1]
    assert transition(state, "acquire", 41, POLICY)[1]


def test_a_neutral_outcome_frees_the_probe_without_deciding() -> None:
    state = run(BreakerState(), "failure", "failure", "failure", now=0)
    state, _ = transition(state, "acquire", 31, POLICY)
    state, _ = transition(state, "neutral", 32, POLICY)
    assert state.phase(32) == "half_open"
    assert transition(state, "acquire", 32, POLICY)[1]


def test_stragglers_do_not_change_an_open_breaker() -> None:
    state = run(BreakerState(), "failure", "failure", "failure", now=0)
    assert run(state, "success", now=5) == state
    assert run(state, "failure", now=5) == state


def test_state_survives_serialization() -> None:
    state = run(BreakerState(), "success", "failure", now=100)
    assert BreakerState.from_json(state.to_json()) == state
    assert BreakerState.from_json(None) == BreakerState()


def test_invalid_policies_are_rejected() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(error_rate=0)
    with pytest.raises(ValueError):
        BreakerPolicy(consecutive_failures=0)


def test_deployment_keys() -> None:
    assert deployment_key(DEP) == "openai/gpt-a"
    assert deployment_key("azure/eu") == "azure/eu"


# ------------------------------------------------------------------ over a store


@pytest.fixture
def redis_url() -> str:
    # the marker skips first; this keeps the fixture honest on its own
    return redis_url_or_skip()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"llmroute-test:{uuid.uuid4().hex}:breaker:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    drop_keys(client, prefix)
    client.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[], BreakerStore]]:
    if request.param == "memory":
        shared = MemoryBreakerStore()
        yield lambda: shared
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    made: list[RedisBreakerStore] = []

    def make() -> BreakerStore:
        made.append(RedisBreakerStore(url, prefix=prefix, refresh_s=0))
        return made[-1]

    yield make
    for store in made:
        store.close()


def _breaker(factory: Callable[[], BreakerStore], clock: Clock, **kw: Any) -> CircuitBreaker:
    return CircuitBreaker(store=factory(), policy=POLICY, clock=clock, **kw)


def test_breaker_lifecycle(store_factory: Callable[[], BreakerStore]) -> None:
    clock = Clock()
    breaker = _breaker(store_factory, clock)
    for _ in range(3):
        assert breaker.acquire(DEP)
        breaker.record(DEP, False)
    assert breaker.state(DEP) == "open"
    assert not breaker.is_available(DEP)
    assert not breaker.acquire(DEP)
    clock.now += 30
    assert breaker.state(DEP) == "half_open"
    assert breaker.is_available(DEP)
    assert breaker.acquire(DEP)  # the probe
    assert not breaker.acquire(DEP)  # nobody else meanwhile
    assert not breaker.is_available(DEP)
    breaker.record(DEP, True)
    assert breaker.state(DEP) == "closed"
    assert breaker.acquire(DEP)


def test_cooldown_is_configurable_per_deployment(store_factory: Callable[[], BreakerStore]) -> None:
    clock = Clock()
    slow = Deployment("anthropic/claude-b", "anthropic", "claude-b")
    breaker = _breaker(
        store_factory,
        clock,
        policies={slow.key: BreakerPolicy(consecutive_failures=1, cooldown_s=300)},
    )
    breaker.record(slow, False)
    for _ in range(3):
        breaker.record(DEP, False)
    clock.now += 31
    assert breaker.is_available(DEP)
    assert not breaker.is_available(slow)
    clock.now += 270
    assert breaker.is_available(slow)


def test_async_twins(store_factory: Callable[[], BreakerStore]) -> None:
    clock = Clock()
    breaker = _breaker(store_factory, clock)

    async def scenario() -> None:
        for _ in range(3):
            assert await breaker.aacquire(DEP)
            await breaker.arecord(DEP, False)
        assert not await breaker.aacquire(DEP)
        clock.now += 30
        assert await breaker.aacquire(DEP)
        assert not await breaker.aacquire(DEP)
        await breaker.arecord(DEP, True)
        assert await breaker.aacquire(DEP)
        if isinstance(breaker.store, RedisBreakerStore):
            await breaker.store.aclose()

    anyio.run(scenario)
    assert breaker.state(DEP) == "closed"


@pytest.mark.redis
def test_workers_share_state_through_redis(redis_url: str, redis_prefix: str) -> None:
    clock = Clock()
    first = CircuitBreaker(
        RedisBreakerStore(redis_url, prefix=redis_prefix, refresh_s=0), POLICY, clock=clock
    )
    second = CircuitBreaker(
        RedisBreakerStore(redis_url, prefix=redis_prefix, refresh_s=0), POLICY, clock=clock
    )
    first.record(DEP, False)
    second.record(DEP, False)
    first.record(DEP, False)
    assert not second.is_available(DEP)
    clock.now += 30
    assert second.acquire(DEP)
    assert not first.acquire(DEP)  # one probe across every worker
    second.record(DEP, True)
    assert first.is_available(DEP)
    for breaker in (first, second):
        assert isinstance(breaker.store, RedisBreakerStore)
        breaker.store.close()


@pytest.mark.redis
def test_redis_reads_are_cached_locally_for_refresh_s(redis_url: str, redis_prefix: str) -> None:
    ticks = Clock()
    clock = Clock()
    reader_store = RedisBreakerStore(redis_url, prefix=redis_prefix, refresh_s=1.0, clock=ticks)
    reader = CircuitBreaker(reader_store, POLICY, clock=clock)
    writer = CircuitBreaker(
        RedisBreakerStore(redis_url, prefix=redis_prefix, refresh_s=0), POLICY, clock=clock
    )
    assert reader.is_available(DEP)
    for _ in range(3):
        writer.record(DEP, False)
    assert reader.is_available(DEP)  # still the local copy
    ticks.now += 1.5
    assert not reader.is_available(DEP)
    reader_store.close()
    assert isinstance(writer.store, RedisBreakerStore)
    writer.store.close()


def test_successes_on_a_healthy_breaker_are_not_written() -> None:
    writes: list[str] = []

    class Counting(MemoryBreakerStore):
        def apply(self, key: str, event: Any, now: float, policy: BreakerPolicy) -> Any:
            writes.append(event)
            return super().apply(key, event, now, policy)

    breaker = CircuitBreaker(Counting(), POLICY, clock=Clock())
    for _ in range(5):
        breaker.record(DEP, True)
    assert writes == []
    breaker.record(DEP, False)
    breaker.record(DEP, True)
    assert writes == ["failure", "success"]  # after a failure, successes count again
    assert breaker.store.get(DEP.key).consecutive == 0


# ------------------------------------------------------------------ properties

# Failures and acquires weigh more so that sequences reach the half-open state often.
_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "acquire", "failure", "failure", "success", "neutral"]),
        st.sampled_from([0.0, 0.5, 3.0, 9.0, 31.0]),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(_EVENTS)
@example([("failure", 0.0)] * 3 + [("acquire", 31.0), ("acquire", 0.5), ("neutral", 0.0)])
def test_never_two_probes_out_at_once(events: list[tuple[str, float]]) -> None:
    state, now = BreakerState(), 0.0
    probe_out_until: float | None = None  # lease of the probe granted in half-open
    for event, step in events:
        now += step
        phase = state.phase(now)
        state, granted = transition(state, event, now, POLICY)  # type: ignore[arg-type]
        if event == "acquire" and granted and phase == "half_open":
            assert probe_out_until is None or probe_out_until <= now
            probe_out_until = now + POLICY.probe_timeout_s
        elif event != "acquire" and phase != "open":
            probe_out_until = None  # an outcome came back
        if event == "acquire" and phase == "open":
            assert not granted


@given(_EVENTS)
def test_closed_always_admits_and_availability_matches_acquire(
    events: list[tuple[str, float]],
) -> None:
    state, now = BreakerState(), 0.0
    for event, step in events:
        now += step
        available = state.available(now)
        _, granted = transition(state, "acquire", now, POLICY)
        assert available == granted
        if state.phase(now) == "closed":
            assert granted
        state, _ = transition(state, event, now, POLICY)  # type: ignore[arg-type]


@pytest.mark.redis
def test_one_probe_among_many_racing_workers(redis_url: str, redis_prefix: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    clock = Clock()
    stores = [RedisBreakerStore(redis_url, prefix=redis_prefix, refresh_s=0) for _ in range(12)]
    breakers = [CircuitBreaker(store, POLICY, clock=clock) for store in stores]
    for _ in range(3):
        breakers[0].record(DEP, False)
    clock.now += 30
    with ThreadPoolExecutor(max_workers=12) as pool:
        granted = list(pool.map(lambda b: b.acquire(DEP), breakers))
    assert granted.count(True) == 1
    for store in stores:
        store.close()


# ------------------------------------------------------------------ probe tickets
# A call admitted while closed (ticket 0.0) may end while the half-open probe is
# out: its outcome must neither free the probe's slot nor close or re-open the
# breaker; only the probe's own ticket does.


def _half_open_probe(breaker: CircuitBreaker, clock: Clock) -> tuple[float | None, float]:
    old = breaker.admit(DEP)  # sent while closed
    for _ in range(3):
        breaker.record(DEP, False, breaker.admit(DEP))
    assert breaker.state(DEP) == "open"
    assert breaker.admit(DEP) is None
    clock.now += 30
    probe = breaker.admit(DEP)
    assert probe
    assert breaker.admit(DEP) is None  # nobody else meanwhile
    assert old == 0.0
    return old, probe


@pytest.mark.parametrize("late", [None, True, False])
def test_an_old_calls_outcome_leaves_the_probe_alone(
    store_factory: Callable[[], BreakerStore], late: bool | None
) -> None:
    clock = Clock()
    breaker = _breaker(store_factory, clock)
    old, probe = _half_open_probe(breaker, clock)
    before = breaker.store.get(DEP.key)
    breaker.record(DEP, late, old)
    assert breaker.store.get(DEP.key) == before
    assert breaker.state(DEP) == "half_open"
    assert not breaker.is_available(DEP)
    assert breaker.admit(DEP) is None
    breaker.record(DEP, True, probe)  # the probe's own success closes it
    assert breaker.state(DEP) == "closed"
    assert breaker.admit(DEP) == 0.0


@pytest.mark.parametrize("own", [None, False])
def test_the_probes_own_outcome_frees_or_reopens(
    store_factory: Callable[[], BreakerStore], own: bool | None
) -> None:
    clock = Clock()
    breaker = _breaker(store_factory, clock)
    _, probe = _half_open_probe(breaker, clock)
    breaker.record(DEP, own, probe)
    if own is None:
        assert breaker.state(DEP) == "half_open"
        assert breaker.admit(DEP)  # the slot is free for the next probe
    else:
        assert breaker.state(DEP) == "open"
        assert breaker.store.get(DEP.key).open_until == clock.now + 30


def test_a_lost_probes_ticket_dies_with_its_lease(
    store_factory: Callable[[], BreakerStore],
) -> None:
    clock = Clock()
    breaker = _breaker(store_factory, clock)
    _, lost = _half_open_probe(breaker, clock)
    clock.now += 9
    assert breaker.admit(DEP) is None
    clock.now += 1  # the lease ran out: the next caller probes
    second = breaker.admit(DEP)
    assert second
    assert second != lost
    for late in (None, True, False):
        breaker.record(DEP, late, lost)  # the lost probe turns up after all
        assert breaker.state(DEP) == "half_open"
        assert breaker.admit(DEP) is None
    breaker.record(DEP, False, second)
    assert breaker.state(DEP) == "open"


def test_a_probe_reporting_after_its_lease_still_decides_if_none_took_over(
    store_factory: Callable[[], BreakerStore],
) -> None:
    clock = Clock()
    breaker = _breaker(store_factory, clock)
    _, probe = _half_open_probe(breaker, clock)
    clock.now += 15
    breaker.record(DEP, True, probe)
    assert breaker.state(DEP) == "closed"


def test_async_tickets(store_factory: Callable[[], BreakerStore]) -> None:
    clock = Clock()
    breaker = _breaker(store_factory, clock)

    async def scenario() -> None:
        old = await breaker.aadmit(DEP)
        assert old == 0.0
        for _ in range(3):
            await breaker.arecord(DEP, False, await breaker.aadmit(DEP))
        assert await breaker.aadmit(DEP) is None
        clock.now += 30
        probe = await breaker.aadmit(DEP)
        assert probe
        for late in (None, True, False):
            await breaker.arecord(DEP, late, old)
            assert await breaker.aadmit(DEP) is None
            assert breaker.state(DEP) == "half_open"
        await breaker.arecord(DEP, None, probe)  # frees the slot
        second = await breaker.aadmit(DEP)
        assert second
        await breaker.arecord(DEP, False, second)
        assert breaker.state(DEP) == "open"
        clock.now += 30
        third = await breaker.aadmit(DEP)
        await breaker.arecord(DEP, True, third)
        assert breaker.state(DEP) == "closed"
        if isinstance(breaker.store, RedisBreakerStore):
            await breaker.store.aclose()

    anyio.run(scenario)
    assert breaker.state(DEP) == "closed"


def test_outcomes_without_a_ticket_still_decide_the_probe() -> None:
    # callers of acquire()/record() without tickets keep working as they did
    state = run(BreakerState(), "failure", "failure", "failure", now=0)
    state, _ = transition(state, "acquire", 31, POLICY)
    assert transition(state, "success", 32, POLICY)[0] == BreakerState()
    assert transition(state, "neutral", 32, POLICY)[0].available(32)


@pytest.mark.redis
def test_a_probe_ticket_from_one_worker_resolves_on_another(
    redis_url: str, redis_prefix: str
) -> None:
    clock = Clock()
    first, second = (
        CircuitBreaker(
            RedisBreakerStore(redis_url, prefix=redis_prefix, refresh_s=0), POLICY, clock=clock
        )
        for _ in range(2)
    )
    old = second.admit(DEP)
    for _ in range(3):
        first.record(DEP, False, 0.0)
    clock.now += 30.123456789
    probe = first.admit(DEP)
    second.record(DEP, True, old)
    assert second.state(DEP) == "half_open"
    second.record(DEP, True, probe)  # (the ticket survives the trip through JSON)
    assert first.state(DEP) == "closed"
    for breaker in (first, second):
        assert isinstance(breaker.store, RedisBreakerStore)
        breaker.store.close()


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["acquire", "acquire", "failure", "failure", "success", "neutral"]),
            st.sampled_from([0.0, 0.5, 3.0, 9.0, 31.0]),
            st.integers(0, 5),  # which admitted call reports
        ),
        max_size=60,
    )
)
@example(
    [("acquire", 0.0, 0)] * 4
    + [("failure", 0.0, 0)] * 3
    + [("acquire", 31.0, 0), ("success", 0.0, 0)]  # the old call's late success
)
def test_with_tickets_only_the_probe_frees_or_resolves_it(
    events: list[tuple[str, float, int]],
) -> None:
    state, now = BreakerState(), 0.0
    out: list[float] = []  # tickets of the calls still out
    probe: float | None = None  # the probe granted in half-open, until it reports
    for event, step, pick in events:
        now += step
        phase = state.phase(now)
        if event == "acquire":
            state, granted = transition(state, "acquire", now, POLICY)
            if granted and phase == "half_open":
                assert probe is None or probe <= now  # (its lease ran out)
                probe = state.probe_until
            if granted:
                out.append(state.probe_until if state.opened else 0.0)
            continue
        if not out:
            continue
        ticket = out.pop(pick % len(out))
        before = state
        state, _ = transition(state, event, now, POLICY, ticket)  # type: ignore[arg-type]
        if before.opened and ticket != before.probe_until:
            assert state == before  # another call's outcome decides nothing
        if ticket == probe:
            probe = None
