"""The dispatcher: executes a routing decision against the upstream providers.

For each attempt it checks the deployment's circuit breaker, reserves the attempt's
worst-case cost against budgets, encodes the request for the deployment's
provider (with that provider's own credentials), sends it, decodes the answer and
meters it. Failures are retried with backoff (``Retry-After`` honoured) and then
sent down the fallback chain, as :class:`~routing_middleware.retry.RetryPolicy`
says. Exact-match cache hits skip the upstream entirely.

Streams fail over honestly: until content reached the consumer, a failing stream
(error status, connection error, error event, cut short) falls back transparently;
after that, the stream raises an :class:`~routing_middleware.schema.LLMError`
after the delivered chunks (the caller-side encoder turns it into an error event),
or, with ``stream_failover="continue"``, the next deployment is asked to continue
the partial answer and its continuation is stitched into the same stream.

Every attempt becomes one :class:`~routing_middleware.metering.UsageRecord`
(failed attempts that consumed tokens cost money too); all records of a call
share its ``call_id`` and are emitted when the call ends, closes or is cancelled.

How it is built: the whole logic is one generator (:meth:`Dispatcher._run`) that
yields *effects* (send, read, sleep, reserve, deliver a chunk, ...) and receives
their results; a sync driver and an async driver perform the effects with
``httpx.Client`` / ``httpx.AsyncClient`` (or their ``httpx2`` twins). Nothing of
the logic is written twice. The pieces live in private siblings: the effects and
per-call state in ``_dispatch_state``, the logic in ``_dispatch_machine``, the
drivers in ``_dispatch_drivers`` and the stream objects in ``_dispatch_streams``;
this module holds the configuration, the client lifecycle and the public API.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._dispatch_drivers import _AsyncDriver, _SyncDriver
from ._dispatch_machine import _Machine
from ._dispatch_state import StreamFailover
from ._dispatch_streams import AsyncDispatchStream, DispatchStream
from ._upstream import UPSTREAM_EXTENSION, UpstreamSender
from .breaker import CircuitBreaker
from .cache import ResponseCache
from .catalog import Catalog, ModelInfo
from .context import RouteContext
from .metering import RecordSink
from .retry import Clock, RetryPolicy, SystemClock
from .schema import ChatRequest, ChatResponse, Usage

if TYPE_CHECKING:
    from ._aiohttp_sender import AiohttpSender
    from .budgets import Budgets
    from .providers.base import Dialect, ProviderConfig
    from .router import Decision
    from .stats import StatsStore

__all__ = [
    "UPSTREAM_EXTENSION",
    "AsyncDispatchStream",
    "DispatchStream",
    "Dispatcher",
    "StreamFailover",
]


class Dispatcher(_Machine):
    """Executes :class:`~routing_middleware.router.Decision` objects.

    ``providers`` maps a provider name to its :class:`ProviderConfig` (with *its*
    key); a deployment at a provider missing from it is skipped. ``client`` /
    ``async_client`` are the httpx (or httpx2) clients used upstream, created on
    first use when not given; ``async_client`` may also be an
    ``aiohttp.ClientSession`` or ``"aiohttp"`` (a session per event loop, made on
    first use; extra ``aiohttp``). ``dialects`` overrides the registry's dialects by
    name. ``stream_failover`` picks what a stream that fails after delivering
    content does (``error`` or ``continue``); ``stream_holdback`` holds that many
    content chunks back at the start of a stream, widening the window in which a
    failure can still fall back transparently (at the cost of time to first
    token). ``pricer`` computes an attempt's cost (default: the provider-reported
    cost when given, else list prices from ``catalog``). ``store_content`` puts
    the prompt and the answer's text on the record of the attempt that answered
    (off by default: records carry no content unless the host asks).

    One dispatcher serves any number of concurrent calls; per-call state lives in
    the call, never on the instance.
    """

    def __init__(
        self,
        providers: Mapping[str, ProviderConfig],
        *,
        catalog: Catalog | None = None,
        client: Any = None,
        async_client: Any = None,
        dialects: Mapping[str, Dialect] | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        stats: StatsStore | None = None,
        budgets: Budgets | None = None,
        cache: ResponseCache | None = None,
        sink: RecordSink | None = None,
        clock: Clock | None = None,
        stream_failover: StreamFailover = "error",
        stream_holdback: int = 0,
        pricer: Callable[[Usage, ModelInfo], Decimal] | None = None,
        rng: random.Random | None = None,
        store_content: bool = False,
    ) -> None:
        if stream_failover not in ("error", "continue"):
            raise ValueError("stream_failover must be 'error' or 'continue'")
        if stream_holdback < 0:
            raise ValueError("stream_holdback must not be negative")
        self.providers = dict(providers)
        self.catalog = catalog
        self._client = client
        self._aiohttp: AiohttpSender | None = None
        if async_client == "aiohttp" or _is_aiohttp_session(async_client):
            from ._aiohttp_sender import AiohttpSender

            self._aiohttp = AiohttpSender(None if isinstance(async_client, str) else async_client)
            async_client = None
        self._async_client = async_client
        self._made_clients: set[str] = set()
        self._senders: tuple[UpstreamSender | None, UpstreamSender | None] = (None, None)
        self._dialects: dict[str, Dialect] = dict(dialects or {})
        self.retry = retry if retry is not None else RetryPolicy()
        self.breaker = breaker
        self.stats = stats
        self.budgets = budgets if budgets else None
        self.cache = cache
        self.sink = sink
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.stream_failover = stream_failover
        self.stream_holdback = stream_holdback
        self._pricer = pricer
        self._rng = rng or random.Random()
        self.store_content = store_content
        # Drivers hold no per-call state: one of each serves every call.
        self._sync_driver = _SyncDriver(self)
        self._async_driver = _AsyncDriver(self)

    def __repr__(self) -> str:
        return f"Dispatcher(providers={sorted(self.providers)})"

    # ------------------------------------------------------------------ public API

    def dispatch(
        self,
        request: ChatRequest,
        decision: Decision,
        context: RouteContext | None = None,
        *,
        cache: bool | None = None,
    ) -> ChatResponse:
        """Run ``decision`` for a non-streamed ``request`` and return the answer.

        ``cache`` forces the response cache on or off for this call (by default
        only temperature-0 requests use it). Raises the last attempt's
        :class:`LLMError` when every attempt failed.
        """
        call = self._call(request, decision, context, False, cache)
        result = self._sync_driver.run(self._run(call))
        assert result is not None
        return result

    async def adispatch(
        self,
        request: ChatRequest,
        decision: Decision,
        context: RouteContext | None = None,
        *,
        cache: bool | None = None,
    ) -> ChatResponse:
        """Async twin of :meth:`dispatch`."""
        call = self._call(request, decision, context, False, cache)
        result = await self._async_driver.run(self._run(call))
        assert result is not None
        return result

    def stream(
        self,
        request: ChatRequest,
        decision: Decision,
        context: RouteContext | None = None,
        *,
        cache: bool | None = None,
    ) -> DispatchStream:
        """Run ``decision`` streamed; returns once the first chunk is ready.

        Failures before any content fall back transparently and, if nothing
        works, raise here, before the caller has answered anything. Iterate the
        returned stream and close it (or use it as a context manager).
        """
        call = self._call(request, decision, context, True, cache)
        stream = DispatchStream(self, call)
        stream._prime()
        return stream

    async def astream(
        self,
        request: ChatRequest,
        decision: Decision,
        context: RouteContext | None = None,
        *,
        cache: bool | None = None,
    ) -> AsyncDispatchStream:
        """Async twin of :meth:`stream`."""
        call = self._call(request, decision, context, True, cache)
        stream = AsyncDispatchStream(self, call)
        await stream._prime()
        return stream

    def sync_client(self) -> Any:
        """The sync upstream client (an ``httpx.Client`` made on first use if none given)."""
        if self._client is None:
            import httpx

            self._client = httpx.Client()
            self._made_clients.add("sync")
        return self._client

    def async_client(self) -> Any:
        """The async upstream client (an ``httpx.AsyncClient`` made on first use)."""
        if self._async_client is None:
            import httpx

            self._async_client = httpx.AsyncClient()
            self._made_clients.add("async")
        return self._async_client

    def sync_sender(self) -> UpstreamSender:
        """The sender for :meth:`sync_client` (made once per client)."""
        client = self.sync_client()
        sender = self._senders[0]
        if sender is None or sender.client is not client:
            sender = UpstreamSender(client)
            self._senders = (sender, self._senders[1])
        return sender

    def async_sender(self) -> UpstreamSender | AiohttpSender:
        """The sender of async calls: aiohttp's when configured, else the one for
        :meth:`async_client` (made once per client)."""
        if self._aiohttp is not None:
            return self._aiohttp
        client = self.async_client()
        sender = self._senders[1]
        if sender is None or sender.client is not client:
            sender = UpstreamSender(client)
            self._senders = (self._senders[0], sender)
        return sender

    def close(self) -> None:
        """Close the sync client the dispatcher made itself (given clients are yours)."""
        if "sync" in self._made_clients and self._client is not None:
            self._client.close()
            self._client = None
            self._made_clients.discard("sync")

    async def aclose(self) -> None:
        """Close the clients the dispatcher made itself."""
        self.close()
        if self._aiohttp is not None:
            await self._aiohttp.aclose()
        if "async" in self._made_clients and self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None
            self._made_clients.discard("async")


def _is_aiohttp_session(client: Any) -> bool:
    return type(client).__module__.startswith("aiohttp") and hasattr(client, "request")
