"""llmroute's Django settings: one ``LLMROUTE`` dict, validated, cached, never written.

Keys are UPPERCASE. The core's keys (``PROVIDERS``, ``ROUTING``, ``MODE``, ...) map
onto :class:`routing_middleware.settings.LLMRouteConfig` by lower-casing the
top-level name; the values inside them are the core's own (lower-case) documents::

    LLMROUTE = {
        "PROVIDERS": {"openai": {}, "anthropic": {"api_key_env": "CLAUDE_KEY"}},
        "ROUTING": {"rules": [...], "budgets": [...]},
        "MODE": "observe",
        "SINK": {"BATCH_SIZE": 200},
        "USER_ID": "myproject.llm.user_id",
    }

The rest are Django-only options (:class:`DjangoOptions`). :func:`get_settings`
validates the whole dict once and caches the result; the cache is cleared when
``LLMROUTE`` changes (``setting_changed``, so ``override_settings`` works). Invalid
settings raise :class:`~django.core.exceptions.ImproperlyConfigured` here and are
reported by the system checks (``django_llmroute.E001``) with pydantic's message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from django.core.exceptions import ImproperlyConfigured
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from routing_middleware.settings import LLMRouteConfig

__all__ = [
    "CORE_KEYS",
    "DEFAULT_BUDGET_STORE",
    "DjangoOptions",
    "GatewayOptions",
    "LLMRouteSettings",
    "Problem",
    "SinkSettings",
    "get_settings",
    "problems",
    "reload_settings",
]

#: Top-level keys handed to the core's ``LLMRouteConfig`` (lower-cased).
CORE_KEYS = frozenset(
    {
        "PROVIDERS",
        "ROUTING",
        "OFFLINE",
        "OFFLINE_LATENCY",
        "MODE",
        "REDIS_URL",
        "INSTRUMENT_HTTPX",
        "FAIL_OPEN",
        "STORE_CONTENT",
        "RESPONSE_HEADERS",
        "SERVER_TIMING",
        "STREAM_FAILOVER",
        "ASYNC_CLIENT",
        "RETRY",
        "BREAKER",
        "CACHE",
        "CATALOG_FEED",
        "CATALOG_REFRESH_S",
    }
)

#: The budget store used unless ``BUDGET_STORE`` names another.
DEFAULT_BUDGET_STORE = "django_llmroute.budgets.CacheBudgetStore"

_DOTTED_KEYS = ("USER_ID", "TAGS", "REDACT", "BUDGET_STORE")


class _Options(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class SinkSettings(_Options):
    """``LLMROUTE["SINK"]``: how usage records are buffered and written (see ``SinkOptions``)."""

    BUFFER_SIZE: int = Field(default=10_000, ge=1)
    FLUSH_INTERVAL_MS: int = Field(default=200, ge=1)
    BATCH_SIZE: int = Field(default=500, ge=1)
    SPOOL_PATH: str | None = None
    DURABILITY: Literal["async", "sync"] = "async"
    RETRIES: int = Field(default=3, ge=0)
    RETRY_BACKOFF_MS: int = Field(default=50, ge=0)
    DATABASE: str = "default"
    SYNC_TIMEOUT_S: float = Field(default=10.0, gt=0)
    SHUTDOWN_TIMEOUT_S: float = Field(default=10.0, ge=0)


class GatewayOptions(_Options):
    """``LLMROUTE["GATEWAY"]``: who may call the gateway views."""

    #: Accept a signed-in session user (CSRF-checked) when no API key is sent.
    SESSION_AUTH: bool = True
    #: Allow ``x-llmroute-*`` hint headers from keys with ``allow_hint_headers``.
    HINT_HEADERS: bool = True
    #: Requests per minute per API key (or session user), per process; ``None``: no limit.
    RATE_LIMIT_PER_MINUTE: float | None = Field(default=None, gt=0)
    #: Requests allowed at once above the rate (default: a tenth of a minute's worth).
    RATE_LIMIT_BURST: int | None = Field(default=None, ge=1)


class DjangoOptions(_Options):
    """The Django-only part of ``LLMROUTE`` (every key not handed to the core)."""

    SINK: SinkSettings = Field(default_factory=SinkSettings)
    #: Also read by the spool; ``SINK["SPOOL_PATH"]`` wins when both are set.
    SPOOL_PATH: str | None = None
    BUDGETS_FROM_DB: bool = True
    BUDGETS_REFRESH_S: float = Field(default=5.0, ge=0)
    BUDGET_STORE: str = DEFAULT_BUDGET_STORE
    BUDGET_CACHE: str = "default"
    BUDGET_RECONCILE_S: float = Field(default=300.0, ge=0)
    BUDGET_LOCK_TIMEOUT_S: float = Field(default=5.0, gt=0)
    USER_ID: str | None = None
    GROUPS: bool = True
    TAGS: str | None = None
    REDACT: str | None = None
    REQUEST_ID_HEADER: str | None = "X-Request-ID"
    CATALOG_PATH: str | None = None
    GATEWAY: GatewayOptions = Field(default_factory=GatewayOptions)

    @field_validator("USER_ID", "TAGS", "REDACT", "BUDGET_STORE")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        if value is not None and "." not in value:
            raise ValueError(f"{value!r} is not a dotted path like 'package.module.name'")
        return value


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with ``LLMROUTE``: the key (as the user wrote it) and why."""

    key: str
    message: str
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class LLMRouteSettings:
    """``LLMROUTE`` validated: the core's config plus the Django options.

    Dotted paths are imported once, here; ``user_id``, ``tags`` and ``redact`` are
    the resolved callables (``None`` when not configured).
    """

    core: LLMRouteConfig
    django: DjangoOptions
    raw: Mapping[str, Any]
    user_id: Callable[..., Any] | None
    tags: Callable[..., Any] | None
    redact: Callable[..., Any] | None
    budget_store: Callable[..., Any]

    @property
    def spool_path(self) -> str | None:
        return self.django.SINK.SPOOL_PATH or self.django.SPOOL_PATH


def _raw() -> Any:
    from django.conf import settings

    return getattr(settings, "LLMROUTE", {})


def _split(raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    core: dict[str, Any] = {}
    django: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(key, str) and key in CORE_KEYS:
            core[key.lower()] = value
        else:
            django[key] = value
    return core, django


def _location(prefix: str, loc: tuple[Any, ...]) -> str:
    if not loc:
        return prefix
    head, *rest = loc
    key = str(head).upper() if prefix == "" else str(head)
    path = f"LLMROUTE[{key!r}]" if prefix == "" else f"{prefix}[{key!r}]"
    if rest:
        path += " " + ".".join(str(p) for p in rest)
    return path


def _from_validation(error: ValidationError) -> list[Problem]:
    out = []
    for item in error.errors():
        loc = tuple(item.get("loc", ()))
        message = str(item.get("msg", "invalid"))
        if item.get("type") == "extra_forbidden" and len(loc) == 1:
            known = ", ".join(sorted(CORE_KEYS | set(DjangoOptions.model_fields)))
            out.append(Problem(_location("", loc), "unknown key", f"Known keys: {known}."))
            continue
        out.append(Problem(_location("", loc), message))
    return out


def _import(key: str, path: str) -> tuple[Callable[..., Any] | None, Problem | None]:
    from django.utils.module_loading import import_string

    try:
        value = import_string(path)
    except ImportError as exc:
        return None, Problem(f"LLMROUTE[{key!r}]", f"cannot import {path!r}: {exc}")
    if not callable(value):
        return None, Problem(f"LLMROUTE[{key!r}]", f"{path!r} is not callable")
    return value, None


def _build(raw: Any) -> tuple[LLMRouteSettings | None, list[Problem], list[Problem]]:
    """The settings, plus validation problems and import problems (never raises)."""
    from routing_middleware.settings import LLMRouteConfig

    if not isinstance(raw, Mapping):
        return None, [Problem("LLMROUTE", f"must be a dict, not {type(raw).__name__}")], []
    bad = [k for k in raw if not isinstance(k, str) or k != k.upper()]
    if bad:
        return (
            None,
            [
                Problem(
                    f"LLMROUTE[{k!r}]",
                    "keys are UPPERCASE",
                    f"Did you mean {str(k).upper()!r}?",
                )
                for k in bad
            ],
            [],
        )
    core_raw, django_raw = _split(raw)
    invalid: list[Problem] = []
    try:
        core = LLMRouteConfig.model_validate(core_raw)
    except ValidationError as exc:
        invalid += _from_validation(exc)
        core = None
    try:
        django = DjangoOptions.model_validate(django_raw)
    except ValidationError as exc:
        invalid += _from_validation(exc)
        django = None
    if core is None or django is None:
        return None, invalid, []
    resolved: dict[str, Callable[..., Any] | None] = {}
    imports: list[Problem] = []
    for key in _DOTTED_KEYS:
        path = getattr(django, key)
        if path is None:
            resolved[key] = None
            continue
        value, problem = _import(key, path)
        resolved[key] = value
        if problem is not None:
            imports.append(problem)
    if imports:
        return None, [], imports
    store = resolved["BUDGET_STORE"]
    assert store is not None
    built = LLMRouteSettings(
        core=core,
        django=django,
        raw=dict(raw),
        user_id=resolved["USER_ID"],
        tags=resolved["TAGS"],
        redact=resolved["REDACT"],
        budget_store=store,
    )
    return built, [], []


_lock = threading.Lock()
_cached: LLMRouteSettings | None = None


def problems() -> tuple[list[Problem], list[Problem]]:
    """What is wrong with ``LLMROUTE`` now: (invalid values, failed imports)."""
    _, invalid, imports = _build(_raw())
    return invalid, imports


def get_settings() -> LLMRouteSettings:
    """``LLMROUTE`` validated and merged over the defaults (cached until it changes).

    Raises :class:`~django.core.exceptions.ImproperlyConfigured` naming every bad key.
    """
    global _cached
    found = _cached
    if found is not None:
        return found
    with _lock:
        if _cached is None:
            built, invalid, imports = _build(_raw())
            if built is None:
                lines = "; ".join(f"{p.key}: {p.message}" for p in (*invalid, *imports))
                raise ImproperlyConfigured(f"invalid LLMROUTE setting: {lines}")
            _cached = built
        return _cached


def reload_settings() -> None:
    """Forget the cached settings; the next :func:`get_settings` reads them again."""
    global _cached
    with _lock:
        _cached = None
