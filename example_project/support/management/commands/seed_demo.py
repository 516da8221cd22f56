"""``manage.py seed_demo``: the demo's accounts, tickets, budgets and a month of traffic."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from ....demo_login import ADMIN_PASSWORD, ADMIN_USERNAME
from ...seed import seed


class Command(BaseCommand):
    """Seed the demo database; running it again changes nothing."""

    help = "Create the demo admin, agents, tickets, budgets and 30 days of LLM calls."
    # The server that follows runs the checks; skipping them here keeps setup fast.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=30, help="days of traffic (default 30)")
        parser.add_argument(
            "--migrate", action="store_true", help="apply migrations first (one start-up, not two)"
        )
        parser.add_argument(
            "--site", help="the URL the site will be served at, to print where to go"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["migrate"]:
            call_command("migrate", interactive=False, verbosity=0, skip_checks=True)
        result = seed(days=options["days"])
        if result.already_seeded:
            self.stdout.write("Demo traffic already present; nothing added.")
        else:
            self.stdout.write(
                f"Stored {result.created_calls:,} LLM calls over {options['days']} days."
            )
        self.stdout.write(
            f"Users created: {result.created_users}; tickets created: {result.created_tickets}; "
            f"budgets: {result.budgets}."
        )
        site = (options.get("site") or "").rstrip("/")
        if not site:
            self.stdout.write(f"Admin login: {ADMIN_USERNAME} / {ADMIN_PASSWORD}")
            return
        self.stdout.write(
            "\n"
            f"  Support desk   {site}/  (open a ticket, then click its actions)\n"
            f"  Admin          {site}/admin/  user {ADMIN_USERNAME}, password {ADMIN_PASSWORD}\n"
            f"  Cost report    {site}/admin/django_llmroute/costreport/\n"
            "  Ctrl-C stops the server.\n"
        )
