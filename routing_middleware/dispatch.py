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
the logic is written twice.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from .breaker import CircuitBreaker
from .cache import CacheEntry, ResponseCache, assemble, is_cacheable, replay_chunks
from .catalog import Catalog, ModelInfo, default_catalog
from .context import RouteContext, current_context
from .metering import RecordSink, UsageRecord
from .retry import Clock, RetryPolicy, SystemClock, Verdict, counts_against_deployment
from .schema import (
    BudgetExceeded,
    ChatRequest,
    ChatResponse,
    InvalidRequest,
    LLMError,
    Message,
    NoRouteAvailable,
    StreamChunk,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
    Usage,
)
from .tokens import estimate_request_tokens, estimate_text_tokens

if TYPE_CHECKING:
    from .budgets import Budgets, Reservation
    from .providers.base import Dialect, EncodedRequest, ProviderConfig, StreamDecoder
    from .router import Decision, Deployment
    from .stats import StatsStore

__all__ = [
    "UPSTREAM_EXTENSION",
    "AsyncDispatchStream",
    "DispatchStream",
    "Dispatcher",
    "StreamFailover",
]

StreamFailover = Literal["error", "continue"]

#: Marks requests the dispatcher itself sends upstream, so interception leaves them alone.
UPSTREAM_EXTENSION = "llmroute_upstream"
_ZERO = Decimal(0)
_EMPTY_USAGE = Usage()


# ----------------------------------------------------------------------------- effects


@dataclass(slots=True)
class _Send:
    request: EncodedRequest
    timeout: float | None
    stream: bool
    provider: str


@dataclass(slots=True)
class _Read:
    handle: Any
    provider: str


@dataclass(slots=True)
class _Close:
    handle: Any


@dataclass(slots=True)
class _Sleep:
    seconds: float


@dataclass(slots=True)
class _Deliver:
    chunk: StreamChunk


@dataclass(slots=True)
class _Reserve:
    amount: Decimal
    context: RouteContext
    enforce: bool = True


@dataclass(slots=True)
class _Settle:
    reservation: Reservation
    amount: Decimal


@dataclass(slots=True)
class _Acquire:
    deployment: Deployment


@dataclass(slots=True)
class _Report:
    deployment: Deployment
    ok: bool | None


@dataclass(slots=True)
class _StatsStart:
    key: str


@dataclass(slots=True)
class _StatsEnd:
    key: str
    sample: dict[str, Any] | None


@dataclass(slots=True)
class _CacheGet:
    key: str


@dataclass(slots=True)
class _CachePut:
    key: str
    entry: CacheEntry


@dataclass(slots=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes | None = None
    handle: Any = None


@dataclass(slots=True)
class _End:
    value: ChatResponse | None


class _Closed(BaseException):
    """Thrown into the logic when the consumer closes a stream before its end."""


# ----------------------------------------------------------------------------- state


@dataclass(slots=True, eq=False)
class _Attempt:
    number: int
    deployment: Deployment
    info: ModelInfo | None
    started: float
    fallback_from: str | None
    reservation: Reservation | None = None
    handle: Any = None
    decoder: StreamDecoder | None = None
    sent: bool = False  # the request was encoded and went upstream
    answered: bool = False  # got a 2xx: the provider likely billed something
    ttft: float | None = None
    text: list[str] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Call:
    request: ChatRequest
    decision: Decision
    context: RouteContext
    stream: bool
    cache_key: str | None
    call_id: str
    started: float
    deadline_at: float | None
    reasons: tuple[tuple[str, str], ...] = ()
    input_tokens: int | None = None
    records: list[UsageRecord] = field(default_factory=list)
    live: _Attempt | None = None
    delivered: bool = False
    tool_delta: bool = False
    stitched: bool = False
    trim: bool = False  # drop the continuation's leading whitespace (the prefix had it)
    text: list[str] = field(default_factory=list)
    carried: Usage | None = None
    served: Deployment | None = None
    usage: Usage | None = None
    finished: bool = False


def _has_content(chunk: StreamChunk) -> bool:
    return bool(
        chunk.text or chunk.reasoning or chunk.tool_calls or chunk.finish_reason is not None
    )


_ERROR_TYPES: dict[type, str | None] = {}


def _transport_kind(exc: BaseException) -> str | None:
    """``timeout``/``transport`` for httpx and httpx2 transport errors, else ``None``."""
    kind = _ERROR_TYPES.get(type(exc), "?")
    if kind == "?":
        kind = None
        for cls in type(exc).__mro__:
            if not cls.__module__.startswith("httpx"):
                continue
            if cls.__name__ == "TimeoutException":
                kind = "timeout"
                break
            if cls.__name__ == "TransportError":
                kind = "transport"
                break
        _ERROR_TYPES[type(exc)] = kind
    return kind


def _upstream_error(exc: Exception, provider: str) -> Exception:
    """An httpx(2) transport error as an LLMError; other exceptions unchanged.

    Only the exception's class name is kept: messages can carry URLs with keys.
    """
    kind = _transport_kind(exc)
    if kind == "timeout":
        return UpstreamTimeout(
            f"{provider} did not answer in time ({type(exc).__name__})", provider=provider
        )
    if kind == "transport":
        return UpstreamUnavailable(
            f"connection to {provider} failed ({type(exc).__name__})", provider=provider
        )
    return exc


# ----------------------------------------------------------------------------- dispatcher


class Dispatcher:
    """Executes :class:`~routing_middleware.router.Decision` objects.

    ``providers`` maps a provider name to its :class:`ProviderConfig` (with *its*
    key); a deployment at a provider missing from it is skipped. ``client`` /
    ``async_client`` are the httpx (or httpx2) clients used upstream, created on
    first use when not given. ``dialects`` overrides the registry's dialects by
    name. ``stream_failover`` picks what a stream that fails after delivering
    content does (``error`` or ``continue``); ``stream_holdback`` holds that many
    content chunks back at the start of a stream, widening the window in which a
    failure can still fall back transparently (at the cost of time to first
    token). ``pricer`` computes an attempt's cost (default: the provider-reported
    cost when given, else list prices from ``catalog``).

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
    ) -> None:
        if stream_failover not in ("error", "continue"):
            raise ValueError("stream_failover must be 'error' or 'continue'")
        if stream_holdback < 0:
            raise ValueError("stream_holdback must not be negative")
        self.providers = dict(providers)
        self.catalog = catalog
        self._client = client
        self._async_client = async_client
        self._made_clients: set[str] = set()
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
        result = _SyncDriver(self).run(self._run(call))
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
        result = await _AsyncDriver(self).run(self._run(call))
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

    # ------------------------------------------------------------------ helpers

    def _catalog(self) -> Catalog:
        if self.catalog is None:
            self.catalog = default_catalog()
        return self.catalog

    def _dialect(self, name: str) -> Dialect:
        found = self._dialects.get(name)
        if found is None:
            from .providers.registry import dialect

            found = self._dialects[name] = dialect(name)
        return found

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

    def close(self) -> None:
        """Close the sync client the dispatcher made itself (given clients are yours)."""
        if "sync" in self._made_clients and self._client is not None:
            self._client.close()
            self._client = None
            self._made_clients.discard("sync")

    async def aclose(self) -> None:
        """Close the clients the dispatcher made itself."""
        self.close()
        if "async" in self._made_clients and self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None
            self._made_clients.discard("async")

    def _call(
        self,
        request: ChatRequest,
        decision: Decision,
        context: RouteContext | None,
        stream: bool,
        cache: bool | None,
    ) -> _Call:
        if request.stream != stream:
            request = request.model_copy(update={"stream": stream})
        key = None
        if self.cache is not None and is_cacheable(request, cache):
            key = self.cache.key(request, decision.primary.model)
        started = self.clock.monotonic()
        deadline = self.retry.deadline
        return _Call(
            request=request,
            decision=decision,
            context=context if context is not None else current_context(),
            stream=stream,
            cache_key=key,
            call_id=uuid.uuid4().hex,
            started=started,
            deadline_at=None if deadline is None else started + deadline,
            reasons=tuple((r.code, r.message) for r in decision.reasons),
        )

    def _price(self, usage: Usage, info: ModelInfo | None) -> Decimal:
        if info is None:
            return usage.provider_cost if usage.provider_cost is not None else _ZERO
        if self._pricer is not None:
            return self._pricer(usage, info)
        from .pricing import billed_cost

        return billed_cost(usage, info, catalog=self._catalog())

    def _requested_cost(
        self, call: _Call, usage: Usage, record: UsageRecord | None = None
    ) -> Decimal | None:
        """List-price cost of ``usage`` on the requested model (``record``: its own
        attempt's record, whose cost is reused when it ran on that very model)."""
        info = self._catalog().find(call.decision.requested_model)
        if info is None:
            return call.decision.requested_cost
        if usage.provider_cost is not None:
            usage = usage.model_copy(update={"provider_cost": None})
        elif record is not None and info.id == record.chosen_model and self._pricer is None:
            return record.cost
        return self._price(usage, info)

    def _record(
        self,
        call: _Call,
        attempt: _Attempt | None,
        deployment: Deployment,
        *,
        usage: Usage,
        cost: Decimal,
        status: Literal["ok", "error", "blocked", "cache_hit"],
        error_kind: str | None,
        now: float,
    ) -> UsageRecord:
        ctx = call.context
        decision = call.decision
        record = UsageRecord(
            requested_model=call.request.model,
            chosen_model=deployment.model,
            provider=deployment.provider,
            usage=usage,
            cost=cost,
            call_id=call.call_id,
            request_id=ctx.request_id,
            user_id=ctx.user_id,
            api_key_id=ctx.api_key_id,
            feature=ctx.feature,
            route=ctx.route,
            tags=tuple(sorted(ctx.tags)) if ctx.tags else (),
            tier=decision.tier,
            mode=decision.mode,
            deployment=deployment.key,
            status=status,
            error_kind=error_kind,
            attempt=attempt.number if attempt is not None else 0,
            fallback_from=attempt.fallback_from if attempt is not None else None,
            latency_ms=(now - (attempt.started if attempt else call.started)) * 1000,
            ttft_ms=(
                (attempt.ttft - attempt.started) * 1000
                if attempt is not None and attempt.ttft is not None
                else None
            ),
            streamed=call.stream,
            stitched=call.stitched and status == "ok",
            reasons=call.reasons,
        )
        call.records.append(record)
        return record

    def _finish(self, call: _Call) -> None:
        """Number the records and hand them to the sink (once; never raises)."""
        if call.finished:
            return
        call.finished = True
        total = len(call.records)
        for record in call.records:
            record.attempts = total
        if self.sink is None:
            return
        for record in call.records:
            try:
                self.sink.emit(record)
            except Exception:
                continue

    def _stats_sample(
        self, call: _Call, attempt: _Attempt, now: float, health: bool | None, usage: Usage | None
    ) -> dict[str, Any] | None:
        """The latency/error sample of an attempt, or ``None`` when its outcome says
        nothing about the deployment (a stream the consumer cut is no latency sample)."""
        if health is None:
            return None
        return {
            "latency_ms": (now - attempt.started) * 1000,
            "ttft_ms": None if attempt.ttft is None else (attempt.ttft - attempt.started) * 1000,
            "error": not health,
            "feature": call.context.feature,
            "output_tokens": usage.output_tokens if health and usage is not None else None,
        }

    def _partial_usage(self, call: _Call, attempt: _Attempt, request: ChatRequest) -> Usage | None:
        """What an attempt that ended early probably consumed (``None``: nothing known)."""
        reported = attempt.decoder.usage if attempt.decoder is not None else None
        if not attempt.answered and reported is None:
            return None
        out = estimate_text_tokens("".join(attempt.text))
        if reported is not None and reported.output_tokens >= out and reported.input_tokens:
            return reported
        if reported is not None:
            return reported.model_copy(
                update={
                    "input_tokens": reported.input_tokens or estimate_request_tokens(request),
                    "output_tokens": max(reported.output_tokens, out),
                    "estimated": True,
                }
            )
        return Usage(
            input_tokens=estimate_request_tokens(request), output_tokens=out, estimated=True
        )

    def _continuation(self, call: _Call) -> ChatRequest:
        """The original request with the delivered text as the assistant's prefix.

        Trailing whitespace is left out of the prefix (Anthropic rejects a final
        assistant turn ending in whitespace); the continuation's leading whitespace
        is dropped in turn (see :meth:`_adapt`).
        """
        text = "".join(call.text)
        original = call.request
        update: dict[str, Any] = {
            "messages": [*original.messages, Message(role="assistant", content=text.rstrip())]
        }
        if original.max_tokens:
            update["max_tokens"] = max(1, original.max_tokens - estimate_text_tokens(text))
        return original.model_copy(update=update)

    # ------------------------------------------------------------------ the logic

    def _run(self, call: _Call) -> Generator[Any, Any, ChatResponse | None]:
        """The whole call as effects: cache, attempts, fallbacks, metering."""
        try:
            result = yield from self._serve(call)
        except BaseException as exc:
            live = call.live
            if live is not None:
                request = self._continuation(call) if call.stitched else call.request
                kind = "ConsumerClosed" if isinstance(exc, _Closed) else type(exc).__name__
                usage = self._partial_usage(call, live, request)
                if isinstance(exc, GeneratorExit):
                    # Garbage-collected without close(): no more effects can run here,
                    # but what was used still gets recorded.
                    call.live = None
                    if self.stats is not None:
                        with contextlib.suppress(Exception):
                            self.stats.finished(live.deployment.key)
                    now = self.clock.monotonic()
                    cost = self._price(usage, live.info) if usage is not None else _ZERO
                    self._record(
                        call,
                        live,
                        live.deployment,
                        usage=usage or _EMPTY_USAGE,
                        cost=cost,
                        status="error",
                        error_kind=kind,
                        now=now,
                    )
                else:
                    yield from self._end_attempt(call, live, usage, None, kind)
            self._finish(call)
            raise
        self._finish(call)
        return result

    def _serve(self, call: _Call) -> Generator[Any, Any, ChatResponse | None]:
        if call.cache_key is not None:
            entry = yield _CacheGet(call.cache_key)
            if entry is not None:
                return (yield from self._serve_hit(call, entry))
        decision = call.decision
        chain = (decision.primary, *decision.fallbacks)
        policy = self.retry
        catalog = self._catalog()
        last_error: LLMError | None = None
        rerouted: LLMError | None = None  # the upstream failure that sent the call onwards
        skip_providers: set[str] = set()
        min_context = 0
        previous: Deployment | None = None
        fallback_from: str | None = None
        number = 0
        request = call.request
        for deployment in chain:
            info = catalog.find(deployment.model)
            if deployment.provider in skip_providers:
                continue
            if min_context and info is not None and info.context_window <= min_context:
                continue
            config = self.providers.get(deployment.provider)
            if config is None:
                last_error = last_error or NoRouteAvailable(
                    f"no provider configured for {deployment.provider!r}",
                    provider=deployment.provider,
                )
                continue
            if previous is not None and previous.model != deployment.model:
                fallback_from = previous.model
            previous = deployment
            retries = 0
            while True:
                now = self.clock.monotonic()
                remaining = None if call.deadline_at is None else call.deadline_at - now
                if remaining is not None and remaining <= 0:
                    raise last_error or UpstreamTimeout("the call's deadline passed")
                if self.breaker is not None and not (yield _Acquire(deployment)):
                    last_error = last_error or NoRouteAvailable(
                        f"circuit open for {deployment.key}", provider=deployment.provider
                    )
                    break
                reservation = None
                if self.budgets is not None and info is not None:
                    try:
                        reservation = yield _Reserve(
                            self._worst_case(call, request, info),
                            call.context,
                            decision.mode != "observe",
                        )
                    except LLMError as blocked:  # BudgetExceeded: a cheaper fallback may fit
                        if self.breaker is not None:
                            yield _Report(deployment, None)
                        last_error = blocked
                        break
                number += 1
                attempt = _Attempt(
                    number, deployment, info, self.clock.monotonic(), fallback_from, reservation
                )
                call.live = attempt
                if self.stats is not None:
                    yield _StatsStart(deployment.key)
                if call.stream:
                    error = yield from self._stream_attempt(
                        call, attempt, config, request, policy.timeout_for(remaining)
                    )
                    if error is None:
                        return None
                else:
                    outcome = yield from self._plain_attempt(
                        call, attempt, config, request, policy.timeout_for(remaining)
                    )
                    if isinstance(outcome, ChatResponse):
                        return outcome
                    error = outcome
                last_error = error
                if call.delivered:
                    if self.stream_failover != "continue" or call.tool_delta:
                        raise error
                    call.stitched = True
                    spent = call.records[-1].usage
                    call.carried = spent if call.carried is None else call.carried + spent
                    request = self._continuation(call)
                if attempt.sent:
                    verdict = policy.verdict(error, retries)
                else:  # this deployment's dialect cannot express the request; others may
                    verdict = Verdict.FAIL if error.retryable else Verdict.NEXT
                if verdict is Verdict.RETRY:
                    delay = policy.delay(error, retries, self._rng)
                    now = self.clock.monotonic()
                    if call.deadline_at is not None and now + delay >= call.deadline_at:
                        rerouted = rerouted or error
                        break
                    retries += 1
                    if delay > 0:
                        yield _Sleep(delay)
                    continue
                if verdict is Verdict.FAIL:
                    if rerouted is not None and isinstance(error, InvalidRequest):
                        # A fallback rejecting what the first choice accepted (a parameter
                        # its API lacks): pass it over; the caller hears the original failure.
                        last_error = rerouted
                        break
                    raise error
                if verdict is Verdict.NEXT_PROVIDER:
                    skip_providers.add(deployment.provider)
                elif verdict is Verdict.LARGER_CONTEXT:
                    window = info.context_window if info is not None else 0
                    min_context = max(min_context, window)
                rerouted = rerouted or error
                break
        if number == 0 and isinstance(last_error, BudgetExceeded):
            self._record(
                call,
                None,
                decision.primary,
                usage=_EMPTY_USAGE,
                cost=_ZERO,
                status="blocked",
                error_kind=last_error.kind,
                now=self.clock.monotonic(),
            )
        raise last_error or NoRouteAvailable("no deployment to try")

    def _worst_case(self, call: _Call, request: ChatRequest, info: ModelInfo) -> Decimal:
        from .budgets import worst_case_cost

        if request is call.request:
            if call.input_tokens is None:
                call.input_tokens = estimate_request_tokens(request)
            return worst_case_cost(request, info, input_tokens=call.input_tokens)
        return worst_case_cost(request, info)

    def _serve_hit(
        self, call: _Call, entry: CacheEntry
    ) -> Generator[Any, Any, ChatResponse | None]:
        response = entry.response
        usage = response.usage or _EMPTY_USAGE
        record = self._record(
            call,
            None,
            call.decision.primary,
            usage=_EMPTY_USAGE,
            cost=_ZERO,
            status="cache_hit",
            error_kind=None,
            now=self.clock.monotonic(),
        )
        record.attempt = 1
        record.cache_saved_cost = entry.cost
        record.requested_cost = self._requested_cost(call, usage)
        call.served = call.decision.primary
        call.usage = usage
        self._finish(call)
        if not call.stream:
            return response
        for chunk in replay_chunks(response):
            call.delivered = True
            yield _Deliver(chunk)
        return None

    def _end_attempt(
        self,
        call: _Call,
        attempt: _Attempt,
        usage: Usage | None,
        error: LLMError | None,
        error_kind: str | None = None,
    ) -> Generator[Any, Any, UsageRecord]:
        """Close, settle, report and record one attempt."""
        call.live = None
        if attempt.handle is not None:
            handle, attempt.handle = attempt.handle, None
            yield _Close(handle)
        now = self.clock.monotonic()
        cost = self._price(usage, attempt.info) if usage is not None else _ZERO
        if attempt.reservation is not None:
            yield _Settle(attempt.reservation, cost)
        failed = error is not None or error_kind is not None
        # True: healthy, False: the deployment failed, None: says nothing about it
        # (a bad request, the consumer leaving).
        health: bool | None = True
        if error is not None:
            health = False if counts_against_deployment(error) else None
        elif error_kind is not None:
            health = None
        if self.breaker is not None:
            yield _Report(attempt.deployment, health)
        if self.stats is not None:
            sample = self._stats_sample(call, attempt, now, health, usage)
            yield _StatsEnd(attempt.deployment.key, sample)
        kind = error.kind if error is not None else error_kind
        return self._record(
            call,
            attempt,
            attempt.deployment,
            usage=usage or _EMPTY_USAGE,
            cost=cost,
            status="error" if failed else "ok",
            error_kind=kind,
            now=now,
        )

    def _plain_attempt(
        self,
        call: _Call,
        attempt: _Attempt,
        config: ProviderConfig,
        request: ChatRequest,
        timeout: float | None,
    ) -> Generator[Any, Any, ChatResponse | LLMError]:
        dialect = self._dialect(config.dialect)
        try:
            encoded = dialect.encode_request(request, config, attempt.deployment.name)
            attempt.sent = True
            reply: _Reply = yield _Send(encoded, timeout, False, config.name)
            body = reply.body or b""
            if reply.status >= 400:
                raise dialect.decode_error(reply.status, reply.headers, body, config)
            attempt.answered = True
            response = dialect.decode_response(body, config)
        except LLMError as error:
            usage = self._partial_usage(call, attempt, request)
            yield from self._end_attempt(call, attempt, usage, error)
            return error
        usage = response.usage
        if usage is None:
            out = "".join(c.message.text for c in response.choices)
            usage = Usage(
                input_tokens=estimate_request_tokens(request),
                output_tokens=estimate_text_tokens(out),
                estimated=True,
            )
            response.usage = usage
        record = yield from self._end_attempt(call, attempt, usage, None)
        record.requested_cost = self._requested_cost(call, usage, record)
        call.served = attempt.deployment
        call.usage = usage
        if response.provider is None:
            response.provider = config.name
        if call.cache_key is not None and self.cache is not None:
            key = self.cache.key(call.request, attempt.deployment.model)
            yield _CachePut(key, CacheEntry(response, record.cost))
        return response

    def _adapt(self, call: _Call, chunk: StreamChunk) -> StreamChunk | None:
        """A chunk as the consumer sees it: stitched continuations lose their role
        chunk and report the usage of every stitched attempt."""
        if not call.stitched:
            return chunk
        if chunk.role is not None:
            if not (_has_content(chunk) or chunk.usage is not None):
                return None
            chunk = chunk.model_copy(update={"role": None})
        if call.trim and chunk.text:
            text = chunk.text.lstrip()
            call.trim = not text
            chunk = chunk.model_copy(update={"text": text or None})
            if not (_has_content(chunk) or chunk.usage is not None):
                return None
        if chunk.usage is not None and call.carried is not None:
            chunk = chunk.model_copy(update={"usage": call.carried + chunk.usage})
        return chunk

    def _deliver(self, call: _Call, chunk: StreamChunk) -> Generator[Any, Any, None]:
        out = self._adapt(call, chunk)
        if out is None:
            return
        if _has_content(out):
            call.delivered = True
            if out.text:
                call.text.append(out.text)
            if out.tool_calls:
                call.tool_delta = True
        yield _Deliver(out)

    def _stream_attempt(
        self,
        call: _Call,
        attempt: _Attempt,
        config: ProviderConfig,
        request: ChatRequest,
        timeout: float | None,
    ) -> Generator[Any, Any, LLMError | None]:
        dialect = self._dialect(config.dialect)
        held: list[StreamChunk] = []
        flowing = finished = False
        content = 0
        keep: list[StreamChunk] | None = (
            [] if call.cache_key is not None and not call.stitched else None
        )
        if call.stitched:
            delivered = "".join(call.text)
            call.trim = delivered != delivered.rstrip()
        try:
            encoded = dialect.encode_request(request, config, attempt.deployment.name)
            decoder = attempt.decoder = dialect.stream_decoder(config, request)
            attempt.sent = True
            reply: _Reply = yield _Send(encoded, timeout, True, config.name)
            if reply.status >= 400:
                raise dialect.decode_error(reply.status, reply.headers, reply.body or b"", config)
            attempt.answered = True
            attempt.handle = reply.handle
            while True:
                data = yield _Read(reply.handle, config.name)
                chunks = decoder.feed(data) if data else decoder.close()
                if keep is not None:
                    keep.extend(chunks)
                for chunk in chunks:
                    if chunk.finish_reason is not None:
                        finished = True
                    if chunk.text:
                        attempt.text.append(chunk.text)
                    if attempt.ttft is None and _has_content(chunk):
                        attempt.ttft = self.clock.monotonic()
                    if flowing:
                        yield from self._deliver(call, chunk)
                        continue
                    held.append(chunk)
                    if _has_content(chunk):
                        content += 1
                    if content > self.stream_holdback:
                        flowing = True
                        for early in held:
                            yield from self._deliver(call, early)
                        held.clear()
                if not data:
                    if not finished:
                        # An end marker without any finish reason is a cut, not an answer.
                        raise UpstreamProtocolError(
                            "the stream ended without a finish reason", provider=config.name
                        )
                    break
        except LLMError as error:
            usage = self._partial_usage(call, attempt, request)
            yield from self._end_attempt(call, attempt, usage, error)
            return error
        for early in held:
            yield from self._deliver(call, early)
        usage = decoder.usage
        reported = usage is not None
        if usage is None:
            usage = self._partial_usage(call, attempt, request)
            assert usage is not None
        record = yield from self._end_attempt(call, attempt, usage, None)
        if not reported:  # the provider sent none: the consumer gets the estimate
            yield from self._deliver(call, StreamChunk(usage=usage))
        total = usage if call.carried is None else call.carried + usage
        record.requested_cost = self._requested_cost(
            call, total, record if call.carried is None else None
        )
        call.served = attempt.deployment
        call.usage = total
        if keep is not None and self.cache is not None:
            response = assemble(
                keep, response_id=call.call_id, model=attempt.deployment.model, provider=config.name
            )
            if response.usage is None:
                response.usage = usage
            key = self.cache.key(call.request, attempt.deployment.model)
            yield _CachePut(key, CacheEntry(response, record.cost))
        return None


# ----------------------------------------------------------------------------- drivers


def _charge_only(budgets: Budgets, context: RouteContext) -> Reservation:
    """A hold of nothing: in ``observe`` mode budgets count spend but never block."""
    from .budgets import Reservation

    return Reservation(budgets.lines(context), 0)


class _SyncDriver:
    """Performs effects with blocking I/O."""

    __slots__ = ("_d", "_table")

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher
        self._table: dict[type, Callable[[Any], Any]] = {
            _Send: self._send,
            _Read: self._read,
            _Close: self._close,
            _Sleep: lambda e: dispatcher.clock.sleep(e.seconds),
            _Reserve: self._reserve,
            _Settle: self._settle,
            _Acquire: self._acquire,
            _Report: self._report,
            _CacheGet: lambda e: dispatcher.cache.get(e.key) if dispatcher.cache else None,
            _CachePut: self._cache_put,
            _StatsStart: self._stats_start,
            _StatsEnd: self._stats_end,
        }

    def step(
        self, machine: Generator[Any, Any, Any], throw: BaseException | None = None
    ) -> _Deliver | _End:
        """Advance ``machine`` to its next delivery or its end."""
        value: Any = None
        error = throw
        table = self._table
        while True:
            try:
                effect = machine.throw(error) if error is not None else machine.send(value)
            except StopIteration as stop:
                return _End(stop.value)
            if type(effect) is _Deliver:
                return effect
            error = None
            try:
                value = table[type(effect)](effect)
            except Exception as exc:
                value = None
                error = exc

    def run(self, machine: Generator[Any, Any, ChatResponse | None]) -> ChatResponse | None:
        outcome = self.step(machine)
        if isinstance(outcome, _End):
            return outcome.value
        raise RuntimeError("a non-streamed call produced stream chunks")

    def _send(self, effect: _Send) -> _Reply:
        client = self._d.sync_client()
        req = effect.request
        try:
            request = client.build_request(
                req.method,
                req.url,
                headers=req.headers,
                json=req.json,
                timeout=effect.timeout,
                extensions={UPSTREAM_EXTENSION: True},
            )
            response = client.send(request, stream=True)
        except Exception as exc:
            raise _upstream_error(exc, effect.provider) from None
        try:
            if effect.stream and response.status_code < 400:
                return _Reply(
                    response.status_code, response.headers, handle=(response, response.iter_bytes())
                )
            body = response.read()
        except Exception as exc:
            response.close()
            raise _upstream_error(exc, effect.provider) from None
        response.close()
        return _Reply(response.status_code, response.headers, body)

    def _read(self, effect: _Read) -> bytes:
        try:
            for data in effect.handle[1]:
                if data:
                    return bytes(data)
        except Exception as exc:
            raise _upstream_error(exc, effect.provider) from None
        return b""

    def _close(self, effect: _Close) -> None:
        try:
            effect.handle[0].close()
        except Exception:
            return

    def _reserve(self, effect: _Reserve) -> Reservation | None:
        budgets = self._d.budgets
        if budgets is None:
            return None
        try:
            if not effect.enforce:
                return _charge_only(budgets, effect.context)
            return budgets.reserve(effect.amount, effect.context)
        except LLMError:
            raise
        except Exception:
            return None  # a budget store outage must not take calls down

    def _settle(self, effect: _Settle) -> None:
        if self._d.budgets is not None:
            try:
                self._d.budgets.settle(effect.reservation, effect.amount)
            except Exception:
                return

    def _acquire(self, effect: _Acquire) -> bool:
        breaker = self._d.breaker
        try:
            return breaker is None or breaker.acquire(effect.deployment)
        except Exception:
            return True

    def _report(self, effect: _Report) -> None:
        if self._d.breaker is not None:
            try:
                self._d.breaker.record(effect.deployment, effect.ok)
            except Exception:
                return

    def _cache_put(self, effect: _CachePut) -> None:
        if self._d.cache is not None:
            self._d.cache.set(effect.key, effect.entry)

    def _stats_start(self, effect: _StatsStart) -> None:
        if self._d.stats is not None:
            with contextlib.suppress(Exception):
                self._d.stats.started(effect.key)

    def _stats_end(self, effect: _StatsEnd) -> None:
        stats = self._d.stats
        if stats is not None:
            with contextlib.suppress(Exception):
                stats.finished(effect.key)
                if effect.sample is not None:
                    stats.record(effect.key, **effect.sample)


class _AsyncDriver:
    """Performs effects with async I/O; cleanup after a cancellation is shielded."""

    __slots__ = ("_d", "_table")

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher
        self._table: dict[type, Callable[[Any], Any]] = {
            _Send: self._send,
            _Read: self._read,
            _Close: self._close,
            _Sleep: lambda e: dispatcher.clock.asleep(e.seconds),
            _Reserve: self._reserve,
            _Settle: self._settle,
            _Acquire: self._acquire,
            _Report: self._report,
            _CacheGet: self._cache_get,
            _CachePut: self._cache_put,
            _StatsStart: self._stats_start,
            _StatsEnd: self._stats_end,
        }

    async def step(
        self, machine: Generator[Any, Any, Any], throw: BaseException | None = None
    ) -> _Deliver | _End:
        value: Any = None
        error = throw
        table = self._table
        shielded = throw is not None
        while True:
            try:
                effect = machine.throw(error) if error is not None else machine.send(value)
            except StopIteration as stop:
                return _End(stop.value)
            if type(effect) is _Deliver:
                return effect
            error = None
            try:
                if shielded:
                    import anyio

                    with anyio.CancelScope(shield=True):
                        value = await table[type(effect)](effect)
                else:
                    value = await table[type(effect)](effect)
            except Exception as exc:
                value = None
                error = exc
            except BaseException as exc:  # cancelled: let the logic clean up, shielded
                value = None
                error = exc
                shielded = True

    async def run(self, machine: Generator[Any, Any, ChatResponse | None]) -> ChatResponse | None:
        outcome = await self.step(machine)
        if isinstance(outcome, _End):
            return outcome.value
        raise RuntimeError("a non-streamed call produced stream chunks")

    async def _send(self, effect: _Send) -> _Reply:
        client = self._d.async_client()
        req = effect.request
        try:
            request = client.build_request(
                req.method,
                req.url,
                headers=req.headers,
                json=req.json,
                timeout=effect.timeout,
                extensions={UPSTREAM_EXTENSION: True},
            )
            response = await client.send(request, stream=True)
        except Exception as exc:
            raise _upstream_error(exc, effect.provider) from None
        try:
            if effect.stream and response.status_code < 400:
                return _Reply(
                    response.status_code,
                    response.headers,
                    handle=(response, response.aiter_bytes()),
                )
            body = await response.aread()
        except Exception as exc:
            await response.aclose()
            raise _upstream_error(exc, effect.provider) from None
        await response.aclose()
        return _Reply(response.status_code, response.headers, body)

    async def _read(self, effect: _Read) -> bytes:
        try:
            async for data in effect.handle[1]:
                if data:
                    return bytes(data)
        except Exception as exc:
            raise _upstream_error(exc, effect.provider) from None
        return b""

    async def _close(self, effect: _Close) -> None:
        try:
            await effect.handle[0].aclose()
        except Exception:
            return

    async def _reserve(self, effect: _Reserve) -> Reservation | None:
        budgets = self._d.budgets
        if budgets is None:
            return None
        try:
            if not effect.enforce:
                return _charge_only(budgets, effect.context)
            return await budgets.areserve(effect.amount, effect.context)
        except LLMError:
            raise
        except Exception:
            return None

    async def _settle(self, effect: _Settle) -> None:
        if self._d.budgets is not None:
            try:
                await self._d.budgets.asettle(effect.reservation, effect.amount)
            except Exception:
                return

    async def _acquire(self, effect: _Acquire) -> bool:
        breaker = self._d.breaker
        try:
            return breaker is None or await breaker.aacquire(effect.deployment)
        except Exception:
            return True

    async def _report(self, effect: _Report) -> None:
        if self._d.breaker is not None:
            try:
                await self._d.breaker.arecord(effect.deployment, effect.ok)
            except Exception:
                return

    async def _cache_get(self, effect: _CacheGet) -> CacheEntry | None:
        return await self._d.cache.aget(effect.key) if self._d.cache is not None else None

    async def _cache_put(self, effect: _CachePut) -> None:
        if self._d.cache is not None:
            await self._d.cache.aset(effect.key, effect.entry)

    async def _stats_start(self, effect: _StatsStart) -> None:
        if self._d.stats is not None:
            with contextlib.suppress(Exception):
                await self._d.stats.astarted(effect.key)

    async def _stats_end(self, effect: _StatsEnd) -> None:
        stats = self._d.stats
        if stats is not None:
            with contextlib.suppress(Exception):
                await stats.afinished(effect.key)
                if effect.sample is not None:
                    await stats.arecord(effect.key, **effect.sample)


# ----------------------------------------------------------------------------- streams


class _StreamInfo:
    """What both stream flavours expose about the call behind them."""

    _call: _Call

    @property
    def call_id(self) -> str:
        """The id every usage record of this call carries."""
        return self._call.call_id

    @property
    def deployment(self) -> Deployment | None:
        """The deployment that served (or is serving) the stream."""
        live = self._call.live
        return live.deployment if live is not None else self._call.served

    @property
    def usage(self) -> Usage | None:
        """Usage of the answer once the stream ended (every stitched attempt summed)."""
        return self._call.usage

    @property
    def records(self) -> tuple[UsageRecord, ...]:
        """The call's usage records so far (complete once the stream ended or closed)."""
        return tuple(self._call.records)


class DispatchStream(_StreamInfo):
    """A streamed answer as :class:`StreamChunk` objects (sync).

    Raises an :class:`LLMError` mid-iteration when the upstream failed after
    content was delivered. :meth:`close` ends the upstream call early and records
    what it used; call it (or use ``with``) when you stop iterating before the end.
    """

    def __init__(self, dispatcher: Dispatcher, call: _Call) -> None:
        self._call = call
        self._driver = _SyncDriver(dispatcher)
        self._machine = dispatcher._run(call)
        self._pending: StreamChunk | None = None
        self._done = False

    def _advance(self, throw: BaseException | None = None) -> StreamChunk | None:
        try:
            outcome = self._driver.step(self._machine, throw)
        except BaseException:
            self._done = True
            raise
        if isinstance(outcome, _End):
            self._done = True
            return None
        return outcome.chunk

    def _prime(self) -> None:
        self._pending = self._advance()

    def __iter__(self) -> Iterator[StreamChunk]:
        return self

    def __next__(self) -> StreamChunk:
        pending = self._pending
        if pending is not None:
            self._pending = None
            return pending
        if self._done:
            raise StopIteration
        chunk = self._advance()
        if chunk is None:
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Stop early: close the upstream response, settle and record (idempotent)."""
        self._pending = None
        if self._done:
            return
        try:
            self._advance(_Closed())
        except _Closed:
            pass

    def __enter__(self) -> DispatchStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncDispatchStream(_StreamInfo):
    """Async twin of :class:`DispatchStream`; close it with :meth:`aclose`."""

    def __init__(self, dispatcher: Dispatcher, call: _Call) -> None:
        self._call = call
        self._driver = _AsyncDriver(dispatcher)
        self._machine = dispatcher._run(call)
        self._pending: StreamChunk | None = None
        self._done = False

    async def _advance(self, throw: BaseException | None = None) -> StreamChunk | None:
        try:
            outcome = await self._driver.step(self._machine, throw)
        except BaseException:
            self._done = True
            raise
        if isinstance(outcome, _End):
            self._done = True
            return None
        return outcome.chunk

    async def _prime(self) -> None:
        self._pending = await self._advance()

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __anext__(self) -> StreamChunk:
        pending = self._pending
        if pending is not None:
            self._pending = None
            return pending
        if self._done:
            raise StopAsyncIteration
        chunk = await self._advance()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Stop early: close the upstream response, settle and record (idempotent)."""
        self._pending = None
        if self._done:
            return
        try:
            await self._advance(_Closed())
        except _Closed:
            pass

    async def __aenter__(self) -> AsyncDispatchStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
