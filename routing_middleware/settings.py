"""The whole of llmroute's configuration, as one validated document.

Frameworks feed it from their own settings (Django's ``LLMROUTE`` dict, a TOML
file, keyword arguments); this module knows nothing about where it came from.
Every model is frozen and rejects unknown keys, so a typo is an error that names
the key, not a silently ignored setting::

    LLMRouteConfig.model_validate({
        "providers": {"openai": {}, "anthropic": {"api_key_env": "CLAUDE_KEY"}},
        "routing": {"rules": [...], "budgets": [...]},
        "mode": "observe",
    })

API keys are ``SecretStr``: they never appear in ``repr``, logs or errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .config import RoutingConfig

__all__ = [
    "BreakerSettings",
    "CacheSettings",
    "LLMRouteConfig",
    "ProviderSettings",
    "RetrySettings",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


_MASK = "***"


def _redact_url(url: str | None) -> str | None:
    """``url`` with its password masked: in the userinfo (``redis://u:***@host``) or a
    ``password`` query parameter (``unix:///run/redis.sock?password=***``)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return _MASK  # unparseable: show nothing of it rather than a secret
    if password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:{_MASK}@{host}")
    if "password" in parts.query.lower():
        query = parse_qsl(parts.query, keep_blank_values=True)
        masked = [(k, _MASK if k.lower() == "password" else v) for k, v in query]
        parts = parts._replace(query=urlencode(masked, safe="*"))
    return urlunsplit(parts)


def _redacted(
    args: Iterator[tuple[str | None, Any]], urls: tuple[str, ...]
) -> Iterator[tuple[str | None, Any]]:
    for name, value in args:
        yield name, (_redact_url(value) if name in urls else value)


class ProviderSettings(_Frozen):
    """One provider: its key (or the environment variable holding it) and overrides.

    With neither ``api_key`` nor a set ``api_key_env`` variable, the provider is
    served offline by FakeProvider when ``offline`` allows it, and skipped otherwise.
    """

    api_key: SecretStr | None = None
    api_key_env: str | None = None
    base_url: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    def __repr_args__(self) -> Any:
        # repr/str hide the base URL's password and the values of extra headers
        # (a proxy's auth token goes there); the fields themselves keep them.
        for name, value in _redacted(iter(super().__repr_args__()), ("base_url",)):
            if name == "options" and isinstance(value.get("headers"), dict):
                value = {**value, "headers": dict.fromkeys(value["headers"], _MASK)}
            yield name, value


class RetrySettings(_Frozen):
    """Retries per deployment and time limits; see ``routing_middleware.retry``."""

    max_retries: int = Field(default=2, ge=0)
    base_delay_s: float = Field(default=0.5, ge=0)
    max_delay_s: float = Field(default=8.0, ge=0)
    max_retry_after_s: float = Field(default=30.0, ge=0)
    attempt_timeout_s: float | None = Field(default=60.0, gt=0)
    deadline_s: float | None = Field(default=300.0, gt=0)
    fallback_on_content_filter: bool = False


class BreakerSettings(_Frozen):
    """When a deployment's circuit breaker opens, and per-deployment cooldowns."""

    enabled: bool = True
    consecutive_failures: int = Field(default=5, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    min_calls: int = Field(default=10, ge=1)
    window_s: float = Field(default=60.0, gt=0)
    cooldown_s: float = Field(default=30.0, ge=0)
    #: Cooldown per deployment key (``provider/model``), overriding ``cooldown_s``.
    cooldowns: dict[str, float] = Field(default_factory=dict)


class CacheSettings(_Frozen):
    """The exact-match response cache (temperature-0 requests or an explicit hint)."""

    enabled: bool = True
    ttl_s: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=1024, ge=1)


class LLMRouteConfig(_Frozen):
    """Everything llmroute needs to know, with defaults that work offline.

    - ``providers``: which providers to use and how to reach them. Empty means
      every provider whose key variable is set in the environment, or, when none
      is, every known provider served offline.
    - ``offline``: ``auto`` serves providers without a key with FakeProvider;
      ``always`` serves every provider with FakeProvider (tests, demos);
      ``never`` skips providers without a key. ``offline_latency`` makes the fake
      answer with realistic time-to-first-token and token rates, or instantly.
    - ``mode``: overrides ``routing.mode`` when set (``observe`` meters and
      computes decisions but sends every call where the code sent it).
    - ``redis_url``: share budgets, latency stats, breakers and the response cache
      between workers; in-process stores otherwise.
    - ``instrument_httpx``: patch every httpx/httpx2 client of the process at start.
    - ``fail_open``: when llmroute itself fails, send the original request
      unchanged rather than failing the call (never once the routed call went out:
      sending both could run and bill it twice).
    - ``store_content``: keep prompts and completions on usage records.
    - ``response_headers``: add ``x-llmroute-*`` headers to intercepted responses.
    - ``server_timing``: add a ``Server-Timing`` header summarising a request's
      LLM time and cost (ASGI and Django middleware).
    - ``stream_failover``: what a stream failing after content was sent does:
      ``error`` ends it with an error event; ``continue`` asks the fallback to
      continue the answer.
    - ``async_client``: what sends async upstream calls: ``auto`` uses aiohttp when
      it is installed (extra ``aiohttp``; a fraction of httpx's CPU per call), else
      httpx; ``aiohttp`` and ``httpx`` pick one.
    """

    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    offline: Literal["auto", "always", "never"] = "auto"
    offline_latency: Literal["realistic", "none"] = "realistic"
    mode: Literal["enforce", "observe"] | None = None
    redis_url: str | None = None
    instrument_httpx: bool = False
    fail_open: bool = True
    store_content: bool = False
    response_headers: bool = True
    server_timing: bool = False
    stream_failover: Literal["error", "continue"] = "error"
    async_client: Literal["auto", "aiohttp", "httpx"] = "auto"
    retry: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    catalog_feed: str | None = None
    catalog_refresh_s: float | None = Field(default=None, gt=0)

    def __repr_args__(self) -> Any:
        # repr/str hide the passwords of the Redis and feed URLs
        yield from _redacted(iter(super().__repr_args__()), ("redis_url", "catalog_feed"))

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: dict[str, ProviderSettings]) -> dict[str, ProviderSettings]:
        from .providers.registry import PROVIDERS

        unknown = sorted(set(value) - set(PROVIDERS))
        if unknown:
            known = ", ".join(sorted(PROVIDERS))
            raise ValueError(f"unknown provider(s) {', '.join(unknown)}; known: {known}")
        return value

    @model_validator(mode="after")
    def _deployments_on_known_providers(self) -> LLMRouteConfig:
        # The router leaves out deployments on providers the engine does not serve,
        # so a misspelt provider would silently drop the deployment from every
        # decision. (A bare RoutingConfig may name any provider: a Router can be
        # used with a catalog of its own.)
        from .providers.registry import PROVIDERS

        for i, dep in enumerate(self.routing.deployments):
            if dep.provider.lower() not in PROVIDERS:
                raise ValueError(
                    f"routing.deployments.{i} ({dep.name!r} of {dep.model!r}): unknown "
                    f"provider {dep.provider!r}; known: {', '.join(sorted(PROVIDERS))}"
                )
        return self

    @classmethod
    def coerce(cls, value: LLMRouteConfig | dict[str, Any] | None) -> LLMRouteConfig:
        """``value`` as a config: a config as is, a dict validated, ``None`` the defaults."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls.model_validate(value)

    @property
    def effective_mode(self) -> Literal["enforce", "observe"]:
        return self.mode or self.routing.mode
