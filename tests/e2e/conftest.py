"""Browser tests: the example project served in a child process, driven by Chromium.

The site runs offline (FakeProvider, realistic latency) on a free port with a
fresh SQLite database seeded like ``make demo``. Playwright drives the system's
Chromium (``/usr/bin/chromium``, or ``LLMROUTE_CHROMIUM``); it never downloads a
browser. Without Playwright or Chromium the tests are skipped, unless
``LLMROUTE_E2E_REQUIRED=1`` (``make e2e`` sets it, after installing both).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from example_project.demo_login import ADMIN_PASSWORD, ADMIN_USERNAME
from example_project.server import demo_env, prepare, serve

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = os.environ.get("LLMROUTE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
]


@dataclass(frozen=True)
class Site:
    """The running example site."""

    url: str
    db_path: Path


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (make e2e installs it)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (make e2e installs it)"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium, shared by every browser test."""
    missing = _missing()
    if missing:
        if os.environ.get("LLMROUTE_E2E_REQUIRED") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def site(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The example project, migrated, seeded and served offline."""
    tmp = tmp_path_factory.mktemp("site")
    db_path = tmp / "demo.sqlite3"
    env = demo_env(db_path)
    seeding = functools.partial(prepare, db_path, env=env)
    with serve(db_path, env=env, log_path=tmp / "server.log", while_starting=seeding) as url:
        yield Site(url, db_path)


def _tab(browser: Browser, site: Site, storage_state: Path | None = None) -> Page:
    context = browser.new_context(
        base_url=site.url,
        viewport={"width": 1280, "height": 900},
        storage_state=storage_state,
    )
    context.set_default_timeout(15_000)
    return context.new_page()


@pytest.fixture(scope="session")
def admin_session(browser: Browser, site: Site, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cookies of an admin session, signed in once through the login form."""
    tab = _tab(browser, site)
    tab.goto("/admin/login/?next=/admin/")
    tab.fill("#id_username", ADMIN_USERNAME)
    tab.fill("#id_password", ADMIN_PASSWORD)
    tab.click("input[type=submit]")
    tab.wait_for_url("**/admin/")
    assert "Log out" in tab.content() or tab.locator("#logout-form").count() == 1
    state = tmp_path_factory.mktemp("auth") / "admin.json"
    tab.context.storage_state(path=str(state))
    tab.context.close()
    return state


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    """A fresh, anonymous browser tab (its own cookies) on the site."""
    tab = _tab(browser, site)
    yield tab
    tab.context.close()


@pytest.fixture
def admin_page(browser: Browser, site: Site, admin_session: Path) -> Iterator[Page]:
    """A tab signed in to the admin as the demo administrator."""
    tab = _tab(browser, site, admin_session)
    yield tab
    tab.context.close()
