"""The gateway's per-key token buckets under concurrent use."""

from __future__ import annotations

from routing_middleware.auth import RateLimit, RateLimiter


class _RacingClock:
    """A clock that, when armed, lets another request take the bucket first: the
    armed read returns the time as it was, after a second request, a second later,
    went through. So a request waiting on the limiter's lock is modelled exactly."""

    def __init__(self) -> None:
        self.now = 0.0
        self.armed = False
        self.limiter: RateLimiter | None = None
        self.answers: list[float] = []

    def __call__(self) -> float:
        if not self.armed:
            return self.now
        self.armed = False
        read = self.now
        self.now += 1.0
        assert self.limiter is not None
        self.answers.append(self.limiter.acquire("key", LIMIT))
        return read


LIMIT = RateLimit(rate=1.0, burst=10)


def test_a_request_that_read_the_clock_before_waiting_never_refills_the_bucket_twice() -> None:
    clock = _RacingClock()
    limiter = clock.limiter = RateLimiter(clock=clock)
    for _ in range(LIMIT.burst):
        clock.answers.append(limiter.acquire("key", LIMIT))
    for _ in range(20):
        clock.armed = True
        clock.answers.append(limiter.acquire("key", LIMIT))
    granted = sum(1 for wait in clock.answers if wait == 0.0)
    # a full bucket, then one token a second for 20 seconds
    assert granted == LIMIT.burst + 20
