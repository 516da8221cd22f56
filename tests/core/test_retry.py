"""The retry policy: verdicts per error, backoff with full jitter, Retry-After, deadlines."""

from __future__ import annotations

import random

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing_middleware.providers.errors import error_for_status
from routing_middleware.retry import (
    ManualClock,
    RetryPolicy,
    Verdict,
    counts_against_deployment,
)
from routing_middleware.schema import (
    AuthenticationFailed,
    ContentFiltered,
    ContextWindowExceeded,
    InsufficientQuota,
    InvalidRequest,
    LLMError,
    Overloaded,
    RateLimited,
    UnknownModel,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

POLICY = RetryPolicy(max_retries=2, base_delay=0.5, max_delay=8.0, max_retry_after=30.0)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_transient_statuses_are_retried(status: int) -> None:
    error = error_for_status(status, "try again")
    assert POLICY.verdict(error, 0) is Verdict.RETRY


@pytest.mark.parametrize(
    "error",
    [
        UpstreamTimeout("slow"),
        UpstreamUnavailable("down"),
        UpstreamProtocolError("cut short"),
        Overloaded("busy"),
        RateLimited("slow down"),
    ],
)
def test_retryable_errors_retry_until_the_budget_is_spent(error: LLMError) -> None:
    assert POLICY.verdict(error, 0) is Verdict.RETRY
    assert POLICY.verdict(error, 1) is Verdict.RETRY
    assert POLICY.verdict(error, 2) is Verdict.NEXT


def test_no_retries_goes_straight_to_the_next_deployment() -> None:
    assert RetryPolicy(max_retries=0).verdict(Overloaded("busy"), 0) is Verdict.NEXT


def test_insufficient_quota_moves_to_another_provider_without_retry() -> None:
    assert POLICY.verdict(InsufficientQuota("no credit"), 0) is Verdict.NEXT_PROVIDER


def test_context_overflow_looks_for_a_larger_window() -> None:
    error = error_for_status(400, "This model's maximum context length is 8192 tokens")
    assert isinstance(error, ContextWindowExceeded)
    assert POLICY.verdict(error, 0) is Verdict.LARGER_CONTEXT


def test_invalid_request_fails_at_once() -> None:
    assert POLICY.verdict(InvalidRequest("bad field", param="x"), 0) is Verdict.FAIL


def test_unknown_model_at_a_deployment_tries_the_next() -> None:
    assert POLICY.verdict(UnknownModel("ghost-1"), 0) is Verdict.NEXT


def test_auth_errors_fall_back_unless_disabled() -> None:
    error = AuthenticationFailed("bad key")
    assert POLICY.verdict(error, 0) is Verdict.NEXT_PROVIDER
    assert RetryPolicy(fallback_on_auth_error=False).verdict(error, 0) is Verdict.FAIL


def test_content_filter_falls_back_only_when_configured() -> None:
    error = ContentFiltered("blocked")
    assert POLICY.verdict(error, 0) is Verdict.FAIL
    assert RetryPolicy(fallback_on_content_filter=True).verdict(error, 0) is Verdict.NEXT


def test_retry_after_is_honoured_exactly() -> None:
    error = RateLimited("slow down", retry_after=1.0)
    assert POLICY.delay(error, 0) == 1.0
    assert POLICY.delay(error, 5) == 1.0


def test_retry_after_beyond_the_cap_moves_on_instead_of_waiting() -> None:
    policy = RetryPolicy(max_retry_after=10.0)
    error = RateLimited("slow down", retry_after=60.0)
    assert policy.verdict(error, 0) is Verdict.NEXT
    assert policy.delay(error, 0) == 10.0  # capped if someone waits anyway


@given(retry=st.integers(min_value=0, max_value=20), seed=st.integers(0, 2**32))
def test_backoff_is_full_jitter_under_a_capped_exponential(retry: int, seed: int) -> None:
    delay = POLICY.delay(Overloaded("busy"), retry, random.Random(seed))
    assert 0.0 <= delay <= min(8.0, 0.5 * 2**retry)


def test_backoff_jitters_and_grows() -> None:
    rng = random.Random(7)
    first = [POLICY.delay(UpstreamUnavailable("x"), 0, rng) for _ in range(200)]
    later = [POLICY.delay(UpstreamUnavailable("x"), 4, rng) for _ in range(200)]
    assert len(set(first)) > 150  # jittered, not a constant
    assert max(first) <= 0.5
    assert max(later) > 0.5
    assert max(later) <= 8.0


def test_attempt_timeout_shrinks_to_the_remaining_deadline() -> None:
    policy = RetryPolicy(attempt_timeout=30.0, deadline=100.0)
    assert policy.timeout_for(None) == 30.0
    assert policy.timeout_for(50.0) == 30.0
    assert policy.timeout_for(4.0) == 4.0
    assert RetryPolicy(attempt_timeout=None).timeout_for(7.0) == 7.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"base_delay": -1.0},
        {"attempt_timeout": 0.0},
        {"deadline": -5.0},
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_which_errors_count_against_a_deployment() -> None:
    assert counts_against_deployment(Overloaded("busy"))
    assert counts_against_deployment(RateLimited("slow"))
    assert counts_against_deployment(InsufficientQuota("broke"))
    assert counts_against_deployment(AuthenticationFailed("bad key"))
    assert not counts_against_deployment(InvalidRequest("bad"))
    assert not counts_against_deployment(ContextWindowExceeded("long"))
    assert not counts_against_deployment(ContentFiltered("no"))


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(start=10.0)
    clock.sleep(1.5)
    anyio.run(clock.asleep, 2.0)
    clock.advance(0.5)
    assert clock.monotonic() == 14.0
    assert clock.sleeps == [1.5, 2.0]
