"""The process's llmroute engine, built lazily from ``LLMROUTE`` and rebuilt when it changes.

:func:`get_engine` returns one :class:`~routing_middleware.engine.LLMRoute` per
process, built on first use (never at import or in ``AppConfig.ready``) with:

- the :class:`~django_llmroute.sinks.DjangoSink` as its record sink (behind a small
  filter that drops or redacts prompt and completion text per ``STORE_CONTENT`` and
  ``REDACT`` and lets the middleware see a request's records for ``Server-Timing``);
- the budget store named by ``BUDGET_STORE`` (the Django cache one by default);
- the budgets of ``ROUTING["budgets"]`` plus, with ``BUDGETS_FROM_DB``, the active
  :class:`~django_llmroute.models.Budget` rows;
- the catalog file ``CATALOG_PATH`` when it exists (``llmroute_sync_prices`` writes it).

The engine is dropped when ``LLMROUTE`` or ``CACHES`` changes (``setting_changed``).
When only the admin budgets change, the engine takes the new budgets in place (in
this process at once, in others within ``BUDGETS_REFRESH_S``) and keeps its circuit
breakers, latency stats and response cache. The sink survives rebuilds unless its
options changed.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .conf import LLMRouteSettings, get_settings, reload_settings

if TYPE_CHECKING:
    from routing_middleware.engine import LLMRoute
    from routing_middleware.metering import UsageRecord
    from routing_middleware.relay import Relay

    from .sinks import DjangoSink, SinkOptions

__all__ = [
    "RecordFilter",
    "budgets_changed",
    "collect_records",
    "get_engine",
    "get_rate_limiter",
    "get_relay",
    "get_sink",
    "install",
    "reset",
]

logger = logging.getLogger("django_llmroute")

_records: contextvars.ContextVar[list[UsageRecord] | None] = contextvars.ContextVar(
    "llmroute_django_records", default=None
)


class RecordFilter:
    """A record sink in front of another: content policy, then the request's collector.

    Without ``store_content`` the prompt and completion are dropped; with it and a
    ``redact`` callable (``text -> text``) both go through it before storage. A
    failing hook drops the content rather than the record.
    """

    __slots__ = ("redact", "sink", "store_content")

    def __init__(
        self,
        sink: Any,
        *,
        store_content: bool = False,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.sink = sink
        self.store_content = store_content
        self.redact = redact

    def _content(self, record: UsageRecord) -> UsageRecord:
        if record.prompt is None and record.completion is None:
            return record
        if not self.store_content:
            return dataclasses.replace(record, prompt=None, completion=None)
        if self.redact is None:
            return record
        try:
            return dataclasses.replace(
                record,
                prompt=None if record.prompt is None else self.redact(record.prompt),
                completion=None if record.completion is None else self.redact(record.completion),
            )
        except Exception:
            logger.exception("llmroute: the REDACT hook failed; the content is not stored")
            return dataclasses.replace(record, prompt=None, completion=None)

    def emit(self, record: UsageRecord) -> None:
        """Hand ``record`` on; never raises."""
        try:
            collected = _records.get()
            if collected is not None:
                collected.append(record)
            self.sink.emit(self._content(record))
        except Exception:
            logger.exception("llmroute: could not hand a usage record to the sink")


@contextmanager
def collect_records() -> Iterator[list[UsageRecord]]:
    """Collect the usage records emitted inside the block (and what it spawns)."""
    found: list[UsageRecord] = []
    token = _records.set(found)
    try:
        yield found
    finally:
        _records.reset(token)


# ---------------------------------------------------------------------- state


@dataclasses.dataclass(slots=True)
class _State:
    engine: LLMRoute | None = None
    relay: Relay | None = None
    settings: LLMRouteSettings | None = None
    sink: DjangoSink | None = None
    sink_options: SinkOptions | None = None
    budgets_version: int | None = None
    checked_at: float = 0.0
    dirty: bool = False
    retired: list[LLMRoute] = dataclasses.field(default_factory=list)
    refresher: Any = None
    instrumented: bool = False
    limiter: Any = None


_lock = threading.RLock()
_state = _State()


def _sink_options(settings: LLMRouteSettings) -> SinkOptions:
    from .sinks import SinkOptions

    sink = settings.django.SINK
    return SinkOptions(
        buffer_size=sink.BUFFER_SIZE,
        flush_interval_ms=sink.FLUSH_INTERVAL_MS,
        batch_size=sink.BATCH_SIZE,
        spool_path=settings.spool_path,
        durability=sink.DURABILITY,
        retries=sink.RETRIES,
        retry_backoff_ms=sink.RETRY_BACKOFF_MS,
        database=sink.DATABASE,
        sync_timeout_s=sink.SYNC_TIMEOUT_S,
        shutdown_timeout_s=sink.SHUTDOWN_TIMEOUT_S,
    )


def get_sink() -> DjangoSink:
    """The process's :class:`~django_llmroute.sinks.DjangoSink` (made on first use)."""
    with _lock:
        options = _sink_options(get_settings())
        if _state.sink is None or _state.sink_options != options:
            from .sinks import DjangoSink

            if _state.sink is not None:
                _state.sink.close()
            _state.sink = DjangoSink(options)
            _state.sink_options = options
        return _state.sink


def _budget_store(settings: LLMRouteSettings) -> Any:
    options = {
        "alias": settings.django.BUDGET_CACHE,
        "lock_timeout_s": settings.django.BUDGET_LOCK_TIMEOUT_S,
        "reconcile_s": settings.django.BUDGET_RECONCILE_S,
        "database": settings.django.SINK.DATABASE,
    }
    factory = settings.budget_store
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return factory()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return factory(**options)
    return factory(**{k: v for k, v in options.items() if k in accepted})


def _all_budgets(settings: LLMRouteSettings) -> tuple[tuple[Any, ...], int | None]:
    configured = tuple(settings.core.routing.budgets)
    if not settings.django.BUDGETS_FROM_DB:
        return configured, None
    from .budgets import budgets_version, database_budgets

    version = budgets_version()
    taken = {b.name for b in configured}
    extra = []
    for budget in database_budgets(settings.django.SINK.DATABASE):
        if budget.name in taken:
            logger.warning(
                "llmroute: admin budget %r has the name of a ROUTING budget; ignored",
                budget.name,
            )
            continue
        extra.append(budget)
    return configured + tuple(extra), version


def _build(settings: LLMRouteSettings) -> tuple[LLMRoute, int | None]:
    from routing_middleware.engine import LLMRoute

    budgets, version = _all_budgets(settings)
    core = settings.core
    if budgets != tuple(core.routing.budgets):
        routing = core.routing.model_copy(update={"budgets": budgets})
        core = core.model_copy(update={"routing": routing})
    catalog = None
    path = settings.django.CATALOG_PATH
    if path and Path(path).is_file():
        from routing_middleware.catalog import Catalog

        catalog = Catalog.load(path)
    sink = RecordFilter(
        get_sink(),
        store_content=core.store_content,
        redact=settings.redact,
    )
    engine = LLMRoute(core, catalog=catalog, sink=sink, budget_store=_budget_store(settings))
    return engine, version


def _stale(settings: LLMRouteSettings) -> bool:
    if _state.dirty:
        return True
    if not settings.django.BUDGETS_FROM_DB:
        return False
    now = time.monotonic()
    if now - _state.checked_at < settings.django.BUDGETS_REFRESH_S:
        return False
    _state.checked_at = now
    from .budgets import budgets_version

    try:
        return budgets_version() != _state.budgets_version
    except Exception:
        logger.warning("llmroute: cannot read the budgets version", exc_info=True)
        return False


def get_engine() -> LLMRoute:
    """The process's engine, built from ``LLMROUTE`` on first use."""
    settings = get_settings()
    engine = _state.engine
    if engine is not None and _state.settings is settings and not _stale(settings):
        return engine
    with _lock:
        current = _state.engine
        if current is not None and current is not engine and _state.settings is settings:
            return current  # another thread rebuilt it meanwhile
        if current is not None and _state.settings is settings:
            # Only the admin's budgets changed: swap them in, keeping the breakers,
            # latency stats and response cache this engine has built up.
            _state.dirty = False
            budgets, version = _all_budgets(settings)
            current.replace_budgets(budgets)
            _state.budgets_version = version
            _state.checked_at = time.monotonic()
            return current
        if _state.engine is not None:
            _retire(_state.engine)
        _state.dirty = False
        engine, version = _build(settings)
        _state.engine, _state.settings = engine, settings
        _state.relay = None
        _state.budgets_version = version
        _state.checked_at = time.monotonic()
        _start_refresher(settings, engine)
        return engine


def get_relay() -> Relay:
    """A :class:`~routing_middleware.relay.Relay` over :func:`get_engine` (the gateway's)."""
    engine = get_engine()
    relay = _state.relay
    if relay is not None and relay.engine is engine:
        return relay
    from routing_middleware.relay import Relay

    with _lock:
        relay = Relay(
            engine,
            response_headers=get_settings().core.response_headers,
            catalog_models_only=True,  # the gateway prices every call it serves
        )
        _state.relay = relay
        return relay


def get_rate_limiter() -> Any:
    """The gateway's per-process token buckets (a core ``RateLimiter``), made on first use."""
    limiter = _state.limiter
    if limiter is None:
        from routing_middleware.auth import RateLimiter

        with _lock:
            if _state.limiter is None:
                _state.limiter = RateLimiter()
            limiter = _state.limiter
    return limiter


def budgets_changed() -> None:
    """The admin budgets changed: rebuild the engine on its next use."""
    _state.dirty = True


def _retire(engine: LLMRoute) -> None:
    # Calls in flight (a stream, say) may still use the old engine: close it later.
    _state.retired.append(engine)
    while len(_state.retired) > 2:
        _close(_state.retired.pop(0))


def _close(engine: LLMRoute) -> None:
    try:
        engine.close()
        store = engine.budgets.store
        close = getattr(store, "close", None)
        if callable(close):
            close()
    except Exception:
        logger.warning("llmroute: closing an engine failed", exc_info=True)


def _start_refresher(settings: LLMRouteSettings, engine: LLMRoute) -> None:
    core = settings.core
    if _state.refresher is not None:
        _state.refresher.stop()
        _state.refresher = None
    if core.catalog_feed and core.catalog_refresh_s:
        from routing_middleware.refresh import CatalogRefresher

        _state.refresher = CatalogRefresher(
            engine.catalog, core.catalog_feed, core.catalog_refresh_s
        )
        _state.refresher.start()


def reset(*, close_sink: bool = False) -> None:
    """Drop the engine (closing it); the next :func:`get_engine` builds a new one."""
    with _lock:
        engines = [*_state.retired, *([_state.engine] if _state.engine is not None else [])]
        _state.retired.clear()
        _state.engine = None
        _state.relay = None
        _state.settings = None
        _state.dirty = False
        _state.checked_at = 0.0
        _state.limiter = None
        if _state.refresher is not None:
            _state.refresher.stop()
            _state.refresher = None
        for engine in engines:
            _close(engine)
        if close_sink and _state.sink is not None:
            _state.sink.close()
            _state.sink = None
            _state.sink_options = None


# ---------------------------------------------------------------------- interception


def _sync_instrumentation() -> None:
    """Install or remove httpx interception to match ``INSTRUMENT_HTTPX``."""
    try:
        wanted = get_settings().core.instrument_httpx
    except Exception:
        return  # the system checks report invalid settings
    if wanted == _state.instrumented:
        return
    try:
        from routing_middleware import transport
    except ImportError:
        logger.warning("llmroute: INSTRUMENT_HTTPX is set but interception is not available")
        return
    if wanted:
        # The engine is built on the first intercepted call, not now (no database
        # access while apps load), and followed through every rebuild.
        transport.instrument(engine=_LazyEngine())  # type: ignore[arg-type]
    else:
        transport.uninstrument()
    _state.instrumented = wanted


class _LazyEngine:
    """Stands for :func:`get_engine`'s engine: every attribute is read from the current one."""

    def __getattr__(self, name: str) -> Any:
        return getattr(get_engine(), name)


# ---------------------------------------------------------------------- wiring


def _on_setting_changed(setting: str, **kwargs: Any) -> None:
    if setting == "LLMROUTE":
        reload_settings()
        reset()
        _sync_instrumentation()
    elif setting == "CACHES":
        reset()


def install() -> None:
    """Wire the app up (``AppConfig.ready``): signals, and interception if configured.

    Builds nothing and touches no database: the engine comes on first use.
    """
    from django.core.signals import setting_changed

    from .budgets import connect_budget_signals

    setting_changed.connect(_on_setting_changed, dispatch_uid="llmroute-setting-changed")
    connect_budget_signals()
    _sync_instrumentation()
