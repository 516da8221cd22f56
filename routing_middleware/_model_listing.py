"""The catalog as a gateway lists it: ``GET /v1/models`` and ``GET /v1/models/{id}``.

OpenAI's SDK reads ``{"object": "list", "data": [{"id", "object", "created",
"owned_by"}]}``; Anthropic's reads ``{"data": [{"type", "id", "display_name",
"created_at"}], "has_more", "first_id", "last_id"}``. Both get every catalog model
of the providers the engine serves, with its prices (per 1M tokens), context window,
tier and capabilities besides. A gateway tells Anthropic's SDKs by the
``anthropic-version`` header they send. The bodies are made once per catalog
generation.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .catalog import ModelInfo
    from .engine import LLMRoute

__all__ = ["ModelListing"]


class ModelListing:
    """The model list and each model's body for one engine, per dialect."""

    __slots__ = ("_cache", "engine")

    def __init__(self, engine: LLMRoute) -> None:
        self.engine = engine
        self._cache: tuple[int, dict[str, tuple[bytes, dict[str, bytes]]]] | None = None

    def listing(self, dialect: str) -> bytes:
        """The list body in ``dialect`` (``openai`` or ``anthropic``)."""
        return self._bodies()[dialect][0]

    def one(self, dialect: str, model_id: str) -> bytes | None:
        """The body of the catalog model ``model_id``, or ``None`` when the engine
        serves no provider of it."""
        return self._bodies()[dialect][1].get(model_id)

    def _bodies(self) -> dict[str, tuple[bytes, dict[str, bytes]]]:
        catalog = self.engine.catalog
        cached = self._cache
        if cached is not None and cached[0] == catalog.generation:
            return cached[1]
        served = self.engine.providers
        common = [(m, _details(m)) for m in catalog if m.provider in served]
        openai = [{**_openai_head(m), **details} for m, details in common]
        anthropic = [_anthropic_entry(m, details) for m, details in common]
        bodies = {
            "openai": (
                json.dumps({"object": "list", "data": openai}).encode(),
                {entry["id"]: json.dumps(entry).encode() for entry in openai},
            ),
            "anthropic": (
                json.dumps(
                    {
                        "data": anthropic,
                        "has_more": False,
                        "first_id": anthropic[0]["id"] if anthropic else None,
                        "last_id": anthropic[-1]["id"] if anthropic else None,
                    }
                ).encode(),
                {entry["id"]: json.dumps(entry).encode() for entry in anthropic},
            ),
        }
        self._cache = (catalog.generation, bodies)
        return bodies


def _as_of(info: ModelInfo) -> datetime | None:
    if info.as_of is None:
        return None
    return datetime.combine(info.as_of, time(), UTC)


def _openai_head(info: ModelInfo) -> dict[str, Any]:
    when = _as_of(info)
    return {
        "id": info.id,
        "object": "model",
        "created": 0 if when is None else int(when.timestamp()),
        "owned_by": info.provider,
    }


def _anthropic_entry(info: ModelInfo, details: dict[str, Any]) -> dict[str, Any]:
    """A model as Anthropic lists one. Its ``capabilities`` is an object of Anthropic
    features (batch, citations, …) the catalog does not know, so the catalog's list
    of capabilities is left out of this shape rather than put in its place."""
    when = _as_of(info) or datetime(1970, 1, 1, tzinfo=UTC)
    entry = {
        "type": "model",
        "id": info.id,
        "display_name": info.name,
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lifecycle": "active",
        "max_input_tokens": info.context_window,
        "max_tokens": info.max_output_tokens,
        **details,
    }
    del entry["capabilities"]
    return entry


def _money(amount: Decimal) -> str:
    return format(amount.normalize(), "f")


def _or(value: Decimal | None, default: Decimal) -> Decimal:
    return default if value is None else value


def _details(info: ModelInfo) -> dict[str, Any]:
    """What llmroute adds to either shape: prices, context window, tier, capabilities."""
    price = info.price
    return {
        "provider": info.provider,
        "name": info.name,
        "mode": info.mode,
        "tier": info.tier,
        "quality": info.quality,
        "context_window": info.context_window,
        "max_output_tokens": info.max_output_tokens,
        "capabilities": sorted(info.capabilities),
        "aliases": list(info.aliases),
        "pricing": {
            "currency": "USD",
            "unit": "1M tokens",
            "input": _money(price.input),
            "output": _money(price.output),
            # Unset cache and reasoning prices mean "same as input / output".
            "cached_input": _money(_or(price.cached_input, price.input)),
            "cache_write": _money(_or(price.cache_write, price.input)),
            "reasoning": _money(_or(price.reasoning, price.output)),
        },
    }
