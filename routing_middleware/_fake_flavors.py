"""The OpenAI-compatible providers the fake imitates, and what each one reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._fake_gen import Generation
from ._fake_wire import Ctx
from .schema import Usage

__all__ = ["FLAVORS", "Flavor", "billed", "fragments", "request_ids", "tool_call_id"]


@dataclass(frozen=True, slots=True)
class Flavor:
    """What one OpenAI-compatible provider reports and how its streams look."""

    name: str
    cached: bool = False
    cache_write: bool = False
    reasoning_tokens: bool = False
    reasoning_field: str | None = None
    stream_usage: str = "opt_in"  # opt_in | final_chunk | extra_chunk
    comments: tuple[str, ...] = ()
    azure: bool = False
    deepseek: bool = False
    groq: bool = False
    cost: bool = False
    errors: str = "openai"  # openai | mistral | openrouter
    #: Gemini's OpenAI endpoint leaves thoughts out of completion_tokens (not total_tokens).
    completion_excludes_reasoning: bool = False


_OPENAI_LIKE: dict[str, Any] = {"cached": True, "cache_write": True, "reasoning_tokens": True}
FLAVORS: dict[str, Flavor] = {
    f.name: f
    for f in (
        Flavor("openai", **_OPENAI_LIKE),
        Flavor("azure", azure=True, **_OPENAI_LIKE),
        Flavor(
            "deepseek",
            cached=True,
            reasoning_tokens=True,
            reasoning_field="reasoning_content",
            comments=("keep-alive", "keep-alive"),
            deepseek=True,
        ),
        Flavor("mistral", stream_usage="final_chunk", errors="mistral"),
        Flavor(
            "openrouter",
            reasoning_field="reasoning",
            stream_usage="extra_chunk",
            comments=("OPENROUTER PROCESSING", "OPENROUTER PROCESSING"),
            cost=True,
            errors="openrouter",
            **_OPENAI_LIKE,
        ),
        Flavor("groq", cached=True, reasoning_tokens=True, groq=True),
        Flavor("qwen", cached=True, reasoning_field="reasoning_content"),
        Flavor("xai", cached=True, reasoning_tokens=True, reasoning_field="reasoning_content"),
        Flavor("gemini", completion_excludes_reasoning=True),
        Flavor("together"),
        Flavor("fireworks"),
        Flavor("cerebras"),
        Flavor("vllm"),
        Flavor("ollama"),
    )
}


def billed(endpoint: str, flavor: Flavor, gen: Generation) -> Usage:
    """The usage this provider reports for ``gen``, in the normalized convention."""
    responses = endpoint == "responses"
    writes = gen.cache_write_tokens if flavor.cache_write else 0
    return Usage(
        input_tokens=gen.input_tokens,
        output_tokens=gen.total_output_tokens,
        cached_input_tokens=gen.cached_tokens if flavor.cached else 0,
        cache_write_tokens=writes,
        cache_write_long_tokens=gen.cache_write_long_tokens if writes and responses else 0,
        reasoning_tokens=gen.reasoning_tokens if flavor.reasoning_tokens else 0,
    )


def tool_call_id(ctx: Ctx, index: int) -> str:
    """The id of the ``index``-th tool call of a response (shared by chat and Responses)."""
    return f"call_{ctx.response_id[-8:]}{index:02d}"


def fragments(text: str, size: int = 8) -> list[str]:
    """``text`` in pieces of ``size`` characters, as streamed arguments arrive."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def request_ids(ctx: Ctx) -> list[tuple[str, str]]:
    return [("x-request-id", f"req_{ctx.response_id[-12:]}")]
