"""The engine: one object that turns a config into a working router and dispatcher.

:class:`LLMRoute` owns the catalog, the provider table (keys resolved once, at
construction), the stores (in-process, or Redis when ``redis_url`` is set), the
router, the dispatcher and the record sink. Interception, the ASGI middleware, the
gateway and the Django app all drive calls through it::

    engine = LLMRoute({"routing": {"rules": [...]}}, sink=my_sink)
    done = engine.complete(request)          # decide + dispatch + meter
    done.response, done.decision.reasons, done.cost

Providers without a key are served offline by FakeProvider unless the config says
``offline: never``, so the same code runs on a laptop with no keys and in
production with them; :attr:`LLMRoute.offline_providers` says which are fake.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from .breaker import BreakerPolicy, CircuitBreaker, MemoryBreakerStore, RedisBreakerStore
from .budgets import Budget, Budgets, BudgetStore, MemoryBudgetStore, RedisBudgetStore
from .cache import MemoryCacheStore, RedisCacheStore, ResponseCache
from .catalog import Catalog, default_catalog
from .context import RouteContext, current_context
from .dispatch import AsyncDispatchStream, Dispatcher, DispatchStream
from .metering import MemorySink, RecordSink, UsageRecord
from .providers.base import ProviderConfig
from .providers.registry import PROVIDERS, provider_config
from .retry import RetryPolicy
from .router import Decision, Router
from .schema import BudgetExceeded, ChatRequest, ChatResponse, Usage
from .settings import LLMRouteConfig
from .stats import MemoryStatsStore, RedisStatsStore, StatsStore

__all__ = ["Completion", "LLMRoute", "collect_records", "collected_records"]

logger = logging.getLogger("llmroute.engine")

_collector: contextvars.ContextVar[list[UsageRecord] | None] = contextvars.ContextVar(
    "llmroute_records", default=None
)


@contextmanager
def collect_records() -> Iterator[list[UsageRecord]]:
    """Gather the usage records of every call finished inside the block, by any engine.

    Middleware uses it to summarise a request's LLM calls (``Server-Timing``);
    blocks nest, and an inner block's records also reach the outer one's list.
    """
    records: list[UsageRecord] = []
    outer = _collector.get()
    token = _collector.set(records)
    try:
        yield records
    finally:
        _collector.reset(token)
        if outer is not None:
            outer.extend(records)


def collected_records() -> list[UsageRecord] | None:
    """The list the innermost :func:`collect_records` block is filling, if any."""
    return _collector.get()


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished non-streamed call: the answer, why it went there, what it cost."""

    response: ChatResponse
    decision: Decision
    records: tuple[UsageRecord, ...]

    @property
    def cost(self) -> Decimal:
        """What every attempt of the call cost together."""
        return sum((r.cost for r in self.records), Decimal(0))

    @property
    def served_by(self) -> UsageRecord | None:
        """The record of the attempt that answered (the last successful one)."""
        for record in reversed(self.records):
            if record.status in ("ok", "cache_hit"):
                return record
        return None


class _FanOutSink:
    """Hands each record to the configured sink and to the current call's collector."""

    __slots__ = ("sink",)

    def __init__(self, sink: RecordSink) -> None:
        self.sink = sink

    def emit(self, record: UsageRecord) -> None:
        collected = _collector.get()
        if collected is not None:
            collected.append(record)
        self.sink.emit(record)


class LLMRoute:
    """A configured llmroute engine.

    ``config`` is an :class:`LLMRouteConfig` or a dict of one. ``sink`` receives
    every usage record (default: an in-memory ring of recent records). ``client``
    and ``async_client`` are the upstream httpx clients (made on first use when
    not given). ``environ`` is where API-key variables are read, once, here
    (default: ``os.environ``). ``budget_store`` replaces the budget counters'
    store (default: in-process, or Redis with ``redis_url``).
    """

    def __init__(
        self,
        config: LLMRouteConfig | dict[str, Any] | None = None,
        *,
        catalog: Catalog | None = None,
        sink: RecordSink | None = None,
        client: Any = None,
        async_client: Any = None,
        environ: Mapping[str, str] | None = None,
        budget_store: BudgetStore | None = None,
    ) -> None:
        self.config = LLMRouteConfig.coerce(config)
        self.catalog = catalog if catalog is not None else default_catalog()
        env = os.environ if environ is None else environ
        self.providers, self.offline_providers = _resolve_providers(self.config, env)
        self.sink: RecordSink = sink if sink is not None else MemorySink(maxlen=1000)
        self._redis_stores: list[Any] = []
        cfg = self.config
        self.stats = self._stats_store()
        self.breaker = self._breaker() if cfg.breaker.enabled else None
        store = budget_store if budget_store is not None else self._budget_store()
        self.budgets = Budgets(cfg.routing.budgets, store, status_ttl_s=1.0)
        routing = cfg.routing
        if cfg.mode is not None and cfg.mode != routing.mode:
            routing = routing.model_copy(update={"mode": cfg.mode})
        self.router = Router(
            self.catalog,
            routing,
            stats=self.stats,
            budgets=self.budgets,
            health=self.breaker,
            providers=self.providers,
        )
        if self.offline_providers and (client is None or async_client is None):
            offline_client, offline_async = self._offline_clients()
            client = client if client is not None else offline_client
            async_client = async_client if async_client is not None else offline_async
        if async_client is None:
            async_client = _default_async_client(cfg.async_client)
        r = cfg.retry
        self.dispatcher = Dispatcher(
            self.providers,
            catalog=self.catalog,
            client=client,
            async_client=async_client,
            retry=RetryPolicy(
                max_retries=r.max_retries,
                base_delay=r.base_delay_s,
                max_delay=r.max_delay_s,
                max_retry_after=r.max_retry_after_s,
                attempt_timeout=r.attempt_timeout_s,
                deadline=r.deadline_s,
                fallback_on_content_filter=r.fallback_on_content_filter,
            ),
            breaker=self.breaker,
            stats=self.stats,
            budgets=self.budgets,
            cache=self._cache() if cfg.cache.enabled else None,
            sink=_FanOutSink(self.sink),
            stream_failover=cfg.stream_failover,
            store_content=cfg.store_content,
        )

    def __repr__(self) -> str:
        live = sorted(set(self.providers) - self.offline_providers)
        return f"LLMRoute(live={live}, offline={sorted(self.offline_providers)})"

    @property
    def is_offline(self) -> bool:
        """True when every provider is served by FakeProvider."""
        return bool(self.providers) and self.offline_providers == set(self.providers)

    def replace_budgets(self, budgets: Iterable[Budget]) -> None:
        """Enforce ``budgets`` from now on, keeping everything else this engine learned.

        Spend lives in the budget store, so counters of budgets that stay carry on;
        circuit breakers, latency stats and the response cache are untouched (a
        rebuilt engine would start them over). Calls already under way settle
        against the budgets they reserved from.
        """
        budgets = tuple(budgets)
        replaced = Budgets(budgets, self.budgets.store, status_ttl_s=1.0)
        routing = self.config.routing.model_copy(update={"budgets": budgets})
        self.config = self.config.model_copy(update={"routing": routing})
        self.budgets = replaced
        self.router.budgets = replaced
        self.dispatcher.budgets = replaced if replaced else None

    # ------------------------------------------------------------------ calls

    def decide(self, request: ChatRequest, context: RouteContext | None = None) -> Decision:
        """Where ``request`` would go under ``context`` (the current one by default).

        A call a budget blocks raises :class:`BudgetExceeded` and is recorded
        (``status="blocked"``, zero cost), so blocked calls show in the reports.
        """
        ctx = current_context() if context is None else context
        try:
            return self.router.decide(request, ctx)
        except BudgetExceeded as error:
            self._record_blocked(request, ctx, error)
            raise

    async def adecide(self, request: ChatRequest, context: RouteContext | None = None) -> Decision:
        """Async twin of :meth:`decide`.

        The router reads budget totals synchronously. With a shared budget store
        (Redis, a Django cache) that read is network I/O, so here the totals are read
        first through the store's async client; the router then finds them in memory
        (they stay fresh for ``status_ttl_s``, one second) and the event loop never
        waits on the store.
        """
        ctx = current_context() if context is None else context
        if self.router.awaits_first_snapshot:  # once: no coroutine per decision after
            await self.router.aprepare()
        budgets = self.budgets
        if budgets and type(budgets.store) is not MemoryBudgetStore:
            # (a failing store is left alone: the router then reads no totals either)
            await budgets.outage.arun(lambda: budgets.astatus(ctx), None)
        return self.decide(request, ctx)

    def _record_blocked(
        self, request: ChatRequest, context: RouteContext, error: BudgetExceeded
    ) -> None:
        model = self.catalog.find(request.model)
        record = UsageRecord(
            requested_model=request.model,
            chosen_model=model.id if model is not None else request.model,
            provider=model.provider if model is not None else "",
            usage=Usage(),
            cost=Decimal(0),
            request_id=context.request_id,
            user_id=context.user_id,
            api_key_id=context.api_key_id,
            feature=context.feature,
            route=context.route,
            tags=tuple(sorted(context.tags)) if context.tags else (),
            status="blocked",
            error_kind=error.kind,
            streamed=request.stream,
            reasons=(("budget_blocked", error.message),),
        )
        try:
            _FanOutSink(self.sink).emit(record)
        except Exception:
            logger.exception("llmroute: recording a blocked call failed")

    def complete(
        self,
        request: ChatRequest,
        context: RouteContext | None = None,
        *,
        decision: Decision | None = None,
        cache: bool | None = None,
    ) -> Completion:
        """Decide, dispatch and meter a non-streamed call."""
        ctx = current_context() if context is None else context
        decision = decision if decision is not None else self.decide(request, ctx)
        records: list[UsageRecord] = []
        outer = _collector.get()
        token = _collector.set(records)  # collect_records(), inlined on the hot path
        try:
            response = self.dispatcher.dispatch(request, decision, ctx, cache=cache)
        finally:
            _collector.reset(token)
            if outer is not None:
                outer.extend(records)
        return Completion(response, decision, tuple(records))

    async def acomplete(
        self,
        request: ChatRequest,
        context: RouteContext | None = None,
        *,
        decision: Decision | None = None,
        cache: bool | None = None,
    ) -> Completion:
        """Async twin of :meth:`complete`."""
        ctx = current_context() if context is None else context
        decision = decision if decision is not None else await self.adecide(request, ctx)
        records: list[UsageRecord] = []
        outer = _collector.get()
        token = _collector.set(records)
        try:
            response = await self.dispatcher.adispatch(request, decision, ctx, cache=cache)
        finally:
            _collector.reset(token)
            if outer is not None:
                outer.extend(records)
        return Completion(response, decision, tuple(records))

    def stream(
        self,
        request: ChatRequest,
        context: RouteContext | None = None,
        *,
        decision: Decision | None = None,
        cache: bool | None = None,
    ) -> tuple[Decision, DispatchStream]:
        """Decide and start a streamed call; the stream's ``records`` fill as it ends."""
        ctx = current_context() if context is None else context
        decision = decision if decision is not None else self.decide(request, ctx)
        return decision, self.dispatcher.stream(request, decision, ctx, cache=cache)

    async def astream(
        self,
        request: ChatRequest,
        context: RouteContext | None = None,
        *,
        decision: Decision | None = None,
        cache: bool | None = None,
    ) -> tuple[Decision, AsyncDispatchStream]:
        """Async twin of :meth:`stream`."""
        ctx = current_context() if context is None else context
        decision = decision if decision is not None else await self.adecide(request, ctx)
        return decision, await self.dispatcher.astream(request, decision, ctx, cache=cache)

    def close(self) -> None:
        """Close the upstream clients this engine made and its Redis connections
        (after the router's background stats snapshots have stopped)."""
        self.router.close()
        self.dispatcher.close()
        for store in self._redis_stores:
            store.close()
        self._redis_stores.clear()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`; also closes the stores' async Redis clients."""
        self.router.close()
        await self.dispatcher.aclose()
        for store in self._redis_stores:
            await store.aclose()
            store.close()
        self._redis_stores.clear()

    # ------------------------------------------------------------------ building

    def _shared(self, store: Any) -> Any:
        self._redis_stores.append(store)
        return store

    def _stats_store(self) -> StatsStore:
        url = self.config.redis_url
        if url:
            return self._shared(RedisStatsStore(url))  # type: ignore[no-any-return]
        return MemoryStatsStore()

    def _budget_store(self) -> BudgetStore:
        url = self.config.redis_url
        if url:
            return self._shared(RedisBudgetStore(url))  # type: ignore[no-any-return]
        return MemoryBudgetStore()

    def _breaker(self) -> CircuitBreaker:
        b = self.config.breaker
        policy = BreakerPolicy(
            consecutive_failures=b.consecutive_failures,
            error_rate=b.error_rate,
            min_calls=b.min_calls,
            window_s=b.window_s,
            cooldown_s=b.cooldown_s,
        )
        overrides = {
            key: BreakerPolicy(
                consecutive_failures=b.consecutive_failures,
                error_rate=b.error_rate,
                min_calls=b.min_calls,
                window_s=b.window_s,
                cooldown_s=cooldown,
            )
            for key, cooldown in b.cooldowns.items()
        }
        url = self.config.redis_url
        store = self._shared(RedisBreakerStore(url)) if url else MemoryBreakerStore()
        return CircuitBreaker(store=store, policy=policy, policies=overrides)

    def _cache(self) -> ResponseCache:
        c = self.config.cache
        url = self.config.redis_url
        if url:
            # Redis expiries are whole seconds and 0 is refused: round a fractional
            # TTL up rather than down (int(0.5) made every write fail).
            ttl = max(1, math.ceil(c.ttl_s))
            return ResponseCache(self._shared(RedisCacheStore(url, ttl_s=ttl)))
        return ResponseCache(MemoryCacheStore(maxsize=c.max_entries, ttl_s=c.ttl_s))

    def _offline_clients(self) -> tuple[Any, Any]:
        import httpx

        from .testing import FLAVORS, FakeModel, FakeNetwork, FakeProvider

        realistic = self.config.offline_latency == "realistic"
        default = (
            FakeModel.realistic("default", ttft=0.35, tokens_per_second=80)
            if realistic
            else FakeModel("default", output_tokens=40)
        )
        fakes: dict[str, FakeProvider] = {}
        for name in sorted(self.offline_providers):
            host = urlsplit(self.providers[name].base_url).netloc
            flavor = name if name in FLAVORS else "openai"
            fakes[host] = FakeProvider(flavor=flavor, default_model=default)
        network = FakeNetwork(fakes)
        self.fake_network = network
        sync_mounts = {f"all://{host}": network.transport() for host in fakes}
        async_mounts = {f"all://{host}": network.async_transport() for host in fakes}
        return httpx.Client(mounts=sync_mounts), httpx.AsyncClient(mounts=async_mounts)


def _resolve_providers(
    config: LLMRouteConfig, environ: Mapping[str, str]
) -> tuple[dict[str, ProviderConfig], set[str]]:
    """Provider configs with their keys, and which of them are served offline."""
    wanted = config.providers
    names = [n for n, s in wanted.items() if s.enabled] if wanted else list(PROVIDERS)
    resolved: dict[str, ProviderConfig] = {}
    offline: set[str] = set()
    for name in names:
        settings = wanted.get(name)
        spec = PROVIDERS[name]
        key: str | None = None
        if settings is not None and settings.api_key is not None:
            key = settings.api_key.get_secret_value()
        else:
            env_name = (settings.api_key_env if settings else None) or spec.api_key_env
            key = environ.get(env_name) or None
        base_url = settings.base_url if settings else None
        options = dict(settings.options) if settings else {}
        if not wanted and not spec.key_required:
            continue  # self-hosted servers are used only when configured
        if name == "azure" and base_url is None and "resource" not in options:
            continue  # Azure needs its resource name; nothing to call without it
        if config.offline == "always" or (key is None and spec.key_required):
            if config.offline == "never" or (not wanted and _any_key(environ)):
                continue
            offline.add(name)
        resolved[name] = provider_config(name, api_key=key, base_url=base_url, **options)
    return resolved, offline


def _any_key(environ: Mapping[str, str]) -> bool:
    """True when any provider's key variable is set (then keyless providers are skipped)."""
    return any(environ.get(spec.api_key_env) for spec in PROVIDERS.values() if spec.key_required)


def _default_async_client(choice: str) -> str | None:
    """``"aiohttp"`` when the async path should use it, else ``None`` (httpx)."""
    from ._aiohttp_sender import available

    if choice == "httpx":
        return None
    if available():
        return "aiohttp"
    if choice == "aiohttp":
        raise ValueError("async_client 'aiohttp' needs aiohttp: pip install 'llmroute[aiohttp]'")
    return None
