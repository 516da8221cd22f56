"""The machinery behind :mod:`routing_middleware.transport`: what to do with one request.

Everything here works for ``httpx`` and ``httpx2`` alike: the library is read off the
request's class, and the few classes that must subclass a library's own stream types
are built once per library by :func:`kit_for`. The sync and async shells
(:func:`handle` / :func:`ahandle`) differ only in how they read bodies and call the
inner transport; planning, metering and record building are shared and pure.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from .context import RouteContext, current_context
from .dispatch import UPSTREAM_EXTENSION
from .metering import UsageRecord
from .providers.registry import EndpointMatch, match_endpoint
from .schema import LLMError, Usage

if TYPE_CHECKING:
    from .engine import LLMRoute
    from .providers.base import ProviderConfig, StreamDecoder
    from .relay import RelayResponse
    from .router import Decision
    from .schema import ChatRequest

__all__ = [
    "INTERESTING",
    "ahandle",
    "handle",
    "host_of",
    "kit_for",
    "suppressed",
]

logger = logging.getLogger("llmroute.transport")

#: Set while llmroute sends a caller's own request on, so nothing below re-intercepts it.
suppressed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "llmroute_interception_suppressed", default=False
)

_ROUTED = frozenset({"chat", "messages", "generate", "stream_generate"})
_METERED = frozenset({"responses", "embeddings"})
#: Endpoint kinds interception acts on; every other request passes untouched.
INTERESTING = _ROUTED | _METERED
_ZERO = Decimal(0)


def host_of(url: Any) -> str:
    """``host`` or ``host:port`` (a non-default port), as the provider table keys hosts."""
    port = url.port
    return url.host if port is None else f"{url.host}:{port}"


def _match(request: Any) -> EndpointMatch | None:
    """The endpoint ``request`` calls when interception should act on it, else ``None``."""
    if request.method != "POST" or suppressed.get():
        return None
    if request.extensions.get(UPSTREAM_EXTENSION):
        return None
    url = request.url
    match = match_endpoint(host_of(url), url.path)
    if match is None or match.kind not in INTERESTING:
        return None
    return match


# ----------------------------------------------------------------------------- routing


class _KeepOriginal(Exception):
    """Raised from inside the relay when the decision keeps the call where it was sent."""

    def __init__(self, request: ChatRequest, decision: Decision) -> None:
        super().__init__("observe")
        self.request = request
        self.decision = decision


class _CallEngine:
    """The engine as one relayed call sees it: decisions in ``observe`` mode stop the
    relay (the original request goes out instead), and it remembers whether the
    request got as far as the router (i.e. parsed)."""

    __slots__ = ("_engine", "acomplete", "astream", "catalog", "complete", "reached", "stream")

    def __init__(self, engine: LLMRoute) -> None:
        self._engine = engine
        self.catalog = engine.catalog
        self.complete = engine.complete
        self.acomplete = engine.acomplete
        self.stream = engine.stream
        self.astream = engine.astream
        self.reached = False

    def decide(self, request: ChatRequest, context: RouteContext | None = None) -> Decision:
        self.reached = True
        decision = self._engine.decide(request, context)
        if decision.mode == "observe":
            raise _KeepOriginal(request, decision)
        return decision


def _relay(engine: LLMRoute) -> tuple[Any, _CallEngine]:
    relay_class = _relay_class or _load_relay()
    view = _CallEngine(engine)
    relay = relay_class(cast("LLMRoute", view), response_headers=engine.config.response_headers)
    return relay, view


_relay_class: Any = None


def _load_relay() -> Any:
    global _relay_class
    from .relay import Relay

    _relay_class = Relay
    return Relay


def _internal_error(engine: LLMRoute, dialect: str) -> RelayResponse:
    from .relay import Relay

    error = LLMError(
        "llmroute failed while routing this call; it was not sent (fail_open is off)",
        code="llmroute_internal_error",
        status_code=500,
        retryable=False,
    )
    return Relay(engine, response_headers=False).error(dialect, error)


# ----------------------------------------------------------------------------- metering


_EMBED_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')
_EDGE = 4096


@dataclass(slots=True)
class _CallInfo:
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

    def __init__(self, info: _CallInfo, status: int, content_type: str) -> None:
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

            self._decoder = dialect(info.wire).stream_decoder(
                _provider_config(info), info.request
            )

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
                dialect(info.wire)
                .decode_response(bytes(self._body), _provider_config(info))
                .usage
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


def _mode(info: _CallInfo) -> Any:
    return info.context.mode or info.engine.config.effective_mode


def _provider_config(info: _CallInfo) -> ProviderConfig:
    found = info.engine.providers.get(info.provider)
    if found is not None:
        return found
    from .providers.registry import provider_config

    return provider_config(info.provider)


def _costs(info: _CallInfo, usage: Usage) -> tuple[Decimal, Decimal | None]:
    catalog = info.engine.catalog
    model = catalog.find(info.requested)
    if model is None:
        billed = usage.provider_cost if usage.provider_cost is not None else _ZERO
        return billed, None
    from .pricing import billed_cost, cost_of

    billed = billed_cost(usage, model, catalog=catalog)
    listed = billed if usage.provider_cost is None else cost_of(usage, model, catalog=catalog)
    return billed, listed


def _charge_budgets(info: _CallInfo, cost: Decimal) -> None:
    budgets = info.engine.budgets
    if not budgets or not cost:
        return
    try:
        from .budgets import Reservation

        budgets.settle(Reservation(budgets.lines(info.context), 0), cost)
    except Exception:
        logger.exception("llmroute could not charge budgets for a passed-through call")


async def _acharge_budgets(info: _CallInfo, cost: Decimal) -> None:
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


def _metered_info(engine: LLMRoute, match: EndpointMatch, body: bytes) -> _CallInfo | None:
    """What a Responses/embeddings call asks for (``None``: not JSON we understand)."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("model"), str):
        return None
    return _CallInfo(
        engine=engine,
        context=current_context(),
        endpoint=match.kind,
        requested=_qualified(engine, match.provider, document["model"]),
        provider=match.provider,
        streamed=document.get("stream") is True,
        started=time.perf_counter(),
    )


def _observed_info(
    engine: LLMRoute, match: EndpointMatch, keep: _KeepOriginal, context: RouteContext
) -> _CallInfo:
    return _CallInfo(
        engine=engine,
        context=context,
        endpoint="chat",
        requested=keep.request.model,
        provider=match.provider,
        streamed=keep.request.stream,
        started=time.perf_counter(),
        decision=keep.decision,
        request=keep.request,
        wire=match.dialect,
    )


# ----------------------------------------------------------------------------- library kits


@dataclass(frozen=True, slots=True)
class Kit:
    """One HTTP library's classes, and the response builders that need them."""

    lib: Any
    relay_stream: type[Any]
    arelay_stream: type[Any]
    metered_stream: type[Any]
    ametered_stream: type[Any]

    def relay_response(self, answer: RelayResponse) -> Any:
        """The relay's answer as the library's response."""
        if answer.stream is not None:
            stream = self.relay_stream(answer.stream)
            return self.lib.Response(answer.status, headers=answer.headers, stream=stream)
        if answer.astream is not None:
            stream = self.arelay_stream(answer.astream)
            return self.lib.Response(answer.status, headers=answer.headers, stream=stream)
        body = answer.body
        headers = [*answer.headers.items(), ("content-length", str(len(body)))]
        return self.lib.Response(answer.status, headers=headers, stream=self.lib.ByteStream(body))

    def metered(self, response: Any, info: _CallInfo, *, is_async: bool) -> Any:
        """``response`` with its body wrapped by a :class:`Meter` (never raises)."""
        try:
            meter = Meter(info, response.status_code, response.headers.get("content-type", ""))
            cls = self.ametered_stream if is_async else self.metered_stream
            response.stream = cls(response.stream, meter)
            decision = info.decision
            if decision is not None and info.engine.config.response_headers:
                from .relay import decision_headers

                response.headers.update(decision_headers(decision, info.requested, info.provider))
        except Exception:
            logger.exception("llmroute could not meter a call to %s", info.provider)
        return response


_kits: dict[type[Any], Kit] = {}


def kit_for(request: Any) -> Kit:
    """The kit of the library ``request`` belongs to."""
    kind = type(request)
    kit = _kits.get(kind)
    if kit is None:
        kit = _kits[kind] = _build_kit(kind.__module__.partition(".")[0])
    return kit


@functools.cache
def _build_kit(lib_name: str) -> Kit:
    import importlib

    lib: Any = importlib.import_module(lib_name)

    class RelayStream(lib.SyncByteStream):  # type: ignore[misc]
        """The relay's answer bytes, incrementally; closing ends the routed call."""

        __slots__ = ("_chunks", "_closed", "_started")

        def __init__(self, chunks: Iterator[bytes]) -> None:
            self._chunks = chunks
            self._started = self._closed = False

        def __iter__(self) -> Iterator[bytes]:
            return self

        def __next__(self) -> bytes:
            self._started = True
            return next(self._chunks)

        def close(self) -> None:
            if self._closed:
                return
            self._closed = True
            chunks = cast("Any", self._chunks)
            if not self._started:  # a generator's cleanup only runs once it started
                self._started = True
                try:
                    next(chunks)
                except StopIteration:
                    pass
            chunks.close()

    class AsyncRelayStream(lib.AsyncByteStream):  # type: ignore[misc]
        """Async twin of ``RelayStream``."""

        __slots__ = ("_chunks", "_closed", "_started")

        def __init__(self, chunks: AsyncIterator[bytes]) -> None:
            self._chunks = chunks
            self._started = self._closed = False

        def __aiter__(self) -> AsyncIterator[bytes]:
            return self

        async def __anext__(self) -> bytes:
            self._started = True
            return await self._chunks.__anext__()

        async def aclose(self) -> None:
            if self._closed:
                return
            self._closed = True
            chunks = cast("Any", self._chunks)
            try:
                if not self._started:
                    self._started = True
                    try:
                        await chunks.__anext__()
                    except StopAsyncIteration:
                        pass
                await chunks.aclose()
            except RuntimeError:  # closed while another task is reading it
                logger.debug("llmroute stream closed while being read", exc_info=True)

    class MeteredStream(lib.SyncByteStream):  # type: ignore[misc]
        """Passes an upstream body through untouched, feeding a :class:`Meter`."""

        __slots__ = ("_complete", "_inner", "_iter", "_meter")

        def __init__(self, inner: Any, meter: Meter) -> None:
            self._inner, self._meter = inner, meter
            self._iter: Iterator[bytes] | None = None
            self._complete = False

        def __iter__(self) -> Iterator[bytes]:
            self._iter = iter(self._inner)
            return self

        def __next__(self) -> bytes:
            assert self._iter is not None
            try:
                data: bytes = next(self._iter)
            except StopIteration:
                self._complete = True
                raise
            self._meter.feed(data)
            return data

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._meter.finish(self._complete)

    class AsyncMeteredStream(lib.AsyncByteStream):  # type: ignore[misc]
        """Async twin of ``MeteredStream``."""

        __slots__ = ("_complete", "_inner", "_iter", "_meter")

        def __init__(self, inner: Any, meter: Meter) -> None:
            self._inner, self._meter = inner, meter
            self._iter: AsyncIterator[bytes] | None = None
            self._complete = False

        def __aiter__(self) -> AsyncIterator[bytes]:
            self._iter = self._inner.__aiter__()
            return self

        async def __anext__(self) -> bytes:
            assert self._iter is not None
            try:
                data: bytes = await self._iter.__anext__()
            except StopAsyncIteration:
                self._complete = True
                raise
            self._meter.feed(data)
            return data

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                await self._meter.afinish(self._complete)

    for cls in (RelayStream, AsyncRelayStream, MeteredStream, AsyncMeteredStream):
        cls.__qualname__ = cls.__name__ = f"{cls.__name__}[{lib_name}]"
    return Kit(lib, RelayStream, AsyncRelayStream, MeteredStream, AsyncMeteredStream)


# ----------------------------------------------------------------------------- shells


def _send_sync(inner: Any, request: Any) -> Any:
    token = suppressed.set(True)
    try:
        return inner.handle_request(request)
    finally:
        suppressed.reset(token)


async def _send_async(inner: Any, request: Any) -> Any:
    token = suppressed.set(True)
    try:
        return await inner.handle_async_request(request)
    finally:
        suppressed.reset(token)


def _failed(engine: LLMRoute | None, match: EndpointMatch) -> RelayResponse | None:
    """Log an internal failure; the error answer when failing closed, else ``None``."""
    fail_open = engine is None or engine.config.fail_open
    logger.exception(
        "llmroute failed on a call to %s; %s",
        match.provider,
        "sending it unchanged" if fail_open else "failing the call (fail_open is off)",
    )
    if fail_open or engine is None:
        return None
    try:
        return _internal_error(engine, match.dialect)
    except Exception:
        logger.exception("llmroute could not encode its own error")
        return None


def _unparsed(match: EndpointMatch) -> None:
    logger.warning(
        "llmroute could not read a %s call to %s; sent it unchanged and unmetered",
        match.kind,
        match.provider,
    )


def handle(inner: Any, request: Any, engine_of: Callable[[], LLMRoute]) -> Any:
    """Serve ``request`` for a sync client: route, meter, or pass it to ``inner``.

    The caller's request is sent at most once, and outside the ``try``: an error of
    the inner transport reaches the caller as it is, never a second send.
    """
    match = _match(request)
    if match is None:
        return inner.handle_request(request)
    engine: LLMRoute | None = None
    info: _CallInfo | None = None
    try:
        engine = engine_of()
        body = request.read()
        if match.kind in _METERED:
            info = _metered_info(engine, match, body)
        else:
            relay, view = _relay(engine)
            context = current_context()
            try:
                answer = relay.handle(
                    match.dialect, body, request.url.path, provider=match.provider, context=context
                )
            except _KeepOriginal as keep:
                info = _observed_info(engine, match, keep, context)
            else:
                if view.reached or not engine.config.fail_open:
                    return kit_for(request).relay_response(answer)
                _unparsed(match)
    except Exception:
        error = _failed(engine, match)
        if error is not None:
            return kit_for(request).relay_response(error)
        info = None
    response = _send_sync(inner, request)
    return response if info is None else kit_for(request).metered(response, info, is_async=False)


async def ahandle(inner: Any, request: Any, engine_of: Callable[[], LLMRoute]) -> Any:
    """Async twin of :func:`handle`."""
    match = _match(request)
    if match is None:
        return await inner.handle_async_request(request)
    engine: LLMRoute | None = None
    info: _CallInfo | None = None
    try:
        engine = engine_of()
        body = await request.aread()
        if match.kind in _METERED:
            info = _metered_info(engine, match, body)
        else:
            relay, view = _relay(engine)
            context = current_context()
            try:
                answer = await relay.ahandle(
                    match.dialect, body, request.url.path, provider=match.provider, context=context
                )
            except _KeepOriginal as keep:
                info = _observed_info(engine, match, keep, context)
            else:
                if view.reached or not engine.config.fail_open:
                    return kit_for(request).relay_response(answer)
                _unparsed(match)
    except Exception:
        error = _failed(engine, match)
        if error is not None:
            return kit_for(request).relay_response(error)
        info = None
    response = await _send_async(inner, request)
    return response if info is None else kit_for(request).metered(response, info, is_async=True)
