"""Caller bytes in, caller bytes out: one routed call in the caller's own dialect.

Interception, the gateway and the Django views all do the same thing: parse a
request body in the dialect the caller speaks, let the engine decide and dispatch
it (possibly to another provider in another dialect), and answer in the caller's
dialect — a JSON body, an SSE stream, or an error the caller's SDK understands.
This module is that one thing, framework-free; the shells around it only move
bytes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import Token
from dataclasses import dataclass, field
from decimal import Decimal

from ._dispatch_state import JsonOffer, forward_bytes, forward_json
from ._ids import new_id
from .context import RouteContext, current_context
from .dispatch import AsyncDispatchStream, DispatchStream
from .engine import Completion, LLMRoute
from .metering import UsageRecord
from .providers.base import CallerStreamEncoder
from .providers.registry import caller_dialect
from .router import Decision, Deployment
from .schema import (
    AuthenticationFailed,
    ChatRequest,
    InvalidRequest,
    LLMError,
    UnknownModel,
    UpstreamUnavailable,
)

__all__ = ["Relay", "RelayResponse", "decision_headers"]

logger = logging.getLogger("llmroute.relay")

_SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}
_JSON = "application/json"


#: A JSON escape: a surrogate pair, a lone surrogate (group 1), or any other. Read
#: left to right, an escaped backslash is taken as one escape, never as the start
#: of the next.
_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})"
    rb"|\\."
)


#: A UTF-16 surrogate written as UTF-8 bytes (U+D800 to U+DFFF: ED A0-BF xx), which
#: UTF-8 forbids but Python's JSON parser reads from bytes, as a lone surrogate.
_ENCODED_SURROGATE = re.compile(rb"\xed[\xa0-\xbf][\x80-\xbf]")


def _lone_surrogate(body: bytes) -> str | None:
    """The first escape in the JSON ``body`` that is half a surrogate pair: such a
    string decodes to no text (it cannot be encoded again, for an upstream)."""
    for escape in _ESCAPE.finditer(body):
        if escape.group(1):
            return escape.group(1).decode("ascii")
    return None


def _surrogate_problem(body: bytes) -> str | None:
    """Why the JSON ``body`` holds a string that decodes to no text (half a UTF-16
    surrogate pair, which cannot be encoded again for an upstream), or ``None``."""
    if b"\x00" in body[:4] or body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        # UTF-16 or UTF-32 JSON, which the parser reads too: checked as UTF-8
        try:
            text = body.decode(json.detect_encoding(body), "surrogatepass")
        except UnicodeError:
            return None  # the parser finds it no JSON and says so
        body = text.encode("utf-8", "surrogatepass")
    if b"\\ud" in body or b"\\uD" in body:
        lone = _lone_surrogate(body)
        if lone is not None:
            return f"the body holds a lone UTF-16 surrogate ({lone}), which is no text"
    if b"\xed" in body:
        encoded = _ENCODED_SURROGATE.search(body)
        if encoded is not None:
            return (
                f"the body holds a UTF-16 surrogate written as UTF-8 (bytes "
                f"{encoded.group().hex(' ').upper()}), which is not UTF-8"
            )
    return None


@dataclass(slots=True)
class RelayResponse:
    """An answer ready for the caller: ``status``, ``headers`` and either ``body``
    or a byte stream (``stream`` for sync shells, ``astream`` for async ones).

    ``records`` are the call's usage records (for a stream, complete once it ends);
    ``decision`` is ``None`` when the request never reached the router (bad input).
    """

    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: Iterator[bytes] | None = None
    astream: AsyncIterator[bytes] | None = None
    decision: Decision | None = None
    records: list[UsageRecord] = field(default_factory=list)

    @property
    def cost(self) -> Decimal:
        return sum((r.cost for r in self.records), Decimal(0))


def decision_headers(decision: Decision, model: str, provider: str) -> dict[str, str]:
    """The ``x-llmroute-*`` headers that tell the app what happened to a call."""
    return {
        "x-llmroute-model": model,
        "x-llmroute-provider": provider,
        "x-llmroute-mode": decision.mode,
        "x-llmroute-decision": ",".join(decision.reason_codes),
    }


def _money(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"


class Relay:
    """Runs calls that arrive as bytes in a caller's dialect through ``engine``.

    ``response_headers`` adds the ``x-llmroute-*`` headers to every answer.
    ``catalog_models_only`` (the gateways) refuses a model the catalog does not know
    with a 404 and suggestions: such a call cannot be priced, and passed on it would
    fail with a retryable 503 that makes SDKs send the typo again.
    """

    def __init__(
        self, engine: LLMRoute, *, response_headers: bool = True, catalog_models_only: bool = False
    ) -> None:
        self.engine = engine
        self.response_headers = response_headers
        self.catalog_models_only = catalog_models_only

    # ------------------------------------------------------------------ parsing

    def parse(
        self, dialect: str, body: bytes, path: str = "", provider: str | None = None
    ) -> ChatRequest:
        """``body`` as a normalized request; the model is qualified with ``provider``
        (the provider the caller addressed) when the catalog knows it that way."""
        problem = _surrogate_problem(body)
        if problem is not None:
            raise InvalidRequest(problem)
        try:
            request = caller_dialect(dialect).parse_request(body, path)
        except RecursionError:  # the JSON parser's own limit: no caller needs that depth
            raise InvalidRequest(
                "The request body is nested too deeply to be read.", retryable=False
            ) from None
        catalog = self.engine.catalog
        if provider:
            # (a request of its own, just parsed: no copy)
            request.model = catalog.at_provider(request.model, provider)
        if self.catalog_models_only and request.model not in catalog:
            raise UnknownModel(request.model, catalog.suggest(request.model))
        return request

    def internal_error(
        self, dialect: str, message: str = "llmroute failed while serving this call."
    ) -> RelayResponse:
        """What a caller is told of a failure inside llmroute (a bug, not an upstream
        error): a 500 in its dialect that says nothing of the failure (log that)."""
        failure = LLMError(
            message,
            status_code=500,
            code="llmroute_internal_error",
            retryable=False,
        )
        return self.error(dialect, failure)

    def error(self, dialect: str, error: LLMError) -> RelayResponse:
        """``error`` as the caller's SDK expects to see it.

        A provider rejecting *llmroute's* configured key is llmroute's problem, not
        the caller's: it answers 502 with a generic message (details go to the log),
        so the caller's SDK does not report its own, valid key as wrong.
        """
        if isinstance(error, AuthenticationFailed) and error.provider:
            logger.warning(
                "llmroute: provider %s rejected the configured credentials: %s",
                error.provider,
                error.message,
            )
            error = UpstreamUnavailable(
                f"the upstream provider {error.provider!r} rejected llmroute's credentials",
                provider=error.provider,
                code="upstream_auth_failed",
                status_code=502,
            )
        status, headers, body = caller_dialect(dialect).encode_error(error)
        return RelayResponse(status, {"content-type": _JSON, **headers}, body)

    # ------------------------------------------------------------------ sync

    def handle(
        self,
        dialect: str,
        body: bytes,
        path: str = "",
        *,
        provider: str | None = None,
        context: RouteContext | None = None,
    ) -> RelayResponse:
        """Parse, route, dispatch and encode one call (blocking I/O)."""
        ctx = current_context() if context is None else context
        try:
            request = self.parse(dialect, body, path, provider)
            decision = self.engine.decide(request, ctx)
            if request.stream:
                token = _offer_bytes(dialect, request)
                try:
                    _, stream = self.engine.stream(request, ctx, decision=decision)
                finally:
                    if token is not None:
                        forward_bytes.reset(token)
                return self._stream_response(dialect, request, decision, stream)
            offer = JsonOffer() if dialect == "openai" else None
            json_token = forward_json.set(offer) if offer is not None else None
            try:
                done = self.engine.complete(request, ctx, decision=decision)
            finally:
                if json_token is not None:
                    forward_json.reset(json_token)
        except LLMError as error:
            return self.error(dialect, error)
        return self._complete_response(dialect, done, offer.body if offer is not None else None)

    # ------------------------------------------------------------------ async

    async def ahandle(
        self,
        dialect: str,
        body: bytes,
        path: str = "",
        *,
        provider: str | None = None,
        context: RouteContext | None = None,
    ) -> RelayResponse:
        """Async twin of :meth:`handle`; streams come back as ``astream``."""
        ctx = current_context() if context is None else context
        try:
            request = self.parse(dialect, body, path, provider)
            decision = await self.engine.adecide(request, ctx)
            if request.stream:
                token = _offer_bytes(dialect, request)
                try:
                    _, stream = await self.engine.astream(request, ctx, decision=decision)
                finally:
                    if token is not None:
                        forward_bytes.reset(token)
                return self._astream_response(dialect, request, decision, stream)
            offer = JsonOffer() if dialect == "openai" else None
            json_token = forward_json.set(offer) if offer is not None else None
            try:
                done = await self.engine.acomplete(request, ctx, decision=decision)
            finally:
                if json_token is not None:
                    forward_json.reset(json_token)
        except LLMError as error:
            return self.error(dialect, error)
        return self._complete_response(dialect, done, offer.body if offer is not None else None)

    # ------------------------------------------------------------------ encoding

    def _complete_response(
        self, dialect: str, done: Completion, forwarded: bytes | None = None
    ) -> RelayResponse:
        """The caller's answer: ``forwarded``, the upstream's own body when it can go
        as it came (see ``JsonOffer``), else ``done.response`` encoded."""
        served = done.served_by
        model = served.chosen_model if served else done.decision.model
        provider = served.provider if served else done.decision.primary.provider
        if forwarded is not None:
            body = forwarded
        else:
            name = model.split("/", 1)[-1]
            body = json.dumps(caller_dialect(dialect).encode_response(done.response, name)).encode()
        headers = {"content-type": _JSON}
        if self.response_headers:
            headers.update(decision_headers(done.decision, model, provider))
            headers["x-llmroute-cost-usd"] = _money(done.cost)
            requested = sum(
                (r.requested_cost for r in done.records if r.requested_cost is not None),
                Decimal(0),
            )
            headers["x-llmroute-requested-cost-usd"] = _money(requested)
        return RelayResponse(200, headers, body, decision=done.decision, records=list(done.records))

    def _stream_start(self, decision: Decision, served: Deployment) -> RelayResponse:
        """A 200 answer with SSE headers, body to come."""
        headers = dict(_SSE_HEADERS)
        if self.response_headers:
            headers.update(decision_headers(decision, served.model, served.provider))
        return RelayResponse(200, headers, decision=decision)

    def _encoder(
        self, dialect: str, request: ChatRequest, served: Deployment
    ) -> CallerStreamEncoder:
        """The caller's stream encoder (a forwarded stream needs one only to end in an
        error event, which carries no id or model: it is made then)."""
        include_usage = dialect == "openai" and _wants_usage(request)
        name = served.model.split("/", 1)[-1]
        return caller_dialect(dialect).stream_encoder(
            name, _response_id(dialect), include_usage=include_usage
        )

    def _failure_of(
        self, dialect: str, request: ChatRequest, served: Deployment
    ) -> Callable[[Exception], bytes]:
        """What ends a forwarded stream that failed: an error event in the caller's dialect."""
        return lambda exc: _failure(self._encoder(dialect, request, served), exc)

    def _stream_response(
        self, dialect: str, request: ChatRequest, decision: Decision, stream: DispatchStream
    ) -> RelayResponse:
        served = stream.deployment or decision.primary
        response = self._stream_start(decision, served)

        if stream.forwarding:
            response.stream = stream.forwarded(
                self._failure_of(dialect, request, served), _settled(response, stream)
            )
            return response
        encoder = self._encoder(dialect, request, served)

        def chunks() -> Iterator[bytes]:
            try:
                yield encoder.start()
                try:
                    for chunk in stream:
                        yield encoder.chunk(chunk)
                except Exception as exc:
                    yield _failure(encoder, exc)
                    return
                yield encoder.finish(stream.usage)
            finally:
                stream.close()
                response.records[:] = stream.records

        response.stream = chunks()
        return response

    def _astream_response(
        self, dialect: str, request: ChatRequest, decision: Decision, stream: AsyncDispatchStream
    ) -> RelayResponse:
        served = stream.deployment or decision.primary
        response = self._stream_start(decision, served)

        if stream.forwarding:
            response.astream = stream.forwarded(
                self._failure_of(dialect, request, served), _settled(response, stream)
            )
            return response
        encoder = self._encoder(dialect, request, served)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                yield encoder.start()
                try:
                    async for chunk in stream:
                        yield encoder.chunk(chunk)
                except Exception as exc:
                    yield _failure(encoder, exc)
                    return
                yield encoder.finish(stream.usage)
            finally:
                await stream.aclose()
                response.records[:] = stream.records

        response.astream = chunks()
        return response


def _settled(
    response: RelayResponse, stream: DispatchStream | AsyncDispatchStream
) -> Callable[[], None]:
    """What a forwarded stream calls once it closed: its records go on ``response``."""

    def settled() -> None:
        response.records[:] = stream.records

    return settled


def _offer_bytes(dialect: str, request: ChatRequest) -> Token[bool | None] | None:
    """Let the stream about to start forward an OpenAI-compatible upstream's bytes
    when the caller speaks chat completions (see ``_Machine._forward_attempt``)."""
    if dialect != "openai":
        return None
    return forward_bytes.set(_wants_usage(request))


_wants_stream_usage: Callable[[ChatRequest], bool] | None = None


def _wants_usage(request: ChatRequest) -> bool:
    """Whether an OpenAI caller asked for the usage event (imported on first use)."""
    global _wants_stream_usage
    if _wants_stream_usage is None:
        from .providers.openai_caller import wants_stream_usage

        _wants_stream_usage = wants_stream_usage
    return _wants_stream_usage(request)


def _failure(encoder: CallerStreamEncoder, exc: Exception) -> bytes:
    """The error event ending a stream that failed after it started."""
    if isinstance(exc, LLMError):
        return encoder.error(exc)
    logger.exception("llmroute stream failed", exc_info=exc)
    return encoder.error(UpstreamUnavailable("the upstream stream failed"))


def _response_id(dialect: str) -> str:
    prefix = {"openai": "chatcmpl-", "anthropic": "msg_"}.get(dialect, "")
    return prefix + new_id()
