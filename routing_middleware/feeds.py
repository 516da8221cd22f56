"""Pricing feeds and leaderboards: read, validate, convert, merge.

Three feed formats are understood:

- ``litellm`` — LiteLLM's ``model_prices_and_context_window.json``: ``{key: entry}``
  with USD *per token* prices. Entries of providers llmroute has no adapter for, and
  modes other than chat and embedding, are skipped (listed in the report).
- ``openrouter`` — the ``GET /api/v1/models`` response: ``{"data": [model, ...]}``
  with decimal-string USD per-token prices; ``"-1"`` means unknown. Every entry
  becomes an ``openrouter/<id>`` model, and the feed is authoritative for the
  ``openrouter`` provider (models it no longer lists are removed).
- ``llmroute`` — the bundled snapshot's own format (what ``llmroute sync-prices``
  writes).

Everything is validated before anything is merged: a bad feed raises
:class:`FeedError` naming the entry and the field, and the catalog is not touched.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import (
    CAPABILITIES,
    PROVIDERS,
    ModelInfo,
    OffPeakPrice,
    OffPeakWindow,
    Price,
    PriceBand,
    model_from_dict,
    tier_for_price,
    with_aliases,
)

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = [
    "LITELLM_PROVIDERS",
    "MAX_PRICE_PER_M",
    "Feed",
    "FeedError",
    "FeedReport",
    "QualityReport",
    "add_litellm_aliases",
    "apply_quality",
    "detect_format",
    "litellm_aliases",
    "litellm_entry_to_model",
    "load_feed",
    "load_quality",
    "merge_feed",
    "parse_feed",
    "tier_for_quality",
]

#: Any token price above this (USD per 1M tokens) is taken for a unit mistake.
MAX_PRICE_PER_M = Decimal(1000)

#: LiteLLM ``litellm_provider`` -> canonical provider id.
LITELLM_PROVIDERS: Mapping[str, str] = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "deepseek": "deepseek",
    "dashscope": "qwen",
    "mistral": "mistral",
    "xai": "xai",
    "groq": "groq",
    "together_ai": "together",
    "fireworks_ai": "fireworks",
    "openrouter": "openrouter",
    "cerebras": "cerebras",
    "deepinfra": "deepinfra",
    "moonshot": "moonshot",
    "zai": "zai",
    "minimax": "minimax",
    "perplexity": "perplexity",
    "cohere_chat": "cohere",
    "cohere": "cohere",
    "bedrock": "bedrock",
    "bedrock_converse": "bedrock",
    "vllm": "vllm",
    "hosted_vllm": "vllm",
    "ollama": "ollama",
    "ollama_chat": "ollama",
}

_MODES = frozenset({"chat", "embedding"})
#: Self-hosted providers: a $0 LiteLLM price is their real price, not a placeholder.
_FREE_PROVIDERS = frozenset({"ollama", "vllm"})
_PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token", "tiered_pricing")
_BAND_KEY = re.compile(
    r"^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost"
    r"|cache_creation_input_token_cost|cache_creation_input_token_cost_above_(?:1hr|12hr)"
    r"|output_cost_per_reasoning_token)_above_(\d+)k_tokens$"
)
_BAND_FIELD = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cached_input",
    "cache_creation_input_token_cost": "cache_write",
    "cache_creation_input_token_cost_above_1hr": "cache_write_long",
    "cache_creation_input_token_cost_above_12hr": "cache_write_long",
    "output_cost_per_reasoning_token": "reasoning",
}
_HHMM = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class FeedError(ValueError):
    """A feed could not be read or failed validation; the message names entry and field."""


@dataclass(frozen=True, slots=True)
class Feed:
    """A parsed, validated feed: its models and what the merge should know about it."""

    format: str
    models: tuple[ModelInfo, ...]
    #: Providers whose catalog entries the feed replaces wholesale (absent ones are removed).
    authoritative: frozenset[str] = frozenset()
    skipped: tuple[str, ...] = ()
    source: str = ""


@dataclass(slots=True)
class FeedReport:
    """What merging a feed changed: model ids added, changed (price or limits) and removed."""

    format: str = ""
    source: str = ""
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def changed_anything(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def summary(self) -> str:
        """One line: counts of added, changed, removed, unchanged and skipped entries."""
        return (
            f"{len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed, "
            f"{self.unchanged} unchanged, {len(self.skipped)} skipped"
        )


@dataclass(slots=True)
class QualityReport:
    """What a leaderboard import did: ids updated and names no model answers to."""

    updated: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- reading


def _read_source(source: str | Path, timeout: float) -> tuple[bytes, str]:
    text = str(source)
    if text.startswith(("http://", "https://")):
        import httpx

        try:
            response = httpx.get(text, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise FeedError(f"cannot fetch {text}: {exc}") from exc
        return response.content, text
    try:
        return Path(text).read_bytes(), text
    except OSError as exc:
        raise FeedError(f"cannot read {text}: {exc.strerror or exc}") from exc


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedError(f"{where}: not valid JSON ({exc})") from exc


def detect_format(data: Any) -> str:
    """``"openrouter"``, ``"llmroute"`` or ``"litellm"`` for a parsed feed document."""
    if isinstance(data, dict):
        if isinstance(data.get("data"), list):
            return "openrouter"
        if isinstance(data.get("models"), list) and "format" in data:
            return "llmroute"
        return "litellm"
    raise FeedError("feed: top level must be a JSON object")


def load_feed(source: str | Path, format: str | None = None, *, timeout: float = 10.0) -> Feed:
    """Read ``source`` (path or http(s) URL) and parse it with :func:`parse_feed`."""
    data, where = _read_source(source, timeout)
    return parse_feed(_parse_json(data, where), format, source=where)


def parse_feed(document: Any, format: str | None = None, *, source: str = "feed") -> Feed:
    """Validate and convert a parsed feed document; :class:`FeedError` on the first problem."""
    fmt = format or detect_format(document)
    if fmt == "litellm":
        return _parse_litellm(document, source)
    if fmt == "openrouter":
        return _parse_openrouter(document, source)
    if fmt == "llmroute":
        return _parse_llmroute(document, source)
    raise FeedError(f"unknown feed format {fmt!r} (litellm, openrouter or llmroute)")


# ---------------------------------------------------------------------- validation


def _today() -> date:
    """The UTC date a feed was read: the ``as_of`` of the prices it brings."""
    return datetime.now(UTC).date()


def _price(value: Any, where: str, *, per_token: bool = True) -> Decimal:
    """A non-negative, sane price in USD per 1M tokens from a feed value."""
    if isinstance(value, bool) or value is None:
        raise FeedError(f"{where}: expected a number, got {value!r}")
    try:
        number = Decimal(value) if isinstance(value, str | int | Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise FeedError(f"{where}: not a number: {value!r}") from None
    if not number.is_finite():
        raise FeedError(f"{where}: not a finite number: {value!r}")
    if number < 0:
        raise FeedError(f"{where}: negative price {value!r}")
    per_m = number.scaleb(6) if per_token else number
    if per_m > MAX_PRICE_PER_M:
        raise FeedError(
            f"{where}: {_plain(per_m)} USD per 1M tokens is above the {MAX_PRICE_PER_M} limit"
        )
    return _clean(per_m)


def _clean(value: Decimal) -> Decimal:
    """Drop trailing zeros without going to exponent notation (``1.50000`` -> ``1.5``)."""
    normal = value.normalize()
    return normal.quantize(Decimal(1)) if normal == normal.to_integral_value() else normal


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _int(value: Any, where: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool):
        raise FeedError(f"{where}: expected an integer, got {value!r}")
    try:
        number = int(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        raise FeedError(f"{where}: expected an integer, got {value!r}") from None
    if number < minimum:
        raise FeedError(f"{where}: must be at least {minimum}, got {value!r}")
    return number


# ---------------------------------------------------------------------- litellm


def _litellm_name(key: str, litellm_provider: str) -> str:
    for prefix in (f"{litellm_provider}/", "together_ai/", "fireworks_ai/", "azure/", "bedrock/"):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _opt_price(entry: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    if key not in entry or entry[key] is None:
        return None
    return _price(entry[key], f"{where}.{key}")


def _capabilities(entry: Mapping[str, Any], has_cache_price: bool) -> frozenset[str]:
    caps = set()
    if entry.get("supports_function_calling") or entry.get("supports_tool_choice"):
        caps.add("tools")
    if entry.get("supports_vision"):
        caps.add("vision")
    if entry.get("supports_response_schema"):
        caps.add("json_schema")
    if entry.get("supports_reasoning"):
        caps.add("reasoning")
    if entry.get("supports_prompt_caching") or has_cache_price:
        caps.add("prompt_caching")
    if entry.get("mode", "chat") == "chat" and entry.get("supports_native_streaming") is not False:
        caps.add("streaming")
    return frozenset(caps & CAPABILITIES)


def _bands(entry: Mapping[str, Any], where: str, base_output: Decimal) -> tuple[PriceBand, ...]:
    found: dict[int, dict[str, Decimal]] = {}
    for key, value in entry.items():
        match = _BAND_KEY.match(key)
        if match is None:
            continue
        above = int(match.group(2)) * 1000
        found.setdefault(above, {})[_BAND_FIELD[match.group(1)]] = _price(value, f"{where}.{key}")
    bands = []
    for above, fields in sorted(found.items()):
        if "input" not in fields:
            raise FeedError(f"{where}.input_cost_per_token_above_{above // 1000}k_tokens: missing")
        bands.append(
            PriceBand(
                above_tokens=above,
                input=fields["input"],
                output=fields.get("output", base_output),
                cached_input=fields.get("cached_input"),
                cache_write=fields.get("cache_write"),
                cache_write_long=fields.get("cache_write_long"),
                reasoning=fields.get("reasoning"),
            )
        )
    return tuple(bands)


def _tiered(entry: Mapping[str, Any], where: str) -> tuple[Price, tuple[PriceBand, ...]]:
    tiers = entry["tiered_pricing"]
    if not isinstance(tiers, list) or not tiers:
        raise FeedError(f"{where}.tiered_pricing: expected a non-empty list")
    parsed = []
    for i, tier in enumerate(tiers):
        at = f"{where}.tiered_pricing[{i}]"
        if not isinstance(tier, dict) or "range" not in tier:
            raise FeedError(f"{at}.range: missing")
        bounds = tier["range"]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise FeedError(f"{at}.range: expected [start, end]")
        start = _int(bounds[0], f"{at}.range", minimum=0)
        for key in ("input_cost_per_token", "output_cost_per_token"):
            if key not in tier:
                raise FeedError(f"{at}.{key}: missing")
        parsed.append(
            (
                start,
                _price(tier["input_cost_per_token"], f"{at}.input_cost_per_token"),
                _price(tier["output_cost_per_token"], f"{at}.output_cost_per_token"),
                _opt_price(tier, "cache_read_input_token_cost", at),
                _opt_price(tier, "cache_creation_input_token_cost", at),
                _opt_price(tier, "output_cost_per_reasoning_token", at),
            )
        )
    parsed.sort(key=lambda t: t[0])
    first = parsed[0]
    if first[0] != 0:
        raise FeedError(f"{where}.tiered_pricing: the first tier must start at 0")
    base = Price(
        input=first[1],
        output=first[2],
        cached_input=first[3],
        cache_write=first[4] or None,
        reasoning=first[5] if first[5] != first[2] else None,
    )
    bands = tuple(
        PriceBand(
            above_tokens=start,
            input=inp,
            output=out,
            cached_input=cached,
            cache_write=write or None,
            reasoning=reasoning if reasoning != out else None,
        )
        for start, inp, out, cached, write, reasoning in parsed[1:]
    )
    return base, bands


def _weekday(value: Any, where: str) -> int:
    # LiteLLM numbers weekdays ISO-style (1 = Monday ... 7 = Sunday); ours are 0-6.
    names = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 7:
        return value - 1
    if isinstance(value, str) and value.strip().lower()[:3] in names:
        return names.index(value.strip().lower()[:3])
    raise FeedError(f"{where}: bad weekday {value!r}")


def _hours(value: Any, where: str) -> list[tuple[int, int]]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise FeedError(f"{where}: expected 'HH:MM-HH:MM' or a list of them")
    out = []
    for item in items:
        match = _HHMM.match(item) if isinstance(item, str) else None
        if match is None:
            raise FeedError(f"{where}: bad window {item!r} (expected 'HH:MM-HH:MM')")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
            raise FeedError(f"{where}: bad window {item!r}")
        out.append(((h1 * 60 + m1) % 1440, (h2 * 60 + m2) % 1440))
    return out


def _off_peak(entry: Mapping[str, Any], where: str, base: Price) -> OffPeakPrice:
    raw = entry["off_peak_pricing"]
    at = f"{where}.off_peak_pricing"
    if not isinstance(raw, dict):
        raise FeedError(f"{at}: expected an object")
    schedule: list[OffPeakWindow] = []
    if "hours_utc" in raw:
        schedule += [OffPeakWindow(s, e) for s, e in _hours(raw["hours_utc"], f"{at}.hours_utc")]
    for i, rule in enumerate(raw.get("windows") or ()):
        rat = f"{at}.windows[{i}]"
        if not isinstance(rule, dict) or "hours_utc" not in rule:
            raise FeedError(f"{rat}.hours_utc: missing")
        days = rule.get("weekdays")
        weekdays = (
            frozenset(_weekday(d, f"{rat}.weekdays") for d in days) if days is not None else None
        )
        schedule += [OffPeakWindow(s, e, weekdays) for s, e in _hours(rule["hours_utc"], rat)]
    if not schedule:
        raise FeedError(f"{at}.windows: no off-peak window given")
    inp = _opt_price(raw, "input_cost_per_token", at)
    out = _opt_price(raw, "output_cost_per_token", at)
    return OffPeakPrice(
        windows=(),
        input=base.input if inp is None else inp,
        output=base.output if out is None else out,
        cached_input=_opt_price(raw, "cache_read_input_token_cost", at),
        schedule=tuple(schedule),
        weekday_timezone=_timezone(raw.get("weekday_timezone"), f"{at}.weekday_timezone"),
    )


def _timezone(value: Any, where: str) -> str | None:
    """An IANA time zone name, checked now: an unknown one would otherwise raise from
    every off-peak cost computation of the model."""
    if value is None or value == "":
        return None
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(value)
    except (KeyError, TypeError, ValueError, OSError):  # not found is a KeyError
        raise FeedError(f"{where}: unknown time zone {value!r}") from None
    return str(value)


def litellm_entry_to_model(
    key: str, entry: Mapping[str, Any], *, as_of: date | None = None, source: str | None = None
) -> ModelInfo | None:
    """Convert one LiteLLM entry; ``None`` when it is not for llmroute.

    Skipped (``None``): providers without an llmroute adapter, modes other than chat
    and embedding, entries whose input is not priced per token (per second, per
    request, placeholders: $0 in and out for a hosted, non-``:free`` model) and
    entries without a context window.

    Raises :class:`FeedError` when the entry is for llmroute but invalid. Prices go
    from per token to per 1M tokens exactly (``Decimal.scaleb``), so parse the file
    with ``parse_float=Decimal`` to keep them free of float artifacts.
    """
    where = f"entry {key!r}"
    if not isinstance(entry, Mapping):
        raise FeedError(f"{where}: expected an object")
    litellm_provider = entry.get("litellm_provider")
    if litellm_provider is None and not any(k in entry for k in _PRICE_KEYS):
        return None  # alias pointers (see litellm_aliases()) and file metadata
    if not isinstance(litellm_provider, str) or not litellm_provider:
        raise FeedError(f"{where}.litellm_provider: missing")
    provider = LITELLM_PROVIDERS.get(litellm_provider)
    mode = entry.get("mode", "chat")
    if provider is None or mode not in _MODES:
        return None
    if "input_cost_per_token" not in entry and "tiered_pricing" not in entry:
        return None  # not priced per token (per request, per second, placeholder entries)
    if not (entry.get("max_input_tokens") or entry.get("max_tokens")):
        return None  # no context window: nothing a router could plan with
    if "tiered_pricing" in entry and "input_cost_per_token" not in entry:
        base, bands = _tiered(entry, where)
    else:
        for required in ("input_cost_per_token", "output_cost_per_token"):
            if required not in entry and not (mode == "embedding" and required.startswith("out")):
                raise FeedError(f"{where}.{required}: missing")
        output = _opt_price(entry, "output_cost_per_token", where) or Decimal(0)
        write = _opt_price(entry, "cache_creation_input_token_cost", where)
        reasoning = _opt_price(entry, "output_cost_per_reasoning_token", where)
        base = Price(
            input=_price(entry["input_cost_per_token"], f"{where}.input_cost_per_token"),
            output=output,
            cached_input=_opt_price(entry, "cache_read_input_token_cost", where),
            # A zero write price means "not billed separately": writes cost plain input.
            cache_write=write or None,
            cache_write_long=_opt_price(entry, "cache_creation_input_token_cost_above_1hr", where)
            or _opt_price(entry, "cache_creation_input_token_cost_above_12hr", where),
            reasoning=reasoning if reasoning is not None and reasoning != output else None,
        )
        bands = _bands(entry, where, output)
    if (
        base.input == 0
        and base.output == 0
        and not bands
        and provider not in _FREE_PROVIDERS
        and not key.endswith(":free")
    ):
        # LiteLLM lists a paid model whose price it does not know yet at $0: taken as
        # is, it would make every call to it cost nothing (and look cheapest to routing).
        return None
    context = entry.get("max_input_tokens") or entry.get("max_tokens")
    if context is None:
        raise FeedError(f"{where}.max_input_tokens: missing")
    max_output = entry.get("max_output_tokens")
    price = replace(base, bands=bands)
    if "off_peak_pricing" in entry:
        price = replace(price, off_peak=_off_peak(entry, where, price))
    dep = entry.get("deprecation_date")
    try:
        deprecation = date.fromisoformat(dep) if isinstance(dep, str) and dep else None
    except ValueError:
        raise FeedError(f"{where}.deprecation_date: not a YYYY-MM-DD date: {dep!r}") from None
    name = _litellm_name(key, litellm_provider)
    model_id = f"{provider}/{name}"
    return ModelInfo(
        id=model_id,
        provider=provider,
        name=name,
        price=price,
        context_window=_int(context, f"{where}.max_input_tokens"),
        max_output_tokens=_int(max_output, f"{where}.max_output_tokens") if max_output else None,
        capabilities=_capabilities(entry, base.cached_input is not None),
        aliases=(key,) if key.lower() != model_id.lower() else (),
        tier=tier_for_price(price),
        mode=mode,
        deprecation_date=deprecation,
        as_of=as_of,
        source=source,
    )


def litellm_aliases(document: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{target key: [alias keys]}`` from LiteLLM's ``{"alias_of": target}`` entries."""
    out: dict[str, list[str]] = {}
    for key, entry in document.items():
        if isinstance(entry, Mapping) and isinstance(entry.get("alias_of"), str):
            out.setdefault(entry["alias_of"], []).append(key)
    return out


def add_litellm_aliases(
    models: dict[str, ModelInfo], document: Mapping[str, Any]
) -> dict[str, ModelInfo]:
    """``models`` (by id) with LiteLLM's alias entries added to the models they point at."""
    by_key: dict[str, str] = {}
    for model in models.values():
        for name in (model.id, *model.aliases):
            by_key.setdefault(name.lower(), model.id)
    for target, aliases in litellm_aliases(document).items():
        model_id = by_key.get(target.lower())
        if model_id is not None:
            models[model_id] = with_aliases(models[model_id], aliases)
    return models


def _parse_litellm(document: Any, source: str) -> Feed:
    if not isinstance(document, dict):
        raise FeedError(f"{source}: a LiteLLM feed is a JSON object of entries")
    models: dict[str, ModelInfo] = {}
    skipped = []
    today = _today()
    for key, entry in document.items():
        if key == "sample_spec":
            continue
        model = litellm_entry_to_model(key, entry, as_of=today, source=f"feed {source}")
        if model is None:
            skipped.append(key)
            continue
        if model.id in models:
            models[model.id] = with_aliases(models[model.id], model.aliases)
        else:
            models[model.id] = model
    add_litellm_aliases(models, document)
    return Feed("litellm", tuple(models.values()), skipped=tuple(skipped), source=source)


# ---------------------------------------------------------------------- openrouter


def _or_price(pricing: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    """A per-1M price from an OpenRouter pricing string; ``None`` if absent or unknown (<0)."""
    if key not in pricing or pricing[key] is None:
        return None
    value = pricing[key]
    if isinstance(value, str) and value.strip().startswith("-"):
        try:
            if Decimal(value) < 0:
                return None  # "-1": variable / unknown price
        except InvalidOperation:
            pass
    return _price(value, f"{where}.pricing.{key}")


def _parse_openrouter(document: Any, source: str) -> Feed:
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise FeedError(f"{source}: an OpenRouter feed is {{'data': [model, ...]}}")
    models = []
    skipped = []
    today = _today()
    for i, raw in enumerate(data):
        if not isinstance(raw, dict):
            raise FeedError(f"{source}: data[{i}] is not an object")
        slug = raw.get("id")
        if not isinstance(slug, str) or not slug:
            raise FeedError(f"{source}: data[{i}].id: missing")
        where = f"entry {slug!r}"
        pricing = raw.get("pricing")
        if not isinstance(pricing, dict):
            raise FeedError(f"{where}.pricing: missing")
        for required in ("prompt", "completion"):
            if required not in pricing:
                raise FeedError(f"{where}.pricing.{required}: missing")
        prompt = _or_price(pricing, "prompt", where)
        completion = _or_price(pricing, "completion", where)
        if prompt is None or completion is None:
            skipped.append(slug)  # router entries with variable prices
            continue
        top = raw.get("top_provider") or {}
        context = raw.get("context_length") or top.get("context_length")
        if context is None:
            raise FeedError(f"{where}.context_length: missing")
        reasoning = _or_price(pricing, "internal_reasoning", where)
        price = Price(
            input=prompt,
            output=completion,
            cached_input=_or_price(pricing, "input_cache_read", where),
            cache_write=_or_price(pricing, "input_cache_write", where) or None,
            reasoning=reasoning if reasoning and reasoning != completion else None,
        )
        params = set(raw.get("supported_parameters") or ())
        modalities = set((raw.get("architecture") or {}).get("input_modalities") or ())
        caps = {"streaming"}
        if "tools" in params:
            caps.add("tools")
        if "structured_outputs" in params or "response_format" in params:
            caps.add("json_schema")
        if "reasoning" in params or "include_reasoning" in params:
            caps.add("reasoning")
        if "image" in modalities:
            caps.add("vision")
        if price.cached_input is not None:
            caps.add("prompt_caching")
        expiry = raw.get("expiration_date")
        max_out = top.get("max_completion_tokens")
        models.append(
            ModelInfo(
                id=f"openrouter/{slug}",
                provider="openrouter",
                name=slug,
                price=price,
                context_window=_int(context, f"{where}.context_length"),
                max_output_tokens=_int(max_out, f"{where}.max_completion_tokens")
                if max_out
                else None,
                capabilities=frozenset(caps),
                tier=tier_for_price(price),
                deprecation_date=date.fromisoformat(expiry) if isinstance(expiry, str) else None,
                as_of=today,
                source=f"feed {source}",
            )
        )
    if not models:
        # The feed is authoritative for openrouter: an empty answer (an outage, a proxy's
        # placeholder) would remove every OpenRouter model and leave their calls unpriced.
        raise FeedError(f"{source}: no priced model in the OpenRouter feed")
    return Feed(
        "openrouter",
        tuple(models),
        authoritative=frozenset({"openrouter"}),
        skipped=tuple(skipped),
        source=source,
    )


# ---------------------------------------------------------------------- llmroute


_SNAPSHOT_PRICE_KEYS = (
    "input",
    "output",
    "cached_input",
    "cache_write",
    "cache_write_long",
    "reasoning",
)


def _check_snapshot_prices(price: Mapping[str, Any], where: str) -> None:
    """Every price of a snapshot-format price object, bands and off-peak included, is a
    sane non-negative number (a NaN or negative band or reasoning price would otherwise
    reach cost_of and make costs NaN or negative)."""
    for key in _SNAPSHOT_PRICE_KEYS:
        if price.get(key) is not None:
            _price(price[key], f"{where}.{key}", per_token=False)
    bands = price.get("bands") or []
    if not isinstance(bands, list):
        raise FeedError(f"{where}.bands: expected a list")
    for i, band in enumerate(bands):
        at = f"{where}.bands[{i}]"
        if not isinstance(band, dict):
            raise FeedError(f"{at}: expected an object")
        for key in ("above_tokens", "input", "output"):
            if key not in band:
                raise FeedError(f"{at}.{key}: missing")
        _int(band["above_tokens"], f"{at}.above_tokens", minimum=0)
        for key in _SNAPSHOT_PRICE_KEYS:
            if band.get(key) is not None:
                _price(band[key], f"{at}.{key}", per_token=False)
    off_peak = price.get("off_peak")
    if off_peak is not None:
        at = f"{where}.off_peak"
        if not isinstance(off_peak, dict):
            raise FeedError(f"{at}: expected an object")
        for key in ("input", "output"):
            if key not in off_peak:
                raise FeedError(f"{at}.{key}: missing")
        for key in ("input", "output", "cached_input"):
            if off_peak.get(key) is not None:
                _price(off_peak[key], f"{at}.{key}", per_token=False)
        _timezone(off_peak.get("weekday_timezone"), f"{at}.weekday_timezone")


def _parse_llmroute(document: Any, source: str) -> Feed:
    raw_models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(raw_models, list):
        raise FeedError(f"{source}: expected {{'format': 1, 'models': [...]}}")
    models = []
    for i, raw in enumerate(raw_models):
        name = raw.get("id", f"models[{i}]") if isinstance(raw, dict) else f"models[{i}]"
        where = f"entry {name!r}"
        if not isinstance(raw, dict):
            raise FeedError(f"{where}: expected an object")
        for required in ("id", "provider", "name", "price", "context_window"):
            if required not in raw:
                raise FeedError(f"{where}.{required}: missing")
        if raw["provider"] not in PROVIDERS:
            raise FeedError(f"{where}.provider: unknown provider {raw['provider']!r}")
        price = raw["price"]
        if not isinstance(price, dict):
            raise FeedError(f"{where}.price: expected an object")
        for key in ("input", "output"):
            if key not in price:
                raise FeedError(f"{where}.price.{key}: missing")
        _check_snapshot_prices(price, f"{where}.price")
        _int(raw["context_window"], f"{where}.context_window")
        try:
            models.append(model_from_dict(raw))
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise FeedError(f"{where}: {exc}") from None
    return Feed("llmroute", tuple(models), source=source)


# ---------------------------------------------------------------------- merging


def _same_offer(a: ModelInfo, b: ModelInfo) -> bool:
    return (
        a.price == b.price
        and a.context_window == b.context_window
        and a.max_output_tokens == b.max_output_tokens
        and a.capabilities == b.capabilities
        and a.deprecation_date == b.deprecation_date
    )


def merge_feed(
    base: Iterable[ModelInfo], feed: Feed, *, add_new: bool = True
) -> tuple[tuple[ModelInfo, ...], FeedReport]:
    """``base`` with ``feed`` merged over it, and the report of what changed.

    A feed model updates the base model with the same id or, failing that, the one
    that answers to its id as an alias (a feed listing ``gpt-4o-mini`` and its dated
    snapshot updates one model once, from the exact match). The update keeps what
    feeds do not know: curated aliases, quality, tier and mode. Feed models matching
    nothing are added unless ``add_new`` is false (then they are reported as
    skipped). Base models of an ``authoritative`` provider missing from the feed are
    removed; all others stay.
    """
    report = FeedReport(format=feed.format, source=feed.source, skipped=list(feed.skipped))
    current = {m.id: m for m in base}
    lookup: dict[str, str] = {}
    for m in current.values():
        for alias in m.aliases:
            lookup.setdefault(alias.lower(), m.id)
    exact = {m.id.lower(): m.id for m in current.values()}
    lookup.update(exact)
    seen: set[str] = set()
    # Exact id matches first, so an alias entry never shadows its model's own entry.
    ordered = sorted(feed.models, key=lambda m: m.id.lower() not in exact)
    for incoming in ordered:
        target = lookup.get(incoming.id.lower())
        if target is not None and target in seen:
            continue  # the same model under another of its names: already merged
        if target is None:
            if not add_new:
                report.skipped.append(incoming.id)
                continue
            current[incoming.id] = incoming
            lookup[incoming.id.lower()] = incoming.id
            for alias in incoming.aliases:
                lookup.setdefault(alias.lower(), incoming.id)
            seen.add(incoming.id)
            report.added.append(incoming.id)
            continue
        seen.add(target)
        old = current[target]
        merged = with_aliases(
            replace(
                incoming,
                id=old.id,
                provider=old.provider,
                name=old.name,
                aliases=old.aliases,
                quality=old.quality,
                quality_source=old.quality_source,
                tier=old.tier,
                mode=old.mode,
                as_of=incoming.as_of or old.as_of,
            ),
            [a for a in (incoming.id, *incoming.aliases) if a.lower() != old.id.lower()],
        )
        if _same_offer(old, merged):
            report.unchanged += 1
        else:
            current[target] = merged
            report.changed.append(target)
    for model_id in list(current):
        if current[model_id].provider in feed.authoritative and model_id not in seen:
            del current[model_id]
            report.removed.append(model_id)
    report.added.sort()
    report.changed.sort()
    report.removed.sort()
    return tuple(sorted(current.values(), key=lambda m: m.id)), report


# ---------------------------------------------------------------------- quality


def tier_for_quality(score: int) -> int:
    """The tier a quality score puts a model in: 1 below 65, 2 below 85, else 3."""
    if score < 65:
        return 1
    if score < 85:
        return 2
    return 3


def load_quality(source: str | Path, *, timeout: float = 10.0) -> dict[str, int]:
    """Scores from a CSV (``model,score``, header optional) or JSON (``{id: score}``) file."""
    data, where = _read_source(source, timeout)
    text = data.decode("utf-8-sig")
    raw: list[tuple[str, Any]]
    if text.lstrip().startswith("{"):
        document = _parse_json(data, where)
        raw = list(document.items())
    else:
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
        if rows and rows[0][0].strip().lower() in {"model", "id", "name"}:
            rows = rows[1:]
        raw = []
        for n, row in enumerate(rows, 1):
            if len(row) < 2:
                raise FeedError(f"{where}: row {n}: expected 'model,score'")
            raw.append((row[0].strip(), row[1].strip()))
    scores = {}
    for name, value in raw:
        try:
            score = Decimal(str(value))
        except InvalidOperation:
            raise FeedError(f"entry {name!r}.score: not a number: {value!r}") from None
        if not score.is_finite() or not 0 <= score <= 100:
            raise FeedError(f"entry {name!r}.score: must be within 0-100, got {value!r}")
        scores[name] = int(score.to_integral_value())
    return scores


def apply_quality(
    catalog: Catalog, scores: Mapping[str, int], label: str, *, set_tiers: bool = True
) -> tuple[tuple[ModelInfo, ...], QualityReport]:
    """The catalog's models with ``scores`` applied (and tiers from quality bands)."""
    report = QualityReport()
    updates: dict[str, int] = {}
    for name, score in scores.items():
        model = catalog.find(name)
        if model is None:
            report.unknown.append(name)
        else:
            updates[model.id] = score
    models = []
    for m in catalog.models:
        if m.id in updates:
            score = updates[m.id]
            tier = tier_for_quality(score) if set_tiers else m.tier
            m = replace(m, quality=score, quality_source=label, tier=tier)
            report.updated.append(m.id)
        models.append(m)
    return tuple(models), report
