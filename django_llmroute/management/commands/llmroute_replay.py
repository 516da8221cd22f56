"""``manage.py llmroute_replay``: put spooled usage records into the database, exactly once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_llmroute.sinks import replay_spool
from django_llmroute.spool import default_spool_path


class Command(BaseCommand):
    help = (
        "Replay the usage-record spool into the database. Safe to run again, and while "
        "the app runs: records already stored are skipped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--path", help="the spool file (default: LLMROUTE['SPOOL_PATH'])")
        parser.add_argument("--database", default="default")
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["path"] or default_spool_path(options["database"])
        result = replay_spool(path, using=options["database"], batch_size=options["batch_size"])
        self.stdout.write(
            f"{path}: read {result.read}, inserted {result.inserted}, "
            f"already stored {result.skipped}, rejected {result.rejected} "
            f"({result.files} file(s))"
        )
        if result.rejected:
            self.stderr.write(
                f"unreadable lines and records the database refused were moved to {path}.rejected"
            )
