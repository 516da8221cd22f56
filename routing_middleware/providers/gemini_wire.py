"""What both directions of the Gemini dialect share: constants, usage, finish reasons, ids."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from ..schema import FinishReason, ToolCall, UpstreamProtocolError, Usage
from ._json import compact as _dumps

#: Key of ``ChatRequest.extra`` holding Gemini-only fields a Gemini caller sent.
EXTRA_KEY = "gemini"
#: Separates a tool-call id from the thought signature carried inside it.
THOUGHT_SIGNATURE_MARK = "__ts_"
_PROVIDER = "gemini"
_PROMPT_BLOCKED = "PROMPT_BLOCKED:"
_FINISH_IN: dict[str, FinishReason] = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    **dict.fromkeys(
        [
            "SAFETY",
            "RECITATION",
            "LANGUAGE",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
            "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT",
            "IMAGE_OTHER",
            "IMAGE_RECITATION",
            "NO_IMAGE",
            "OTHER",
        ],
        FinishReason.CONTENT_FILTER,
    ),
    # The model misfired rather than finished: "error", so fallbacks can tell.
    **dict.fromkeys(
        [
            "MALFORMED_FUNCTION_CALL",
            "UNEXPECTED_TOOL_CALL",
            "TOO_MANY_TOOL_CALLS",
            "MISSING_THOUGHT_SIGNATURE",
            "MALFORMED_RESPONSE",
            "FINISH_REASON_UNSPECIFIED",
        ],
        FinishReason.ERROR,
    ),
}
_FINISH_OUT = {
    FinishReason.STOP: "STOP",
    FinishReason.TOOL_CALLS: "STOP",
    FinishReason.LENGTH: "MAX_TOKENS",
    FinishReason.CONTENT_FILTER: "SAFETY",
    FinishReason.ERROR: "OTHER",
}


def _count(meta: Mapping[str, Any], key: str) -> int:
    value = meta.get(key)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _usage_from_meta(meta: Mapping[str, Any]) -> Usage:
    prompt = _count(meta, "promptTokenCount")
    thoughts = _count(meta, "thoughtsTokenCount")
    output = _count(meta, "candidatesTokenCount") + thoughts
    tool_use = _count(meta, "toolUsePromptTokenCount")
    # The tool-use prompt is billed as input on top of the prompt, unless the total
    # shows it already sits inside promptTokenCount: never count it twice.
    if tool_use and _count(meta, "totalTokenCount") != prompt + output:
        prompt += tool_use
    return Usage(
        input_tokens=prompt,
        # Inside promptTokenCount already: a subset, never an addition.
        cached_input_tokens=min(_count(meta, "cachedContentTokenCount"), prompt),
        output_tokens=output,
        reasoning_tokens=thoughts,
    )


def _usage_to_meta(usage: Usage) -> dict[str, int]:
    meta = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": usage.output_tokens - usage.reasoning_tokens,
        "totalTokenCount": usage.input_tokens + usage.output_tokens,
    }
    if usage.cached_input_tokens:
        meta["cachedContentTokenCount"] = usage.cached_input_tokens
    if usage.reasoning_tokens:
        meta["thoughtsTokenCount"] = usage.reasoning_tokens
    return meta


def _finish_in(native: str | None, has_calls: bool) -> FinishReason:
    if native is None:
        return FinishReason.TOOL_CALLS if has_calls else FinishReason.STOP
    reason = _FINISH_IN.get(native, FinishReason.STOP)
    if reason is FinishReason.STOP and has_calls:
        return FinishReason.TOOL_CALLS
    return reason


def _finish_out(reason: FinishReason, native: str | None) -> str:
    if native is not None and native in _FINISH_IN and _FINISH_IN[native] is reason:
        return native
    return _FINISH_OUT[reason]


def _pack_signature(call_id: str, signature: str | None) -> str:
    if not signature:
        return call_id
    safe = signature.replace("+", "-").replace("/", "_").rstrip("=")
    return f"{call_id}{THOUGHT_SIGNATURE_MARK}{safe}"


def _unpack_signature(call_id: str) -> tuple[str, str | None]:
    base, mark, safe = call_id.partition(THOUGHT_SIGNATURE_MARK)
    if not mark or not safe:
        return call_id, None
    signature = safe.replace("-", "+").replace("_", "/")
    return base, signature + "=" * (-len(signature) % 4)


def _derived_call_id(response_id: str, index: int, ordinal: int, name: str, args: str) -> str:
    seed = f"{response_id}\x1f{index}\x1f{ordinal}\x1f{name}\x1f{args}".encode()
    return "call_" + hashlib.sha256(seed).hexdigest()[:24]


def _tool_call_from_part(
    part: Mapping[str, Any], response_id: str, index: int, ordinal: int
) -> ToolCall:
    call = part["functionCall"]
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise UpstreamProtocolError("Gemini functionCall without a name", provider=_PROVIDER)
    args = _dumps(call.get("args") or {})
    name = call["name"]
    given = call.get("id")
    base = given if isinstance(given, str) and given else None
    base = base or _derived_call_id(response_id, index, ordinal, name, args)
    signature = part.get("thoughtSignature")
    call_id = _pack_signature(base, signature if isinstance(signature, str) else None)
    return ToolCall.model_construct(id=call_id, name=name, arguments=args)


def _parts_of(candidate: Mapping[str, Any]) -> list[Any]:
    content = candidate.get("content")
    if not isinstance(content, dict):
        return []
    parts = content.get("parts")
    return parts if isinstance(parts, list) else []


def _block_reason(payload: Mapping[str, Any]) -> str | None:
    feedback = payload.get("promptFeedback")
    if isinstance(feedback, dict):
        reason = feedback.get("blockReason")
        if isinstance(reason, str) and reason:
            return reason
    return None
