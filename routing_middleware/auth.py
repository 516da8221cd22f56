"""API keys and per-key rate limits for the gateway (and any other HTTP shell).

Keys look like ``lrk_<key id>_<secret>``: the key id is public (it names the key
on usage records, in budgets and in admin pages), the secret is 256 random bits
shown once, when the key is made. Only the SHA-256 digest of the whole key is
kept; a plain hash suffices because the secret is random and long, not a
password. Verification looks the key up by its id and compares digests in
constant time.

:class:`KeyStore` is the interface the gateway asks (one method); the in-memory
:class:`MemoryKeyStore` ships here and the Django app backs the same interface
with its ``ApiKey`` model, reusing :func:`new_key`, :func:`hash_key` and
:func:`verify_key`. :class:`RateLimiter` is a token bucket per key, thread-safe
and framework-free.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol, cast, runtime_checkable

__all__ = [
    "ApiKeyInfo",
    "KeyStore",
    "MemoryKeyStore",
    "RateLimit",
    "RateLimiter",
    "hash_key",
    "key_id_of",
    "new_key",
    "verify_key",
]

_PREFIX = "lrk_"
_KEY_RE = re.compile(r"lrk_([0-9a-f]{12})_[A-Za-z0-9_-]{20,128}")
#: Compared against when the key id is unknown, so both paths hash and compare.
_DUMMY_DIGEST = hashlib.sha256(b"llmroute-no-such-key").hexdigest()
#: Tokens a bucket may lack and still grant a request (float error, not a discount).
_SLACK = 1e-9


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` requests per second on average, bursts of up to ``burst``."""

    rate: float
    burst: int = 1

    def __post_init__(self) -> None:
        # (and its wait for one token, 1 / rate, a number: not so for a tiny float)
        if not (self.rate > 0 and math.isfinite(1 / self.rate)):
            raise ValueError(f"rate must be positive, not {self.rate}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")

    @classmethod
    def per_minute(cls, requests: float, burst: int | None = None) -> RateLimit:
        """``requests`` per minute; the burst defaults to a tenth of a minute's worth."""
        return cls(requests / 60.0, burst if burst is not None else max(1, round(requests / 10)))


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What a valid key stands for. Holds no secret, so it is safe to log.

    ``owner`` is the user id the key's calls are attributed to; ``allow_hints``
    lets the key's callers set routing hints with ``X-LLMRoute-*`` headers;
    ``rate_limit`` overrides the gateway's default limit for this key; ``tags``
    land on the key's usage records.
    """

    key_id: str
    owner: str | None = None
    name: str = ""
    allow_hints: bool = False
    rate_limit: RateLimit | None = None
    tags: frozenset[str] = frozenset()
    revoked: bool = False
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        # Stores build infos from their rows, tags as a list, a set or one string: the
        # gateway hands them on as they are, and budgets hash them (a list or set made
        # the budget store fail, so calls went on unchecked; a string became letters).
        # Ids the same way: a row's integer id (an owner's primary key) matched no
        # budget, whose values are strings, so its spend went unchecked.
        key_id: object = self.key_id
        if not isinstance(key_id, str):
            object.__setattr__(self, "key_id", str(key_id))
        owner: object = self.owner
        if owner is not None and not isinstance(owner, str):
            object.__setattr__(self, "owner", str(owner))
        tags: object = self.tags
        if not isinstance(tags, frozenset):
            names = (tags,) if isinstance(tags, str) else cast("Iterable[str]", tags)
            object.__setattr__(self, "tags", frozenset(names))


@runtime_checkable
class KeyStore(Protocol):
    """Where the gateway checks API keys.

    ``authenticate`` gets the key exactly as the caller sent it and answers with
    the key's info, or ``None`` for an unknown, malformed or revoked key. It must
    not raise for bad input and must never log the key. A store whose lookup does
    I/O may also define ``async def aauthenticate(plaintext)``, which the gateway
    then awaits instead.
    """

    def authenticate(self, plaintext: str) -> ApiKeyInfo | None: ...


def new_key() -> tuple[str, str]:
    """A fresh ``(key_id, plaintext)`` pair; show the plaintext once, keep its hash."""
    key_id = secrets.token_hex(6)
    return key_id, f"{_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(plaintext: str) -> str | None:
    """The public id inside a well-formed key (``None`` when it is not one)."""
    match = _KEY_RE.fullmatch(plaintext)
    return match.group(1) if match else None


def hash_key(plaintext: str) -> str:
    """The hex SHA-256 digest stored for a key."""
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


def verify_key(plaintext: str, digest: str) -> bool:
    """Whether ``plaintext`` hashes to ``digest`` (constant-time comparison)."""
    return hmac.compare_digest(hash_key(plaintext), digest)


class MemoryKeyStore:
    """API keys in process memory, hashed at rest; thread-safe.

    ::

        keys = MemoryKeyStore()
        plaintext, info = keys.create(owner="user-42", allow_hints=True)
        # hand ``plaintext`` to the user now: it cannot be recovered later
        keys.revoke(info.key_id)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, ApiKeyInfo]] = {}

    def __repr__(self) -> str:
        return f"MemoryKeyStore(keys={len(self._keys)})"

    def __len__(self) -> int:
        return len(self._keys)

    def create(
        self,
        owner: str | None = None,
        *,
        name: str = "",
        allow_hints: bool = False,
        rate_limit: RateLimit | None = None,
        tags: Iterable[str] = (),
    ) -> tuple[str, ApiKeyInfo]:
        """Make a key; returns its plaintext (shown once, never stored) and info."""
        key_id, plaintext = new_key()
        info = ApiKeyInfo(
            key_id=key_id,
            owner=owner,
            name=name,
            allow_hints=allow_hints,
            rate_limit=rate_limit,
            tags=frozenset(tags),
        )
        self.add(info, hash_key(plaintext))
        return plaintext, info

    def add(self, info: ApiKeyInfo, digest: str) -> None:
        """Register a key made elsewhere by its info and :func:`hash_key` digest."""
        with self._lock:
            self._keys[info.key_id] = (digest, info)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; ``False`` when there is no such key."""
        with self._lock:
            entry = self._keys.get(key_id)
            if entry is None:
                return False
            self._keys[key_id] = (entry[0], replace(entry[1], revoked=True))
            return True

    def get(self, key_id: str) -> ApiKeyInfo | None:
        """The info of key ``key_id`` (revoked keys included)."""
        entry = self._keys.get(key_id)
        return entry[1] if entry is not None else None

    def list_keys(self) -> list[ApiKeyInfo]:
        """Every key's info, oldest first."""
        with self._lock:
            return [info for _, info in self._keys.values()]

    def authenticate(self, plaintext: str) -> ApiKeyInfo | None:
        """The info of a valid, unrevoked key; ``None`` otherwise."""
        key_id = key_id_of(plaintext)
        if key_id is None:
            return None  # the format is public: nothing to hide about a malformed key
        entry = self._keys.get(key_id)
        # An unknown id hashes and compares too, like a wrong secret does.
        digest = entry[0] if entry is not None else _DUMMY_DIGEST
        if not verify_key(plaintext, digest) or entry is None:
            return None
        info = entry[1]
        return None if info.revoked else info


class RateLimiter:
    """Token buckets, one per key: a request takes one token, tokens refill at
    ``limit.rate`` per second up to ``limit.burst``.

    :meth:`acquire` answers ``0.0`` when the request may go and otherwise the
    seconds until a token is available (for ``Retry-After``); a refused request
    takes nothing. Buckets of the least recently seen keys are forgotten beyond
    ``max_keys`` (a forgotten bucket starts full again). ``clock`` is monotonic
    seconds (injectable for tests).
    """

    def __init__(
        self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"RateLimiter(keys={len(self._buckets)})"

    def acquire(self, key: str, limit: RateLimit, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: ``0.0`` if taken, else the wait."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = [float(limit.burst), now]
                self._buckets[key] = bucket
                if len(self._buckets) > self._max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                elapsed = now - bucket[1]
                # ``now`` was read before the lock: a thread that waited for it holds an
                # older time than the bucket's, and must not move the bucket back (the
                # time in between would refill it twice).
                if elapsed > 0:
                    bucket[0] = min(float(limit.burst), bucket[0] + elapsed * limit.rate)
                    bucket[1] = now
            # (less a hair: a caller back after exactly the wait it was told has a
            # refill that float subtraction of clock readings can leave at 0.99999…)
            if bucket[0] >= cost - _SLACK:
                bucket[0] -= cost
                return 0.0
            return (cost - bucket[0]) / limit.rate
