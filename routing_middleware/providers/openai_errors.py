"""Upstream errors of OpenAI-compatible providers mapped to the LLMError family.

Every compatible provider wraps its errors a little differently: OpenAI's
``{"error": {message, type, param, code}}``, Mistral's flat ``{"object": "error",
message, type, code}`` or FastAPI ``detail``, OpenRouter's numeric ``code`` with
``metadata``. An unparseable body still yields the right class from the status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..schema import (
    ContentFiltered,
    InsufficientQuota,
    LLMError,
    RateLimited,
    UpstreamUnavailable,
)
from .errors import error_for_status, parse_retry_after

__all__ = ["apply_should_retry", "decode_openai_error", "error_from_stream_payload"]

_QUOTA_WORDS = frozenset(
    {
        "insufficient_quota",
        "arrearage",  # DashScope
        "billing_hard_limit_reached",
        "insufficient_balance",
        "exceeded_current_quota_error",  # Moonshot, out of balance
        "1113",  # Z.ai / Zhipu, out of balance
    }
)
_FILTER_WORDS = frozenset({"content_filter", "content_policy_violation", "data_inspection_failed"})


def _scrub(text: str, secret: str | None) -> str:
    if secret and secret in text:
        return text.replace(secret, "***")
    return text


def _fields(payload: Any, fallback: str) -> tuple[str, str | None, str | None, str | None]:
    """message, code, type and param from any of the compatible error shapes."""
    error: Any = payload
    if isinstance(payload, dict):
        inner = payload.get("error")
        if isinstance(inner, dict):
            error = inner
        elif isinstance(inner, str):
            error = {"message": inner, "code": payload.get("code"), "type": payload.get("type")}
    if not isinstance(error, dict):
        return fallback, None, None, None
    message = error.get("message")
    if not isinstance(message, str) or not message:
        detail = error.get("detail")
        if isinstance(detail, str):
            message = detail
        elif isinstance(detail, list) and detail:  # FastAPI validation errors
            message = json.dumps(detail, ensure_ascii=False)[:500]
        else:
            message = fallback
    code = error.get("code")
    kind = error.get("type")
    param = error.get("param")
    return (
        message,
        None if code is None else str(code),
        kind if isinstance(kind, str) else None,
        param if isinstance(param, str) else None,
    )


def apply_should_retry(error: LLMError, headers: Mapping[str, str]) -> LLMError:
    """Honour ``x-should-retry`` by shadowing the class-level ``retryable`` on ``error``.

    ``retryable`` is a class default; a provider saying ``false`` (or ``true``) sets an
    instance attribute of the same name, which every reader of ``error.retryable``
    then sees.
    """
    value = None
    for key, item in headers.items():
        if key.lower() == "x-should-retry":
            value = item.strip().lower()
            break
    if value == "false":
        error.retryable = False
    elif value == "true":
        error.retryable = True
    return error


def decode_openai_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    provider: str | None,
    api_key: str | None = None,
) -> LLMError:
    """Map a non-2xx OpenAI-compatible answer to an LLMError (never raises)."""
    text = _scrub(body.decode("utf-8", "replace"), api_key)
    try:
        payload: Any = json.loads(text) if text.strip() else None
    except ValueError:
        payload = None
    fallback = text.strip()[:300] or f"HTTP {status} from {provider or 'provider'}"
    message, code, kind, param = _fields(payload, fallback)
    retry_after = parse_retry_after(headers)
    kwargs: dict[str, Any] = {
        "provider": provider,
        "code": code,
        "param": param,
        "retry_after": retry_after,
        "raw": payload,
    }
    words = {w.lower() for w in (code, kind) if w}
    error: LLMError
    if words & _QUOTA_WORDS:
        error = InsufficientQuota(message, status_code=status, **kwargs)
    elif status == 429:
        error = RateLimited(message, **kwargs)
    elif words & _FILTER_WORDS and status < 500:
        error = ContentFiltered(message, status_code=status, **kwargs)
    elif status == 403 and _moderated(payload):
        error = ContentFiltered(message, status_code=403, **kwargs)
    else:
        error = error_for_status(
            status,
            message,
            provider=provider,
            code=code,
            param=param,
            retry_after=retry_after,
            raw=payload,
        )
    return apply_should_retry(error, headers)


def _moderated(payload: Any) -> bool:
    """OpenRouter's 403 for flagged input carries ``metadata.reasons``."""
    if not isinstance(payload, dict):
        return False
    error = payload.get("error")
    metadata = error.get("metadata") if isinstance(error, dict) else None
    return isinstance(metadata, dict) and bool(metadata.get("reasons"))


def error_from_stream_payload(
    payload: dict[str, Any], provider: str | None, api_key: str | None = None
) -> LLMError:
    """An error reported inside a 200 stream (OpenRouter mid-stream failure, vLLM)."""
    error = payload.get("error")
    status = 0
    if isinstance(error, dict):
        raw_code = error.get("code")
        if isinstance(raw_code, int) and 400 <= raw_code < 600:
            status = raw_code
    text = json.dumps(payload)
    if status:
        return decode_openai_error(status, {}, text.encode(), provider, api_key)
    if api_key and api_key in text:
        payload = json.loads(_scrub(text, api_key))
    message, code, _kind, param = _fields(payload, "the provider reported an error mid-stream")
    return UpstreamUnavailable(
        message, provider=provider, code=code, param=param, status_code=502, raw=payload
    )
