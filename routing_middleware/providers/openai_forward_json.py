"""An OpenAI-compatible ``chat.completion`` body forwarded to an OpenAI caller as it came.

When the caller and the provider both speak chat completions, a plain answer can
reach the caller byte for byte instead of being decoded and re-encoded: the
dispatcher reads only what metering needs (the usage), with the same parse and the
same error mapping as decoding. "Plain" means the caller's encoder would tell it
nothing different: each choice an assistant message with string (or no) content,
no ``reasoning`` field, well-formed tool calls, an OpenAI finish reason, and usage
whose counts are the ones llmroute meters. Anything else (no usage to report,
content parts, finish reasons to map, counts to fix) is decoded and re-encoded, as
before. The caller sees the upstream's own id, model and extra fields
(``system_fingerprint``, ``logprobs``...), as a forwarded stream does.
"""

from __future__ import annotations

from typing import Any

from ..schema import Usage
from .openai_wire import decode_usage

__all__ = ["forwardable_usage"]

#: Finish reasons the caller's encoder would write back unchanged.
_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter"})


def _plain_tool_calls(calls: object) -> bool:
    if calls is None:
        return True
    if not isinstance(calls, list):
        return False
    for call in calls:
        if not isinstance(call, dict) or call.get("type") != "function":
            return False
        function = call.get("function")
        if not isinstance(function, dict):
            return False
        ident, name, arguments = call.get("id"), function.get("name"), function.get("arguments")
        if not (isinstance(ident, str) and ident and isinstance(name, str)):
            return False
        if not (isinstance(arguments, str) and arguments):
            return False
    return True


def _plain_choice(choice: object) -> bool:
    if not isinstance(choice, dict) or type(choice.get("index")) is not int:
        return False
    reason = choice.get("finish_reason")
    if not isinstance(reason, str) or reason not in _FINISH:
        return False
    message = choice.get("message")
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return False
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        return False
    if message.get("reasoning") is not None:
        return False
    reasoning = message.get("reasoning_content")
    if reasoning is not None and not (isinstance(reasoning, str) and reasoning):
        return False
    refusal = message.get("refusal")
    if refusal is not None and not isinstance(refusal, str):
        return False
    return _plain_tool_calls(message.get("tool_calls"))


def _details(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def forwardable_usage(payload: dict[str, Any]) -> Usage | None:
    """The decoded usage of ``payload`` (a parsed ``chat.completion`` that is not an
    error) when the caller can get its body as it came; ``None`` when it needs
    re-encoding (see the module docs)."""
    if payload.get("object") != "chat.completion" or payload.get("error") is not None:
        return None
    ident, created, model = payload.get("id"), payload.get("created"), payload.get("model")
    if not (isinstance(ident, str) and ident and isinstance(model, str)):
        return None
    if type(created) is not int or created <= 0:
        return None
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    for choice in choices:
        if not _plain_choice(choice):
            return None
    raw = payload.get("usage")
    usage = decode_usage(raw)
    if usage is None or not isinstance(raw, dict):
        return None
    # The counts the caller reads must be those metered (and re-encoding would write).
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if prompt != usage.input_tokens or completion != usage.output_tokens:
        return None
    if raw.get("total_tokens") != usage.input_tokens + usage.output_tokens:
        return None
    if type(prompt) is not int or type(completion) is not int:
        return None
    cached = _details(raw, "prompt_tokens_details").get("cached_tokens")
    if usage.cached_input_tokens and cached != usage.cached_input_tokens:
        return None
    reasoning = _details(raw, "completion_tokens_details").get("reasoning_tokens")
    if usage.reasoning_tokens and reasoning != usage.reasoning_tokens:
        return None
    return usage
