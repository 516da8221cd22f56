"""The model catalog: which models exist, what they cost, what they can do.

Prices are ``Decimal`` USD per one million tokens. A bundled snapshot ships with the
package and loads lazily on first use; feeds (LiteLLM or OpenRouter format) merge over
it, and a swap is atomic: readers see the old catalog or the new one, never a mix.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .feeds import FeedReport, QualityReport
    from .schema import UnknownModel

__all__ = [
    "CAPABILITIES",
    "PROVIDERS",
    "Catalog",
    "ModelInfo",
    "OffPeakPrice",
    "OffPeakWindow",
    "Price",
    "PriceBand",
    "UnknownModel",
    "default_catalog",
    "tier_for_price",
]

#: Capability words a model may have.
CAPABILITIES = frozenset(
    {"tools", "vision", "json_schema", "reasoning", "streaming", "prompt_caching"}
)

#: Canonical provider ids; a model id is ``provider/name``.
PROVIDERS = frozenset(
    {
        "openai",
        "azure",
        "anthropic",
        "gemini",
        "deepseek",
        "qwen",
        "mistral",
        "xai",
        "groq",
        "together",
        "fireworks",
        "openrouter",
        "cerebras",
        "deepinfra",
        "moonshot",
        "zai",
        "minimax",
        "perplexity",
        "cohere",
        "bedrock",
        "vllm",
        "ollama",
    }
)

_BUNDLED = Path(__file__).with_name("data") / "catalog.json"


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
    cache_write_long: Decimal | None = None
    reasoning: Decimal | None = None


@dataclass(frozen=True, slots=True)
class OffPeakWindow:
    """One discounted time window: minutes of the UTC day, start inclusive, end exclusive.

    ``end_minute <= start_minute`` wraps past midnight and equal values cover the whole
    day. ``weekdays`` (Monday = 0) limits the window to those days, read on the
    calendar of the price's ``weekday_timezone`` (UTC when unset).
    """

    start_minute: int
    end_minute: int
    weekdays: frozenset[int] | None = None

    def contains(self, minute: int, weekday: int) -> bool:
        """Whether minute-of-day ``minute`` on ``weekday`` falls inside the window."""
        if self.weekdays is not None and weekday not in self.weekdays:
            return False
        start, end = self.start_minute, self.end_minute
        if start < end:
            return start <= minute < end
        return minute >= start or minute < end


@dataclass(frozen=True, slots=True)
class OffPeakPrice:
    """Discounted prices inside UTC windows (DeepSeek off-peak).

    ``windows`` are ``(start_hour, end_hour)`` pairs, end exclusive, hours 0-24 UTC;
    ``weekdays`` (Monday = 0) limits the windows to those days when set. ``schedule``
    holds finer windows (minutes, per-window weekdays) as LiteLLM publishes them; a
    time is off-peak when any window or schedule entry contains it.
    """

    windows: tuple[tuple[int, int], ...]
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    weekdays: frozenset[int] | None = None
    schedule: tuple[OffPeakWindow, ...] = ()
    weekday_timezone: str | None = None

    def applies_at(self, at: datetime) -> bool:
        """Whether ``at`` (aware, or naive meaning UTC) falls in an off-peak window."""
        utc = at.astimezone(UTC) if at.tzinfo is not None else at.replace(tzinfo=UTC)
        minute = utc.hour * 60 + utc.minute
        weekday = utc.weekday()
        if self.weekday_timezone:
            from zoneinfo import ZoneInfo

            weekday = utc.astimezone(ZoneInfo(self.weekday_timezone)).weekday()
        for start, end in self.windows:
            window = OffPeakWindow(start * 60, end * 60 if end < 24 else 0, self.weekdays)
            if window.contains(minute, weekday):
                return True
        return any(w.contains(minute, weekday) for w in self.schedule)


@dataclass(frozen=True, slots=True)
class Price:
    """List prices in USD per 1M tokens.

    ``cached_input`` prices cache reads, ``cache_write`` cache writes with the
    default TTL (Anthropic 5 min) and ``cache_write_long`` those with the longer TTL
    (Anthropic 1 h, OpenAI 12 h+). ``reasoning`` is set only where reasoning tokens
    are priced differently from output. ``None`` means "same as input" for cache
    prices ("same as ``cache_write``" for ``cache_write_long``) and "same as output"
    for reasoning.
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_long: Decimal | None = None
    reasoning: Decimal | None = None
    bands: tuple[PriceBand, ...] = ()
    off_peak: OffPeakPrice | None = None

    @property
    def blended(self) -> Decimal:
        """``(3 * input + output) / 4``: one number to compare models by (3:1 in:out)."""
        return (3 * self.input + self.output) / 4


def tier_for_price(price: Price) -> int:
    """Default tier from the blended price: 1 below $0.75/M, 2 below $5/M, else 3."""
    blended = price.blended
    if blended < Decimal("0.75"):
        return 1
    if blended < 5:
        return 2
    return 3


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
        self._swap_lock = threading.Lock()

    # ------------------------------------------------------------------ building

    @classmethod
    def bundled(cls) -> Catalog:
        """A fresh catalog holding the snapshot shipped with the package."""
        return cls(_bundled_models())

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        """A catalog read from a file in the bundled snapshot's format."""
        return cls(models_from_json(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def from_feed(
        cls,
        source: str | Path,
        format: str | None = None,
        *,
        base: Catalog | None = None,
        timeout: float = 10.0,
        add_new: bool = True,
    ) -> Catalog:
        """A catalog made of ``base`` (the bundled snapshot by default) with a feed merged in.

        ``source`` is a path or an http(s) URL; ``format`` is ``"litellm"``,
        ``"openrouter"`` or ``"llmroute"`` (the snapshot's own format), detected when
        ``None``. With ``add_new=False`` only models already in ``base`` are updated.
        Raises :class:`~routing_middleware.feeds.FeedError` when the feed does not load
        or validate.
        """
        from .feeds import load_feed, merge_feed

        start = base.models if base is not None else _bundled_models()
        feed = load_feed(source, format, timeout=timeout)
        models, _ = merge_feed(start, feed, add_new=add_new)
        return cls(models)

    def update_from_feed(
        self,
        source: str | Path,
        format: str | None = None,
        *,
        timeout: float = 10.0,
        add_new: bool = True,
    ) -> FeedReport:
        """Merge a feed into this catalog in place (one atomic swap) and say what changed.

        On any error (:class:`~routing_middleware.feeds.FeedError`) the catalog is left
        exactly as it was: same models, same ``generation``.
        """
        from .feeds import load_feed, merge_feed

        feed = load_feed(source, format, timeout=timeout)
        with self._swap_lock:
            models, report = merge_feed(self.models, feed, add_new=add_new)
            if report.changed_anything:
                self.replace(models)
        return report

    def update_quality(
        self, source: str | Path, *, label: str | None = None, set_tiers: bool = True
    ) -> QualityReport:
        """Set quality scores from a leaderboard file (CSV ``model,score`` or JSON ``{id: score}``).

        Scores must be 0-100 (:class:`~routing_middleware.feeds.FeedError` otherwise,
        and nothing changes). Names resolve like :meth:`get` (ids and aliases); unknown
        ones are listed in the report, not an error. With ``set_tiers`` the tiers of
        scored models follow the quality bands of
        :func:`~routing_middleware.feeds.tier_for_quality`. ``label`` becomes
        ``quality_source`` (default: the file name).
        """
        from .feeds import apply_quality, load_quality

        scores = load_quality(source)
        label = label or f"leaderboard {Path(str(source)).name}"
        with self._swap_lock:
            models, report = apply_quality(self, scores, label, set_tiers=set_tiers)
            if report.updated:
                self.replace(models)
        return report

    def replace(self, models: tuple[ModelInfo, ...] | list[ModelInfo]) -> None:
        """Atomically swap in a new set of models."""
        self._snapshot = _build_snapshot(tuple(models))
        self.generation += 1

    def to_json(self) -> str:
        """The catalog in the bundled snapshot's format (deterministic, one model per line)."""
        return models_to_json(self.models)

    # ------------------------------------------------------------------ reading

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
            from .schema import UnknownModel

            raise UnknownModel(name, self.suggest(name))
        return found

    def find(self, name: str) -> ModelInfo | None:
        """Like :meth:`get` but ``None`` for an unknown name."""
        by_name = self._snapshot.by_name
        # Keys are normalized: a name found as it is needs no normalizing.
        found = by_name.get(name)
        return found if found is not None else by_name.get(_normalize(name))

    def at_provider(self, model: str, provider: str) -> str:
        """``model`` as this catalog names it at ``provider``, the provider a call was
        addressed to: ``"{provider}/{model}"`` when the catalog has that, even for a
        name with a "/" of its own (Groq's ``openai/gpt-oss-120b`` is
        ``groq/openai/gpt-oss-120b``); else ``model`` as it is."""
        if not model.startswith(provider + "/"):
            qualified = f"{provider}/{model}"
            if qualified in self:
                return qualified
        return model

    def filter(
        self,
        *,
        provider: str | Iterable[str] | None = None,
        tier: int | Iterable[int] | None = None,
        capability: str | Iterable[str] | None = None,
        mode: str | None = "chat",
        max_blended_price: Decimal | None = None,
        min_quality: int | None = None,
        min_context: int | None = None,
    ) -> list[ModelInfo]:
        """Models matching every given criterion, in catalog order.

        ``provider`` and ``tier`` accept one value or several (any matches);
        ``capability`` one or several (all required). ``mode`` defaults to ``"chat"``;
        pass ``None`` for every mode.
        """
        providers = {provider} if isinstance(provider, str) else provider
        providers = set(providers) if providers is not None else None
        tiers = {tier} if isinstance(tier, int) else (set(tier) if tier is not None else None)
        needed = {capability} if isinstance(capability, str) else set(capability or ())
        out = []
        for m in self._snapshot.models:
            if providers is not None and m.provider not in providers:
                continue
            if tiers is not None and m.tier not in tiers:
                continue
            if mode is not None and m.mode != mode:
                continue
            if not needed <= m.capabilities:
                continue
            if max_blended_price is not None and m.price.blended > max_blended_price:
                continue
            if min_quality is not None and (m.quality is None or m.quality < min_quality):
                continue
            if min_context is not None and m.context_window < min_context:
                continue
            out.append(m)
        return out

    @property
    def providers(self) -> list[str]:
        """Sorted provider ids present in the catalog."""
        return sorted({m.provider for m in self._snapshot.models})

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        """Up to ``limit`` model ids whose id or alias is close to ``name``."""
        import difflib

        key = _normalize(name)
        by_name = self._snapshot.by_name
        candidates = list(by_name)
        close = difflib.get_close_matches(key, candidates, n=limit * 3, cutoff=0.6)
        bare = key.rsplit("/", 1)[-1]
        if bare != key:
            close += difflib.get_close_matches(bare, candidates, n=limit * 3, cutoff=0.6)
        # A substring hit ("sonnet" -> every Sonnet) is a good suggestion too.
        if len(bare) >= 4:
            close += [c for c in candidates if bare in c]
        ids = [by_name[c].id for c in close]
        return list(dict.fromkeys(ids))[:limit]


def __getattr__(name: str) -> Any:
    # UnknownModel lives in the schema (pydantic); importing it lazily keeps this
    # module, and so the catalog, free of pydantic's import cost.
    if name == "UnknownModel":
        from .schema import UnknownModel

        return UnknownModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_catalog() -> Catalog:
    """The process-wide catalog, holding the bundled snapshot; loaded on first call.

    Feeds and refreshers update this object in place, so everything that holds it
    sees new prices after a swap.
    """
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Catalog.bundled()
    return _default


_default: Catalog | None = None
_default_lock = threading.Lock()
_bundled_cache: tuple[ModelInfo, ...] | None = None


def _bundled_models() -> tuple[ModelInfo, ...]:
    global _bundled_cache
    if _bundled_cache is None:
        _bundled_cache = models_from_json(_BUNDLED.read_text(encoding="utf-8"))
    return _bundled_cache


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


# ---------------------------------------------------------------------- (de)serialization


def _dec(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _put(out: dict[str, Any], key: str, value: Decimal | None) -> None:
    if value is not None:
        out[key] = _dec(value)


def _opt(raw: dict[str, Any], key: str) -> Decimal | None:
    value = raw.get(key)
    return None if value is None else Decimal(value)


def _band_to_dict(band: PriceBand) -> dict[str, Any]:
    out: dict[str, Any] = {
        "above_tokens": band.above_tokens,
        "input": _dec(band.input),
        "output": _dec(band.output),
    }
    _put(out, "cached_input", band.cached_input)
    _put(out, "cache_write", band.cache_write)
    _put(out, "cache_write_long", band.cache_write_long)
    _put(out, "reasoning", band.reasoning)
    return out


def _off_peak_to_dict(op: OffPeakPrice) -> dict[str, Any]:
    out: dict[str, Any] = {
        "windows": [list(w) for w in op.windows],
        "input": _dec(op.input),
        "output": _dec(op.output),
    }
    _put(out, "cached_input", op.cached_input)
    if op.weekdays is not None:
        out["weekdays"] = sorted(op.weekdays)
    if op.schedule:
        out["schedule"] = [
            [w.start_minute, w.end_minute, None if w.weekdays is None else sorted(w.weekdays)]
            for w in op.schedule
        ]
    if op.weekday_timezone:
        out["weekday_timezone"] = op.weekday_timezone
    return out


def price_to_dict(price: Price) -> dict[str, Any]:
    """A JSON-ready dict of ``price`` (decimal strings, ``None`` fields left out)."""
    out: dict[str, Any] = {"input": _dec(price.input), "output": _dec(price.output)}
    _put(out, "cached_input", price.cached_input)
    _put(out, "cache_write", price.cache_write)
    _put(out, "cache_write_long", price.cache_write_long)
    _put(out, "reasoning", price.reasoning)
    if price.bands:
        out["bands"] = [_band_to_dict(b) for b in price.bands]
    if price.off_peak is not None:
        out["off_peak"] = _off_peak_to_dict(price.off_peak)
    return out


def model_to_dict(model: ModelInfo) -> dict[str, Any]:
    """A JSON-ready dict of ``model`` in the snapshot format."""
    out: dict[str, Any] = {
        "id": model.id,
        "provider": model.provider,
        "name": model.name,
        "mode": model.mode,
        "price": price_to_dict(model.price),
        "context_window": model.context_window,
        "capabilities": sorted(model.capabilities),
        "tier": model.tier,
    }
    if model.max_output_tokens is not None:
        out["max_output_tokens"] = model.max_output_tokens
    if model.aliases:
        out["aliases"] = list(model.aliases)
    if model.quality is not None:
        out["quality"] = model.quality
        out["quality_source"] = model.quality_source
    if model.deprecation_date is not None:
        out["deprecation_date"] = model.deprecation_date.isoformat()
    if model.as_of is not None:
        out["as_of"] = model.as_of.isoformat()
    if model.source is not None:
        out["source"] = model.source
    return out


def _price_from_dict(raw: dict[str, Any]) -> Price:
    bands = tuple(
        PriceBand(
            above_tokens=int(b["above_tokens"]),
            input=Decimal(b["input"]),
            output=Decimal(b["output"]),
            cached_input=_opt(b, "cached_input"),
            cache_write=_opt(b, "cache_write"),
            cache_write_long=_opt(b, "cache_write_long"),
            reasoning=_opt(b, "reasoning"),
        )
        for b in raw.get("bands", ())
    )
    off_peak = None
    op = raw.get("off_peak")
    if op is not None:
        off_peak = OffPeakPrice(
            windows=tuple((int(a), int(b)) for a, b in op.get("windows", ())),
            input=Decimal(op["input"]),
            output=Decimal(op["output"]),
            cached_input=_opt(op, "cached_input"),
            weekdays=frozenset(op["weekdays"]) if op.get("weekdays") is not None else None,
            schedule=tuple(
                OffPeakWindow(int(s), int(e), frozenset(d) if d is not None else None)
                for s, e, d in op.get("schedule", ())
            ),
            weekday_timezone=op.get("weekday_timezone"),
        )
    return Price(
        input=Decimal(raw["input"]),
        output=Decimal(raw["output"]),
        cached_input=_opt(raw, "cached_input"),
        cache_write=_opt(raw, "cache_write"),
        cache_write_long=_opt(raw, "cache_write_long"),
        reasoning=_opt(raw, "reasoning"),
        bands=bands,
        off_peak=off_peak,
    )


def model_from_dict(raw: dict[str, Any]) -> ModelInfo:
    """The :class:`ModelInfo` a :func:`model_to_dict` dict describes."""
    dep = raw.get("deprecation_date")
    as_of = raw.get("as_of")
    return ModelInfo(
        id=raw["id"],
        provider=raw["provider"],
        name=raw["name"],
        price=_price_from_dict(raw["price"]),
        context_window=int(raw["context_window"]),
        max_output_tokens=raw.get("max_output_tokens"),
        capabilities=frozenset(raw.get("capabilities", ("streaming",))),
        aliases=tuple(raw.get("aliases", ())),
        quality=raw.get("quality"),
        quality_source=raw.get("quality_source"),
        tier=int(raw.get("tier", 2)),
        mode=raw.get("mode", "chat"),
        deprecation_date=date.fromisoformat(dep) if dep else None,
        as_of=date.fromisoformat(as_of) if as_of else None,
        source=raw.get("source"),
    )


def models_to_json(models: Iterable[ModelInfo], **header: Any) -> str:
    """Serialize models as the snapshot format: a header and one sorted model per line."""
    lines = [
        json.dumps(model_to_dict(m), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        for m in sorted(models, key=lambda m: m.id)
    ]
    head = json.dumps({"format": 1, **header}, sort_keys=True, separators=(",", ":"))
    return head[:-1] + ',"models":[\n' + ",\n".join(lines) + "\n]}\n"


def models_from_json(text: str) -> tuple[ModelInfo, ...]:
    """Parse the snapshot format (see :func:`models_to_json`)."""
    raw = json.loads(text)
    return tuple(model_from_dict(m) for m in raw["models"])


def with_aliases(model: ModelInfo, extra: Iterable[str]) -> ModelInfo:
    """``model`` with ``extra`` aliases appended (duplicates and its own id dropped)."""
    seen = {_normalize(a) for a in model.aliases} | {_normalize(model.id)}
    added = []
    for alias in extra:
        key = _normalize(alias)
        if key not in seen:
            seen.add(key)
            added.append(alias)
    return replace(model, aliases=(*model.aliases, *added)) if added else model
