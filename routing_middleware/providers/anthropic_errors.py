"""Anthropic errors both ways: decode an upstream error, encode one for a caller."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..schema import (
    AuthenticationFailed,
    BudgetExceeded,
    ContextWindowExceeded,
    InsufficientQuota,
    InvalidRequest,
    LLMError,
    Overloaded,
    RateLimited,
    UnknownModel,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .anthropic_wire import ERROR_TYPE_STATUS, SPEND_LIMIT_CODES
from .errors import error_for_status, looks_like_context_overflow, parse_retry_after

__all__ = ["decode_error", "encode_error", "error_from_payload"]


def decode_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    provider: str | None = None,
    secret: str | None = None,
) -> LLMError:
    """A non-2xx answer as an :class:`LLMError`; garbage bodies map by status alone.

    ``secret`` (the API key) is blanked out of the body first, in case a proxy echoed it.
    """
    if secret:
        body = body.replace(secret.encode(), b"[redacted]")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = snippet or f"HTTP {status} from Anthropic"
        return error_for_status(
            status, message, provider=provider, retry_after=parse_retry_after(headers)
        )
    return error_from_payload(
        payload, status=status, retry_after=parse_retry_after(headers), provider=provider
    )


def error_from_payload(
    payload: Mapping[str, Any],
    *,
    status: int | None = None,
    retry_after: float | None = None,
    provider: str | None = None,
) -> LLMError:
    """Map ``{"type": "error", "error": {...}}`` (a body or a stream event) to the family."""
    error = payload.get("error")
    error = error if isinstance(error, Mapping) else {}
    kind = str(error.get("type") or "")
    message = str(error.get("message") or kind or f"HTTP {status} from Anthropic")
    details = error.get("details")
    code = details.get("error_code") if isinstance(details, Mapping) else None
    code = code if isinstance(code, str) else None
    if status is None:
        status = ERROR_TYPE_STATUS.get(kind, 500)
    kwargs: dict[str, Any] = {"provider": provider, "raw": dict(payload), "code": code}
    if code in SPEND_LIMIT_CODES or (code or "").endswith("spend_limit_reached"):
        return InsufficientQuota(message, status_code=status, **kwargs)
    if kind == "billing_error":
        return InsufficientQuota(message, status_code=status, **kwargs)
    if kind == "rate_limit_error":
        return RateLimited(message, status_code=status, retry_after=retry_after, **kwargs)
    if kind == "overloaded_error":
        return Overloaded(message, status_code=529, retry_after=retry_after, **kwargs)
    if kind in ("authentication_error", "permission_error"):
        return AuthenticationFailed(message, status_code=status, **kwargs)
    if kind == "invalid_request_error":
        lowered = message.lower()
        # "input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000"
        if looks_like_context_overflow(message, code) or "context limit" in lowered:
            return ContextWindowExceeded(message, **kwargs)
        # Out of credit has long come as a 400: "Your credit balance is too low to access…"
        if "credit balance" in lowered:
            return InsufficientQuota(message, status_code=status, **kwargs)
        return InvalidRequest(message, status_code=status, **kwargs)
    if kind == "not_found_error":
        if message.startswith("model:"):
            return UnknownModel(message[6:].strip(), provider=provider, raw=dict(payload))
        return InvalidRequest(message, status_code=status, **kwargs)
    if kind == "request_too_large":
        return InvalidRequest(message, status_code=status, **kwargs)
    if kind == "timeout_error":
        return UpstreamTimeout(message, status_code=status, **kwargs)
    if kind == "api_error":
        return UpstreamUnavailable(message, status_code=status, **kwargs)
    return error_for_status(status, message, retry_after=retry_after, **kwargs)


def _error_type(error: LLMError) -> tuple[int, str]:
    if isinstance(error, Overloaded):
        return 529, "overloaded_error"
    if isinstance(error, RateLimited):
        return 429, "rate_limit_error"
    if isinstance(error, InsufficientQuota | BudgetExceeded):
        if error.code in SPEND_LIMIT_CODES:
            return 429, "rate_limit_error"
        return 402, "billing_error"
    if isinstance(error, AuthenticationFailed):
        if error.status_code == 403:
            return 403, "permission_error"
        return 401, "authentication_error"
    if isinstance(error, UnknownModel):
        return 404, "not_found_error"
    if isinstance(error, InvalidRequest):
        if error.status_code == 413:
            return 413, "request_too_large"
        if error.status_code == 404:
            return 404, "not_found_error"
        return 400, "invalid_request_error"
    if isinstance(error, UpstreamTimeout):
        return 504, "timeout_error"
    if error.status_code < 500:
        return 400, "invalid_request_error"
    return error.status_code, "api_error"


def encode_error(error: LLMError) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and an Anthropic error body for ``error``."""
    status, kind = _error_type(error)
    headers = {"content-type": "application/json"}
    if error.retry_after is not None:
        headers["retry-after"] = str(math.ceil(error.retry_after))
        headers["retry-after-ms"] = str(round(error.retry_after * 1000))
    detail: dict[str, Any] = {"type": kind, "message": error.message}
    if not error.retryable:  # the SDK would otherwise retry a 429 or 5xx on its own
        headers["x-should-retry"] = "false"
    if error.code in SPEND_LIMIT_CODES:
        detail["details"] = {"error_code": error.code}
    body = {"type": "error", "error": detail}
    return status, headers, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
