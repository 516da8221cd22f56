"""Helpers every dialect uses to turn an upstream failure into the LLMError family."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from ..schema import (
    AuthenticationFailed,
    ContentFiltered,
    ContextWindowExceeded,
    InsufficientQuota,
    InvalidRequest,
    LLMError,
    Overloaded,
    RateLimited,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "MAX_RETRY_AFTER_S",
    "error_for_status",
    "looks_like_context_overflow",
    "parse_json_body",
    "parse_retry_after",
]

#: Longest wait a provider may ask for that is read as such; longer (or infinite)
#: hints are read as this. Far past what any retry policy waits (its own
#: ``max_retry_after`` decides), so a long hint moves the call on rather than being
#: shortened into a retry the provider asked not to get.
MAX_RETRY_AFTER_S = 86_400.0

_CONTEXT_PHRASES = (
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "input token count",
    "exceeds the maximum number of tokens",
    "reduce the length",
    "input is too long",
)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, then ``retry-after`` (seconds or HTTP date).

    Returns ``None`` when no usable hint is present; caps at :data:`MAX_RETRY_AFTER_S`.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    value: float | None = None
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000
        except ValueError:
            value = None
    raw = lowered.get("retry-after")
    if value is None and raw is not None:
        try:
            value = float(raw)
        except ValueError:
            try:
                when = parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                value = when.timestamp() - (time.time() if now is None else now)
    if value is None or value != value:  # NaN
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER_S)


def parse_json_body(body: bytes, provider: str | None = None) -> Any:
    """Decode a JSON body, turning garbage into :class:`UpstreamProtocolError`."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        snippet = body[:120].decode("utf-8", "replace")
        raise UpstreamProtocolError(
            f"provider returned a body that is not JSON: {snippet!r}", provider=provider
        ) from error


def looks_like_context_overflow(message: str, code: str | None = None) -> bool:
    if code and "context_length" in code:
        return True
    lowered = message.lower()
    return any(phrase in lowered for phrase in _CONTEXT_PHRASES)


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str | None = None,
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
    raw: Any = None,
) -> LLMError:
    """The generic mapping from an HTTP status to the error family.

    Dialects refine it first (quota vs rate limit, content filters, overload words)
    and fall back to this.
    """
    kwargs: dict[str, Any] = {
        "provider": provider,
        "code": code,
        "param": param,
        "retry_after": retry_after,
        "raw": raw,
    }
    if status in (400, 404, 413, 422) and looks_like_context_overflow(message, code):
        return ContextWindowExceeded(message, **kwargs)
    if status == 429:
        return RateLimited(message, **kwargs)
    if status in (401, 403):
        return AuthenticationFailed(message, status_code=status, **kwargs)
    if status == 402:
        return InsufficientQuota(message, status_code=402, **kwargs)
    if status in (408, 504):
        return UpstreamTimeout(message, status_code=status, **kwargs)
    if status in (503, 529):
        return Overloaded(message, status_code=status, **kwargs)
    if status == 409 or status >= 500:
        return UpstreamUnavailable(message, status_code=status, **kwargs)
    if code == "content_filter" or code == "content_policy_violation":
        return ContentFiltered(message, **kwargs)
    return InvalidRequest(message, status_code=status, **kwargs)
