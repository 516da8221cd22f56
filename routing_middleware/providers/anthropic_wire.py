"""Facts of the Anthropic Messages wire format shared by both directions.

Stop reasons, the usage convention (Anthropic counts cache reads and writes
*outside* ``input_tokens``; we count them inside), tool-use ids and error types.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from ..schema import FinishReason, Usage

__all__ = [
    "ERROR_TYPE_STATUS",
    "NEWEST_VERSION",
    "PINNED_VERSION",
    "SPEND_LIMIT_CODES",
    "STOP_REASONS",
    "anthropic_stop_reason",
    "anthropic_usage",
    "as_int",
    "tool_use_id",
    "usage_from_anthropic",
]

#: The newest ``anthropic-version``; it rejects temperature/top_p/top_k with a 400.
NEWEST_VERSION = "2026-10-21"
#: The classic version, which still accepts the sampling parameters.
PINNED_VERSION = "2023-06-01"

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "pause_turn": FinishReason.LENGTH,
    "compaction": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}

_STOP_REASON_FOR: dict[FinishReason, str] = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
    FinishReason.ERROR: "end_turn",
}

#: The HTTP status Anthropic pairs with each ``error.type``.
ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

#: ``error.details.error_code`` values of a 429/402 that mean money, not pace: never retried.
SPEND_LIMIT_CODES = frozenset(
    {
        "enforced_spend_limit_reached",
        "contract_spend_limit_reached",
        "linked_organization_spend_limit_reached",
        "linked_organization_billing_unavailable",
    }
)

_TOOL_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


def as_int(value: Any) -> int:
    """A token count from the wire; anything that is not a non-negative int counts 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def tool_use_id(raw: str | None, fallback: str = "") -> str:
    """``raw`` if Anthropic accepts it as a tool-use id, else a stable ``toolu_`` id.

    The same ``raw`` always gives the same id, so a tool call and the tool result
    that answers it stay paired across turns; without ``raw`` the id is made from
    ``fallback``.
    """
    if raw and _TOOL_ID.fullmatch(raw):
        return raw
    seed = raw if raw else f"\0{fallback}"
    return "toolu_" + hashlib.sha256(seed.encode()).hexdigest()[:24]


def usage_from_anthropic(raw: Mapping[str, Any]) -> Usage:
    """Anthropic's ``usage`` object in our convention (cache reads and writes added in)."""
    uncached = as_int(raw.get("input_tokens"))
    cache_read = as_int(raw.get("cache_read_input_tokens"))
    cache_write = as_int(raw.get("cache_creation_input_tokens"))
    long_write = 0
    breakdown = raw.get("cache_creation")
    if isinstance(breakdown, Mapping):
        long_write = as_int(breakdown.get("ephemeral_1h_input_tokens"))
        if not cache_write:
            cache_write = long_write + as_int(breakdown.get("ephemeral_5m_input_tokens"))
    output = as_int(raw.get("output_tokens"))
    reasoning = 0
    details = raw.get("output_tokens_details")
    if isinstance(details, Mapping):
        reasoning = as_int(details.get("thinking_tokens"))
    # Every field is clamped into the subset rules, so the unvalidated build is safe.
    return Usage.model_construct(
        input_tokens=uncached + cache_read + cache_write,
        output_tokens=output,
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_long_tokens=min(long_write, cache_write),
        reasoning_tokens=min(reasoning, output),
    )


def anthropic_usage(usage: Usage | None) -> dict[str, Any]:
    """Our usage back in Anthropic's convention (cache reads and writes taken out)."""
    if usage is None:
        return {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        }
    body: dict[str, Any] = {
        "input_tokens": usage.uncached_input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_tokens - usage.cache_write_long_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_long_tokens,
        },
    }
    if usage.reasoning_tokens:
        body["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return body


def anthropic_stop_reason(
    finish: FinishReason | None, native: str | None, has_tool_calls: bool = False
) -> str:
    """The ``stop_reason`` to report: the provider's own word when it is Anthropic's."""
    if native in STOP_REASONS and (finish is None or STOP_REASONS[native] == finish):
        return native
    if finish is None or (finish == FinishReason.STOP and has_tool_calls):
        return "tool_use" if has_tool_calls else "end_turn"
    return _STOP_REASON_FOR[finish]
