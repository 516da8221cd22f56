"""The ``llmroute`` command line: browse the model catalog, price a call, sync prices.

llmroute models [--provider P] [--tier N] [--capability C] [--sort price|context|quality] [--json]
llmroute price MODEL --input N --output N [--cached N] [--cache-write N] [--reasoning N] [--at ISO]
llmroute sync-prices --feed PATH_OR_URL [--format litellm|openrouter|llmroute] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .catalog import Catalog, ModelInfo

__all__ = ["main"]


class _CliError(Exception):
    """An error shown to the user as one line on stderr."""


def _money(value: Decimal) -> str:
    """A price or cost without trailing zeros and never in exponent notation."""
    return format(value.normalize(), "f")


def _load_catalog(path: str | None) -> Catalog:
    from .catalog import Catalog, default_catalog

    if path is None:
        return default_catalog()
    try:
        return Catalog.load(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # wrong JSON shape
        raise _CliError(f"cannot load catalog {path}: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmroute",
        description="Model catalog, prices and cost computation for llmroute.",
    )
    parser.add_argument(
        "--catalog", metavar="FILE", help="use this catalog file instead of the bundled one"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser("models", help="list models with prices, context and quality")
    models.add_argument("--provider", action="append", help="only this provider (repeatable)")
    models.add_argument("--tier", type=int, choices=(1, 2, 3), action="append")
    models.add_argument("--capability", action="append", help="required capability (repeatable)")
    models.add_argument("--mode", default="chat", help="chat (default), embedding or all")
    models.add_argument("--sort", choices=("id", "price", "context", "quality"), default="id")
    models.add_argument("--json", action="store_true", help="machine-readable output")

    price = sub.add_parser("price", help="cost of one call, line by line")
    price.add_argument("model", help="canonical id or alias")
    price.add_argument("--input", type=_count, required=True, help="all input tokens")
    price.add_argument("--output", type=_count, required=True, help="all output tokens")
    price.add_argument("--cached", type=_count, default=0, help="cached-read input tokens")
    price.add_argument("--cache-write", type=_count, default=0, help="cache-write input tokens")
    price.add_argument(
        "--cache-write-long", type=_count, default=0, help="of which long-TTL writes"
    )
    price.add_argument("--reasoning", type=_count, default=0, help="reasoning output tokens")
    price.add_argument("--at", type=_when, help="ISO time of the call (off-peak prices)")

    sync = sub.add_parser("sync-prices", help="validate a pricing feed and write a merged catalog")
    sync.add_argument("--feed", required=True, metavar="PATH_OR_URL")
    sync.add_argument("--format", choices=("litellm", "openrouter", "llmroute"))
    sync.add_argument("--out", metavar="FILE", help="write the merged catalog here")
    sync.add_argument("--timeout", type=_seconds, default=10.0, help="seconds, for URLs")
    sync.add_argument(
        "--known-only", action="store_true", help="update models already in the catalog only"
    )
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a token count: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"token counts cannot be negative: {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):  # (`not >` also refuses NaN)
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text}")
    return value


def _when(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date-time: {text!r}") from None


# ---------------------------------------------------------------------- models


def _sort_key(sort: str) -> Any:
    if sort == "price":
        return lambda m: (m.price.blended, m.id)
    if sort == "context":
        return lambda m: (-m.context_window, m.id)
    if sort == "quality":
        return lambda m: (-(m.quality if m.quality is not None else -1), m.id)
    return lambda m: m.id


def _model_json(m: ModelInfo) -> dict[str, Any]:
    from .catalog import model_to_dict

    return model_to_dict(m)


def _cmd_models(args: argparse.Namespace, catalog: Catalog) -> int:
    from .catalog import CAPABILITIES

    for cap in args.capability or ():
        if cap not in CAPABILITIES:
            raise _CliError(
                f"unknown capability {cap!r}; one of: {', '.join(sorted(CAPABILITIES))}"
            )
    known = set(catalog.providers)
    for provider in args.provider or ():
        if provider not in known:
            raise _CliError(
                f"no models for provider {provider!r}; known: {', '.join(sorted(known))}"
            )
    models = catalog.filter(
        provider=args.provider,
        tier=args.tier,
        capability=args.capability,
        mode=None if args.mode == "all" else args.mode,
    )
    models.sort(key=_sort_key(args.sort))
    if args.json:
        json.dump([_model_json(m) for m in models], sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    header = ("id", "tier", "$in/M", "$out/M", "context", "quality")
    rows = [
        (
            m.id,
            str(m.tier),
            _money(m.price.input),
            _money(m.price.output),
            f"{m.context_window:,}",
            "-" if m.quality is None else str(m.quality),
        )
        for m in models
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells).rstrip())
    print(f"{len(models)} models")
    return 0


# ---------------------------------------------------------------------- price


def _cmd_price(args: argparse.Namespace, catalog: Catalog) -> int:
    from pydantic import ValidationError

    from .pricing import cost_breakdown, rates_for
    from .schema import Usage

    model = catalog.get(args.model)
    try:
        usage = Usage(
            input_tokens=args.input,
            output_tokens=args.output,
            cached_input_tokens=args.cached,
            cache_write_tokens=args.cache_write,
            cache_write_long_tokens=args.cache_write_long,
            reasoning_tokens=args.reasoning,
        )
    except ValidationError as exc:
        raise _CliError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    rates = rates_for(model.price, usage.input_tokens, args.at)
    lines, total = cost_breakdown(usage, model, args.at)
    print(f"model  {model.id}")
    notes = []
    if rates.band is not None:
        notes.append(
            f"input above {rates.band:,} tokens: long-context prices for the whole request"
        )
    if rates.off_peak:
        notes.append("off-peak prices")
    for note in notes:
        print(f"note   {note}")
    width = max([len(line.label) for line in lines] + [5])
    for line in lines:
        print(
            f"  {line.label.ljust(width)}  {line.tokens:>12,} x ${_money(line.rate)}/M"
            f" = ${_money(line.amount)}"
        )
    print(f"total  ${_money(total)}")
    return 0


# ---------------------------------------------------------------------- sync-prices


def _cmd_sync(args: argparse.Namespace, catalog: Catalog) -> int:
    from .catalog import Catalog, models_to_json
    from .feeds import load_feed, merge_feed

    feed = load_feed(args.feed, args.format, timeout=args.timeout)
    models, report = merge_feed(catalog.models, feed, add_new=not args.known_only)
    print(f"feed   {report.source} ({report.format}): {report.summary()}")
    for label, ids in (
        ("added", report.added),
        ("changed", report.changed),
        ("removed", report.removed),
    ):
        for model_id in ids:
            print(f"  {label:<8} {model_id}")
    if args.out:
        try:
            Path(args.out).write_text(models_to_json(Catalog(models).models), encoding="utf-8")
        except OSError as exc:
            raise _CliError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        print(f"wrote  {args.out} ({len(models)} models)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors: one line on stderr, status 1)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .feeds import FeedError
    from .schema import UnknownModel

    try:
        catalog = _load_catalog(args.catalog)
        if args.command == "models":
            return _cmd_models(args, catalog)
        if args.command == "price":
            return _cmd_price(args, catalog)
        return _cmd_sync(args, catalog)
    except UnknownModel as exc:
        print(f"llmroute: {exc.message}", file=sys.stderr)
    except (FeedError, _CliError) as exc:
        print(f"llmroute: {exc}", file=sys.stderr)
    except BrokenPipeError:  # `llmroute models | head`
        sys.stderr.close()
    return 1
