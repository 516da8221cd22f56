"""Interception of outgoing LLM calls made with ``httpx`` or ``httpx2``, at three levels.

1. **Explicit**: give a client our transport, wrapping the one it would have used::

       client = httpx2.Client(transport=RoutingTransport())
       openai.OpenAI(http_client=client)

2. **Per client**: :func:`instrument_client` wraps an existing client's transport and
   mounts (sync or async, either library); calling it twice changes nothing.

3. **Global**: :func:`instrument` covers every ``httpx`` and ``httpx2`` client of the
   process, including clients made before the call (an SDK client built at import
   time) and clients with custom transports (the openai SDK's aiohttp-backed
   ``DefaultAioHttpClient``). :func:`uninstrument` puts the libraries back exactly.

What happens to a request
-------------------------
Anything that is not a ``POST`` to a known provider's model endpoint (see
:func:`~routing_middleware.providers.registry.match_endpoint`, one dict lookup for
other hosts) goes to the inner transport untouched, byte for byte.

- **Chat calls** (OpenAI chat completions, Anthropic messages, Gemini
  ``generateContent`` / ``streamGenerateContent``) go through
  :class:`~routing_middleware.relay.Relay`: parsed in the caller's dialect, routed
  under the current :class:`~routing_middleware.context.RouteContext`, sent upstream
  by the engine with *its* configured keys, and answered in the caller's dialect with
  ``x-llmroute-*`` headers. Streams stay streams: the relay's chunks are handed to
  the client as they come, and closing the response (an early ``break`` included)
  ends the upstream call and writes its record.
- **Observe mode**: when the decision keeps the call where the code sent it
  (``observe`` mode, or a model the catalog does not know and nothing routes), the
  caller's *original* request is sent unchanged through the inner transport, with
  the caller's own key, and its answer is metered as it streams by: one usage
  record with what routing would have chosen. This is how a team adopts llmroute
  safely: turn on :func:`instrument` in ``observe`` mode, read the savings, then
  switch to ``enforce``.
- **Responses API and embeddings** are never rerouted, but metered the same way
  (``endpoint="responses"`` / ``"embeddings"``), streams scanned as bytes pass,
  so cost pages show all LLM spend.

Never break the caller
----------------------
An internal failure (a bug, not an upstream error) is logged on
``llmroute.transport`` and the original request goes out unchanged through the inner
transport, unless the engine's config says ``fail_open: false``, in which case the
caller gets a clean error in its own dialect. A request llmroute cannot parse is
also sent unchanged when failing open (the provider's own answer is the
authoritative one), and answered with a 400 in the caller's dialect otherwise. A
chat call sent on unchanged this way (unreadable, or after an internal failure) is
still metered when its body names a model, its usage read from the answer in the
wire dialect, and still held to budgets: a blocking budget at its limit answers it
with ``BudgetExceeded`` (402) in the caller's dialect instead. Upstream errors reach
the caller in its dialect with their status (the relay does that). A key the
caller's SDK sent is never forwarded anywhere but where the caller sent it: routed
calls use the engine's configured keys; no key appears in records, logs, errors or
reprs. Only hosts in the provider table are acted on.

Where the global hook sits
--------------------------
Both libraries pick a request's transport in ``Client._transport_for_url`` /
``AsyncClient._transport_for_url``, called by ``_send_single_request`` once per
request *hop*: after authentication and redirects produced the final request, for
the client's own transport and for every mount. :func:`instrument` patches that
method on the four classes: a non-LLM URL returns the client's transport as
before; an LLM URL returns it wrapped in a :class:`RoutingTransport`, which then
sees the final request. Patching ``HTTPTransport.handle_request`` would miss
custom transports (aiohttp, ASGI, mocks); patching ``send`` would see requests
before auth and redirects and would have to re-implement the client's response
handling. The patch lives on the classes, so instances made earlier are covered.

Double routing is prevented twice over: the dispatcher marks its own upstream
requests with :data:`~routing_middleware.dispatch.UPSTREAM_EXTENSION`, and while a
caller's original request is being sent on, a context flag
(:func:`suppress_interception`) stops anything below from intercepting it again.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from . import _intercept

if TYPE_CHECKING:
    from .engine import LLMRoute

__all__ = [
    "AsyncRoutingTransport",
    "RoutingTransport",
    "get_engine",
    "instrument",
    "instrument_client",
    "is_instrumented",
    "set_engine",
    "suppress_interception",
    "uninstrument",
    "uninstrument_client",
]

Lib = Literal["httpx", "httpx2"]

_engine_lock = threading.Lock()
_engine: LLMRoute | None = None


def set_engine(engine: LLMRoute | None) -> None:
    """Make ``engine`` the process-wide engine used where none is given (``None`` resets)."""
    global _engine
    with _engine_lock:
        _engine = engine


def get_engine() -> LLMRoute:
    """The process-wide engine; made with default settings on first use if none was set."""
    global _engine
    engine = _engine
    if engine is None:
        with _engine_lock:
            if _engine is None:
                from .engine import LLMRoute

                _engine = LLMRoute()
            engine = _engine
    return engine


@contextlib.contextmanager
def suppress_interception() -> Iterator[None]:
    """Inside the block, requests go out untouched even when interception is on."""
    token = _intercept.suppressed.set(True)
    try:
        yield
    finally:
        _intercept.suppressed.reset(token)


def _default_inner(lib: str, is_async: bool) -> Any:
    module: Any = importlib.import_module(lib)
    return module.AsyncHTTPTransport() if is_async else module.HTTPTransport()


def _lib_of(obj: Any) -> str | None:
    for cls in type(obj).__mro__:
        name = cls.__module__.partition(".")[0]
        if name in ("httpx", "httpx2"):
            return name
    return None


class _Base:
    """What the sync and async transports share: the inner transport and the engine."""

    __slots__ = ("_engine", "_inner", "_lib", "_lock")
    _is_async = False

    def __init__(
        self, inner: Any = None, *, engine: LLMRoute | None = None, lib: Lib | None = None
    ):
        if lib is not None and lib not in ("httpx", "httpx2"):
            raise ValueError(f"lib must be 'httpx' or 'httpx2', not {lib!r}")
        self._inner = inner
        self._engine = engine
        self._lib: str | None = lib or (_lib_of(inner) if inner is not None else None)
        self._lock: threading.Lock | None = threading.Lock()

    @classmethod
    def _wrap(cls, inner: Any, engine: LLMRoute | None) -> Any:
        """A wrapper made on the hot path (no validation)."""
        self = object.__new__(cls)
        self._inner, self._engine, self._lib, self._lock = inner, engine, None, None
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(inner={type(self._inner).__name__})"

    @property
    def inner(self) -> Any:
        """The transport requests that are not routed go to."""
        return self._inner

    def _engine_of(self) -> LLMRoute:
        return self._engine if self._engine is not None else get_engine()

    def _inner_for(self, request: Any) -> Any:
        inner = self._inner
        if inner is None:
            with self._lock or threading.Lock():
                if self._inner is None:
                    lib = self._lib or type(request).__module__.partition(".")[0]
                    self._inner = _default_inner(lib, self._is_async)
                inner = self._inner
        return inner


class RoutingTransport(_Base):
    """A sync transport for ``httpx.Client`` / ``httpx2.Client`` that routes LLM calls.

    ``inner`` is where everything else (and observed or failed-open calls) goes: by
    default the library's ``HTTPTransport``, made on first use for the library of
    the first request (or ``lib``). ``engine`` defaults to :func:`get_engine`, read
    at each call.
    """

    __slots__ = ()

    def handle_request(self, request: Any) -> Any:
        """Route, meter, or pass on one request (see the module docs)."""
        return _intercept.handle(self._inner_for(request), request, self._engine_of)

    def close(self) -> None:
        """Close the inner transport."""
        if self._inner is not None:
            self._inner.close()

    def __enter__(self) -> RoutingTransport:
        if self._inner is not None:
            self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        if self._inner is not None:
            self._inner.__exit__(exc_type, exc, tb)


class AsyncRoutingTransport(_Base):
    """Async twin of :class:`RoutingTransport`, for ``AsyncClient`` of either library."""

    __slots__ = ()
    _is_async = True

    async def handle_async_request(self, request: Any) -> Any:
        """Route, meter, or pass on one request (see the module docs)."""
        return await _intercept.ahandle(self._inner_for(request), request, self._engine_of)

    async def aclose(self) -> None:
        """Close the inner transport."""
        if self._inner is not None:
            await self._inner.aclose()

    async def __aenter__(self) -> AsyncRoutingTransport:
        if self._inner is not None:
            await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        if self._inner is not None:
            await self._inner.__aexit__(exc_type, exc, tb)


_WRAPPERS = (RoutingTransport, AsyncRoutingTransport)


# ----------------------------------------------------------------------------- per client


def _is_async_client(client: Any) -> bool:
    lib = _lib_of(client)
    if lib is None or not hasattr(client, "_transport"):
        raise TypeError(f"not an httpx or httpx2 client: {type(client).__name__}")
    module: Any = importlib.import_module(lib)
    return isinstance(client, module.AsyncClient)


def instrument_client(client: Any, *, engine: LLMRoute | None = None) -> Any:
    """Route ``client``'s LLM calls (its transport and every mount); returns ``client``.

    Works for ``httpx`` and ``httpx2``, ``Client`` and ``AsyncClient``. Calling it
    again leaves an instrumented client as it is.
    """
    wrapper = AsyncRoutingTransport if _is_async_client(client) else RoutingTransport
    if not isinstance(client._transport, _WRAPPERS):
        client._transport = wrapper(client._transport, engine=engine)
    for pattern, transport in list(client._mounts.items()):
        if transport is not None and not isinstance(transport, _WRAPPERS):
            client._mounts[pattern] = wrapper(transport, engine=engine)
    return client


def uninstrument_client(client: Any) -> Any:
    """Undo :func:`instrument_client`; returns ``client``.

    A routing transport the client was made with is replaced by what it wraps: the
    library's default transport when it was given none (and so made none yet).
    """
    if isinstance(client._transport, _WRAPPERS):
        client._transport = _unwrapped(client._transport, client)
    for pattern, transport in list(client._mounts.items()):
        if isinstance(transport, _WRAPPERS):
            client._mounts[pattern] = _unwrapped(transport, client)
    return client


def _unwrapped(wrapper: _Base, client: Any) -> Any:
    inner = wrapper.inner
    if inner is None:
        inner = _default_inner(str(_lib_of(client)), _is_async_client(client))
    return inner


# ----------------------------------------------------------------------------- global

_HOOK = "_transport_for_url"
_MISSING = object()
_patch_lock = threading.Lock()
#: ``(class, the attribute as it was in the class's own dict or _MISSING)``
_patched: list[tuple[type[Any], Any]] = []
#: what instrument() was given; ``_OFF`` once uninstrument() ran, so a request that
#: entered the patched method just before is not routed by :func:`get_engine`'s engine
_OFF: Any = object()
_global_engine: Any = _OFF


def _hook(original: Any, wrapper: type[_Base]) -> Any:
    match_endpoint = importlib.import_module("routing_middleware.providers.registry").match_endpoint
    interesting = _intercept.INTERESTING
    suppressed = _intercept.suppressed
    host_of = _intercept.host_of

    def _transport_for_url(self: Any, url: Any) -> Any:
        transport = original(self, url)
        if isinstance(transport, _WRAPPERS) or suppressed.get():
            return transport
        match = match_endpoint(host_of(url), url.path)
        if match is None or match.kind not in interesting:
            return transport
        engine = _global_engine
        if engine is _OFF:  # uninstrument() ran meanwhile (another thread)
            return transport
        return wrapper._wrap(transport, engine)

    _transport_for_url.__wrapped__ = original  # type: ignore[attr-defined]
    return _transport_for_url


def instrument(engine: LLMRoute | None = None) -> None:
    """Route the LLM calls of every ``httpx`` and ``httpx2`` client in the process.

    ``engine`` is used for these calls (default: :func:`get_engine`, read at each
    call). Calling it again only changes the engine. Reversed by :func:`uninstrument`.
    """
    global _global_engine
    with _patch_lock:
        _global_engine = engine
        if _patched:
            return
        for lib in ("httpx", "httpx2"):
            if importlib.util.find_spec(lib) is None:
                continue
            module: Any = importlib.import_module(lib)
            for cls, wrapper in (
                (module.Client, RoutingTransport),
                (module.AsyncClient, AsyncRoutingTransport),
            ):
                original = getattr(cls, _HOOK)
                _patched.append((cls, cls.__dict__.get(_HOOK, _MISSING)))
                setattr(cls, _HOOK, _hook(original, wrapper))


def uninstrument() -> None:
    """Undo :func:`instrument`: the libraries' classes get their own methods back."""
    global _global_engine
    with _patch_lock:
        while _patched:
            cls, saved = _patched.pop()
            if saved is _MISSING:
                delattr(cls, _HOOK)
            else:
                setattr(cls, _HOOK, saved)
        _global_engine = _OFF


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in force."""
    return bool(_patched)
