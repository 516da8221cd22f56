"""Pieces of the OpenAI chat-completions wire format shared by both directions.

Usage, finish reasons, messages and images convert here, once, so the upstream
dialect, its stream decoder and the caller side agree on every field.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from pydantic import BaseModel

from ..schema import (
    FinishReason,
    ImagePart,
    Message,
    TextPart,
    ToolCall,
    Usage,
)
from ._json import compact

__all__ = [
    "content_and_thinking",
    "data_url",
    "decode_message",
    "decode_usage",
    "encode_usage",
    "finish_reason",
    "image_part_from_url",
    "mistral_tool_call_id",
    "reasoning_of",
    "text_of",
    "to_int",
]

_FINISH: dict[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "model_length": FinishReason.LENGTH,  # Mistral: the context window, not max_tokens
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
    "sensitive": FinishReason.CONTENT_FILTER,  # Zhipu / Z.ai
    "error": FinishReason.ERROR,
    "insufficient_system_resource": FinishReason.ERROR,  # DeepSeek
}

_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.DOTALL)


def mistral_tool_call_id(foreign: str) -> str:
    """A 9-character alphanumeric id for ``foreign``, stable across calls.

    Mistral rejects other shapes (``call_…``, ``toolu_…``). Ids already in its
    shape pass through, so ids Mistral issued stay untouched.
    """
    if _MISTRAL_ID.fullmatch(foreign):
        return foreign
    number = int.from_bytes(hashlib.sha256(foreign.encode()).digest()[:8], "big")
    chars = []
    for _ in range(9):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def finish_reason(raw: object) -> tuple[FinishReason | None, str | None]:
    """Map a wire ``finish_reason`` to ours; unknown words become ``stop``, kept raw."""
    if raw is None or raw == "":
        return None, None
    text = str(raw)
    mapped = _FINISH.get(text)
    if mapped is None:
        return FinishReason.STOP, text
    return mapped, (None if mapped.value == text else text)


def to_int(value: object) -> int:
    """A token count from the wire: ``None``, floats and junk become sane ints."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and math.isfinite(value):  # (JSON allows Infinity, NaN)
        return max(int(value), 0)
    return 0


_M = TypeVar("_M", bound=BaseModel)
_NO_DETAILS: dict[str, Any] = {}


def _details(usage: dict[str, Any], key: str) -> dict[str, Any]:
    value = usage.get(key)
    return value if isinstance(value, dict) else _NO_DETAILS


def constructor(cls: type[_M]) -> Callable[[dict[str, Any]], _M]:
    """A builder of ``cls`` instances from a dict of *every* field's value, unvalidated:
    what ``cls.model_construct(**values)`` makes, in a third of the time.

    It sets the instance state as pydantic's ``model_construct`` does, checked here
    against ``model_construct`` once; should a pydantic version build differently,
    the builder is ``model_construct`` itself.
    """
    fields = frozenset(cls.model_fields)
    new, put = object.__new__, object.__setattr__

    def fast(values: dict[str, Any]) -> _M:
        made = new(cls)
        put(made, "__dict__", values)
        put(made, "__pydantic_fields_set__", set(fields))
        put(made, "__pydantic_extra__", None)
        put(made, "__pydantic_private__", None)
        return made

    def slow(values: dict[str, Any]) -> _M:
        return cls.model_construct(**values)

    sample = dict.fromkeys(fields)
    made, expected = fast(dict(sample)), slow(dict(sample))
    state = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
    if all(getattr(made, name, 0) == getattr(expected, name, 1) for name in state):
        return fast
    return slow


def _count(usage: dict[str, Any], key: str) -> int:
    """``to_int(usage.get(key))``, without a call for the usual plain count."""
    value = usage.get(key)
    return value if type(value) is int and value >= 0 else to_int(value)


def _cost(value: object) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        # str() first: Decimal(0.1) would carry the binary float's error into money
        cost = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return cost if cost.is_finite() and cost >= 0 else None


def decode_usage(usage: object) -> Usage | None:
    """An OpenAI-shaped ``usage`` object in our convention, or ``None`` if absent.

    Handles every compatible flavor: cached reads from ``prompt_tokens_details``
    (DeepSeek ``prompt_cache_hit_tokens``, Moonshot top-level ``cached_tokens``),
    cache writes, reasoning tokens, OpenRouter ``cost``, and providers whose
    ``completion_tokens`` leave thinking out (Gemini compat, xAI): when
    ``total_tokens`` exceeds prompt + completion, output is total - prompt and the
    gap counts as reasoning.
    """
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage, "prompt_tokens")
    completion = _count(usage, "completion_tokens")
    total = _count(usage, "total_tokens")
    prompt_details = _details(usage, "prompt_tokens_details")
    completion_details = _details(usage, "completion_tokens_details")

    if prompt_details.get("cached_tokens") is not None:
        cached = _count(prompt_details, "cached_tokens")
    elif "prompt_cache_hit_tokens" in usage:
        cached = _count(usage, "prompt_cache_hit_tokens")
    else:
        cached = _count(usage, "cached_tokens")
    if not prompt and "prompt_cache_hit_tokens" in usage:
        prompt = cached + _count(usage, "prompt_cache_miss_tokens")
    cache_write = _count(prompt_details, "cache_write_tokens")
    reasoning = _count(completion_details, "reasoning_tokens")

    output = completion
    if total > prompt + completion:
        output = total - prompt
        reasoning = max(reasoning, output - completion)

    # Clamp instead of failing: a provider's arithmetic slip must not lose the record.
    cached = min(cached, prompt)
    cache_write = min(cache_write, prompt - cached)
    reasoning = min(reasoning, output)
    cost = usage.get("cost")
    return _new_usage(
        {
            "input_tokens": prompt,
            "output_tokens": output,
            "cached_input_tokens": cached,
            "cache_write_tokens": cache_write,
            "cache_write_long_tokens": 0,
            "reasoning_tokens": reasoning,
            "estimated": False,
            "provider_cost": None if cost is None else _cost(cost),
        }
    )


_new_usage = constructor(Usage)


def encode_usage(usage: Usage) -> dict[str, Any]:
    """Our usage as the OpenAI ``usage`` object (reasoning stays inside completion)."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def data_url(part: ImagePart) -> str:
    """The URL to send for an image: its own URL, or a ``data:`` URL for inline bytes."""
    if part.url is not None:
        return part.url
    return f"data:{part.media_type};base64,{part.data}"


def image_part_from_url(url: str, detail: str | None) -> ImagePart:
    """An ImagePart from an ``image_url``; base64 data URLs become inline data."""
    match = _DATA_URL.fullmatch(url)
    if match is not None:
        return ImagePart.model_construct(
            type="image", url=None, data=match.group(2), media_type=match.group(1), detail=detail
        )
    return ImagePart.model_construct(
        type="image", url=url, data=None, media_type=None, detail=detail
    )


def _arguments(value: object) -> str:
    if isinstance(value, str):
        return value or "{}"
    if value is None:
        return "{}"
    # Some local servers (older Ollama) send arguments as an object.
    return compact(value)


def _decode_tool_calls(raw: object) -> list[ToolCall] | None:
    if not isinstance(raw, list) or not raw:
        return None
    calls: list[ToolCall] = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict):
            continue
        function = item.get("function")
        if not isinstance(function, dict):
            continue
        calls.append(
            ToolCall.model_construct(
                id=str(item.get("id") or f"call_{position}"),
                name=str(function.get("name") or ""),
                arguments=_arguments(function.get("arguments")),
            )
        )
    return calls or None


def content_and_thinking(content: object) -> tuple[str | None, str | None]:
    """Text and reasoning of a response ``content``: a string or a list of parts.

    Mistral's reasoning models answer with parts, thinking in a ``thinking`` part.
    """
    if content is None or isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        return str(content), None
    text: list[str] = []
    thinking: list[str] = []
    for part in content:
        if isinstance(part, str):
            text.append(part)
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind == "thinking":
                inner = part.get("thinking")
                if isinstance(inner, list):
                    thinking.extend(p.get("text", "") for p in inner if isinstance(p, dict))
                elif isinstance(inner, str):
                    thinking.append(inner)
            elif isinstance(part.get("text"), str):
                text.append(part["text"])
    return "".join(text), ("".join(thinking) or None)


def reasoning_of(raw: dict[str, Any]) -> str | None:
    """``reasoning_content`` (DeepSeek, Qwen, vLLM) or ``reasoning`` (newer vLLM, OpenRouter)."""
    value = raw.get("reasoning_content")
    if value is None:
        value = raw.get("reasoning")
    return value if isinstance(value, str) else None


def decode_message(raw: object) -> Message:
    """A response ``message`` (or a stream's accumulated one) as our Message."""
    if not isinstance(raw, dict):
        return Message.model_construct(role="assistant", content=None)
    text, thinking = content_and_thinking(raw.get("content"))
    reasoning = reasoning_of(raw) or thinking
    refusal = raw.get("refusal")
    return Message.model_construct(
        role="assistant",
        content=text,
        name=None,
        tool_calls=_decode_tool_calls(raw.get("tool_calls")),
        tool_call_id=None,
        reasoning=reasoning,
        refusal=refusal if isinstance(refusal, str) else None,
    )


def text_of(content: str | list[Any] | None) -> str | None:
    """Plain text of a message's content, for wire fields that take text only."""
    if content is None or isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, TextPart))
