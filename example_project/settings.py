"""Settings of the example support desk.

Offline by default: with no provider API keys in the environment, llmroute serves
every provider with its FakeProvider (realistic latency and token counts). Set
``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY`` or ``GEMINI_API_KEY`` and the same code
calls the real providers.

Environment variables the demo reads:

- ``LLMROUTE_DEMO_DB``: the SQLite file (default ``db.sqlite3`` next to this file).
- ``LLMROUTE_DEMO_FAST=1``: the offline providers answer instantly (checks, tests).
- ``LLMROUTE_DEMO_DEBUG=0``: run with ``DEBUG`` off.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

# A demo-only key; a real project reads its secret from the environment.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-demo-only-not-a-secret")
DEBUG = os.environ.get("LLMROUTE_DEMO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_llmroute",
    "example_project.support",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # After authentication, so each LLM call is attributed to the signed-in user.
    "django_llmroute.middleware.LLMRouteMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "example_project.support.context_processors.llm_mode",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("LLMROUTE_DEMO_DB", str(BASE_DIR / "db.sqlite3")),
        # The sink writes from its own thread; wait for the lock rather than fail.
        # The sink writes from its own thread: with IMMEDIATE, concurrent writers
        # wait for each other instead of SQLite refusing one ("database is locked").
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
LOGIN_URL = "admin:login"

# Running offline is this demo's default, and every page says so: no need to warn.
SILENCED_SYSTEM_CHECKS = ["django_llmroute.W004"]

# The whole llmroute configuration. The views below use the official SDKs as they
# are; INSTRUMENT_HTTPX makes llmroute catch their calls.
_KEY_VARIABLES = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY")

LLMROUTE = {
    "INSTRUMENT_HTTPX": True,
    "PROVIDERS": {"openai": {}, "anthropic": {}, "gemini": {}},
    # No key at all: FakeProvider answers everything, whatever key the SDKs carry.
    # With keys, llmroute never answers a call made with a real key by a fake.
    "OFFLINE": "auto" if any(os.environ.get(v) for v in _KEY_VARIABLES) else "always",
    "OFFLINE_LATENCY": "none" if os.environ.get("LLMROUTE_DEMO_FAST") == "1" else "realistic",
    "ROUTING": {
        "tiers": {
            1: {"models": ["gemini/gemini-2.5-flash-lite", "openai/gpt-5-mini"]},
            2: {"models": ["gemini/gemini-2.5-flash", "openai/gpt-5.4-mini"]},
            3: {"models": ["openai/gpt-5.4", "anthropic/claude-sonnet-4-6"]},
        },
        "rules": [
            {
                "name": "contracts-go-premium",
                "when": {"keywords": ["contract", "lawsuit", "GDPR"]},
                "then": {"tier": "premium"},
            }
        ],
    },
}
