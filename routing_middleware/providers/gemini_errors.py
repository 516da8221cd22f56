"""Google RPC errors: decoded from Gemini answers, encoded for Gemini callers."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..schema import (
    AuthenticationFailed,
    ContextWindowExceeded,
    InvalidRequest,
    LLMError,
    Overloaded,
    RateLimited,
    UnknownModel,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .base import ProviderConfig
from .errors import (
    MAX_RETRY_AFTER_S,
    error_for_status,
    looks_like_context_overflow,
    parse_retry_after,
)

#: HTTP status → Google RPC status name, for answers to Gemini callers.
_RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def _retry_delay(details: Any) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"37s"``, ``"1.5s"``)."""
    if not isinstance(details, list):
        return None
    for detail in details:
        if not isinstance(detail, Mapping) or detail.get("@type") != _RETRY_INFO:
            continue
        delay = detail.get("retryDelay")
        seconds: float | None = None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = float(delay[:-1])
            except ValueError:
                seconds = None
        elif isinstance(delay, Mapping):
            try:
                seconds = float(delay.get("seconds") or 0) + float(delay.get("nanos") or 0) / 1e9
            except (TypeError, ValueError):
                seconds = None
        if seconds is not None and seconds == seconds:
            return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
    return None


def _error_from_payload(
    status: int, headers: Mapping[str, str], payload: Any, provider: str
) -> LLMError:
    """Map a Google RPC error payload (``{"error": {...}}``) to the LLMError family."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    err = payload.get("error") if isinstance(payload, Mapping) else None
    if not isinstance(err, Mapping):
        return error_for_status(status, f"Gemini answered HTTP {status}", provider=provider)
    message = str(err.get("message") or f"Gemini answered HTTP {status}")
    rpc = str(err.get("status") or "")
    if status < 400 and isinstance(err.get("code"), int):
        status = err["code"]  # an error inside a 200 stream carries its own code
    details = err.get("details")
    reasons = {d.get("reason") for d in details or () if isinstance(d, Mapping) and d.get("reason")}
    retry_after = _retry_delay(details)
    if retry_after is None:
        retry_after = parse_retry_after(headers)
    kwargs: dict[str, Any] = {"provider": provider, "retry_after": retry_after, "raw": dict(err)}
    if "API_KEY_INVALID" in reasons or rpc == "UNAUTHENTICATED" or status == 401:
        return AuthenticationFailed(message, status_code=401, **kwargs)
    if rpc in ("PERMISSION_DENIED", "FAILED_PRECONDITION") or status == 403:
        # FAILED_PRECONDITION: the account cannot use the API here (region, billing).
        return AuthenticationFailed(message, status_code=403, code=rpc.lower() or None, **kwargs)
    if rpc == "RESOURCE_EXHAUSTED" or status == 429:
        return RateLimited(message, **kwargs)
    if status in (400, 404, 413, 500) and looks_like_context_overflow(message):
        return ContextWindowExceeded(message, **kwargs)
    if rpc == "NOT_FOUND" or status == 404:
        found = re.search(r"models/([\w.\-]+)", message)
        if found:
            return UnknownModel(found.group(1), **kwargs)
        return InvalidRequest(message, status_code=404, code="not_found", **kwargs)
    if rpc == "UNAVAILABLE" or status == 503:
        return Overloaded(message, status_code=503, **kwargs)
    if rpc == "DEADLINE_EXCEEDED" or status == 504:
        return UpstreamTimeout(message, status_code=504, **kwargs)
    if rpc == "INTERNAL" or status == 500:
        return UpstreamUnavailable(message, status_code=500, **kwargs)
    if rpc == "INVALID_ARGUMENT":
        return InvalidRequest(message, status_code=400, code="invalid_argument", **kwargs)
    return error_for_status(status, message, **kwargs)


def _rpc_error_payload(error: LLMError) -> tuple[int, dict[str, Any]]:
    status = 503 if error.status_code == 529 else error.status_code
    rpc = _RPC_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    details: list[dict[str, Any]] = [
        {"@type": _ERROR_INFO, "reason": error.code.upper(), "domain": "llmroute"}
    ]
    if error.retry_after is not None:
        details.append({"@type": _RETRY_INFO, "retryDelay": f"{round(error.retry_after, 3):g}s"})
    body = {"error": {"code": status, "message": error.message, "status": rpc, "details": details}}
    return status, body


def decode_error(
    status: int, headers: Mapping[str, str], body: bytes, provider: ProviderConfig
) -> LLMError:
    """A Google RPC error body as LLMError; ``retry_after`` from ``RetryInfo`` first."""
    if provider.api_key:
        body = body.replace(provider.api_key.encode(), b"[redacted]")
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        snippet = body[:200].decode("utf-8", "replace")
        return error_for_status(
            status,
            f"Gemini answered HTTP {status}: {snippet}",
            provider=provider.name,
            retry_after=parse_retry_after(headers),
        )
    return _error_from_payload(status, headers, payload, provider.name)
