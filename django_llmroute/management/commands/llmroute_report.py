"""``manage.py llmroute_report``: spend by feature / user / model / provider / day / tier.

The figures are the admin cost report's, summed by :mod:`django_llmroute.reports`:
savings count the enforced calls only, and observe-mode calls show apart what
routing would have saved them.
"""

from __future__ import annotations

import csv
from datetime import date, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from django_llmroute import reports
from django_llmroute.models import NO_TIER, DailySummary, DailyUsage, LLMCall

#: Figures of each row, in the CSV's column order: ``saved_usd`` is what routing saved
#: on the enforced calls; the ``observed_*`` columns cover the observe-mode calls (which
#: went to the requested model): their number, their spend, what routing's pick would
#: have cost them, and ``would_save_usd``, the difference.
FIGURES = (
    "calls",
    "input_tokens",
    "output_tokens",
    "spend_usd",
    "saved_usd",
    "observed_calls",
    "observed_spend_usd",
    "observed_routed_usd",
    "would_save_usd",
)

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
        today = timezone.localdate(reports.aware(timezone.now()), timezone.get_default_timezone())
        until = options["until"] or today
        since = options["since"] or until - timedelta(days=max(options["days"], 1) - 1)
        if since > until:
            raise CommandError("--since is after --until")
        rows, totals = self._figures(groups, since, until, from_calls=options["source"] == "calls")
        if options["limit"]:
            rows = rows[: options["limit"]]
        if "user" in groups:
            names = reports.user_labels({str(r["user"]) for r in rows if r["user"]})
            for r in rows:
                r["user"] = names.get(str(r["user"]), r["user"])
        header = [*groups, *FIGURES]
        if options["format"] == "csv":
            writer = csv.writer(self.stdout, lineterminator="\n")
            writer.writerow(header)
            for r in rows:
                cells = (reports.csv_cell(_cell(r[g])) for g in groups)
                writer.writerow([*cells, *(r[k] for k in FIGURES)])
            return
        self._table(groups, rows, totals, since, until)

    def _figures(
        self, groups: list[str], since: date, until: date, *, from_calls: bool
    ) -> tuple[list[dict[str, Any]], reports.Totals]:
        """The rows and the period's totals, summed as the admin's cost report sums them."""
        source: QuerySet[Any]
        if not from_calls and all(GROUPS[g][1] for g in groups):
            model = DailyUsage if "user" in groups else DailySummary
            source = model.objects.filter(date__gte=since, date__lte=until)
            columns = [str(GROUPS[g][1]) for g in groups]
            totals = reports.rollup_totals(source)
            rollup = True
        else:
            start, end = reports.date_range(since, until)
            source = LLMCall.objects.filter(created_at__gte=start, created_at__lt=end)
            totals = reports.totals(source, with_p95=False)
            if "day" in groups:
                source = source.annotate(
                    day=TruncDate("created_at", tzinfo=timezone.get_default_timezone())
                )
            columns = [GROUPS[g][0] for g in groups]
            rollup = False
        rows = [
            {
                **{
                    g: None if g == "tier" and key == NO_TIER else key
                    for g, key in zip(groups, row.key, strict=True)
                },
                "calls": row.calls,
                "input_tokens": row.extra["input_tokens"],
                "output_tokens": row.extra["output_tokens"],
                "spend_usd": row.spend,
                "saved_usd": row.savings,
                "observed_calls": row.observed_calls,
                "observed_spend_usd": row.observed_spend,
                "observed_routed_usd": row.observed_routed,
                "would_save_usd": row.would_save,
            }
            for row in reports.grouped_rows(source, columns, rollup=rollup)
        ]
        rows.sort(key=lambda r: (-r["spend_usd"], *(str(r[g]) for g in groups)))
        return rows, totals

    def _table(
        self,
        groups: list[str],
        rows: list[dict[str, Any]],
        totals: reports.Totals,
        since: date,
        until: date,
    ) -> None:
        observed = totals.observed_calls > 0
        money = reports.format_money
        body = [
            [
                *(_cell(r[g]) or "—" for g in groups),
                f"{r['calls']:,}",
                f"{r['input_tokens']:,}",
                f"{r['output_tokens']:,}",
                money(r["spend_usd"]),
                money(r["saved_usd"]),
                *([money(r["would_save_usd"]) if r["observed_calls"] else "—"] if observed else []),
            ]
            for r in rows
        ]
        names = [*groups, "calls", "input", "output", "spend", "saved"]
        if observed:
            names.append("would save")
        # A list, so that a period without calls (no body) still has its widths.
        widths = [max([len(n), *(len(line[i]) for line in body)]) for i, n in enumerate(names)]
        numeric = set(range(len(groups), len(names)))

        def fmt(cells: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in numeric else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        shown = totals.display()
        self.stdout.write(f"LLM spend {since} … {until} by {', '.join(groups)}")
        self.stdout.write(fmt(names))
        self.stdout.write("  ".join("-" * w for w in widths))
        for line in body:
            self.stdout.write(fmt(line))
        self.stdout.write(f"total: {shown['spend']} over {shown['calls']} calls")
        self.stdout.write(f"saved by routing (enforced calls): {shown['savings']}")
        if observed:
            self.stdout.write(
                f"observe mode: {shown['observed_calls']} calls cost {shown['observed_spend']};"
                f" routed, {shown['observed_routed']}: would have saved {shown['would_save']}"
            )
            if totals.observed_unpriced:
                self.stdout.write(
                    f"  ({shown['observed_unpriced']} of them have no routed price"
                    " and count at what they cost)"
                )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, date):
        return value.isoformat()
    return str(value)
