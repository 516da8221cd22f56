from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from routing_middleware.providers.errors import (
    MAX_RETRY_AFTER_S,
    error_for_status,
    parse_json_body,
    parse_retry_after,
)
from routing_middleware.schema import (
    AuthenticationFailed,
    ContextWindowExceeded,
    InsufficientQuota,
    InvalidRequest,
    Overloaded,
    RateLimited,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)


def test_retry_after_ms_wins_over_seconds() -> None:
    assert parse_retry_after({"Retry-After-Ms": "1500", "retry-after": "9"}) == 1.5


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": header}, now=now.timestamp()) == 30.0


def test_retry_after_garbage_missing_negative_and_capped() -> None:
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-5"}) == 0.0
    assert parse_retry_after({"retry-after": "100000"}) == MAX_RETRY_AFTER_S


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "This model's maximum context length is 8192 tokens", ContextWindowExceeded),
        (400, "bad param", InvalidRequest),
        (401, "nope", AuthenticationFailed),
        (402, "insufficient balance", InsufficientQuota),
        (408, "slow", UpstreamTimeout),
        (429, "slow down", RateLimited),
        (500, "oops", UpstreamUnavailable),
        (503, "overloaded", Overloaded),
        (529, "overloaded", Overloaded),
        (504, "gateway timeout", UpstreamTimeout),
    ],
)
def test_status_mapping(status: int, message: str, kind: type) -> None:
    error = error_for_status(status, message, provider="p", retry_after=2.0)
    assert type(error) is kind
    assert error.provider == "p"
    assert error.retry_after == 2.0


def test_non_json_body_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError, match="not JSON"):
        parse_json_body(b"<html>bad gateway</html>", provider="p")
    assert parse_json_body(b'{"a": 1}') == {"a": 1}
