"""The README's quickstarts, run as a reader would paste them, offline.

Each runs in a fresh interpreter: they patch httpx globally (``instrument``) and the
Django one configures Django, neither of which may leak into other tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def _block(first_line: str) -> str:
    """The README's python block that starts with ``first_line``."""
    found = [block for block in BLOCKS if block.startswith(first_line)]
    assert len(found) == 1, f"expected one README block starting {first_line!r}"
    return found[0]


def _section_block(heading: str) -> str:
    """The first python block under the README heading ``heading``."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no python block under {heading!r}"
    return match.group(1)


def _run(directory: Path, script: str) -> str:
    """Run ``script`` in ``directory`` with no provider key set; its output."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONPATH"] = os.pathsep.join([str(directory), str(ROOT)])
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_plain_python(tmp_path: Path) -> None:
    out = _run(tmp_path, _section_block("Plain Python"))
    header, record = out.strip().splitlines()[:2]
    model, cost = header.split()
    assert cost.startswith("$")
    feature, chosen, _, saved_word, _ = record.split()
    assert (feature, chosen, saved_word) == ("summaries", model, "saved")


def test_fastapi(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(_block("# app.py"))
    out = _run(
        tmp_path,
        textwrap.dedent(
            """
            import asyncio
            import httpx
            import app as quickstart

            async def main():
                transport = httpx.ASGITransport(quickstart.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    r = await c.get("/summarize", params={"text": "My invoice is wrong"})
                    assert r.status_code == 200, r.text
                    body = r.json()
                    assert body["summary"] and body["model"], body
                    assert float(body["cost_usd"]) > 0, body
                    r = await c.post(
                        "/llm/v1/chat/completions",
                        headers={"Authorization": f"Bearer {quickstart.api_key}"},
                        json={"model": "gpt-5.4", "messages": [{"role": "user", "content": "Hi"}]},
                    )
                    assert r.status_code == 200, r.text
                    assert r.json()["choices"][0]["message"]["content"]
                    r = await c.post("/llm/v1/chat/completions", json={"model": "gpt-5.4"})
                    assert r.status_code == 401, r.text
                print("ok", len(quickstart.engine.sink.records))

            asyncio.run(main())
            """
        ),
    )
    assert out.splitlines()[-1] == "ok 2"


def test_django(tmp_path: Path) -> None:
    (tmp_path / "support").mkdir()
    (tmp_path / "support" / "__init__.py").write_text("")
    (tmp_path / "support" / "views.py").write_text(_block("# views.py"))
    (tmp_path / "support" / "urls.py").write_text(_block("# urls.py"))
    # The README's settings are a fragment of a project's: the rest of a new
    # project's settings around them, its lists merged into the project's.
    (tmp_path / "readme_settings.py").write_text(_block("# settings.py"))
    (tmp_path / "settings.py").write_text(
        textwrap.dedent(
            f"""
            import readme_settings as readme

            SECRET_KEY = "quickstart"
            DEBUG = False
            ALLOWED_HOSTS = ["testserver"]
            ROOT_URLCONF = "support.urls"
            USE_TZ = True
            DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
            DATABASES = {{"default": {{
                "ENGINE": "django.db.backends.sqlite3", "NAME": {str(tmp_path / "db.sqlite3")!r}
            }}}}
            INSTALLED_APPS = [
                "django.contrib.admin",
                "django.contrib.auth",
                "django.contrib.contenttypes",
                "django.contrib.sessions",
                "django.contrib.messages",
                *readme.INSTALLED_APPS,
            ]
            MIDDLEWARE = [
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.middleware.common.CommonMiddleware",
                *readme.MIDDLEWARE,
                "django.contrib.messages.middleware.MessageMiddleware",
            ]
            TEMPLATES = [{{
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {{"context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ]}},
            }}]
            LLMROUTE = readme.LLMROUTE
            """
        )
    )
    out = _run(
        tmp_path,
        textwrap.dedent(
            """
            import os, time
            os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
            import django
            django.setup()
            from django.core.management import call_command
            from django.test import Client

            call_command("migrate", verbosity=0)
            response = Client().get("/summarize/", {"text": "My invoice is wrong"})
            assert response.status_code == 200, response.content[:2000]
            body = response.json()
            assert body["summary"] and body["model"], body

            from django_llmroute.models import LLMCall
            for _ in range(100):  # records are written by the background flusher
                if LLMCall.objects.exists():
                    break
                time.sleep(0.1)
            call = LLMCall.objects.get()
            assert call.feature == "ticket-summary", call.feature
            assert call.requested_model.endswith("gpt-5.4"), call.requested_model
            print("ok", call.chosen_model)
            """
        ),
    )
    assert out.splitlines()[-1].startswith("ok ")
