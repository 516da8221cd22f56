"""Pure ASGI middleware that gives every HTTP request its routing context.

::

    app = Starlette(routes=..., middleware=[Middleware(RoutingMiddleware, engine=engine)])
    app.add_middleware(RoutingMiddleware, engine=engine)  # FastAPI the same

For each HTTP request the middleware makes a :class:`RouteContext` current for
the request's whole life, background tasks included, and restores the previous
one when the request ends, even when the app raised:

- ``user_id``: from ``user(scope)`` when given, else from ``scope["user"]`` as
  an authentication middleware sets it (its ``identity``, ``id``, ``pk`` or
  ``username``; an anonymous user is ``None``). Set it before or after this
  middleware: a user that appears later is picked up when it does.
- ``feature`` and the other hints: from the matched endpoint's
  :func:`~routing_middleware.context.route_hint` annotation (for a class-based
  endpoint, the class's and then the HTTP method handler's), and ``route``: the
  matched path template. Starlette and FastAPI match the route *inside* the app,
  writing ``scope["route"]`` and ``scope["endpoint"]``; the middleware hands the
  app a copy of the scope that notices those writes (and passes every write on
  to the original), so the endpoint's hints are current from the moment its
  route is chosen: in dependencies, the endpoint, a streaming body and
  background tasks.
- ``tags``: from ``tags(scope)`` (or a fixed iterable).
- ``request_id``: the ``x-request-id`` header when sent, else a fresh id.

Lifespan and websocket scopes pass straight through; response bodies are never
read or held back. With ``server_timing`` (default: the engine config's
``server_timing``) the response gets ``Server-Timing: llm;dur=<ms>;desc="<n>
calls, $<cost>"``. The header goes out with the response's start, so it covers
the LLM calls (and streams) that finished before the response started; a call
made while the body streams, or in a background task, still gets its record,
but is not in the header. ``dur`` adds up each call attempt's latency, so calls
made concurrently count in full.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Iterable
from decimal import Decimal
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

from ._ids import new_id
from .context import (
    HINTS_ATTRIBUTE,
    RouteContext,
    current_context,
    is_valid_request_id,
    reset_context,
    set_context,
)
from .engine import collect_records, collected_records

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from .engine import LLMRoute
    from .metering import UsageRecord

__all__ = ["RoutingMiddleware", "request_records"]

UserGetter = Callable[["Scope"], "str | None"]
TagsGetter = Callable[["Scope"], "Iterable[str] | None"]

_EMPTY = RouteContext()

logger = logging.getLogger("llmroute.asgi")


def request_records() -> list[UsageRecord]:
    """The usage records of the current request's finished LLM calls so far.

    Filled only under a :class:`RoutingMiddleware` with ``server_timing`` on;
    empty elsewhere.
    """
    return list(collected_records() or ())


class RoutingMiddleware:
    """Sets the request's :class:`RouteContext` around a Starlette/FastAPI app.

    ``engine`` is the engine whose calls ``Server-Timing`` summarises (needed
    only for that header). ``user`` maps the scope to a user id (overriding
    ``scope["user"]``); ``tags`` maps it to tags or is a fixed set of tags.
    ``server_timing`` turns the header on or off (default: the engine's config).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        engine: LLMRoute | None = None,
        user: UserGetter | None = None,
        tags: TagsGetter | Iterable[str] | None = None,
        server_timing: bool | None = None,
    ) -> None:
        if user is not None and not callable(user):
            raise TypeError("user must be a callable taking the ASGI scope")
        if server_timing is None:
            server_timing = engine.config.server_timing if engine is not None else False
        self.app = app
        self.engine = engine
        self.user = user
        if tags is None or callable(tags):
            self._tags: TagsGetter | None = tags
            self._fixed_tags: frozenset[str] | None = None
        else:
            if isinstance(tags, str):
                raise TypeError("tags must be an iterable of tags or a callable, not a string")
            self._tags = None
            self._fixed_tags = frozenset(tags) or None
        self.server_timing = bool(server_timing)

    def __repr__(self) -> str:
        return f"RoutingMiddleware(app={self.app!r}, server_timing={self.server_timing})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _Request(self, scope)
        inner = _WatchedScope(scope, request)
        token = set_context(request.base)
        try:
            if self.server_timing:
                with collect_records():
                    await self.app(inner, receive, partial(_send_with_timing, send))
            else:
                await self.app(inner, receive, send)
        finally:
            reset_context(token)
            inner.request = None

    # ------------------------------------------------------------------ pieces

    # A failing ``user`` or ``tags`` callable must not fail the request (it also runs
    # inside the app's own scope writes): the request goes on without that field.
    def _user_id(self, scope: Scope) -> str | None:
        if self.user is not None:
            try:
                found = self.user(scope)
                return None if found is None else str(found)
            except Exception as exc:
                logger.warning("the user callable failed (%s); no user id", type(exc).__name__)
                return None
        return _user_id(scope.get("user"))

    def _tags_of(self, scope: Scope) -> frozenset[str] | None:
        if self._tags is None:
            return self._fixed_tags
        try:
            found = self._tags(scope)
            return frozenset(found) if found else None
        except Exception as exc:
            logger.warning("the tags callable failed (%s); no tags", type(exc).__name__)
            return None


class _Request:
    """One request's context: the base (who, tags, id) and what routing adds."""

    __slots__ = ("base", "endpoint", "middleware", "mounts", "route", "route_root", "user")

    def __init__(self, middleware: RoutingMiddleware, scope: Scope) -> None:
        self.middleware = middleware
        self.endpoint: Any = None
        self.route: Any = None
        # The path templates of the mounts above the matched route (see _mounts_above
        # for those above this middleware), and the root_path
        # the current route was matched at: a mount is a route after which the next
        # one is matched below a longer root_path.
        self.mounts = _mounts_above(scope)
        self.route_root: str = scope.get("root_path", "")
        self.user: Any = scope.get("user")
        outer = current_context()
        user_id = middleware._user_id(scope)
        tags = middleware._tags_of(scope)
        if outer == _EMPTY:  # the usual case: nothing to merge with
            self.base = RouteContext(user_id=user_id, tags=tags, request_id=_request_id(scope))
        else:
            self.base = outer.merged(user_id=user_id, tags=tags, request_id=_request_id(scope))

    def changed(self, scope: _WatchedScope, root_before: str) -> None:
        """The app wrote routing or user keys into the scope: refresh the context.
        ``root_before`` is the scope's root_path before that write."""
        endpoint = scope.get("endpoint")
        route = scope.get("route")
        user = scope.get("user")
        if endpoint is self.endpoint and route is self.route and user is self.user:
            return
        if route is not self.route:
            if self.route is not None and root_before != self.route_root:
                self.mounts += _mount_path(self.route)
            self.route_root = root_before
        if user is not self.user:
            self.user = user
            self.base = self.base.merged(user_id=self.middleware._user_id(scope))
        self.endpoint = endpoint
        self.route = route
        context = self.base
        if endpoint is not None:
            hints = _endpoint_hints(endpoint, scope.get("method", "GET"))
            route_path = _route_path(scope, self.mounts)
            if route_path is not None and "route" not in hints:
                hints = {**hints, "route": route_path}
            if hints:  # already checked by route_hint: no need to go through merged()
                context = dataclasses.replace(context, **hints)
        set_context(context)  # undone by the middleware's reset_context


_WATCHED = frozenset({"endpoint", "route", "user"})


class _WatchedScope(dict[str, Any]):
    """The scope the app sees: a copy of the caller's that writes through to it
    and tells its request when the router (or an authentication middleware)
    writes the keys the routing context comes from."""

    __slots__ = ("outer", "request")

    def __init__(self, outer: Scope, request: _Request) -> None:
        dict.__init__(self, outer)
        self.outer = outer
        self.request: _Request | None = request

    def __setitem__(self, key: str, value: Any) -> None:
        root_before = self.get("root_path", "")
        dict.__setitem__(self, key, value)
        self.outer[key] = value
        request = self.request
        if request is not None and key in _WATCHED:
            request.changed(self, root_before)

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key)
        self.outer.pop(key, None)

    def update(self, *args: Any, **kwargs: Any) -> None:
        root_before = self.get("root_path", "")
        dict.update(self, *args, **kwargs)
        self.outer.update(*args, **kwargs)
        request = self.request
        if request is not None:
            request.changed(self, root_before)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def pop(self, key: str, *default: Any) -> Any:
        self.outer.pop(key, None)
        return dict.pop(self, key, *default)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = str(value.decode("latin-1"))
            if is_valid_request_id(text):
                return text
            break
    return new_id()


def _user_id(user: Any) -> str | None:
    """The id of an authenticated user object (``None`` for none or anonymous)."""
    if user is None:
        return None
    if isinstance(user, str):
        return user or None
    if getattr(user, "is_authenticated", True) is False or getattr(user, "is_anonymous", False):
        return None
    for name in ("identity", "id", "pk", "username"):
        try:
            value = getattr(user, name)
        except (AttributeError, NotImplementedError):
            continue
        if value is not None and value != "":
            return str(value)
    return None


def _endpoint_hints(endpoint: Any, method: str) -> dict[str, Any]:
    """The set hints of ``endpoint`` (for a class-based one, its ``method`` handler's
    on top of the class's); cached per endpoint, as an endpoint's hints are fixed."""
    try:
        return _cached_hints(endpoint, method)
    except TypeError:  # an unhashable endpoint object
        return _read_hints(endpoint, method)


def _read_hints(endpoint: Any, method: str) -> dict[str, Any]:
    while isinstance(endpoint, partial):
        endpoint = endpoint.func
    hints = dict(getattr(endpoint, HINTS_ATTRIBUTE, None) or {})
    if not hints and not inspect.isclass(endpoint) and not inspect.isroutine(endpoint):
        # A callable instance as the endpoint (FastAPI takes one): its __call__'s hints.
        hints = dict(getattr(type(endpoint).__call__, HINTS_ATTRIBUTE, None) or {})
    if inspect.isclass(endpoint):
        handler = getattr(endpoint, method.lower(), None)
        if method == "HEAD" and handler is None:
            handler = getattr(endpoint, "get", None)
        hints.update(getattr(handler, HINTS_ATTRIBUTE, None) or {})
    return {name: value for name, value in hints.items() if value is not None}


_cached_hints = lru_cache(maxsize=1024)(_read_hints)


def _route_path(scope: Scope, mounts: str) -> str | None:
    """The matched path template, with the templates of the mounts above it (not
    their matched paths: ``/orgs/{org}/items/{id}``, not ``/orgs/42/items/{id}``)."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    return mounts + path


def _mounts_above(scope: Scope) -> str:
    """The path of the mounts above this middleware (one inside a mounted sub-app):
    their templates when a RoutingMiddleware above saw them matched, else their
    matched path (the scope's root_path below the app's own)."""
    above = scope.request if isinstance(scope, _WatchedScope) else None
    root = scope.get("root_path", "")
    if above is not None:
        if above.route is not None and root != above.route_root:
            return above.mounts + _mount_path(above.route)
        return above.mounts
    top = scope.get("app_root_path", root)
    return root[len(top) :] if root.startswith(top) else ""


def _mount_path(route: Any) -> str:
    """A mount's own path template (Starlette's ``path_format`` ends in ``/{path}``)."""
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(path, str):
        return ""
    return path.removesuffix("/{path}")


async def _send_with_timing(send: Send, message: Message) -> None:
    if message["type"] == "http.response.start" and not _has_llm_timing(message):
        header = _server_timing(collected_records() or ())
        if header is not None:
            message = {**message, "headers": [*message.get("headers", ()), header]}
    await send(message)


def _has_llm_timing(message: Message) -> bool:
    """Whether the response already has an ``llm`` Server-Timing metric, as when a
    RoutingMiddleware inside this one (a mounted sub-app's) added it: one is enough."""
    for name, value in message.get("headers", ()):
        if bytes(name).lower() == b"server-timing":
            for metric in bytes(value).split(b","):
                if metric.split(b";", 1)[0].strip().lower() == b"llm":
                    return True
    return False


def _server_timing(records: Iterable[UsageRecord]) -> tuple[bytes, bytes] | None:
    calls: set[str] = set()
    duration = 0.0
    cost = Decimal(0)
    for record in records:
        calls.add(record.call_id)
        duration += record.latency_ms or 0.0
        cost += record.cost
    if not calls:
        return None
    money = format(cost.normalize(), "f") if cost else "0"
    noun = "call" if len(calls) == 1 else "calls"
    value = f'llm;dur={duration:.1f};desc="{len(calls)} {noun}, ${money}"'
    return b"server-timing", value.encode("latin-1")
