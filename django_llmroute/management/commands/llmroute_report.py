"""``manage.py llmroute_report``: spend by feature / user / model / provider / day / tier."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, F, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from django_llmroute import reports
from django_llmroute.models import NO_TIER, DailySummary, DailyUsage, LLMCall

#: Grouping name -> (LLMCall field, rollup field or None when the rollups lack it).
GROUPS: dict[str, tuple[str, str | None]] = {
    "day": ("day", "date"),
    "feature": ("feature", "feature"),
    "user": ("user_ref", "user_ref"),
    "model": ("chosen_model", "model"),
    "provider": ("provider", "provider"),
    "tier": ("tier", "tier"),
}


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(f"{text!r} is not a date like 2026-01-31") from exc


class Command(BaseCommand):
    help = "Report LLM spend for a period, grouped by feature, user, model, provider, day or tier."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", type=_day, help="first day (YYYY-MM-DD), inclusive")
        parser.add_argument("--until", type=_day, help="last day (YYYY-MM-DD), inclusive")
        parser.add_argument(
            "--days", type=int, default=30, help="the last N days, today included (default 30)"
        )
        parser.add_argument(
            "--by",
            default="feature",
            help=f"comma-separated groups among {', '.join(GROUPS)} (default: feature)",
        )
        parser.add_argument("--format", choices=("table", "csv"), default="table")
        parser.add_argument("--limit", type=int, default=0, help="at most N rows (0: all)")
        parser.add_argument(
            "--source",
            choices=("rollup", "calls"),
            default="rollup",
            help="read the daily rollups (fast; kept by llmroute_prune) or every call",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        groups = [g.strip() for g in options["by"].split(",") if g.strip()]
        unknown = [g for g in groups if g not in GROUPS]
        if not groups or unknown:
            raise CommandError(f"--by takes {', '.join(GROUPS)}; got {options['by']!r}")
        today = timezone.localdate(timezone.now(), timezone.get_default_timezone())
        until = options["until"] or today
        since = options["since"] or until - timedelta(days=max(options["days"], 1) - 1)
        if since > until:
            raise CommandError("--since is after --until")
        rows = self._rows(groups, since, until, from_calls=options["source"] == "calls")
        if options["limit"]:
            rows = rows[: options["limit"]]
        if "user" in groups:
            names = reports.user_labels({str(r["user"]) for r in rows if r["user"]})
            for r in rows:
                r["user"] = names.get(str(r["user"]), r["user"])
        header = [*groups, "calls", "input_tokens", "output_tokens", "spend_usd", "saved_usd"]
        if options["format"] == "csv":
            writer = csv.writer(self.stdout, lineterminator="\n")
            writer.writerow(header)
            for r in rows:
                writer.writerow(
                    [*(_cell(r[g]) for g in groups), *(r[k] for k in header[len(groups) :])]
                )
            return
        self._table(header, groups, rows, since, until)

    def _rows(
        self, groups: list[str], since: date, until: date, *, from_calls: bool
    ) -> list[dict[str, Any]]:
        if not from_calls and all(GROUPS[g][1] for g in groups):
            model = DailyUsage if "user" in groups else DailySummary
            source = model.objects.filter(date__gte=since, date__lte=until)
            columns = [str(GROUPS[g][1]) for g in groups]
            data = (
                source.order_by()
                .values(*columns)
                .annotate(
                    n_calls=Sum("calls"),
                    n_in=Sum("input_tokens"),
                    n_out=Sum("output_tokens"),
                    spend=Sum("cost"),
                    saved=Sum("saved_cost"),
                )
            )
        else:
            start, end = reports.date_range(since, until)
            source = LLMCall.objects.filter(created_at__gte=start, created_at__lt=end)
            if "day" in groups:
                source = source.annotate(
                    day=TruncDate("created_at", tzinfo=timezone.get_default_timezone())
                )
            columns = [GROUPS[g][0] for g in groups]
            data = (
                source.order_by()
                .values(*columns)
                .annotate(
                    n_calls=Count("id"),
                    n_in=Sum("input_tokens"),
                    n_out=Sum("output_tokens"),
                    spend=Sum("cost"),
                    saved=Sum(Coalesce("requested_cost", "cost") - F("cost")),
                )
            )
        rows = [
            {
                **{
                    g: None if g == "tier" and d[c] == NO_TIER else d[c]
                    for g, c in zip(groups, columns, strict=True)
                },
                "calls": int(d["n_calls"] or 0),
                "input_tokens": int(d["n_in"] or 0),
                "output_tokens": int(d["n_out"] or 0),
                "spend_usd": reports.as_decimal(d["spend"]),
                "saved_usd": reports.as_decimal(d["saved"]),
            }
            for d in data
        ]
        rows.sort(key=lambda r: (-r["spend_usd"], *(str(r[g]) for g in groups)))
        return rows

    def _table(
        self,
        header: list[str],
        groups: list[str],
        rows: list[dict[str, Any]],
        since: date,
        until: date,
    ) -> None:
        body = [
            [
                *(_cell(r[g]) or "—" for g in groups),
                f"{r['calls']:,}",
                f"{r['input_tokens']:,}",
                f"{r['output_tokens']:,}",
                reports.format_money(r["spend_usd"]),
                reports.format_money(r["saved_usd"]),
            ]
            for r in rows
        ]
        total_spend = sum((r["spend_usd"] for r in rows), Decimal(0))
        total_calls = sum(r["calls"] for r in rows)
        names = [*groups, "calls", "input", "output", "spend", "saved"]
        widths = [max(len(n), *(len(line[i]) for line in body)) for i, n in enumerate(names)]
        numeric = set(range(len(groups), len(names)))

        def fmt(cells: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in numeric else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        self.stdout.write(f"LLM spend {since} … {until} by {', '.join(groups)}")
        self.stdout.write(fmt(names))
        self.stdout.write("  ".join("-" * w for w in widths))
        for line in body:
            self.stdout.write(fmt(line))
        self.stdout.write(f"total: {reports.format_money(total_spend)} over {total_calls:,} calls")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, date):
        return value.isoformat()
    return str(value)
