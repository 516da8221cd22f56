"""The dispatcher's logic as one generator of effects: no I/O of its own.

:class:`_Machine` holds everything :class:`~routing_middleware.dispatch.Dispatcher`
decides: the cache, the attempts, retries and fallbacks, stream failover and
metering. Its :meth:`_Machine._run` yields effects (see :mod:`._dispatch_state`)
that a driver performs.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, cast

from . import _deferred
from ._dispatch_drivers import _Pipe, settle_now
from ._dispatch_state import (
    StreamFailover,
    _Acquire,
    _Attempt,
    _CacheGet,
    _CachePut,
    _Call,
    _Close,
    _Closed,
    _Deliver,
    _Ended,
    _Flow,
    _Read,
    _Reply,
    _Report,
    _Reserve,
    _Send,
    _Settle,
    _Sleep,
    _StatsStart,
    forward_bytes,
    forward_json,
)
from ._ids import new_id
from .breaker import CircuitBreaker
from .cache import CacheEntry, ResponseCache, assemble, is_cacheable, replay_chunks
from .catalog import Catalog, ModelInfo, default_catalog
from .context import RouteContext, call_timeout, current_context
from .metering import RecordSink, UsageRecord, routed_extra
from .pricing import billed_cost_now
from .retry import Clock, RetryPolicy, Verdict, counts_against_deployment
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
    Usage,
)
from .tokens import estimate_request_tokens, estimate_text_tokens

if TYPE_CHECKING:
    from .budgets import Budgets
    from .providers.base import Dialect, EncodedRequest, ProviderConfig
    from .providers.openai import OpenAIDialect
    from .providers.openai_forward import OpenAIForwarder
    from .router import Decision, Deployment
    from .stats import StatsStore

_ZERO = Decimal(0)
_EMPTY_USAGE = Usage()
_log = logging.getLogger("llmroute.dispatch")
#: Models already warned about as missing from the catalog (one warning per model).
_UNPRICED_WARNED: set[str] = set()


_openai_class: type | None = None


def _openai_dialect() -> type:
    """The OpenAI dialect's class (imported on first use)."""
    global _openai_class
    if _openai_class is None:
        from .providers.openai import OpenAIDialect

        _openai_class = OpenAIDialect
    return _openai_class


def _has_content(chunk: StreamChunk) -> bool:
    return bool(
        chunk.text or chunk.reasoning or chunk.tool_calls or chunk.finish_reason is not None
    )


def _dearness(model: ModelInfo) -> tuple[Decimal, Decimal]:
    return model.price.output, model.price.input


class _Machine:
    """The dispatcher's decisions; per-call state lives in the :class:`_Call`."""

    providers: dict[str, ProviderConfig]
    catalog: Catalog | None
    retry: RetryPolicy
    breaker: CircuitBreaker | None
    stats: StatsStore | None
    budgets: Budgets | None
    cache: ResponseCache | None
    sink: RecordSink | None
    clock: Clock
    stream_failover: StreamFailover
    stream_holdback: int
    store_content: bool
    _dialects: dict[str, Dialect]
    _pricer: Callable[[Usage, ModelInfo], Decimal] | None
    _rng: random.Random

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
        if stream:
            _deferred.prepare()  # (a stream dropped unclosed is cleaned up there)
        key = None
        if self.cache is not None and is_cacheable(request, cache):
            key = self.cache.key(request, decision.primary.model)
        forward = offer = None
        if (
            stream
            and key is None
            and self.stream_failover == "error"
            and self.stream_holdback == 0
            and not self.store_content
        ):
            forward = forward_bytes.get()
        elif not stream and key is None and not self.store_content:
            offer = forward_json.get()
            if offer is not None:
                if offer.taken:
                    offer = None
                else:
                    offer.taken = True
        started = self.clock.monotonic()
        deadline = self.retry.deadline
        ctx = context if context is not None else current_context()
        return _Call(
            request=request,
            decision=decision,
            context=ctx,
            stream=stream,
            cache_key=key,
            call_id=new_id(),
            started=started,
            deadline_at=None if deadline is None else started + deadline,
            attempt_timeout=call_timeout(ctx),
            reasons=tuple((r.code, r.message) for r in decision.reasons),
            forward=forward,
            offer=offer,
        )

    def _price(self, usage: Usage, info: ModelInfo | None) -> Decimal:
        if info is None:
            return usage.provider_cost if usage.provider_cost is not None else _ZERO
        if self._pricer is not None:
            return self._pricer(usage, info)
        return billed_cost_now(usage, info, self._catalog())  # (at the call's end)

    def _timeout(self, call: _Call, remaining: float | None) -> float | None:
        """The next attempt's timeout: the policy's within the deadline, and the
        call's own (``RouteContext.timeout_s``) when tighter."""
        timeout = self.retry.timeout_for(remaining)
        own = call.attempt_timeout
        if own is None:
            return timeout
        return own if timeout is None else min(timeout, own)

    def _requested_cost(
        self, call: _Call, usage: Usage, record: UsageRecord | None = None
    ) -> Decimal | None:
        """What ``usage`` would have cost on the requested model, for the saving
        ``requested_cost - cost`` (``record``: its own attempt's record).

        Served by the requested model: the record's own cost (no saving). A billed
        (provider-reported) cost: that cost plus the list-price difference between
        the two models. A chosen model without list prices: ``None`` (no saving).
        """
        catalog = self._catalog()
        chosen = catalog.find(record.chosen_model) if record is not None else None
        if record is not None and chosen is None:
            return None  # unpriced or billed off-catalog: any saving shown would be made up
        if record is not None and record.chosen_model == call.decision.requested_model:
            return record.cost  # served by the requested model: no saving, whatever billed
        info = catalog.find(call.decision.requested_model)
        if info is None:
            return call.decision.requested_cost
        if record is not None and chosen is not None and chosen.id == info.id:
            return record.cost  # served by the requested model: no saving, whatever billed
        if usage.provider_cost is None:
            return self._price(usage, info)
        # A provider-reported (billed) cost is not comparable with a list price: the
        # saving is the list-price difference, added to what was billed.
        listed = usage.model_copy(update={"provider_cost": None})
        requested = self._price(listed, info)
        if record is None or chosen is None:
            return requested
        return record.cost + requested - self._price(listed, chosen)

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
        extra: dict[str, Any] | None = None,
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
        routed = decision.routed
        if decision.mode == "observe" and routed is not None and status == "ok":
            extra = {**(extra or {}), **routed_extra(self._catalog(), routed.model, usage)}
        if extra:
            record.extra = extra
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
        if self.store_content:
            _store_content(call)
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
        forward = attempt.forward
        if forward is not None:  # decode what was forwarded, as the decoded path would have
            attempt.forward = None
            attempt.decoder, attempt.text = forward.replay()
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
        except GeneratorExit:
            # Garbage-collected without close(): no more effects can run here, and
            # this may be inside a finalizer, so what was used is recorded, settled
            # and counted on the cleanup thread (see ``_deferred``).
            live = call.live
            call.live = None
            now, at = self.clock.monotonic(), datetime.now(UTC)
            _deferred.defer(lambda: self._collected(call, live, now, at))
            raise
        except BaseException as exc:
            live = call.live
            if live is not None:
                request = self._continuation(call) if call.stitched else call.request
                kind = "ConsumerClosed" if isinstance(exc, _Closed) else type(exc).__name__
                usage = self._partial_usage(call, live, request)
                yield from self._end_attempt(call, live, usage, None, kind)
            self._finish(call)
            raise
        self._finish(call)
        return result

    def _collected(self, call: _Call, live: _Attempt | None, now: float, at: datetime) -> None:
        """Record, settle and count a call garbage-collected at ``now`` (monotonic;
        ``at`` on the wall clock) with ``live`` in flight, then hand its records to the
        sink."""
        try:
            if live is not None:
                if self.stats is not None:
                    with contextlib.suppress(Exception):
                        self.stats.finished(live.deployment.key)
                if self.breaker is not None:
                    # no verdict, as for a stream closed early: a half-open probe
                    # dropped this way must not hold the probe until it times out
                    with contextlib.suppress(Exception):
                        self.breaker.record(live.deployment, None, live.ticket)
                request = self._continuation(call) if call.stitched else call.request
                usage = self._partial_usage(call, live, request)
                cost, charge, extra = self._costs(live, usage)
                if live.reservation is not None and self.budgets is not None:
                    settle_now(self.budgets, live.reservation, charge)  # (never raises)
                record = self._record(
                    call,
                    live,
                    live.deployment,
                    usage=usage or _EMPTY_USAGE,
                    cost=cost,
                    status="error",
                    error_kind="GeneratorExit",
                    now=now,
                    extra=extra,
                )
                record.created_at = at  # (when it was dropped, however late this runs)
        finally:
            self._finish(call)

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
                ticket = 0.0  # (the breaker's, for this attempt's outcome)
                if self.breaker is not None:
                    admitted = yield _Acquire(deployment)
                    if admitted is None:
                        last_error = last_error or NoRouteAvailable(
                            f"circuit open for {deployment.key}", provider=deployment.provider
                        )
                        break
                    ticket = admitted
                reservation = None
                budget_info = info if info is not None else self._unpriced(deployment)
                if self.budgets is not None and budget_info is not None:
                    try:
                        reservation = yield _Reserve(
                            self._worst_case(call, request, budget_info),
                            call.context,
                            decision.mode != "observe",
                        )
                    except LLMError as blocked:  # BudgetExceeded: a cheaper fallback may fit
                        if self.breaker is not None:
                            yield _Report(deployment, None, ticket)
                        last_error = blocked
                        break
                    except GeneratorExit:  # (no effect can run now: see ``_run``)
                        if self.breaker is not None:
                            _deferred.defer(partial(self.breaker.record, deployment, None, ticket))
                        raise
                    except BaseException:
                        # cancelled (or failed) while the hold was taken: no attempt is
                        # live yet to hand back the half-open probe the breaker granted
                        if self.breaker is not None:
                            yield _Report(deployment, None, ticket)
                        raise
                number += 1
                attempt = _Attempt(
                    number,
                    deployment,
                    info,
                    self.clock.monotonic(),
                    fallback_from,
                    reservation,
                    budget_info,
                    ticket=ticket,
                )
                call.live = attempt
                if self.stats is not None:
                    yield _StatsStart(deployment.key)
                if call.stream:
                    error = yield from self._stream_attempt(
                        call, attempt, config, request, self._timeout(call, remaining)
                    )
                    if error is None:
                        return None
                else:
                    outcome = yield from self._plain_attempt(
                        call, attempt, config, request, self._timeout(call, remaining)
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
                    if call.carried is None:
                        call.origin = spent
                    call.carried = spent if call.carried is None else call.carried + spent
                    call.carried_cost += call.records[-1].cost
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

    def _unpriced(self, deployment: Deployment) -> ModelInfo | None:
        """The stand-in price for a model missing from the catalog (warned once).

        Its calls cost $0 in the records (marked ``extra["unpriced"]``) unless the
        provider reports a cost, but budgets still bind: they hold and charge at the
        list price of the dearest chat model of the same provider in the catalog
        (else the catalog's dearest model).
        """
        models = list(self._catalog())
        chat = [m for m in models if m.mode == "chat"] or models
        pool = [m for m in chat if m.provider == deployment.provider] or chat
        if deployment.model not in _UNPRICED_WARNED:
            _UNPRICED_WARNED.add(deployment.model)
            _log.warning(
                "model %r is not in the catalog: its calls are recorded at $0 (unpriced) "
                "and budgets charge them at the price of %s",
                deployment.model,
                max(pool, key=_dearness).id if pool else "nothing (no catalog)",
            )
        return max(pool, key=_dearness) if pool else None

    def _costs(
        self, attempt: _Attempt, usage: Usage | None
    ) -> tuple[Decimal, Decimal, dict[str, Any] | None]:
        """An attempt's recorded cost, what budgets are charged, and record extras."""
        if usage is None:
            return _ZERO, _ZERO, None
        cost = self._price(usage, attempt.info)
        if attempt.info is not None:
            return cost, cost, None
        extra: dict[str, Any] = {}
        charge = cost
        if usage.provider_cost is None:
            extra["unpriced"] = True
            if attempt.budget_info is not None:
                charge = self._price(usage, attempt.budget_info)
                extra["budget_price_model"] = attempt.budget_info.id
        return cost, charge, extra or None

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
        # The saving is the cache's (cache_saved_cost), not routing's.
        record.requested_cost = None
        call.served = call.decision.primary
        call.usage = usage
        call.answer = response.text
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
        """Close, settle, report and record one attempt.

        A cancellation while it closes or settles still lets it report (freeing a
        half-open probe and its in-flight count) and record, then goes on."""
        call.live = None
        stopped: BaseException | None = None
        if attempt.handle is not None:
            handle, attempt.handle = attempt.handle, None
            try:
                yield _Close(handle)
            except GeneratorExit:  # (no effect can run now: ``_run`` cleans up)
                call.live = attempt
                raise
            except BaseException as exc:  # (the driver runs what follows shielded)
                stopped = exc
        now = self.clock.monotonic()
        cost, charge, extra = self._costs(attempt, usage)
        if attempt.reservation is not None:
            try:
                yield _Settle(attempt.reservation, charge)
            except GeneratorExit:
                call.live = attempt
                raise
            except BaseException as exc:
                stopped = stopped or exc
        failed = error is not None or error_kind is not None
        # True: healthy, False: the deployment failed, None: says nothing about it
        # (a bad request, the consumer leaving).
        health: bool | None = True
        if error is not None:
            health = False if counts_against_deployment(error) else None
        elif error_kind is not None:
            health = None
        breaker, stats = self.breaker is not None, self.stats is not None
        if breaker or stats:
            deployment = attempt.deployment
            yield _Ended(
                deployment if breaker else None,
                health,
                deployment.key if stats else None,
                self._stats_sample(call, attempt, now, health, usage) if stats else None,
                attempt.ticket,
            )
        kind = error.kind if error is not None else error_kind
        record = self._record(
            call,
            attempt,
            attempt.deployment,
            usage=usage or _EMPTY_USAGE,
            cost=cost,
            status="error" if failed else "ok",
            error_kind=kind,
            now=now,
            extra=extra,
        )
        if stopped is not None:
            raise stopped
        return record

    def _plain_attempt(
        self,
        call: _Call,
        attempt: _Attempt,
        config: ProviderConfig,
        request: ChatRequest,
        timeout: float | None,
    ) -> Generator[Any, Any, ChatResponse | LLMError]:
        dialect = self._dialect(config.dialect)
        forwarder: OpenAIDialect | None = None
        forwarded = False
        if call.offer is not None and isinstance(dialect, _openai_dialect()):
            forwarder = cast("OpenAIDialect", dialect)
        try:
            encoded = dialect.encode_request(request, config, attempt.deployment.name)
            attempt.sent = True
            reply: _Reply = yield _Send(encoded, timeout, False, config.name)
            body = reply.body or b""
            if reply.status >= 400:
                raise dialect.decode_error(reply.status, reply.headers, body, config)
            attempt.answered = True
            if forwarder is not None:  # the same parse and errors; plain bodies kept
                response, forwarded = forwarder.forward_response(body, config)
            else:
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
        call.answer = response.text
        if response.provider is None:
            response.provider = config.name
        if call.cache_key is not None and self.cache is not None:
            # Stored under the key lookups use (the primary's), whoever served it.
            yield _CachePut(call.cache_key, CacheEntry(response, record.cost))
        if forwarded and call.offer is not None:
            call.offer.body = body
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

    def _delivered(self, call: _Call, chunk: StreamChunk) -> StreamChunk | None:
        """What the consumer gets of ``chunk`` (``None``: nothing), noted on ``call``."""
        out = self._adapt(call, chunk)
        if out is not None and _has_content(out):
            call.delivered = True
            if out.text:
                call.text.append(out.text)
            if out.tool_calls:
                call.tool_delta = True
        return out

    def _deliver(self, call: _Call, chunk: StreamChunk) -> Generator[Any, Any, None]:
        out = self._delivered(call, chunk)
        if out is not None:
            yield _Deliver(out)

    def _open_stream(
        self,
        attempt: _Attempt,
        config: ProviderConfig,
        dialect: Dialect,
        encoded: EncodedRequest,
        timeout: float | None,
    ) -> Generator[Any, Any, _Reply]:
        """Send a stream's request; an error status raises the provider's error."""
        attempt.sent = True
        reply: _Reply = yield _Send(encoded, timeout, True, config.name)
        if reply.status >= 400:
            raise dialect.decode_error(reply.status, reply.headers, reply.body or b"", config)
        attempt.answered = True
        attempt.handle = reply.handle
        return reply

    def _stream_attempt(
        self,
        call: _Call,
        attempt: _Attempt,
        config: ProviderConfig,
        request: ChatRequest,
        timeout: float | None,
    ) -> Generator[Any, Any, LLMError | None]:
        dialect = self._dialect(config.dialect)
        if call.forward is not None and dialect.name == "openai" and not call.stitched:
            forwarded = self._forward_attempt(call, attempt, config, request, timeout, dialect)
            return (yield from forwarded)
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
            reply = yield from self._open_stream(attempt, config, dialect, encoded, timeout)

            def take(chunk: StreamChunk) -> StreamChunk | None:
                """A chunk read by the consumer of a flow (below): the bookkeeping the
                loop does for a chunk once the answer flows."""
                nonlocal finished
                if keep is not None:
                    keep.append(chunk)
                if chunk.finish_reason is not None:
                    finished = True
                if chunk.text:
                    attempt.text.append(chunk.text)
                return self._delivered(call, chunk)

            while True:
                if flowing:
                    # The consumer reads the rest itself, with no effect per read.
                    flow = _Flow(reply.handle, decoder, config.name, take)
                    yield _Deliver(flow)
                    if flow.error is not None:
                        raise flow.error
                    data = b""
                else:
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
        if call.carried is None or call.origin is None:
            record.requested_cost = self._requested_cost(call, total, record)
        else:
            # The requested model would have read the original input once and written
            # the delivered output; the earlier parts' costs are taken off here so the
            # final record's saving is the whole call's.
            whole = call.origin.model_copy(
                update={
                    "output_tokens": total.output_tokens,
                    "reasoning_tokens": total.reasoning_tokens,
                    "estimated": total.estimated,
                    "provider_cost": None,
                }
            )
            requested = self._requested_cost(call, whole)
            record.requested_cost = None if requested is None else requested - call.carried_cost
        call.served = attempt.deployment
        call.usage = total
        if keep is not None and self.cache is not None:
            response = assemble(
                keep, response_id=call.call_id, model=attempt.deployment.model, provider=config.name
            )
            if response.usage is None:
                response.usage = usage
            if call.cache_key is not None:  # the key lookups use, whoever served it
                yield _CachePut(call.cache_key, CacheEntry(response, record.cost))
        return None

    def _forward_attempt(
        self,
        call: _Call,
        attempt: _Attempt,
        config: ProviderConfig,
        request: ChatRequest,
        timeout: float | None,
        dialect: Dialect,
    ) -> Generator[Any, Any, LLMError | None]:
        """A streamed attempt whose events go to an OpenAI caller as bytes.

        Up to the first content it reads through effects and fails over like any
        attempt. Then it hands the consumer what
        :class:`~.providers.openai_forward.OpenAIForwarder` let through so far with the
        rest of the stream to read itself (a :class:`~._dispatch_drivers._Pipe`: no
        effect per read); once that ended, it meters the attempt as the decoded path
        does and leaves the end (the usage event when owed, ``[DONE]``) on the pipe.
        """
        global _forwarder
        if _forwarder is None:
            from .providers.openai_forward import OpenAIForwarder

            _forwarder = OpenAIForwarder
        tail = b""
        pipe: _Pipe | None = None
        try:
            encoded = dialect.encode_request(request, config, attempt.deployment.name)
            forward = attempt.forward = _forwarder(config, request, bool(call.forward))
            reply = yield from self._open_stream(attempt, config, dialect, encoded, timeout)
            while True:
                data = yield _Read(reply.handle, config.name)
                if not data:
                    tail = forward.close()
                    break
                out = forward.feed(data)
                if out:  # the answer started: the consumer reads the rest itself
                    attempt.ttft = self.clock.monotonic()
                    call.delivered = call.forwarding = True
                    pipe = _Pipe(reply.handle, forward, config.name, out)
                    yield _Deliver(pipe)
                    if pipe.error is not None:
                        raise pipe.error
                    tail = forward.close()
                    break
            if attempt.ttft is None:
                attempt.ttft = self.clock.monotonic()
        except LLMError as error:
            usage = self._partial_usage(call, attempt, request)
            yield from self._end_attempt(call, attempt, usage, error)
            return error
        usage = forward.usage
        if usage is None:
            usage = self._partial_usage(call, attempt, request)
            assert usage is not None
        record = yield from self._end_attempt(call, attempt, usage, None)
        record.requested_cost = self._requested_cost(call, usage, record)
        call.served = attempt.deployment
        call.usage = usage
        call.delivered = call.forwarding = True
        if pipe is not None:
            pipe.tail = tail  # the consumer sends it when its step comes back
        else:
            yield _Deliver(tail)
        return None


#: ``OpenAIForwarder``, imported on the first forwarded stream (an import statement
#: in a function runs the import machinery on every call).
_forwarder: type[OpenAIForwarder] | None = None


def _store_content(call: _Call) -> None:
    """Put the prompt and the answer on the record of the attempt that answered."""
    for record in reversed(call.records):
        if record.status in ("ok", "cache_hit"):
            record.prompt = "\n\n".join(f"{m.role}: {m.text}" for m in call.request.messages)
            record.completion = call.answer if call.answer is not None else "".join(call.text)
            return
