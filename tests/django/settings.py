"""A small Django project for the django_llmroute tests and benchmarks.

SQLite and an in-process cache by default; PostgreSQL when ``LLMROUTE_TEST_DATABASE_URL``
is set (``postgresql://user:password@host:port/name``) and Redis when
``LLMROUTE_TEST_REDIS_URL`` is set.
"""

from __future__ import annotations

import os
import tempfile
from urllib.parse import unquote, urlsplit

SECRET_KEY = "llmroute-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.django.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_llmroute",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_llmroute.middleware.LLMRouteMiddleware",
]

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
            ]
        },
    }
]


def database_from_url(url: str) -> dict[str, object]:
    """A ``DATABASES`` entry from a ``postgresql://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"unsupported database URL scheme {parts.scheme!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "ATOMIC_REQUESTS": True,
    }


_database_url = os.environ.get("LLMROUTE_TEST_DATABASE_URL")
if _database_url:
    DATABASES = {"default": database_from_url(_database_url)}
else:
    # A file, not shared-cache memory: the sink writes from its own thread and
    # SQLite's shared cache answers concurrent access with "table is locked".
    _sqlite_dir = tempfile.gettempdir()
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(_sqlite_dir, "llmroute-dev.sqlite3"),
            "ATOMIC_REQUESTS": True,
            # IMMEDIATE: a transaction takes the write lock when it begins, so two
            # writers (a request and the sink's thread) wait on the timeout instead
            # of SQLite refusing one at once when both would upgrade a read lock.
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
            "TEST": {"NAME": os.path.join(_sqlite_dir, f"llmroute-test-{os.getpid()}.sqlite3")},
        }
    }

_redis_url = os.environ.get("LLMROUTE_TEST_REDIS_URL")
if _redis_url:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": _redis_url,
            "KEY_PREFIX": "llmroute-tests",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

LLMROUTE: dict[str, object] = {
    "SPOOL_PATH": os.path.join(tempfile.gettempdir(), f"llmroute-spool-{os.getpid()}.jsonl"),
    # Every provider answered by FakeProvider, instantly: no network in tests.
    "OFFLINE": "always",
    "OFFLINE_LATENCY": "none",
}
