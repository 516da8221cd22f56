"""The per-request routing context and the ``route_hint`` annotation.

A :class:`RouteContext` says who is calling (user, groups, API key), from where
(feature, route, tags) and what the code wants from routing (hints: tier, latency
SLA, quality floor, cost cap, allow/deny lists, mode). It lives in a
:class:`contextvars.ContextVar`, so it follows a request across ``await`` and into
``asyncio.to_thread`` / asgiref ``sync_to_async`` threads.

:func:`route_hint` sets hints for a block of code. Hints nest: an inner hint
overrides the outer one field by field and leaves the other fields alone.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from math import inf
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

__all__ = [
    "HINTS_ATTRIBUTE",
    "MAX_REQUEST_ID",
    "Mode",
    "RouteContext",
    "RouteHint",
    "current_context",
    "hints_of",
    "is_valid_request_id",
    "reset_context",
    "route_hint",
    "set_context",
    "use_context",
]

Mode = Literal["enforce", "observe"]

#: The attribute :func:`route_hint` sets on a decorated function: a ``dict`` of the
#: fields it sets, so middleware can read an endpoint's hints without calling it.
HINTS_ATTRIBUTE = "__llmroute_hints__"

_F = TypeVar("_F", bound=Callable[..., Any])

_SET_FIELDS = ("user_groups", "tags")


@dataclass(frozen=True, slots=True)
class RouteContext:
    """Who is calling, from where, and what routing should aim for.

    Every field is optional; ``None`` means "not said", so nesting can tell an
    unset field from a set one. ``tier`` is 1 (cheap), 2 (balanced), 3 (premium)
    or a tier name the routing config knows. ``allow_upgrade`` lets routing pick a
    model pricier than the one the code asked for (by default the requested model
    is a cost ceiling). ``timeout_s`` bounds how long each attempt waits for the
    provider (to connect, and for each read, as an HTTP client's timeout does): the
    tighter of it and the engine's ``attempt_timeout_s`` applies. Interception sets it
    from the read timeout of the client that made the call.
    """

    user_id: str | None = None
    user_groups: frozenset[str] | None = None
    feature: str | None = None
    route: str | None = None
    tags: frozenset[str] | None = None
    api_key_id: str | None = None
    request_id: str | None = None
    tier: int | str | None = None
    max_latency_ms: float | None = None
    min_quality: int | None = None
    max_cost_per_call: Decimal | None = None
    allow_models: frozenset[str] | None = None
    deny_models: frozenset[str] | None = None
    allow_providers: frozenset[str] | None = None
    mode: Mode | None = None
    allow_upgrade: bool | None = None
    timeout_s: float | None = None

    def merged(self, **fields: Any) -> RouteContext:
        """A copy with every non-``None`` field of ``fields`` replacing this one's."""
        updates = {k: v for k, v in _normalise(fields).items() if v is not None}
        if not updates:
            return self
        return dataclasses.replace(self, **updates)

    def overlay(self, inner: RouteContext) -> RouteContext:
        """This context with ``inner``'s set fields on top (``inner`` wins)."""
        return self.merged(**{f.name: getattr(inner, f.name) for f in dataclasses.fields(inner)})


_EMPTY = RouteContext()
_current: contextvars.ContextVar[RouteContext] = contextvars.ContextVar(
    "llmroute_route_context", default=_EMPTY
)
_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(RouteContext))


def _normalise(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - _FIELD_NAMES
    if unknown:
        raise TypeError(
            f"unknown route hint(s): {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_FIELD_NAMES))}"
        )
    out = dict(fields)
    for name in (*_SET_FIELDS, "allow_models", "deny_models", "allow_providers"):
        value = out.get(name)
        if value is not None and not isinstance(value, frozenset):
            if isinstance(value, str):
                value = (value,)
            out[name] = frozenset(cast(Iterable[str], value))
    cost = out.get("max_cost_per_call")
    if cost is not None and not isinstance(cost, Decimal):
        if isinstance(cost, float):
            cost = repr(cost)
        out["max_cost_per_call"] = Decimal(cost)
    mode = out.get("mode")
    if mode is not None and mode not in ("enforce", "observe"):
        raise ValueError(f"mode must be 'enforce' or 'observe', not {mode!r}")
    tier = out.get("tier")
    if isinstance(tier, int) and not isinstance(tier, bool) and tier < 1:
        raise ValueError(f"tier must be 1 or more, not {tier}")
    timeout = out.get("timeout_s")
    if timeout is not None and not (
        isinstance(timeout, int | float) and not isinstance(timeout, bool) and 0 < timeout < inf
    ):
        raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout!r}")
    return out


def current_context() -> RouteContext:
    """The routing context of the running request (empty when none was set)."""
    return _current.get()


#: The read timeout of the client whose call interception is serving, when tighter
#: than the engine's own (set only around that call, see ``_intercept``).
client_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "llmroute_client_timeout", default=None
)


def call_timeout(context: RouteContext) -> float | None:
    """How long each attempt of a call under ``context`` may wait for the provider,
    when less than the engine's own: the tighter of ``context.timeout_s`` and the
    client timeout interception took from the caller's client."""
    own, client = context.timeout_s, client_timeout.get()
    if client is None:
        return own
    return client if own is None else min(own, client)


#: Longest request id kept from a caller's header (the size of the stored column).
MAX_REQUEST_ID = 128


def is_valid_request_id(text: str) -> bool:
    """Whether a caller-sent request id is safe to log and store as is:
    1 to 128 printable ASCII characters, no spaces (``!`` to ``~``)."""
    return 0 < len(text) <= MAX_REQUEST_ID and all("!" <= char <= "~" for char in text)


def set_context(context: RouteContext) -> contextvars.Token[RouteContext]:
    """Make ``context`` current; pass the token to :func:`reset_context` afterwards.

    For middleware whose request spans several callbacks (ASGI ``receive``/``send``),
    where a ``with`` block cannot hold; prefer :func:`use_context` elsewhere.
    """
    return _current.set(context)


def reset_context(token: contextvars.Token[RouteContext]) -> None:
    """Restore the context that was current before :func:`set_context`."""
    _current.reset(token)


@contextmanager
def use_context(context: RouteContext) -> Iterator[RouteContext]:
    """Make ``context`` current inside the block, restoring the previous one after."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def hints_of(func: Callable[..., Any]) -> dict[str, Any]:
    """The hints :func:`route_hint` attached to ``func`` (empty if none)."""
    return dict(getattr(func, HINTS_ATTRIBUTE, {}))


class RouteHint:
    """Hints usable as a decorator or a (sync or async) context manager.

    Each ``with`` entry pushes a token on a stack kept per instance; an instance
    used as a context manager concurrently from several tasks should be created
    per use (``with route_hint(...)``), as is natural.
    """

    __slots__ = ("_tokens", "hints")

    def __init__(self, hints: dict[str, Any]) -> None:
        self.hints = _normalise(hints)
        self._tokens: list[contextvars.Token[RouteContext]] = []

    def _push(self) -> contextvars.Token[RouteContext]:
        return _current.set(_current.get().merged(**self.hints))

    def __enter__(self) -> RouteContext:
        self._tokens.append(self._push())
        return _current.get()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._tokens.pop())

    async def __aenter__(self) -> RouteContext:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: _F) -> _F:
        if inspect.isclass(func):
            # A class-based endpoint (Starlette's HTTPEndpoint, a Django view class) must
            # stay a class: annotate it for the middleware that reads hints, don't wrap it.
            outer = getattr(func, HINTS_ATTRIBUTE, {})
            setattr(func, HINTS_ATTRIBUTE, {**self.hints, **outer})
            return func
        wrapper: Callable[..., Any]
        if inspect.isasyncgenfunction(func):
            wrapper = self._wrap_async_gen(func)
        elif inspect.iscoroutinefunction(func):
            wrapper = self._wrap_coroutine(func)
        elif inspect.isgeneratorfunction(func):
            wrapper = self._wrap_gen(func)
        else:
            wrapper = self._wrap_sync(func)
        functools.update_wrapper(wrapper, func)
        outer = getattr(func, HINTS_ATTRIBUTE, {})
        # The decorator closest to the function runs last, so it wins.
        setattr(wrapper, HINTS_ATTRIBUTE, {**self.hints, **outer})
        return cast(_F, wrapper)

    def _wrap_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = self._push()
            try:
                return func(*args, **kwargs)
            finally:
                _current.reset(token)

        return wrapper

    def _wrap_coroutine(self, func: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = self._push()
            try:
                return await func(*args, **kwargs)
            finally:
                _current.reset(token)

        return wrapper

    # Generators run in their consumer's context: hints are set around each step
    # only, so they never leak into the consumer between items. Values sent and
    # exceptions thrown in (``send``/``throw``, as ``contextmanager`` and FastAPI's
    # yield dependencies do) are passed on to the wrapped generator, like ``yield from``.
    def _wrap_gen(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            gen = func(*args, **kwargs)
            step: Callable[[], Any] = partial(next, gen)
            try:
                while True:
                    token = self._push()
                    try:
                        item = step()
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        _current.reset(token)
                    try:
                        sent = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as exc:  # thrown in: the wrapped generator handles it
                        step = partial(gen.throw, exc)
                    else:
                        step = partial(gen.send, sent)
            finally:
                token = self._push()
                try:
                    gen.close()
                finally:
                    _current.reset(token)

        return wrapper

    def _wrap_async_gen(self, func: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            agen = func(*args, **kwargs)
            step: Callable[[], Any] = agen.__anext__
            try:
                while True:
                    token = self._push()
                    try:
                        item = await step()
                    except StopAsyncIteration:
                        return
                    finally:
                        _current.reset(token)
                    try:
                        sent = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as exc:  # thrown in: the wrapped generator handles it
                        step = partial(agen.athrow, exc)
                    else:
                        step = partial(agen.asend, sent)
            finally:
                token = self._push()
                try:
                    await agen.aclose()
                finally:
                    _current.reset(token)

        return wrapper


def route_hint(**hints: Any) -> RouteHint:
    """Routing hints for a function or a block.

    As a decorator it works on plain functions, coroutine functions (which stay
    coroutine functions), generators and async generators, and records the hints
    on the function as ``__llmroute_hints__``. As a context manager it works with
    ``with`` and ``async with``. Any :class:`RouteContext` field is accepted::

        @route_hint(tier="cheap", feature="summaries", max_latency_ms=800)
        async def summarize(text: str) -> str: ...

        with route_hint(min_quality=70):
            ...
    """
    return RouteHint(hints)
