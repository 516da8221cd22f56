"""What the fake model "generates" for one request: text, tool calls and token counts.

Request bodies are read here with small, independent extractors (one per wire
dialect); nothing from the real dialect adapters is used, so tests that pit the
adapters against the fake are not circular.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ._fake_config import FakeModel
from .schema import ChatRequest, ImagePart, Message, Role, TextPart, Tool, Usage
from .tokens import estimate_request_tokens, estimate_text_tokens

__all__ = ["Generation", "Prompt", "billed_cost", "generate", "prompt_of"]

#: Filler prose for answers of a given length: one token per word.
_FILLER_TEXT = (
    "Here is a short answer from the offline test model. It has no knowledge and makes "
    "no claims; it only produces text of a known length so that latency, streaming, "
    "usage and cost can be checked end to end. Routing, retries and budgets behave as "
    "they would with a real provider, and every call is written to the ledger."
)
_FILLER = _FILLER_TEXT.split(" ")
_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "developer",
    "user": "user",
    "assistant": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
}
_PIECE = re.compile(r"\s*\S+\s*|\s+")


@dataclass(slots=True)
class Prompt:
    """The parts of a request that matter for counting and echoing."""

    turns: list[tuple[str, str, int]] = field(default_factory=list)  # role, text, images
    tools: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)

    def add(self, role: str, text: str, images: int = 0) -> None:
        self.turns.append((role, text, images))

    @property
    def last_user_text(self) -> str:
        for role, text, _ in reversed(self.turns):
            if role == "user" and text:
                return text
        return ""

    def input_tokens(self) -> int:
        """Estimated prompt tokens, with the package's offline heuristic."""
        if not self.turns:
            return 0
        messages = []
        for role, text, images in self.turns:
            parts: list[TextPart | ImagePart] = [TextPart(text=text)]
            parts += [ImagePart(data="", media_type="image/png")] * images
            messages.append(Message(role=_ROLES.get(role, "user"), content=parts))
        tools = [Tool(name=n, description=d or None, parameters=p) for n, d, p in self.tools]
        return estimate_request_tokens(ChatRequest(model="x", messages=messages, tools=tools))


def _text_of(value: Any, text_keys: Iterable[str] = ("text",)) -> tuple[str, int]:
    """Text and image count of a content value (a string, a part list, or a dict)."""
    if value is None:
        return "", 0
    if isinstance(value, str):
        return value, 0
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return str(value), 0
    texts: list[str] = []
    images = 0
    for part in value:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            continue
        kind = str(part.get("type", ""))
        if "image" in kind or "inlineData" in part or "inline_data" in part:
            images += 1
            continue
        for key in text_keys:
            if isinstance(part.get(key), str):
                texts.append(part[key])
                break
        else:
            for key in ("content", "output"):
                if key in part:
                    sub, n = _text_of(part[key], text_keys)
                    texts.append(sub)
                    images += n
    return "".join(texts), images


def _dump(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def prompt_of(endpoint: str, body: dict[str, Any]) -> Prompt:
    """Read the prompt of a request body for ``endpoint``."""
    prompt = Prompt()
    if endpoint == "chat.completions":
        for msg in body.get("messages") or []:
            text, images = _text_of(msg.get("content"))
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") or {}
                text += str(fn.get("name", "")) + _dump(fn.get("arguments", ""))
            prompt.add(str(msg.get("role", "user")), text, images)
        for tool in body.get("tools") or []:
            fn = tool.get("function") or {}
            prompt.tools.append(
                (
                    str(fn.get("name", "")),
                    str(fn.get("description") or ""),
                    fn.get("parameters") or {},
                )
            )
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        stop = body.get("stop")
    elif endpoint == "responses":
        if body.get("instructions"):
            prompt.add("system", str(body["instructions"]))
        items = body.get("input")
        if isinstance(items, str):
            prompt.add("user", items)
        for item in items if isinstance(items, list) else []:
            if item.get("type") == "function_call":
                prompt.add("assistant", str(item.get("name", "")) + _dump(item.get("arguments")))
            elif item.get("type") == "function_call_output":
                prompt.add("tool", _dump(item.get("output", "")))
            else:
                text, images = _text_of(item.get("content"))
                prompt.add(str(item.get("role", "user")), text, images)
        for tool in body.get("tools") or []:
            prompt.tools.append(
                (
                    str(tool.get("name", tool.get("type", ""))),
                    str(tool.get("description") or ""),
                    tool.get("parameters") or {},
                )
            )
        limit = body.get("max_output_tokens")
        stop = None
    elif endpoint in ("messages", "count_tokens"):
        system = body.get("system")
        if system:
            prompt.add("system", _text_of(system)[0])
        for msg in body.get("messages") or []:
            content = msg.get("content")
            text, images = _text_of(content)
            for block in content if isinstance(content, list) else []:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    text += str(block.get("name", "")) + _dump(block.get("input", {}))
            prompt.add(str(msg.get("role", "user")), text, images)
        for tool in body.get("tools") or []:
            prompt.tools.append(
                (
                    str(tool.get("name", "")),
                    str(tool.get("description") or ""),
                    tool.get("input_schema") or {},
                )
            )
        limit = body.get("max_tokens")
        stop = body.get("stop_sequences")
    else:  # gemini generateContent
        system = body.get("systemInstruction") or body.get("system_instruction")
        if system:
            prompt.add("system", _text_of(system.get("parts"))[0])
        for content in body.get("contents") or []:
            text, images = _text_of(content.get("parts"))
            for part in content.get("parts") or []:
                for key in ("functionCall", "functionResponse"):
                    if key in part:
                        text += _dump(part[key])
            prompt.add(str(content.get("role", "user")), text, images)
        for tool in body.get("tools") or []:
            for decl in tool.get("functionDeclarations") or tool.get("function_declarations") or []:
                prompt.tools.append(
                    (
                        str(decl.get("name", "")),
                        str(decl.get("description") or ""),
                        decl.get("parameters") or {},
                    )
                )
        config = body.get("generationConfig") or body.get("generation_config") or {}
        limit = config.get("maxOutputTokens")
        stop = config.get("stopSequences")
    prompt.max_tokens = limit if isinstance(limit, int) and limit >= 0 else None
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    prompt.stop = [s for s in stops if isinstance(s, str) and s]
    return prompt


@dataclass(slots=True)
class Generation:
    """The model's answer to one request, before any dialect renders it.

    ``output_tokens`` counts visible output (text and tool calls) only;
    ``reasoning_tokens`` come on top. ``input_tokens`` counts every prompt token,
    cache reads and writes included (each dialect re-splits it).
    """

    model: str
    pieces: list[str]
    reasoning_pieces: list[str]
    tool_calls: list[tuple[str, str]]  # name, arguments JSON
    finish: str  # stop | stop_sequence | length | tool_calls | content_filter | refusal
    refusal: str | None
    input_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    cache_write_long_tokens: int
    output_tokens: int
    reasoning_tokens: int
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_pieces)

    @property
    def uncached_input_tokens(self) -> int:
        return self.input_tokens - self.cached_tokens - self.cache_write_tokens

    @property
    def total_output_tokens(self) -> int:
        return self.output_tokens + self.reasoning_tokens


def _pieces(text: str) -> list[str]:
    return _PIECE.findall(text)


def generate(model: FakeModel, prompt: Prompt) -> Generation:
    """Decide the answer of ``model`` to ``prompt``: deterministic, no randomness."""
    if model.content is not None:
        text = model.content
    elif model.echo:
        text = prompt.last_user_text
    elif model.output_tokens is not None:
        text = " ".join(_FILLER[i % len(_FILLER)] for i in range(model.output_tokens))
    else:
        text = f"This is a deterministic reply from {model.name}."
    calls = [(c.name, c.arguments_json) for c in model.tool_calls] if prompt.tools else []
    if calls and model.content is None:
        text = ""  # a model calling tools says nothing unless told to
    finish: str = "tool_calls" if calls else model.finish
    refusal = model.refusal_text if finish == "refusal" else None
    if refusal is not None:
        text = ""
    matched: str | None = None
    if prompt.stop and text and refusal is None:
        hits = [(text.find(s), s) for s in prompt.stop if s in text]
        if hits:
            index, matched = min(hits)
            text = text[:index]
            if not calls:
                finish = "stop_sequence"
    visible = None if matched else model.output_tokens
    if visible is None:
        visible = estimate_text_tokens(text or (refusal or ""))
        visible += sum(estimate_text_tokens(n) + estimate_text_tokens(a) for n, a in calls)
    pieces = _pieces(text)
    reasoning_pieces = _pieces(model.reasoning or "")
    reasoning_tokens = model.reasoning_tokens
    if model.reasoning and not reasoning_tokens:
        reasoning_tokens = estimate_text_tokens(model.reasoning)

    limit = prompt.max_tokens
    if limit is not None and visible + reasoning_tokens > limit:
        finish = "length"
        refusal = None
        calls = []
        kept_reasoning = min(reasoning_tokens, limit)
        kept_visible = limit - kept_reasoning
        if visible:
            pieces = (
                pieces[: math.ceil(len(pieces) * kept_visible / visible)] if kept_visible else []
            )
        if reasoning_tokens:
            reasoning_pieces = reasoning_pieces[
                : math.ceil(len(reasoning_pieces) * kept_reasoning / reasoning_tokens)
            ]
        visible, reasoning_tokens = kept_visible, kept_reasoning

    writes = model.cache_write_tokens
    estimated = model.input_tokens if model.input_tokens is not None else prompt.input_tokens()
    input_tokens = max(estimated, model.cached_tokens + writes)
    return Generation(
        model=model.name,
        pieces=pieces,
        reasoning_pieces=reasoning_pieces,
        tool_calls=calls,
        finish=finish,
        refusal=refusal,
        input_tokens=input_tokens,
        cached_tokens=model.cached_tokens,
        cache_write_tokens=writes,
        cache_write_long_tokens=model.cache_write_long_tokens,
        output_tokens=visible,
        reasoning_tokens=reasoning_tokens,
        stop_sequence=matched if finish == "stop_sequence" else None,
    )


_MILLION = Decimal(1_000_000)


def billed_cost(usage: Usage, model: FakeModel) -> Decimal | None:
    """What the provider charges for ``usage`` at ``model.price`` (None without a price).

    Long-context bands apply to the whole request by its input size; off-peak
    windows are not simulated.
    """
    price = model.price
    if price is None:
        return None
    rate_in, rate_out = price.input, price.output
    rate_cached, rate_write = price.cached_input, price.cache_write
    for band in sorted(price.bands, key=lambda b: b.above_tokens):
        if usage.input_tokens > band.above_tokens:
            rate_in, rate_out = band.input, band.output
            rate_cached = band.cached_input if band.cached_input is not None else rate_cached
            rate_write = band.cache_write if band.cache_write is not None else rate_write
    rate_cached = rate_in if rate_cached is None else rate_cached
    rate_write = rate_in if rate_write is None else rate_write
    rate_long = rate_write if price.cache_write_long is None else price.cache_write_long
    rate_reasoning = rate_out if price.reasoning is None else price.reasoning
    short_writes = usage.cache_write_tokens - usage.cache_write_long_tokens
    total = (
        usage.uncached_input_tokens * rate_in
        + usage.cached_input_tokens * rate_cached
        + short_writes * rate_write
        + usage.cache_write_long_tokens * rate_long
        + (usage.output_tokens - usage.reasoning_tokens) * rate_out
        + usage.reasoning_tokens * rate_reasoning
    )
    return total / _MILLION
