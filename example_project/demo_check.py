"""``make demo-check``: set the demo up, serve it, use it over HTTP, and check what comes back.

Runs offline in a temporary directory: migrates and seeds a fresh SQLite database,
starts the site on a free port, then requests the home page, a ticket, the
"summarize" action, the streamed "draft reply", the gateway (which must refuse a
call without a key), the admin login and, signed in, the cost report; finally
checks that the two LLM calls were recorded. Exits 0 when every check passes, 1
otherwise.
"""

from __future__ import annotations

import http.cookiejar
import re
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from example_project.demo_login import ADMIN_PASSWORD, ADMIN_USERNAME
from example_project.server import demo_env, prepare, serve


class CheckFailed(Exception):
    """A response was not what the demo should serve."""


class Browser:
    """A tiny cookie-keeping HTTP client that speaks Django's CSRF protocol."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def csrf(self) -> str:
        for cookie in self.cookies:
            if cookie.name == "csrftoken" and cookie.value:
                return cookie.value
        raise CheckFailed("no CSRF cookie was set")

    def request(
        self,
        path: str,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        body = None
        all_headers = dict(headers or {})
        if data is not None:
            body = urllib.parse.urlencode({"csrfmiddlewaretoken": self.csrf(), **data}).encode()
            all_headers["Referer"] = self.base + path
        request = urllib.request.Request(self.base + path, data=body, headers=all_headers)
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read().decode(errors="replace")


def expect(condition: bool, message: str) -> None:
    """Fail the check with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def check_home(web: Browser) -> str:
    status, _, html = web.request("/")
    expect(status == 200, f"home page answered {status}")
    expect("Tickets" in html and "/tickets/" in html, "home page lists no tickets")
    expect("Offline mode" in html, "home page does not say that it runs offline")
    return "home page lists the tickets and says it runs offline"


def _first_ticket(web: Browser) -> str:
    _, _, html = web.request("/")
    found = re.search(r'href="(/tickets/\d+/)"', html)
    expect(found is not None, "no ticket link on the home page")
    assert found is not None
    return found.group(1)


def check_summarize(web: Browser) -> str:
    ticket = _first_ticket(web)
    status, _, html = web.request(ticket)
    expect(status == 200, f"ticket page answered {status}")
    status, _, html = web.request(ticket + "summarize/", data={})
    expect(status == 200, f"summarize answered {status}")
    model = re.search(r'data-field="model">([^<]+)', html)
    cost = re.search(r'data-field="cost">\$([0-9.]+)', html)
    expect(model is not None, "summarize page does not show the model that answered")
    expect(cost is not None and float(cost.group(1)) > 0, "summarize page shows no cost")
    expect('data-field="requested-cost">$' in html, "no requested-model cost shown")
    assert model is not None
    assert cost is not None
    return f"summarize answered by {model.group(1).strip()} for ${cost.group(1)}"


def check_draft_stream(web: Browser) -> str:
    ticket = _first_ticket(web)
    status, headers, body = web.request(
        ticket + "draft-reply/", data={}, headers={"Accept": "text/event-stream"}
    )
    expect(status == 200, f"draft reply answered {status}")
    kind = headers.get("Content-Type", "")
    expect(kind.startswith("text/event-stream"), f"draft reply is {kind!r}, not an event stream")
    tokens = body.count("event: token\n")
    expect(tokens >= 5, f"draft reply streamed {tokens} token events")
    expect("event: done\n" in body and "Answered by" in body, "stream did not end with routing")
    expect("event: error" not in body, "stream reported an error")
    return f"draft reply streamed {tokens} token events, then the routing panel"


def check_admin(web: Browser) -> str:
    status, _, html = web.request("/admin/login/")
    expect(status == 200 and 'name="password"' in html, f"admin login page answered {status}")
    status, _, html = web.request(
        "/admin/login/?next=/admin/",
        data={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD, "next": "/admin/"},
    )
    expect(status == 200 and "Log out" in html, "could not sign in to the admin")
    status, _, html = web.request("/admin/django_llmroute/costreport/")
    expect(status == 200, f"cost report answered {status}")
    expect('id="llmroute-cost-report"' in html, "cost report page has no report")
    expect(html.count("<svg") >= 3, "cost report has fewer than three charts")
    spend = re.search(r'data-total="spend">\s*\$([0-9,.]+)', html)
    expect(spend is not None, "cost report shows no total spend")
    assert spend is not None
    expect(float(spend.group(1).replace(",", "")) > 0, "cost report total spend is zero")
    would_save = re.search(r'data-total="would-save">\s*([^<]+)<', html)
    expect(
        'id="llmroute-observe"' in html and would_save is not None,
        "cost report shows no observe-mode section over the seeded traffic",
    )
    assert would_save is not None
    return (
        f"admin sign-in works; cost report shows ${spend.group(1)} over seeded traffic,"
        f" observe mode would have saved {would_save.group(1).strip()}"
    )


def check_gateway(base: str) -> str:
    request = urllib.request.Request(
        base + "/v1/chat/completions",
        data=b'{"model": "gpt-5.4", "messages": [{"role": "user", "content": "Hi"}]}',
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode(errors="replace")
    expect(status == 401, f"the gateway answered {status} to a call without an API key")
    expect('"error"' in body, "the gateway's refusal is not an OpenAI-style error body")
    return "the gateway at /v1 refuses a call without an API key, in the OpenAI dialect"


def check_recorded(db_path: Path, wanted: int = 2, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        with sqlite3.connect(db_path, timeout=10) as db:
            found = db.execute(
                "SELECT COUNT(*) FROM django_llmroute_llmcall "
                "WHERE record_id NOT LIKE 'seed-%' AND status = 'ok'"
            ).fetchone()[0]
        if found >= wanted:
            return f"{found} new LLM calls recorded in the database"
        time.sleep(0.25)
    raise CheckFailed(f"{found} of {wanted} LLM calls were recorded within {timeout:.0f} s")


def main() -> int:
    """Run every check; print one line each; 0 when all pass."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llmroute-demo-check-") as tmp:
        db_path = Path(tmp) / "demo.sqlite3"
        env = demo_env(db_path)
        log = Path(tmp) / "server.log"
        try:
            # Seeding runs while the server boots; it answers once the data is there.
            def seed() -> None:
                print(prepare(db_path, env=env).strip())

            with serve(db_path, env=env, log_path=log, while_starting=seed) as base:
                print(f"serving on {base}")
                web = Browser(base)
                checks: list[Callable[[], str]] = [
                    lambda: check_home(web),
                    lambda: check_summarize(web),
                    lambda: check_draft_stream(web),
                    lambda: check_gateway(base),
                    lambda: check_admin(web),
                    lambda: check_recorded(db_path),
                ]
                for check in checks:
                    print(f"ok  {check()}")
        except (CheckFailed, RuntimeError) as failure:
            print(f"FAIL  {failure}", file=sys.stderr)
            if log.exists():
                print("--- server log (last lines) ---", file=sys.stderr)
                print(
                    "\n".join(log.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr
                )
            return 1
    print(f"demo-check passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
