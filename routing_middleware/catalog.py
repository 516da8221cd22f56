"""The model catalog: which models exist, what they cost, what they can do.

Prices are ``Decimal`` USD per one million tokens. A bundled snapshot ships with the
package and loads lazily on first use; feeds (LiteLLM or OpenRouter format) merge over
it, and a swap is atomic: readers see the old catalog or the new one, never a mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from .schema import UnknownModel

__all__ = [
    "CAPABILITIES",
    "Catalog",
    "ModelInfo",
    "OffPeakPrice",
    "Price",
    "PriceBand",
    "UnknownModel",
]

#: Capability words a model may have.
CAPABILITIES = frozenset(
    {"tools", "vision", "json_schema", "reasoning", "streaming", "prompt_caching"}
)


@dataclass(frozen=True, slots=True)
class PriceBand:
    """Prices that apply to the *whole* request once its input exceeds ``above_tokens``.

    Covers long-context thresholds (Gemini, GPT-5.4+: ``_above_200k_tokens``) and
    tiered pricing by input length (Qwen ``tiered_pricing``) alike. ``None`` fields
    fall back to the base price.
    """

    above_tokens: int
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None


@dataclass(frozen=True, slots=True)
class OffPeakPrice:
    """Discounted prices inside UTC windows (DeepSeek off-peak).

    ``windows`` are ``(start_hour, end_hour)`` pairs, end exclusive, hours 0-24 UTC;
    ``weekdays`` (Monday = 0) limits the windows to those days when set.
    """

    windows: tuple[tuple[int, int], ...]
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    weekdays: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class Price:
    """List prices in USD per 1M tokens.

    ``cached_input`` prices cache reads, ``cache_write`` cache writes with the
    default TTL (Anthropic 5 min) and ``cache_write_long`` those with the longer TTL
    (Anthropic 1 h, OpenAI 12 h+). ``reasoning`` is set only where reasoning tokens
    are priced differently from output. ``None`` means "same as input" for cache
    prices and "same as output" for reasoning.
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_long: Decimal | None = None
    reasoning: Decimal | None = None
    bands: tuple[PriceBand, ...] = ()
    off_peak: OffPeakPrice | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model at one provider.

    ``id`` is canonical ``provider/model``; ``name`` is what the provider's API calls
    it. ``quality`` is a 0-100 score (``quality_source`` says where it comes from),
    ``tier`` the default routing tier (1 cheap, 2 balanced, 3 premium).
    """

    id: str
    provider: str
    name: str
    price: Price
    context_window: int
    max_output_tokens: int | None = None
    capabilities: frozenset[str] = frozenset({"streaming"})
    aliases: tuple[str, ...] = ()
    quality: int | None = None
    quality_source: str | None = None
    tier: int = 2
    mode: str = "chat"
    deprecation_date: date | None = None
    as_of: date | None = None
    source: str | None = None

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities


@dataclass(slots=True)
class _Snapshot:
    models: tuple[ModelInfo, ...]
    by_name: dict[str, ModelInfo] = field(default_factory=dict)


class Catalog:
    """A set of models, looked up by canonical id or alias.

    The contents live in one immutable snapshot replaced in a single assignment
    (:meth:`replace`), so a concurrent reader sees either the old or the new
    catalog. ``generation`` increases on every swap; routers use it to know when
    to recompute what they precompute.
    """

    def __init__(self, models: tuple[ModelInfo, ...] | list[ModelInfo] = ()) -> None:
        self._snapshot = _build_snapshot(tuple(models))
        self.generation = 0

    def replace(self, models: tuple[ModelInfo, ...] | list[ModelInfo]) -> None:
        """Atomically swap in a new set of models."""
        self._snapshot = _build_snapshot(tuple(models))
        self.generation += 1

    @property
    def models(self) -> tuple[ModelInfo, ...]:
        return self._snapshot.models

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self._snapshot.models)

    def __len__(self) -> int:
        return len(self._snapshot.models)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _normalize(name) in self._snapshot.by_name

    def get(self, name: str) -> ModelInfo:
        """The model called ``name`` (canonical id or alias); :class:`UnknownModel` if none."""
        found = self._snapshot.by_name.get(_normalize(name))
        if found is None:
            raise UnknownModel(name, self.suggest(name))
        return found

    def find(self, name: str) -> ModelInfo | None:
        return self._snapshot.by_name.get(_normalize(name))

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        import difflib

        ids = [m.id for m in self._snapshot.models]
        bare = {m.id.split("/", 1)[-1]: m.id for m in self._snapshot.models}
        close = difflib.get_close_matches(name, ids, n=limit, cutoff=0.5)
        close += [
            bare[b]
            for b in difflib.get_close_matches(name.split("/")[-1], list(bare), n=limit, cutoff=0.5)
        ]
        return list(dict.fromkeys(close))[:limit]


def _normalize(name: str) -> str:
    return name.strip().lower()


def _build_snapshot(models: tuple[ModelInfo, ...]) -> _Snapshot:
    by_name: dict[str, ModelInfo] = {}
    # Aliases first, canonical ids last, so an id always wins over another model's alias.
    for model in models:
        for alias in model.aliases:
            by_name.setdefault(_normalize(alias), model)
    for model in models:
        by_name[_normalize(model.id)] = model
    return _Snapshot(models=models, by_name=by_name)
