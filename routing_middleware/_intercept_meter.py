"""Metering of calls interception sends on unchanged: Responses API, embeddings,
chat calls in ``observe`` mode, and chat calls llmroute could not read (or failed on)
that go out as sent when failing open.

A :class:`Meter` sees the answer's bytes as they pass (nothing is held back from the
caller), reads the usage out of them in the wire dialect of the call, and emits one
:class:`~routing_middleware.metering.UsageRecord` when the body closes; a body closed
early gets estimated usage. An answer whose usage cannot be decoded still gets its
record: the body's ``usage`` object read directly, else an estimate, marked
``extra["usage_unreadable"]``. Nothing here raises into the caller's call.
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
from .metering import UsageRecord, routed_extra
from .schema import LLMError, Usage

if TYPE_CHECKING:
    from .engine import LLMRoute
    from .providers.base import ProviderConfig, StreamDecoder
    from .providers.registry import EndpointMatch
    from .router import Decision
    from .schema import ChatRequest

__all__ = ["CallInfo", "Meter", "metered_info", "observed_info", "passthrough_info"]

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
    #: The caller's request body, kept for estimates when there is no ``request``
    #: (the same bytes the HTTP request holds; not a copy).
    body: bytes | None = None


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
        "_unreadable",
        "info",
    )

    def __init__(self, info: CallInfo, status: int, content_type: str) -> None:
        self.info = info
        self._status = status
        self._done = False
        self._failed = False
        self._unreadable = False
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
        elif info.endpoint == "chat":
            from .providers.registry import dialect

            request = info.request if info.request is not None else _stand_in(info)
            self._decoder = dialect(info.wire).stream_decoder(_provider_config(info), request)

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
            self._failed = self._unreadable = True
            logger.exception("llmroute could not meter a %s answer", self.info.endpoint)

    def finish(self, complete: bool) -> None:
        """The body closed (``complete``: read to its end); emit the record once."""
        cost = self._emit(complete)
        if cost:
            _charge_budgets(self.info, cost)

    async def afinish(self, complete: bool) -> None:
        """Async twin of :meth:`finish` (budgets charged through the async store)."""
        cost = self._emit(complete)
        if cost:
            await _acharge_budgets(self.info, cost)

    def _emit(self, complete: bool) -> Decimal | None:
        """Record the call the first time it ends; the cost to charge to budgets."""
        if self._done:
            return None
        self._done = True
        try:
            record = self._record(complete)
            self.info.engine.sink.emit(record)
        except Exception:
            logger.exception("llmroute could not record a %s call", self.info.endpoint)
            return None
        return record.cost

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

    def _decoded_usage(self, complete: bool) -> Usage | None:
        """The answer's usage; when decoding fails, the body's usage object read as it
        is (``None``: nothing readable, estimate)."""
        if self._failed:
            return None
        try:
            return self._usage(complete)
        except Exception:
            self._unreadable = True
            logger.warning(
                "llmroute could not decode the usage of a %s answer from %s; reading it raw",
                self.info.endpoint,
                self.info.provider,
                exc_info=True,
            )
        if self._body is None:
            return None
        try:
            return raw_usage(bytes(self._body))
        except Exception:
            logger.exception("llmroute could not read a raw usage object")
            return None

    def _record(self, complete: bool) -> UsageRecord:
        info = self.info
        usage = self._decoded_usage(complete)
        if usage is None:
            usage = self._estimate()
        ok = self._status < 400
        now = time.perf_counter()
        cost, requested_cost = _costs(info, usage)
        ctx = info.context
        decision = info.decision
        extra: dict[str, Any] = {}
        if decision is not None and decision.routed is not None:
            if ok:
                extra.update(routed_extra(info.engine.catalog, decision.routed.model, usage))
            else:
                extra["routed_model"] = decision.routed.model
            if decision.estimated_cost is not None:
                extra["routed_estimated_cost"] = str(decision.estimated_cost)
        if not complete:
            extra["closed_early"] = True
        if self._unreadable:
            extra["usage_unreadable"] = True
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

        if self._status >= 400:
            return Usage(estimated=True)
        request = self.info.request
        try:
            if request is not None:
                input_tokens = estimate_request_tokens(request)
            else:
                input_tokens = _estimate_body(self.info.body)
            output_tokens = (self._text + 3) // 4
            if self._body is not None and not self._text:
                output_tokens = _estimate_answer(bytes(self._body))
        except Exception:
            logger.exception("llmroute could not estimate a %s call", self.info.endpoint)
            return Usage(estimated=True)
        return Usage(input_tokens=input_tokens, output_tokens=output_tokens, estimated=True)


# ----------------------------------------------------------------------------- reading bodies

#: Keys whose string values (or lists of strings) are prompt or answer text. Media
#: payloads (``data``, ``url``, ``image_url``, ``input_audio``) are left out: base64
#: bytes are not tokens.
_TEXT_KEYS = frozenset(
    {"text", "content", "input", "system", "instructions", "prompt", "arguments", "output"}
)
_SKIP_KEYS = frozenset(
    {"data", "url", "image_url", "input_audio", "file", "file_data", "inline_data", "inlineData"}
)
_PER_MESSAGE = 4


def _texts(node: Any, out: list[str], depth: int = 0) -> int:
    """Append the text under ``node`` to ``out``; return the count of messages and
    token ids seen (embeddings take token arrays as ``input``)."""
    if depth > 32:
        return 0
    extra = 0
    if isinstance(node, dict):
        if "role" in node:
            extra += _PER_MESSAGE
        for key, value in node.items():
            if key in _SKIP_KEYS:
                continue
            if isinstance(value, str):
                if key in _TEXT_KEYS:
                    out.append(value)
            elif key in _TEXT_KEYS and isinstance(value, list):
                extra += _items(value, out, depth + 1)
            else:
                extra += _texts(value, out, depth + 1)
    elif isinstance(node, list):
        for item in node:
            extra += _texts(item, out, depth + 1)
    return extra


def _items(items: list[Any], out: list[str], depth: int) -> int:
    """A list of text values: strings, token ids (counted one each), nested lists of
    either, or parts (objects) holding text."""
    extra = 0
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            extra += 1
        elif isinstance(item, list) and depth <= 32:
            extra += _items(item, out, depth + 1)
        else:
            extra += _texts(item, out, depth + 1)
    return extra


def _estimate_document(document: Any) -> int:
    from .tokens import estimate_text_tokens

    out: list[str] = []
    extra = _texts(document, out)
    return extra + sum(estimate_text_tokens(text) for text in out)


def _estimate_body(body: bytes | None) -> int:
    """Input tokens of a request body we could not (or need not) parse as a chat call."""
    if not body:
        return 0
    try:
        document = json.loads(body)
    except ValueError:
        return 0
    if not isinstance(document, dict):
        return 0
    return _estimate_document({k: v for k, v in document.items() if k not in ("model", "user")})


def _estimate_answer(body: bytes) -> int:
    """Output tokens of an answer body by its text (OpenAI, Anthropic or Gemini)."""
    try:
        document = json.loads(body)
    except ValueError:
        return 0
    if not isinstance(document, dict):
        return 0
    parts = [document.get(k) for k in ("choices", "content", "candidates", "output")]
    return _estimate_document([p for p in parts if p is not None])


def _stand_in(info: CallInfo) -> ChatRequest:
    """A request for a stream decoder of a call llmroute could not parse: its text
    in one user message, for the decoder's estimates."""
    from .schema import ChatRequest, Message

    out: list[str] = []
    if info.body:
        try:
            document = json.loads(info.body)
        except ValueError:
            document = None
        if isinstance(document, dict):
            _texts({k: v for k, v in document.items() if k not in ("model", "user")}, out)
    text = "\n".join(out) or " "
    return ChatRequest(
        model=info.requested, messages=[Message(role="user", content=text)], stream=True
    )


def _count(mapping: dict[str, Any], *keys: str) -> int:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def raw_usage(body: bytes) -> Usage | None:
    """The usage object of an answer body, read without decoding the answer:
    OpenAI ``usage.prompt_tokens``/``completion_tokens``, Anthropic (and Responses)
    ``usage.input_tokens``/``output_tokens``, Gemini ``usageMetadata``. ``None``
    when the body has none."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if isinstance(usage, dict):
        if "prompt_tokens" in usage or "completion_tokens" in usage:
            details = usage.get("prompt_tokens_details")
            out_details = usage.get("completion_tokens_details")
            input_tokens = _count(usage, "prompt_tokens")
            output_tokens = _count(usage, "completion_tokens")
            cached = _count(details, "cached_tokens") if isinstance(details, dict) else 0
            reasoning = (
                _count(out_details, "reasoning_tokens") if isinstance(out_details, dict) else 0
            )
            return Usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_input_tokens=min(cached, input_tokens),
                reasoning_tokens=min(reasoning, output_tokens),
            )
        if "input_tokens" in usage or "output_tokens" in usage:
            # Anthropic counts cache reads and writes outside input_tokens.
            reads = _count(usage, "cache_read_input_tokens")
            writes = _count(usage, "cache_creation_input_tokens")
            return Usage(
                input_tokens=_count(usage, "input_tokens") + reads + writes,
                output_tokens=_count(usage, "output_tokens"),
                cached_input_tokens=reads,
                cache_write_tokens=writes,
            )
    meta = document.get("usageMetadata")
    if isinstance(meta, dict):
        input_tokens = _count(meta, "promptTokenCount")
        thoughts = _count(meta, "thoughtsTokenCount")
        cached = _count(meta, "cachedContentTokenCount")
        return Usage(
            input_tokens=input_tokens,
            output_tokens=_count(meta, "candidatesTokenCount") + thoughts,
            cached_input_tokens=min(cached, input_tokens),
            reasoning_tokens=thoughts,
        )
    return None


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
    from .pricing import billed_cost_now

    # The requested model served the call: what it would have cost is what it cost,
    # billed by the provider or at list prices (off-peak ones by when it ran), so no
    # saving is ever shown for it.
    billed = billed_cost_now(usage, model, catalog)
    return billed, billed


def _charge_budgets(info: CallInfo, cost: Decimal) -> None:
    """Charge a passed-through call's cost to its budgets (as a settle of no hold,
    so a store outage is handled as for routed calls; never raises)."""
    budgets = info.engine.budgets
    if not budgets or not cost:
        return
    from ._dispatch_drivers import settle_now
    from .budgets import Reservation

    settle_now(budgets, Reservation(budgets.lines(info.context), 0), cost)


async def _acharge_budgets(info: CallInfo, cost: Decimal) -> None:
    """Async twin of :func:`_charge_budgets`."""
    budgets = info.engine.budgets
    if not budgets or not cost:
        return
    from ._dispatch_drivers import asettle_now
    from .budgets import Reservation

    await asettle_now(budgets, Reservation(budgets.lines(info.context), 0), cost)


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
        requested=engine.catalog.at_provider(document["model"], match.provider),
        provider=match.provider,
        streamed=document.get("stream") is True,
        started=time.perf_counter(),
        body=body,
    )


def passthrough_info(
    engine: LLMRoute, match: EndpointMatch, body: bytes, context: RouteContext
) -> CallInfo | None:
    """What a chat call sent on as it is (llmroute could not read it, or failed on it)
    is, for its meter: ``None`` unless its JSON names a model (in the body, or in the
    path for Gemini). The answer is read in the wire dialect of ``match``."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    model = document.get("model")
    if not isinstance(model, str) or not model:
        model = match.model
    if not isinstance(model, str) or not model:
        return None
    streamed = match.kind == "stream_generate" or document.get("stream") is True
    return CallInfo(
        engine=engine,
        context=context,
        endpoint="chat",
        requested=engine.catalog.at_provider(model, match.provider),
        provider=match.provider,
        streamed=streamed,
        started=time.perf_counter(),
        wire=match.dialect,
        body=body,
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
