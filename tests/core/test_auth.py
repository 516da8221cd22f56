"""API keys hashed at rest, and token-bucket rate limits."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing_middleware.auth import (
    ApiKeyInfo,
    KeyStore,
    MemoryKeyStore,
    RateLimit,
    RateLimiter,
    hash_key,
    key_id_of,
    new_key,
    verify_key,
)


def test_a_created_key_authenticates_and_is_stored_only_as_a_hash() -> None:
    store = MemoryKeyStore()
    plaintext, info = store.create(owner="user-1", name="ci", allow_hints=True, tags=["ci"])
    assert isinstance(store, KeyStore)
    assert plaintext.startswith(f"lrk_{info.key_id}_")
    assert store.authenticate(plaintext) == info
    assert (info.owner, info.name, info.allow_hints, info.tags) == ("user-1", "ci", True, {"ci"})
    secret = plaintext.removeprefix(f"lrk_{info.key_id}_")
    held = repr(vars(store))  # everything the store keeps
    assert plaintext not in held
    assert secret not in held
    assert hash_key(plaintext) in held
    assert plaintext not in repr(store)
    assert plaintext not in repr(info)


def test_wrong_malformed_and_revoked_keys_are_refused() -> None:
    store = MemoryKeyStore()
    plaintext, info = store.create(owner="user-1")
    other, _ = MemoryKeyStore().create()
    assert store.authenticate(other) is None  # well-formed, unknown id
    tampered = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    assert store.authenticate(tampered) is None  # known id, wrong secret
    for junk in ("", "Bearer x", "lrk_", "lrk_zz_" + "a" * 43, plaintext + "\n"):
        assert store.authenticate(junk) is None
    assert store.revoke(info.key_id)
    assert store.authenticate(plaintext) is None
    revoked = store.get(info.key_id)
    assert revoked is not None
    assert revoked.revoked
    assert not store.revoke("nope")
    assert [k.key_id for k in store.list_keys()] == [info.key_id]


def test_keys_made_elsewhere_can_be_registered_by_their_hash() -> None:
    key_id, plaintext = new_key()
    assert key_id_of(plaintext) == key_id
    digest = hash_key(plaintext)
    assert verify_key(plaintext, digest)
    assert not verify_key(plaintext + "x", digest)
    store = MemoryKeyStore()
    store.add(ApiKeyInfo(key_id=key_id, owner="db-user"), digest)
    found = store.authenticate(plaintext)
    assert found is not None
    assert found.owner == "db-user"
    assert len(store) == 1


def test_new_keys_are_unique_and_well_formed() -> None:
    keys = {new_key()[1] for _ in range(200)}
    assert len(keys) == 200
    assert all(key_id_of(k) is not None for k in keys)
    assert key_id_of("sk-something") is None


def test_rate_limit_validates_and_converts_per_minute() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimit(rate=0)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(rate=1, burst=0)
    limit = RateLimit.per_minute(600)
    assert limit.rate == 10
    assert limit.burst == 60
    assert RateLimit.per_minute(30, burst=5) == RateLimit(rate=0.5, burst=5)
    with pytest.raises(ValueError, match="max_keys"):
        RateLimiter(max_keys=0)


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limit = RateLimit(rate=2.0, burst=3)
    assert [limiter.acquire("k", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k", limit) == pytest.approx(0.5)
    assert limiter.acquire("other", limit) == 0.0  # one bucket per key
    now[0] = 0.25
    assert limiter.acquire("k", limit) == pytest.approx(0.25)  # refused takes nothing
    now[0] = 0.5
    assert limiter.acquire("k", limit) == 0.0
    now[0] = 100.0
    assert [limiter.acquire("k", limit) for _ in range(4)][-1] > 0  # capped at the burst


def test_forgotten_buckets_start_full_again() -> None:
    limiter = RateLimiter(max_keys=2, clock=lambda: 0.0)
    limit = RateLimit(rate=0.001, burst=1)
    assert limiter.acquire("a", limit) == 0.0
    assert limiter.acquire("a", limit) > 0
    limiter.acquire("b", limit)
    limiter.acquire("c", limit)  # "a" is the least recently seen: dropped
    assert limiter.acquire("a", limit) == 0.0


@given(
    rate=st.floats(min_value=0.1, max_value=100),
    burst=st.integers(min_value=1, max_value=20),
    steps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=60),
)
def test_never_more_than_the_burst_plus_what_refilled(
    rate: float, burst: int, steps: list[float]
) -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limit = RateLimit(rate=rate, burst=burst)
    allowed = 0
    for step in steps:
        now[0] += step
        if limiter.acquire("k", limit) == 0.0:
            allowed += 1
    assert allowed <= burst + rate * now[0] + 1e-6


def test_a_rate_whose_wait_is_no_number_is_refused() -> None:
    # 1 / 1e-310 is infinite: every refused request would fail to say its wait
    # (Retry-After) and answer a bare 500 instead of a 429.
    for rate in (1e-310, 5e-324):
        with pytest.raises(ValueError, match="rate"):
            RateLimit(rate=rate)
    limiter = RateLimiter(clock=lambda: 0.0)
    slow = RateLimit(rate=1e-300)
    assert limiter.acquire("k", slow) == 0.0
    assert math.isfinite(limiter.acquire("k", slow))
