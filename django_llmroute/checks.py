"""System checks for llmroute (``manage.py check``; tag ``llmroute``).

========================  ==============================================================
id                        meaning
========================  ==============================================================
``django_llmroute.E001``  ``LLMROUTE`` has an invalid value or an unknown key (the
                          message names the key and carries pydantic's explanation)
``django_llmroute.E002``  a dotted path in ``LLMROUTE`` (``USER_ID``, ``TAGS``,
                          ``REDACT``, ``BUDGET_STORE``) does not import or is not callable
``django_llmroute.E003``  ``BUDGET_CACHE`` names a cache that is not in ``CACHES``
``django_llmroute.E004``  the budget cache is a ``DummyCache``: budgets could not hold
``django_llmroute.W001``  ``LLMRouteMiddleware`` is not in ``MIDDLEWARE``
``django_llmroute.W002``  ``LLMRouteMiddleware`` is listed more than once
``django_llmroute.W003``  ``LLMRouteMiddleware`` comes before ``AuthenticationMiddleware``
``django_llmroute.W004``  no provider has an API key: every call is served by FakeProvider
``django_llmroute.I001``  ``OFFLINE`` is ``always``: every call is served by FakeProvider
========================  ==============================================================
"""

from __future__ import annotations

import os
from typing import Any

from django.core.checks import CheckMessage, Error, Info, Tags, Warning, register

__all__ = [
    "MIDDLEWARE_PATH",
    "check_middleware",
    "check_providers",
    "check_settings",
    "register_checks",
]

MIDDLEWARE_PATH = "django_llmroute.middleware.LLMRouteMiddleware"
_AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
_ID = "django_llmroute."


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``E001`` to ``E004``: ``LLMROUTE`` validates, its dotted paths import, its cache works."""
    from .conf import problems

    invalid, imports = problems()
    out: list[CheckMessage] = [
        Error(
            f"{p.key}: {p.message}",
            hint=p.hint or "See the LLMROUTE key reference in the documentation.",
            id=_ID + "E001",
        )
        for p in invalid
    ]
    out += [
        Error(f"{p.key}: {p.message}", hint="Give a dotted path to a callable.", id=_ID + "E002")
        for p in imports
    ]
    if out:
        return out
    from django.conf import settings as django_settings

    from .conf import get_settings

    alias = get_settings().django.BUDGET_CACHE
    caches = getattr(django_settings, "CACHES", {})
    if alias not in caches:
        out.append(
            Error(
                f"LLMROUTE['BUDGET_CACHE']: there is no cache {alias!r} in CACHES",
                hint=f"Known caches: {', '.join(sorted(caches)) or 'none'}.",
                id=_ID + "E003",
            )
        )
    elif caches[alias].get("BACKEND", "").endswith("DummyCache"):
        out.append(
            Error(
                f"LLMROUTE['BUDGET_CACHE']: cache {alias!r} is a DummyCache, which keeps "
                "nothing, so budgets could never hold",
                hint="Use LocMemCache for one process or RedisCache for many workers.",
                id=_ID + "E004",
            )
        )
    return out


def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``W001`` to ``W003``: the middleware is installed once, after authentication."""
    from django.conf import settings as django_settings

    middleware = list(getattr(django_settings, "MIDDLEWARE", None) or ())
    count = middleware.count(MIDDLEWARE_PATH)
    if count == 0:
        return [
            Warning(
                f"{MIDDLEWARE_PATH} is not in MIDDLEWARE: LLM calls will not know the "
                "user, view or hints of the request that made them",
                hint=f"Add {MIDDLEWARE_PATH!r} after {_AUTH!r}.",
                id=_ID + "W001",
            )
        ]
    out: list[CheckMessage] = []
    if count > 1:
        out.append(
            Warning(
                f"{MIDDLEWARE_PATH} is listed {count} times in MIDDLEWARE",
                hint="Keep one entry, after AuthenticationMiddleware.",
                id=_ID + "W002",
            )
        )
    if _AUTH in middleware and middleware.index(MIDDLEWARE_PATH) < middleware.index(_AUTH):
        out.append(
            Warning(
                f"{MIDDLEWARE_PATH} comes before {_AUTH} in MIDDLEWARE: calls will be "
                "recorded without their user",
                hint="Move it after AuthenticationMiddleware.",
                id=_ID + "W003",
            )
        )
    return out


def check_providers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``W004`` / ``I001``: say when every provider is served offline by FakeProvider."""
    from .conf import get_settings, problems

    invalid, imports = problems()
    if invalid or imports:
        return []  # E001/E002 say why
    config = get_settings().core
    if config.offline == "always":
        return [
            Info(
                "LLMROUTE['OFFLINE'] is 'always': every LLM call is answered by FakeProvider",
                hint="Fine for tests and demos; set OFFLINE to 'auto' to use real providers.",
                id=_ID + "I001",
            )
        ]
    from routing_middleware.engine import LLMRoute
    from routing_middleware.metering import MemorySink

    probe = LLMRoute(config, sink=MemorySink(maxlen=1), environ=os.environ)
    try:
        offline = sorted(probe.offline_providers)
        live = sorted(set(probe.providers) - probe.offline_providers)
    finally:
        probe.close()
    if live or not offline:
        return []
    return [
        Warning(
            "No LLM provider has an API key: every call is answered offline by FakeProvider "
            f"({', '.join(offline)})",
            hint="Set a provider's key variable (e.g. OPENAI_API_KEY) or "
            "LLMROUTE['PROVIDERS'][name]['api_key_env']; set OFFLINE to 'always' to make "
            "offline mode explicit.",
            id=_ID + "W004",
        )
    ]


def register_checks() -> None:
    """Register the checks (from ``AppConfig.ready``)."""
    tags = ("llmroute", Tags.compatibility)
    register(check_settings, *tags)
    register(check_middleware, *tags)
    register(check_providers, *tags)
