"""Offline token estimates, for routing and budget checks before a call.

No tokenizer files ship with the package: the estimate is a character heuristic
that errs high (an upper bound is what budget reservations want). Provider-reported
usage replaces it after the call; when a provider reports none, the estimate is
recorded and marked ``estimated=True``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from ._native import native
from .schema import ChatRequest, ImagePart, Message, TextPart, Tool

__all__ = [
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD_TOKENS",
    "estimate_message_tokens",
    "estimate_request_tokens",
    "estimate_text_tokens",
    "request_tokens_and_images",
]

#: Framing per message (role, separators), after OpenAI's published heuristic.
MESSAGE_OVERHEAD_TOKENS = 4
#: A flat estimate per image; providers range from ~85 (low detail) to ~1,600.
IMAGE_TOKENS = 800
_REPLY_PRIMER_TOKENS = 3

_native_scan = native("_messagescan", "scan")
#: The one native pass over a request's messages (``_messagescan.c``): for messages of
#: plain-ASCII text (or none) and no tool calls, ``(text tokens, last user text,
#: system text, turns)``; else ``None``, and the Python paths below read them.
scan_messages: Callable[[list[Message]], tuple[int, str, str, int] | None] | None = (
    None if _native_scan is None else partial(_native_scan, Message)
)


def estimate_text_tokens(text: str) -> int:
    """Tokens in ``text``: about four ASCII characters per token, one per other character.

    Dense scripts (CJK) and symbols cost roughly a token per character in every
    current tokenizer, so non-ASCII characters count one each.
    """
    if text.isascii():  # O(1) in CPython: a string knows whether it is pure ASCII
        return (len(text) + 3) // 4
    ascii_chars = len(text.encode("ascii", "ignore"))
    other = len(text) - ascii_chars
    return (ascii_chars + 3) // 4 + other


def estimate_message_tokens(message: Message) -> int:
    tokens = MESSAGE_OVERHEAD_TOKENS
    content = message.content
    if isinstance(content, str):
        tokens += estimate_text_tokens(content)
    elif content is not None:
        for part in content:
            if isinstance(part, TextPart):
                tokens += estimate_text_tokens(part.text)
            elif isinstance(part, ImagePart):
                tokens += IMAGE_TOKENS
    for call in message.tool_calls or ():
        tokens += estimate_text_tokens(call.name) + estimate_text_tokens(call.arguments) + 3
    return tokens


# ``json.dumps`` with non-default separators builds a new encoder on every call; this
# one is built once (encoding keeps no state between calls). Its output is pure ASCII
# (``ensure_ascii``), so its token count is simply a quarter of its length.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def _native_compact_encoder() -> Callable[[Any, int], Sequence[str]] | None:
    """``_COMPACT_JSON``'s C encoder, made once. ``JSONEncoder.encode`` makes one
    (and the closures around it) on every call, which costs more than encoding a
    tool's schema does. It keeps no record of containers on the way down (a record
    kept between calls would be left dirty by an error), so a cycle ends in
    ``RecursionError``: :func:`_compact_json_length` then asks ``encode``, which
    names it. ``None`` where CPython's ``_json`` is missing or takes other arguments."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encoder: Callable[[Any, int], Sequence[str]] = make(
            None,  # markers: no cycle check
            _COMPACT_JSON.default,
            json.encoder.encode_basestring_ascii,
            None,  # indent
            ":",
            ",",
            False,  # sort_keys
            False,  # skipkeys
            True,  # allow_nan
        )
        sample = {"a": [1, 2.5, None, True, "\u00e9"]}
        if "".join(encoder(sample, 0)) != _COMPACT_JSON.encode(sample):
            return None
    except (TypeError, ValueError):
        return None
    return encoder


_NATIVE_COMPACT = _native_compact_encoder()


def _compact_json_length(value: Any) -> int:
    """The length of ``value`` as compact, ASCII-only JSON (``separators=(",", ":")``)."""
    if _NATIVE_COMPACT is not None:
        try:
            return len("".join(_NATIVE_COMPACT(value, 0)))
        except RecursionError:  # a cycle (or nesting past the limit): encode says which
            pass
    return len(_COMPACT_JSON.encode(value))


def estimate_request_tokens(request: ChatRequest) -> int:
    """Input tokens of ``request``: messages, framing and tool definitions."""
    return request_tokens_and_images(request)[0]


def request_tokens_and_images(request: ChatRequest) -> tuple[int, bool]:
    """:func:`estimate_request_tokens`, and whether a message holds an image, in one
    pass over the messages (the router needs both on every decision)."""
    messages = request.messages
    if scan_messages is not None:
        found = scan_messages(messages)
        if found is not None:  # (plain-text messages: none holds an image)
            return scanned_tokens(found[0], len(messages), request.tools), False
    return python_tokens_and_images(request)


def python_tokens_and_images(request: ChatRequest) -> tuple[int, bool]:
    """:func:`request_tokens_and_images` read in Python: what a caller whose native
    scan gave ``None`` asks (it would only give ``None`` again)."""
    tokens = _REPLY_PRIMER_TOKENS
    images = False
    for message in request.messages:
        content = message.content
        # The common message, plain ASCII text and no tool calls, counted inline.
        if isinstance(content, str) and content.isascii() and not message.tool_calls:
            tokens += MESSAGE_OVERHEAD_TOKENS + (len(content) + 3) // 4
        else:
            tokens += estimate_message_tokens(message)
            if not images and isinstance(content, list):
                images = any(isinstance(part, ImagePart) for part in content)
    tools = request.tools
    return (tokens + _tools_tokens(tools) if tools else tokens), images


def scanned_tokens(text_tokens: int, count: int, tools: list[Tool] | None) -> int:
    """:func:`estimate_request_tokens` of a request of ``count`` messages whose texts
    come to ``text_tokens`` (as the native message scan counts them) and ``tools``."""
    tokens = _REPLY_PRIMER_TOKENS + MESSAGE_OVERHEAD_TOKENS * count + text_tokens
    return tokens + _tools_tokens(tools) if tools else tokens


def _tools_tokens(tools: list[Tool]) -> int:
    tokens = 0
    for tool in tools:
        tokens += 8 + estimate_text_tokens(tool.name) + estimate_text_tokens(tool.description or "")
        tokens += (_compact_json_length(tool.parameters) + 3) // 4
    return tokens
