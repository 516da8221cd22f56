"""``manage.py llmroute_prune``: delete old call rows in batches; the daily rollup stays."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from django_llmroute.models import LLMCall


class Command(BaseCommand):
    help = "Delete LLM call rows older than N days, in batches. Daily totals are kept."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than-days", type=int, required=True)
        parser.add_argument("--batch-size", type=int, default=5000)
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
        parser.add_argument("--database", default="default")

    def handle(self, *args: Any, **options: Any) -> None:
        days, size, using = options["older_than_days"], options["batch_size"], options["database"]
        if days < 1 or size < 1:
            raise CommandError("--older-than-days and --batch-size must be at least 1")
        cutoff = timezone.now() - timedelta(days=days)
        old = LLMCall._default_manager.using(using).filter(created_at__lt=cutoff)
        if options["dry_run"]:
            self.stdout.write(
                f"would delete {old.count()} calls older than {cutoff:%Y-%m-%d %H:%M}"
            )
            return
        deleted = 0
        while True:
            with transaction.atomic(using=using):
                batch = list(old.order_by().values_list("pk", flat=True)[:size])
                if not batch:
                    break
                count, _ = LLMCall._default_manager.using(using).filter(pk__in=batch).delete()
            deleted += count
        self.stdout.write(f"deleted {deleted} calls older than {cutoff:%Y-%m-%d %H:%M}")
