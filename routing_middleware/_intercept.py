"""The machinery behind :mod:`routing_middleware.transport`: what to do with one request.

Everything here works for ``httpx`` and ``httpx2`` alike: the library is read off the
request's class, and the few classes that must subclass a library's own stream types
are built once per library (:mod:`._intercept_kit`). The sync and async shells
(:func:`handle` / :func:`ahandle`) differ only in how they read bodies and call the
inner transport; routing is the relay's, metering of calls sent on unchanged is
:mod:`._intercept_meter`'s.

A chat call that goes out as the caller sent it because llmroute could not read it
or failed on it (``fail_open``) is still metered and still held to budgets: a
blocking budget at its limit answers ``BudgetExceeded`` in the caller's dialect
instead of sending it. Calls llmroute meters but does not route (the Responses API,
embeddings) are held to budgets the same way.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from ._intercept_kit import kit_for
from ._intercept_meter import CallInfo, metered_info, observed_info, passthrough_info
from .context import RouteContext, client_timeout, current_context
from .dispatch import UPSTREAM_EXTENSION
from .providers.registry import EndpointMatch, match_endpoint
from .schema import BudgetExceeded

if TYPE_CHECKING:
    from .budgets import BudgetStatus
    from .engine import LLMRoute
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
    """The engine as one relayed call sees it.

    Some decisions stop the relay so the caller's original request goes out instead:
    ``observe`` mode, and a call carrying the caller's own credentials for a provider
    llmroute holds no key for — a real call is never answered by FakeProvider just
    because llmroute was not given that key. Only ``offline: always`` (tests, demos)
    lets the fake answer those. It also remembers whether the request got as far as
    the router (i.e. parsed).
    """

    __slots__ = (
        "_engine",
        "addressed",
        "caller_keyed",
        "catalog",
        "dispatched",
        "reached",
    )

    def __init__(self, engine: LLMRoute, addressed: str, caller_keyed: bool) -> None:
        self._engine = engine
        self.catalog = engine.catalog
        self.addressed = addressed
        self.caller_keyed = caller_keyed
        self.reached = False
        #: the call went to the dispatcher: an upstream may have been called (and may
        #: bill), so the original request must not be sent as well
        self.dispatched = False

    def complete(self, *args: Any, **kwargs: Any) -> Any:
        self.dispatched = True
        return self._engine.complete(*args, **kwargs)

    async def acomplete(self, *args: Any, **kwargs: Any) -> Any:
        self.dispatched = True
        return await self._engine.acomplete(*args, **kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        self.dispatched = True
        return self._engine.stream(*args, **kwargs)

    async def astream(self, *args: Any, **kwargs: Any) -> Any:
        self.dispatched = True
        return await self._engine.astream(*args, **kwargs)

    def decide(self, request: ChatRequest, context: RouteContext | None = None) -> Decision:
        self.reached = True
        return self._checked(request, self._engine.decide(request, context))

    async def adecide(self, request: ChatRequest, context: RouteContext | None = None) -> Decision:
        self.reached = True
        return self._checked(request, await self._engine.adecide(request, context))

    def _checked(self, request: ChatRequest, decision: Decision) -> Decision:
        engine = self._engine
        offline = engine.offline_providers
        # llmroute holds no key for the provider the code addressed: its FakeProvider
        # may stand in only when told to (offline: always) or for a keyless call.
        no_key = self.addressed in offline and engine.config.offline != "always"
        if decision.mode == "observe":
            if no_key or decision.primary.provider not in offline:
                raise _KeepOriginal(request, decision)
        elif no_key and self.caller_keyed:
            raise _KeepOriginal(request, decision)
        return decision


_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key"})


def _caller_keyed(request: Any) -> bool:
    """Whether ``request`` carries a credential of its own: a credential header, or
    Gemini's ``key`` query parameter (``...:generateContent?key=...``)."""
    for name, value in request.headers.raw:
        if value and name.lower() in _CREDENTIAL_HEADERS:
            return True
    query: bytes = request.url.query
    return b"key=" in query and any(
        name == b"key" and value
        for name, _, value in (part.partition(b"=") for part in query.split(b"&"))
    )


def _client_timeout(engine: LLMRoute, request: Any) -> float | None:
    """The read timeout of the client that made ``request`` (what its SDK waits for
    each read), when it is tighter than the engine's own: the routed call keeps it,
    as it would have without llmroute. ``None`` for the SDKs' default of 600 s."""
    timeouts = request.extensions.get("timeout")
    read = timeouts.get("read") if isinstance(timeouts, dict) else None
    if not isinstance(read, int | float) or isinstance(read, bool) or not 0 < read < math.inf:
        return None
    bound = engine.config.retry.attempt_timeout_s
    return None if bound is not None and bound <= read else float(read)


def _relay(engine: LLMRoute, addressed: str, caller_keyed: bool) -> tuple[Any, _CallEngine]:
    relay_class = _relay_class or _load_relay()
    view = _CallEngine(engine, addressed, caller_keyed)
    relay = relay_class(cast("LLMRoute", view), response_headers=engine.config.response_headers)
    return relay, view


_relay_class: Any = None


def _load_relay() -> Any:
    global _relay_class
    from .relay import Relay

    _relay_class = Relay
    return Relay


def _internal_error(engine: LLMRoute, dialect: str, dispatched: bool = False) -> RelayResponse:
    message = (
        "llmroute failed after sending this call on; it was not sent again"
        if dispatched
        else "llmroute failed while routing this call; it was not sent (fail_open is off)"
    )
    from .relay import Relay

    return Relay(engine, response_headers=False).internal_error(dialect, message)


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


def _failed(
    engine: LLMRoute | None, match: EndpointMatch, dispatched: bool = False
) -> RelayResponse | None:
    """Log an internal failure; the error answer when failing closed, or when the
    routed call may already have reached an upstream (sending the original as well
    could run, and bill, the call twice), else ``None``."""
    fail_open = (engine is None or engine.config.fail_open) and not dispatched
    if fail_open:
        outcome = "sending it unchanged"
    elif dispatched:
        outcome = "failing the call (its routed call may have reached an upstream)"
    else:
        outcome = "failing the call (fail_open is off)"
    logger.exception("llmroute failed on a call to %s; %s", match.provider, outcome)
    if fail_open or engine is None:
        return None
    try:
        return _internal_error(engine, match.dialect, dispatched)
    except Exception:
        logger.exception("llmroute could not encode its own error")
        return None


def _unparsed(match: EndpointMatch) -> None:
    logger.warning(
        "llmroute could not read a %s call to %s; sending it unchanged",
        match.kind,
        match.provider,
    )


def _blocking(statuses: Iterable[BudgetStatus]) -> BudgetExceeded | None:
    """The error for the first blocking budget at its limit among ``statuses``."""
    for status in statuses:
        if status.action == "block":
            budget = status.budget
            scope = "" if budget.scope == "global" else f" {status.subject}"
            return BudgetExceeded(
                f"budget {budget.name!r} ({budget.scope}{scope}) is spent: "
                f"limit ${budget.limit_usd} per {budget.period}",
                budget=budget.name,
            )
    return None


def _pass_info(
    engine: LLMRoute | None, match: EndpointMatch, body: bytes | None
) -> CallInfo | None:
    """The meter's info for a chat call going out as the caller sent it (``None``:
    not JSON naming a model, or not a chat call). Never raises."""
    if engine is None or body is None or match.kind not in _ROUTED:
        return None
    try:
        info = passthrough_info(engine, match, body, current_context())
    except Exception:
        logger.exception("llmroute could not meter a call to %s sent unchanged", match.provider)
        return None
    if info is None:
        logger.warning(
            "llmroute cannot meter a %s call to %s: its body names no model",
            match.kind,
            match.provider,
        )
    return info


def _refusal(info: CallInfo, match: EndpointMatch, blocked: BudgetExceeded) -> RelayResponse | None:
    try:
        from .relay import Relay

        return Relay(info.engine, response_headers=False).error(match.dialect, blocked)
    except Exception:
        logger.exception("llmroute could not encode a budget error")
        return None


def _pass_through(
    engine: LLMRoute | None, match: EndpointMatch, body: bytes | None
) -> tuple[CallInfo | None, RelayResponse | None]:
    """Meter and budget-check a chat call about to go out as the caller sent it.

    Returns the meter's info and, when a blocking budget is spent, the answer to
    give instead of sending (``BudgetExceeded`` in the caller's dialect). Never
    raises: a failing budget store logs and lets the call go out, metered.
    """
    return _checked(_pass_info(engine, match, body), match)


def _checked(
    info: CallInfo | None, match: EndpointMatch
) -> tuple[CallInfo | None, RelayResponse | None]:
    """``info`` and, when a blocking budget of its context is spent, the refusal to
    answer instead of sending. Never raises."""
    if info is None or not info.engine.budgets:
        return info, None
    # (``pressing`` never raises: a store outage reads as no pressure, see ``Budgets``)
    blocked = _blocking(info.engine.budgets.pressing(info.context))
    return info, None if blocked is None else _refusal(info, match, blocked)


async def _apass_through(
    engine: LLMRoute | None, match: EndpointMatch, body: bytes | None
) -> tuple[CallInfo | None, RelayResponse | None]:
    """Async twin of :func:`_pass_through` (budgets read through the async store)."""
    return await _achecked(_pass_info(engine, match, body), match)


async def _achecked(
    info: CallInfo | None, match: EndpointMatch
) -> tuple[CallInfo | None, RelayResponse | None]:
    """Async twin of :func:`_checked` (budgets read through the async store)."""
    budgets = info.engine.budgets if info is not None else None
    if info is None or not budgets:
        return info, None
    # (a store outage reads as no pressure, see ``Budgets``)
    none: list[BudgetStatus] = []
    statuses = await budgets.outage.arun(lambda: budgets.astatus(info.context), none)
    blocked = _blocking(statuses)
    return info, None if blocked is None else _refusal(info, match, blocked)


def handle(inner: Any, request: Any, engine_of: Callable[[], LLMRoute]) -> Any:
    """Serve ``request`` for a sync client: route, meter, or pass it to ``inner``.

    The caller's request is sent at most once, and outside the ``try``: an error of
    the inner transport reaches the caller as it is, never a second send.
    """
    match = _match(request)
    if match is None:
        return inner.handle_request(request)
    # Read before the ``try``: an error of the caller's own body (a generator that
    # raises) reaches the caller as it is, as without llmroute.
    body: bytes = request.read()
    engine: LLMRoute | None = None
    info: CallInfo | None = None
    view: _CallEngine | None = None
    try:
        engine = engine_of()
        if match.kind in _METERED:
            info, blocked = _checked(metered_info(engine, match, body), match)
            if blocked is not None:
                return kit_for(request).relay_response(blocked)
        else:
            relay, view = _relay(engine, match.provider, _caller_keyed(request))
            context = current_context()
            timeout = client_timeout.set(_client_timeout(engine, request))
            try:
                answer = relay.handle(
                    match.dialect, body, request.url.path, provider=match.provider, context=context
                )
            except _KeepOriginal as keep:
                info = observed_info(engine, match, keep.request, keep.decision, context)
            else:
                if view.reached or not engine.config.fail_open:
                    return kit_for(request).relay_response(answer)
                _unparsed(match)
                info, blocked = _pass_through(engine, match, body)
                if blocked is not None:
                    return kit_for(request).relay_response(blocked)
            finally:
                client_timeout.reset(timeout)
    except Exception:
        error = _failed(engine, match, dispatched=view is not None and view.dispatched)
        if error is not None:
            return kit_for(request).relay_response(error)
        if info is None:
            info, blocked = _pass_through(engine, match, body)
            if blocked is not None:
                return kit_for(request).relay_response(blocked)
    response = _send_sync(inner, request)
    if info is None:
        return response
    response, read = kit_for(request).metered(response, info, is_async=False)
    if read is not None:
        read.finish(True)
    return response


async def ahandle(inner: Any, request: Any, engine_of: Callable[[], LLMRoute]) -> Any:
    """Async twin of :func:`handle`."""
    match = _match(request)
    if match is None:
        return await inner.handle_async_request(request)
    # Read before the ``try``: an error of the caller's own body (a generator that
    # raises) reaches the caller as it is, as without llmroute.
    body: bytes = await request.aread()
    engine: LLMRoute | None = None
    info: CallInfo | None = None
    view: _CallEngine | None = None
    try:
        engine = engine_of()
        if match.kind in _METERED:
            info, blocked = await _achecked(metered_info(engine, match, body), match)
            if blocked is not None:
                return kit_for(request).relay_response(blocked)
        else:
            relay, view = _relay(engine, match.provider, _caller_keyed(request))
            context = current_context()
            timeout = client_timeout.set(_client_timeout(engine, request))
            try:
                answer = await relay.ahandle(
                    match.dialect, body, request.url.path, provider=match.provider, context=context
                )
            except _KeepOriginal as keep:
                info = observed_info(engine, match, keep.request, keep.decision, context)
            else:
                if view.reached or not engine.config.fail_open:
                    return kit_for(request).relay_response(answer)
                _unparsed(match)
                info, blocked = await _apass_through(engine, match, body)
                if blocked is not None:
                    return kit_for(request).relay_response(blocked)
            finally:
                client_timeout.reset(timeout)
    except Exception:
        error = _failed(engine, match, dispatched=view is not None and view.dispatched)
        if error is not None:
            return kit_for(request).relay_response(error)
        if info is None:
            info, blocked = await _apass_through(engine, match, body)
            if blocked is not None:
                return kit_for(request).relay_response(blocked)
    response = await _send_async(inner, request)
    if info is None:
        return response
    response, read = kit_for(request).metered(response, info, is_async=True)
    if read is not None:
        await read.afinish(True)
    return response
