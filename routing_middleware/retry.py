"""Retry policy: what to do after a failed attempt, and how long to wait first.

Pure decisions over the :class:`~routing_middleware.schema.LLMError` family:

- :func:`RetryPolicy.verdict` says whether to try the same deployment again, move
  down the fallback chain, look for a model with a larger context window, or stop;
- :meth:`RetryPolicy.delay` is exponential backoff with full jitter, replaced by the
  provider's ``Retry-After`` when it gave one (capped);
- per-attempt timeout and an overall deadline bound the whole call.

Time comes from a :class:`Clock` so tests can mock it (:class:`ManualClock`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from .schema import (
    AuthenticationFailed,
    ContentFiltered,
    ContextWindowExceeded,
    InsufficientQuota,
    LLMError,
    UnknownModel,
)

__all__ = [
    "Clock",
    "ManualClock",
    "RetryPolicy",
    "SystemClock",
    "Verdict",
    "counts_against_deployment",
]


class Verdict(Enum):
    """What a failed attempt leads to."""

    #: Try the same deployment again after a backoff.
    RETRY = "retry"
    #: Give up on this deployment and its provider's other deployments; try the next.
    NEXT_PROVIDER = "next_provider"
    #: Give up on this deployment; try the next one in the chain.
    NEXT = "next"
    #: The request does not fit: try the next model with a larger context window.
    LARGER_CONTEXT = "larger_context"
    #: Stop: the error is about the request itself and goes back to the caller.
    FAIL = "fail"


class Clock(Protocol):
    """Monotonic time and sleeping, injectable so tests control time."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.sleep`` and ``anyio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        import anyio

        await anyio.sleep(max(seconds, 0.0))


class ManualClock:
    """A clock that only moves when slept on or advanced; records every sleep."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def counts_against_deployment(error: LLMError) -> bool:
    """Whether ``error`` says something about the deployment's health (for breakers).

    Upstream failures, rate limits, exhausted quota and rejected credentials do;
    a bad request, a prompt too long or a content filter are about the request.
    """
    if error.retryable:
        return True
    return isinstance(error, InsufficientQuota | AuthenticationFailed | UnknownModel)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times, how long and when to give up.

    ``max_retries`` is per deployment (after its first attempt). Backoff before
    retry *n* (0-based) is uniform in ``[0, min(max_delay, base_delay * 2**n)]``
    (full jitter). A provider's ``Retry-After`` replaces it, capped at
    ``max_retry_after``; a longer hint moves on to the next deployment instead of
    waiting. ``attempt_timeout`` bounds one attempt (connect and each read),
    ``deadline`` the whole call including waits; no attempt starts after it.
    ``fallback_on_content_filter`` lets a provider's content filter send the call
    to the next deployment; ``fallback_on_auth_error`` does the same when a
    deployment's credentials are rejected (they are ours, not the caller's).
    """

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 30.0
    attempt_timeout: float | None = 60.0
    deadline: float | None = 300.0
    fallback_on_content_filter: bool = False
    fallback_on_auth_error: bool = True

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must not be negative")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")
        for name in ("attempt_timeout", "deadline"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")

    def verdict(self, error: LLMError, retries_done: int) -> Verdict:
        """What to do after ``error`` when ``retries_done`` retries were already made."""
        if isinstance(error, ContextWindowExceeded):
            return Verdict.LARGER_CONTEXT
        if isinstance(error, InsufficientQuota):
            return Verdict.NEXT_PROVIDER
        if isinstance(error, AuthenticationFailed):
            return Verdict.NEXT_PROVIDER if self.fallback_on_auth_error else Verdict.FAIL
        if isinstance(error, ContentFiltered):
            return Verdict.NEXT if self.fallback_on_content_filter else Verdict.FAIL
        if isinstance(error, UnknownModel):
            return Verdict.NEXT  # the deployment names a model its provider lacks
        if not error.retryable:
            return Verdict.FAIL
        if retries_done >= self.max_retries:
            return Verdict.NEXT
        if error.retry_after is not None and error.retry_after > self.max_retry_after:
            return Verdict.NEXT
        return Verdict.RETRY

    def delay(self, error: LLMError, retries_done: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retries_done`` (0-based)."""
        if error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * (2**retries_done))
        return (rng or random).uniform(0.0, ceiling)

    def timeout_for(self, remaining: float | None) -> float | None:
        """The timeout of the next attempt given ``remaining`` seconds of the deadline."""
        if remaining is None:
            return self.attempt_timeout
        if self.attempt_timeout is None:
            return remaining
        return min(self.attempt_timeout, remaining)
