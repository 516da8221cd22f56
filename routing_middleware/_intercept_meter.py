"""Metering of calls interception sends on unchanged: Responses API, embeddings, and
chat calls in ``observe`` mode.

A :class:`Meter` sees the answer's bytes as they pass (nothing is held back from the
caller), reads the usage out of them in the wire dialect of the call, and emits one
:class:`~routing_middleware.metering.UsageRecord` when the body closes; a body closed
early gets estimated usage. Nothing here raises into the caller's call.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .context import RouteContext, current_context
from .metering import UsageRecord
from .schema import LLMError, Usage

if TYPE_CHECKING:
    from .engine import LLMRoute
    from .providers.base import ProviderConfig, StreamDecoder
    from .providers.registry import EndpointMatch
    from .router import Decision
    from .schema import ChatRequest

__all__ = ["CallInfo", "Meter", "metered_info", "observed_info"]

logger = logging.getLogger("llmroute.transport")

_ZERO = Decimal(0)


_EMBED_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')
_EDGE = 4096


@dataclass(slots=True)
class CallInfo:
    """What a metered pass-through call is, fixed before it is sent."""

    engine: LLMRoute
    context: RouteContext
    endpoint: str
    requested: str
    provider: str
    streamed: bool
    started: float
    decision: Decision | None = None
    request: ChatRequest | None = None
    #: The wire dialect of the answer (a Gemini host's OpenAI-compatible path: ``openai``).
    wire: str = "openai"


class Meter:
    """Reads usage out of a passed-through answer as its bytes go by; emits one record
    when the body closes (early closes included: the usage is then estimated)."""

    __slots__ = (
        "_body",
        "_decoder",
        "_done",
        "_failed",
        "_head",
        "_scanner",
        "_status",
        "_tail",
        "_text",
        "_ttft",
        "info",
    )

    def __init__(self, info: CallInfo, status: int, content_type: str) -> None:
        self.info = info
        self._status = status
        self._done = False
        self._failed = False
        self._ttft: float | None = None
        self._body: bytearray | None = None
        self._scanner: Any = None
        self._decoder: StreamDecoder | None = None
        self._head = b""
        self._tail = b""
        self._text = 0
        event_stream = content_type.startswith("text/event-stream")
        if status >= 400 or not event_stream:
            if info.endpoint != "embeddings" or status >= 400:
                self._body = bytearray()
        elif info.endpoint == "responses":
            from .providers.usage_only import UsageStreamScanner

            self._scanner = UsageStreamScanner()
        elif info.request is not None:
            from .providers.registry import dialect

            self._decoder = dialect(info.wire).stream_decoder(_provider_config(info), info.request)

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the answer (never raises)."""
        if self._failed or not data:
            return
        if self._ttft is None:
            self._ttft = time.perf_counter()
        try:
            if self._body is not None:
                self._body += data
            elif self._scanner is not None:
                self._scanner.feed(data)
            elif self._decoder is not None:
                for chunk in self._decoder.feed(data):
                    if chunk.text:
                        self._text += len(chunk.text)
            else:  # embeddings: usage sits at one end of a possibly huge body
                if len(self._head) < _EDGE:
                    self._head += data[: _EDGE - len(self._head)]
                self._tail = (self._tail + data)[-_EDGE:]
        except LLMError:
            self._status = 599  # an error event in a 200 stream
        except Exception:
            self._failed = True
            logger.exception("llmroute could not meter a %s answer", self.info.endpoint)

    def finish(self, complete: bool) -> None:
        """The body closed (``complete``: read to its end); emit the record once."""
        if self._done:
            return
        self._done = True
        try:
            record = self._record(complete)
            self.info.engine.sink.emit(record)
        except Exception:
            logger.exception("llmroute could not record a %s call", self.info.endpoint)
            return
        _charge_budgets(self.info, record.cost)

    async def afinish(self, complete: bool) -> None:
        """Async twin of :meth:`finish` (budgets charged through the async store)."""
        if self._done:
            return
        self._done = True
        try:
            record = self._record(complete)
            self.info.engine.sink.emit(record)
        except Exception:
            logger.exception("llmroute could not record a %s call", self.info.endpoint)
            return
        await _acharge_budgets(self.info, record.cost)

    def _usage(self, complete: bool) -> Usage | None:
        info = self.info
        if self._body is not None:
            if self._status >= 400:
                return Usage()
            if info.endpoint in ("responses", "embeddings"):
                from .providers.usage_only import decode_usage

                return decode_usage(info.endpoint, bytes(self._body))  # type: ignore[arg-type]
            from .providers.registry import dialect

            return (
                dialect(info.wire).decode_response(bytes(self._body), _provider_config(info)).usage
            )
        if self._scanner is not None:
            return self._scanner.close()  # type: ignore[no-any-return]
        if self._decoder is not None:
            if complete:
                try:
                    self._decoder.close()
                except LLMError:
                    pass
            return self._decoder.usage
        for edge in (self._tail, self._head):
            found = _EMBED_USAGE.search(edge)
            if found:
                from .providers.usage_only import decode_usage

                return decode_usage("embeddings", b'{"usage":' + found.group(1) + b"}")
        return None

    def _record(self, complete: bool) -> UsageRecord:
        info = self.info
        usage = None if self._failed else self._usage(complete)
        if usage is None:
            usage = self._estimate()
        ok = self._status < 400
        now = time.perf_counter()
        cost, requested_cost = _costs(info, usage)
        ctx = info.context
        decision = info.decision
        extra: dict[str, Any] = {}
        if decision is not None and decision.routed is not None:
            extra["routed_model"] = decision.routed.model
            if decision.estimated_cost is not None:
                extra["routed_estimated_cost"] = str(decision.estimated_cost)
        if not complete:
            extra["closed_early"] = True
        return UsageRecord(
            requested_model=info.requested,
            chosen_model=info.requested,
            provider=info.provider,
            usage=usage,
            cost=cost,
            requested_cost=requested_cost,
            request_id=ctx.request_id,
            user_id=ctx.user_id,
            api_key_id=ctx.api_key_id,
            feature=ctx.feature,
            route=ctx.route,
            tags=tuple(sorted(ctx.tags)) if ctx.tags else (),
            tier=decision.tier if decision is not None else None,
            mode=decision.mode if decision is not None else _mode(info),
            endpoint=info.endpoint,
            deployment=f"{info.provider}/{info.requested.split('/', 1)[-1]}",
            status="ok" if ok else "error",
            error_kind=None if ok else f"http_{self._status}" if self._status < 599 else "stream",
            latency_ms=(now - info.started) * 1000,
            ttft_ms=(self._ttft - info.started) * 1000
            if info.streamed and self._ttft is not None
            else None,
            streamed=info.streamed,
            reasons=tuple((r.code, r.message) for r in decision.reasons) if decision else (),
            extra=extra,
        )

    def _estimate(self) -> Usage:
        from .tokens import estimate_request_tokens

        request = self.info.request
        if request is None or self._status >= 400:
            return Usage(estimated=True)
        return Usage(
            input_tokens=estimate_request_tokens(request),
            output_tokens=(self._text + 3) // 4,
            estimated=True,
        )


def _mode(info: CallInfo) -> Any:
    return info.context.mode or info.engine.config.effective_mode


def _provider_config(info: CallInfo) -> ProviderConfig:
    found = info.engine.providers.get(info.provider)
    if found is not None:
        return found
    from .providers.registry import provider_config

    return provider_config(info.provider)


def _costs(info: CallInfo, usage: Usage) -> tuple[Decimal, Decimal | None]:
    catalog = info.engine.catalog
    model = catalog.find(info.requested)
    if model is None:
        billed = usage.provider_cost if usage.provider_cost is not None else _ZERO
        return billed, None
    from .pricing import billed_cost, cost_of

    billed = billed_cost(usage, model, catalog=catalog)
    listed = billed if usage.provider_cost is None else cost_of(usage, model, catalog=catalog)
    return billed, listed


def _charge_budgets(info: CallInfo, cost: Decimal) -> None:
    budgets = info.engine.budgets
    if not budgets or not cost:
        return
    try:
        from .budgets import Reservation

        budgets.settle(Reservation(budgets.lines(info.context), 0), cost)
    except Exception:
        logger.exception("llmroute could not charge budgets for a passed-through call")


async def _acharge_budgets(info: CallInfo, cost: Decimal) -> None:
    budgets = info.engine.budgets
    if not budgets or not cost:
        return
    try:
        from .budgets import Reservation

        await budgets.asettle(Reservation(budgets.lines(info.context), 0), cost)
    except Exception:
        logger.exception("llmroute could not charge budgets for a passed-through call")


def _qualified(engine: LLMRoute, provider: str, model: str) -> str:
    if "/" not in model:
        qualified = f"{provider}/{model}"
        if qualified in engine.catalog:
            return qualified
    return model


def metered_info(engine: LLMRoute, match: EndpointMatch, body: bytes) -> CallInfo | None:
    """What a Responses/embeddings call asks for (``None``: not JSON we understand)."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("model"), str):
        return None
    return CallInfo(
        engine=engine,
        context=current_context(),
        endpoint=match.kind,
        requested=_qualified(engine, match.provider, document["model"]),
        provider=match.provider,
        streamed=document.get("stream") is True,
        started=time.perf_counter(),
    )


def observed_info(
    engine: LLMRoute,
    match: EndpointMatch,
    request: ChatRequest,
    decision: Decision,
    context: RouteContext,
) -> CallInfo:
    """What an observed chat call (sent on unchanged) is, for its meter."""
    return CallInfo(
        engine=engine,
        context=context,
        endpoint="chat",
        requested=request.model,
        provider=match.provider,
        streamed=request.stream,
        started=time.perf_counter(),
        decision=decision,
        request=request,
        wire=match.dialect,
    )
