"""``manage.py llmroute_sync_prices``: merge a pricing feed into the catalog and say what changed.

The catalog starts from ``LLMROUTE["CATALOG_PATH"]`` when that file exists (else the
bundled snapshot); the feed (``--feed``, else ``LLMROUTE["CATALOG_FEED"]``) is a
LiteLLM, OpenRouter or llmroute document, a file or an http(s) URL. The merged
catalog is written to ``--out`` or ``CATALOG_PATH``, which the engine loads when it
is built (workers pick it up when they start, or at once with ``CATALOG_REFRESH_S``
refreshing from the feed in every process). ``--dry-run`` only reports.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing_middleware.catalog import Catalog, ModelInfo


def _per_million(value: Decimal | None) -> str:
    return "-" if value is None else f"${format(value.normalize(), 'f')}"


def _describe(before: ModelInfo, after: ModelInfo) -> str:
    parts = []
    for field in ("input", "output", "cached_input"):
        old, new = getattr(before.price, field), getattr(after.price, field)
        if old != new:
            parts.append(f"{field} {_per_million(old)} -> {_per_million(new)}")
    for field in ("context_window", "max_output_tokens"):
        old, new = getattr(before, field), getattr(after, field)
        if old != new:
            parts.append(f"{field} {old} -> {new}")
    return "; ".join(parts) or "details"


class Command(BaseCommand):
    help = (
        "Merge a pricing feed (LiteLLM, OpenRouter or llmroute format) into the model "
        "catalog, report added, changed and removed models, and write the result."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--feed", help="file or URL (default: LLMROUTE['CATALOG_FEED'])")
        parser.add_argument("--format", choices=("litellm", "openrouter", "llmroute"))
        parser.add_argument("--out", help="where to write (default: LLMROUTE['CATALOG_PATH'])")
        parser.add_argument(
            "--known-only", action="store_true", help="update models already in the catalog only"
        )
        parser.add_argument("--dry-run", action="store_true", help="report, write nothing")
        parser.add_argument("--timeout", type=float, default=10.0, help="seconds, for URLs")

    def handle(self, *args: Any, **options: Any) -> None:
        from django_llmroute.conf import get_settings
        from routing_middleware.feeds import FeedError

        settings = get_settings()
        feed = options["feed"] or settings.core.catalog_feed
        if not feed:
            raise CommandError("no feed: pass --feed or set LLMROUTE['CATALOG_FEED']")
        current = settings.django.CATALOG_PATH
        if current and Path(current).is_file():
            catalog = Catalog.load(current)
            base = current
        else:
            catalog = Catalog.bundled()
            base = "the bundled snapshot"
        before = {m.id: m for m in catalog.models}
        try:
            report = catalog.update_from_feed(
                feed,
                options["format"],
                timeout=options["timeout"],
                add_new=not options["known_only"],
            )
        except FeedError as exc:
            raise CommandError(f"feed {feed}: {exc}") from None
        after = {m.id: m for m in catalog.models}
        self.stdout.write(f"catalog {base}: {len(before)} models")
        self.stdout.write(f"feed    {report.source} ({report.format}): {report.summary()}")
        for model_id in report.added:
            model = after[model_id]
            self.stdout.write(
                f"  added    {model_id}  input {_per_million(model.price.input)} "
                f"output {_per_million(model.price.output)} per 1M tokens"
            )
        for model_id in report.changed:
            self.stdout.write(
                f"  changed  {model_id}  {_describe(before[model_id], after[model_id])}"
            )
        for model_id in report.removed:
            self.stdout.write(f"  removed  {model_id}")
        for name in report.skipped:
            self.stdout.write(f"  skipped  {name}")
        out = options["out"] or current
        if options["dry_run"]:
            self.stdout.write("dry run: nothing written")
            return
        if not out:
            self.stdout.write(
                "not written: pass --out or set LLMROUTE['CATALOG_PATH'] to keep the result"
            )
            return
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(catalog.to_json(), encoding="utf-8")
        self.stdout.write(f"wrote   {out} ({len(after)} models)")
        if current and Path(out).resolve() == Path(current).resolve():
            from django_llmroute import runtime

            runtime.reset()  # this process's engine loads the new catalog on next use
