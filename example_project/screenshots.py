"""Take the documentation's screenshots of the demo with Playwright and Chromium.

Seeds a fresh demo database in a temporary directory, serves it offline, and
writes PNGs to ``docs/``: the admin cost report over the seeded month, the
routing decisions page, and a ticket after the "summarize" action. Uses the
system's Chromium (``/usr/bin/chromium`` or ``LLMROUTE_CHROMIUM``).
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from example_project.demo_login import ADMIN_PASSWORD, ADMIN_USERNAME
from example_project.server import demo_env, prepare, serve

if TYPE_CHECKING:
    from playwright.sync_api import FloatRect

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM = os.environ.get("LLMROUTE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
]


def _top(height: int) -> FloatRect:
    return {"x": 0, "y": 0, "width": 1440, "height": height}


def main() -> int:
    """Write the screenshots; print where they went."""
    from playwright.sync_api import sync_playwright

    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmroute-screenshots-") as tmp:
        db_path = Path(tmp) / "demo.sqlite3"
        env = demo_env(db_path)
        seeding = functools.partial(prepare, db_path, env=env)
        with (
            serve(db_path, env=env, while_starting=seeding) as base,
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            context = browser.new_context(
                base_url=base, viewport={"width": 1440, "height": 900}, device_scale_factor=1
            )
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto("/admin/login/?next=/admin/")
            page.fill("#id_username", ADMIN_USERNAME)
            page.fill("#id_password", ADMIN_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/")

            page.goto("/tickets/3/")
            page.click("#action-summarize")
            page.wait_for_selector("#routing")
            page.screenshot(path=str(DOCS / "demo-summarize.png"), full_page=True)

            page.goto("/")
            page.locator("table.tickets a", has_text="502").click()
            page.click("#action-draft")
            page.wait_for_selector("#routing-panel #routing")
            page.screenshot(path=str(DOCS / "demo-draft-reply.png"), full_page=True)

            # The admin reports are long: the top of each (totals, charts) tells the story.
            page.goto("/admin/django_llmroute/costreport/")
            page.screenshot(path=str(DOCS / "cost-report.png"), full_page=True, clip=_top(1500))
            page.goto("/admin/django_llmroute/routingdecision/")
            page.screenshot(
                path=str(DOCS / "routing-decisions.png"), full_page=True, clip=_top(1250)
            )
            page.goto("/admin/django_llmroute/budget/")
            page.screenshot(path=str(DOCS / "budgets.png"))
            browser.close()
    for name in sorted(p.name for p in DOCS.glob("*.png")):
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
