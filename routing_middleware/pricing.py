"""What a call costs, from its usage and the catalog's list prices.

Conventions (those of :class:`~routing_middleware.schema.Usage`): ``input_tokens``
includes cached reads and cache writes, ``output_tokens`` includes reasoning. So::

    cost = uncached input   x input
         + cached reads     x cached_input      (input price when none is listed)
         + cache writes     x cache_write       (input price when none is listed)
           of which long-TTL writes x cache_write_long (cache_write when none)
         + (output - reasoning) x output
         + reasoning        x reasoning         (output price when none is listed)

Long-context bands and Qwen tiers re-price the *whole* request: the highest band whose
``above_tokens`` is below ``input_tokens`` applies. Off-peak prices (DeepSeek) apply
when ``at`` falls in one of the model's windows; ``at=None`` means the standard list
price, so pass the call's time to get the discount.

Every amount is ``Decimal`` USD quantized to 1e-10 (:data:`COST_QUANTUM`), half-even.
When a model's prices are whole multiples of 1e-4 USD per 1M tokens (1e-10 per token;
every listed price is), :func:`cost_of` at list price adds integer 1e-10 units instead:
the same amount, exactly, in a fraction of the time.

:func:`cost_of` always computes from list prices. :func:`billed_cost` prefers the
cost the provider itself reported (``Usage.provider_cost``, e.g. OpenRouter's
``usage.cost``) and falls back to :func:`cost_of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from .catalog import Catalog, ModelInfo, Price, default_catalog
from .schema import Usage

__all__ = [
    "COST_QUANTUM",
    "CostLine",
    "Rates",
    "billed_cost",
    "billed_cost_now",
    "cost_breakdown",
    "cost_of",
    "estimate_cost",
    "rates_for",
]

#: Costs are rounded to this many USD (1e-10: far below any token's price).
COST_QUANTUM = Decimal("1e-10")
_PER_M = Decimal("1e-6")
#: Per-token rates in 1e-10 USD units, by ``id(price)`` (with the price, to check it is
#: the same object): ``None`` for prices that take the Decimal path.
_UNITS: dict[int, tuple[Price, tuple[int, ...] | None]] = {}
_UNITS_MAX = 1024
#: Integer totals at or above this go the Decimal path (its precision limits apply).
_UNITS_LIMIT = 10**18


@dataclass(frozen=True, slots=True)
class Rates:
    """The per-1M-token prices that apply to one request, every fallback resolved."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    cache_write_long: Decimal
    reasoning: Decimal
    #: ``above_tokens`` of the band in force, ``None`` for base prices.
    band: int | None = None
    off_peak: bool = False


@dataclass(frozen=True, slots=True)
class CostLine:
    """One line of a cost computation: ``tokens`` at ``rate`` USD per 1M = ``amount``."""

    label: str
    tokens: int
    rate: Decimal
    amount: Decimal


def _resolve(model: ModelInfo | str, catalog: Catalog | None) -> ModelInfo:
    if isinstance(model, ModelInfo):
        return model
    return (catalog or default_catalog()).get(model)


def rates_for(price: Price, input_tokens: int, at: datetime | None = None) -> Rates:
    """The prices for a request of ``input_tokens`` at time ``at`` (see module docs)."""
    inp, out = price.input, price.output
    cached, write, write_long = price.cached_input, price.cache_write, price.cache_write_long
    reasoning = price.reasoning
    band_at = None
    for band in price.bands:  # sorted ascending; the last one that applies wins
        if band.above_tokens < input_tokens and (band_at is None or band.above_tokens > band_at):
            band_at = band.above_tokens
            inp, out = band.input, band.output
            cached = band.cached_input if band.cached_input is not None else price.cached_input
            write = band.cache_write if band.cache_write is not None else price.cache_write
            write_long = (
                band.cache_write_long
                if band.cache_write_long is not None
                else price.cache_write_long
            )
            reasoning = band.reasoning if band.reasoning is not None else price.reasoning
    off_peak = False
    op = price.off_peak
    if at is not None and op is not None and op.applies_at(at):
        off_peak = True
        inp, out = op.input, op.output
        if op.cached_input is not None:
            cached = op.cached_input
    write_rate = write if write is not None else inp
    return Rates(
        input=inp,
        output=out,
        cached_input=cached if cached is not None else inp,
        cache_write=write_rate,
        cache_write_long=write_long if write_long is not None else write_rate,
        reasoning=reasoning if reasoning is not None and not off_peak else out,
        band=band_at,
        off_peak=off_peak,
    )


def cost_breakdown(
    usage: Usage,
    model: ModelInfo | str,
    at: datetime | None = None,
    catalog: Catalog | None = None,
) -> tuple[list[CostLine], Decimal]:
    """The lines of the computation (zero-token lines left out) and the total."""
    info = _resolve(model, catalog)
    r = rates_for(info.price, usage.input_tokens, at)
    short_writes = usage.cache_write_tokens - usage.cache_write_long_tokens
    parts = [
        ("uncached input", usage.uncached_input_tokens, r.input),
        ("cached input", usage.cached_input_tokens, r.cached_input),
        ("cache write", short_writes, r.cache_write),
        ("cache write (long TTL)", usage.cache_write_long_tokens, r.cache_write_long),
        ("output", usage.output_tokens - usage.reasoning_tokens, r.output),
        ("reasoning", usage.reasoning_tokens, r.reasoning),
    ]
    lines = [
        CostLine(label, tokens, rate, (tokens * rate * _PER_M).quantize(COST_QUANTUM))
        for label, tokens, rate in parts
        if tokens
    ]
    total = (sum((t * rate for _, t, rate in parts), Decimal(0)) * _PER_M).quantize(COST_QUANTUM)
    return lines, total


def list_price_units(price: Price) -> tuple[int, ...] | None:
    """The base rates (input, cached input, cache write, long cache write, output,
    reasoning) of ``price`` in 1e-10 USD per token, when they are all whole numbers of
    such units and no band can apply; else ``None``."""
    found = _UNITS.get(id(price))
    if found is not None and found[0] is price:
        return found[1]
    units: tuple[int, ...] | None = None
    if not price.bands:
        r = rates_for(price, 0)
        scaled = [
            rate.scaleb(4)
            for rate in (
                r.input,
                r.cached_input,
                r.cache_write,
                r.cache_write_long,
                r.output,
                r.reasoning,
            )
        ]
        if all(x.is_finite() and x == x.to_integral_value() for x in scaled):
            units = tuple(int(x) for x in scaled)
    if len(_UNITS) >= _UNITS_MAX:
        _UNITS.clear()
    _UNITS[id(price)] = (price, units)
    return units


def _cost_in_units(usage: Usage, units: tuple[int, ...]) -> Decimal | None:
    """:func:`cost_of` at base rates in integer arithmetic (``None``: not applicable)."""
    cached = usage.cached_input_tokens
    writes = usage.cache_write_tokens
    long_writes = usage.cache_write_long_tokens
    reasoning = usage.reasoning_tokens
    uncached = usage.input_tokens - cached - writes
    output = usage.output_tokens - reasoning
    if min(uncached, output, cached, writes - long_writes, long_writes, reasoning) < 0:
        return None
    total = uncached * units[0] + output * units[4]
    if cached:
        total += cached * units[1]
    if writes:
        total += (writes - long_writes) * units[2] + long_writes * units[3]
    if reasoning:
        total += reasoning * units[5]
    if total >= _UNITS_LIMIT:
        return None
    return Decimal(total).scaleb(-10)


def cost_of(
    usage: Usage,
    model: ModelInfo | str,
    at: datetime | None = None,
    catalog: Catalog | None = None,
) -> Decimal:
    """List-price cost in USD of ``usage`` on ``model`` (an id, alias or :class:`ModelInfo`).

    Names resolve in ``catalog`` (the process-wide :func:`default_catalog` when
    ``None``); an unknown name raises :class:`~routing_middleware.schema.UnknownModel`.
    Quantized to :data:`COST_QUANTUM`. Ignores ``usage.provider_cost``: see
    :func:`billed_cost`.
    """
    info = _resolve(model, catalog)
    if at is None or info.price.off_peak is None:
        units = list_price_units(info.price)
        if units is not None:
            found = _cost_in_units(usage, units)
            if found is not None:
                return found
    r = rates_for(info.price, usage.input_tokens, at)
    long_writes = usage.cache_write_long_tokens
    reasoning = usage.reasoning_tokens
    total = (
        usage.uncached_input_tokens * r.input
        + usage.cached_input_tokens * r.cached_input
        + (usage.cache_write_tokens - long_writes) * r.cache_write
        + long_writes * r.cache_write_long
        + (usage.output_tokens - reasoning) * r.output
        + reasoning * r.reasoning
    )
    return (total * _PER_M).quantize(COST_QUANTUM)


def billed_cost(
    usage: Usage,
    model: ModelInfo | str,
    at: datetime | None = None,
    catalog: Catalog | None = None,
) -> Decimal:
    """The provider-reported cost when there is one, else :func:`cost_of`."""
    if usage.provider_cost is not None:
        return usage.provider_cost.quantize(COST_QUANTUM)
    return cost_of(usage, model, at, catalog)


def billed_cost_now(usage: Usage, model: ModelInfo, catalog: Catalog | None = None) -> Decimal:
    """:func:`billed_cost` of a call that ran just now: off-peak prices (DeepSeek) apply
    by the clock; any other model is priced without reading it."""
    at = datetime.now(UTC) if model.price.off_peak is not None else None
    return billed_cost(usage, model, at, catalog)


def estimate_cost(
    model: ModelInfo | str,
    input_tokens: int,
    output_tokens: int,
    catalog: Catalog | None = None,
) -> Decimal:
    """List-price cost of a plain request (no cache, no off-peak): the routers' fast path.

    Bands apply as in :func:`cost_of`; reasoning is priced as output.
    """
    price = _resolve(model, catalog).price
    inp, out = price.input, price.output
    if price.bands:
        r = rates_for(price, input_tokens)
        inp, out = r.input, r.output
    return ((input_tokens * inp + output_tokens * out) * _PER_M).quantize(COST_QUANTUM)
