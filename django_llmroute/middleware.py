"""``LLMRouteMiddleware``: every LLM call a request makes knows who, where and what for.

Put it after ``AuthenticationMiddleware``::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django_llmroute.middleware.LLMRouteMiddleware",
    ]

For each request it makes a :class:`~routing_middleware.context.RouteContext` current:
the user's id (``None`` when anonymous, or what ``LLMROUTE["USER_ID"]`` returns),
their group names, ``LLMROUTE["TAGS"]``, a request id (the ``X-Request-ID`` header
when it is 1 to 128 printable ASCII characters without spaces, else a fresh one);
then, once the URL is resolved, the view's name and the hints its ``@llm_route`` /
``LLMRouteMixin`` declare. The context is reset when the response
leaves; a streaming response's iterator gets it back around every step, so an LLM
stream that ends after the middleware returned is still attributed to the view.

With ``SERVER_TIMING`` the response carries ``Server-Timing: llm;dur=…;desc="…"``:
the LLM calls the request made, their total time and cost.

Sync and async: under ASGI with an async stack it never blocks the event loop
(the user's groups are read on a worker thread, once).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import FileResponse, HttpRequest, HttpResponseBase, StreamingHttpResponse

from routing_middleware._ids import new_id
from routing_middleware.context import (
    RouteContext,
    current_context,
    hints_of,
    is_valid_request_id,
    set_context,
    use_context,
)

from ._streams import astream_within, stream_within
from .conf import LLMRouteSettings, get_settings
from .runtime import collect_records

__all__ = ["LLMRouteMiddleware", "context_for_request", "view_hints"]

_HEADER = "Server-Timing"

logger = logging.getLogger("django_llmroute")


def view_hints(view: Callable[..., Any]) -> dict[str, Any]:
    """The routing hints a view declares (function view, class-based view, DRF view).

    Read from ``@llm_route`` on the function (``__llmroute_hints__``), on the class's
    ``dispatch`` (``method_decorator(llm_route(...), name="dispatch")``) and from the
    class's ``llm_route`` attribute (:class:`~django_llmroute.decorators.LLMRouteMixin`);
    the function's own hints win.
    """
    hints: dict[str, Any] = {}
    view_class = getattr(view, "view_class", None) or getattr(view, "cls", None)
    if view_class is not None:
        declared = getattr(view_class, "llm_route", None)
        if isinstance(declared, dict):
            hints.update(declared)
        dispatch = getattr(view_class, "dispatch", None)
        if dispatch is not None:
            hints.update(hints_of(dispatch))
    hints.update(hints_of(view))
    return hints


#: The longest request id taken from a header (``LLMCall.request_id`` holds 128).
def _request_id(request: HttpRequest, settings: LLMRouteSettings) -> str:
    header = settings.django.REQUEST_ID_HEADER
    if header:
        given = request.headers.get(header)
        if given and is_valid_request_id(given):
            return given
    # None sent, or one that is not safe to log and store: a fresh one.
    return new_id()


def _hook(func: Callable[..., Any], request: HttpRequest, key: str) -> Any:
    try:
        return func(request)
    except Exception:
        # A failing hook costs the attribution, never the request.
        logger.exception("llmroute: the LLMROUTE[%r] hook failed", key)
        return None


def context_for_request(request: HttpRequest) -> RouteContext:
    """The routing context of ``request`` before its view is known (blocking: may query).

    User id and groups come from ``request.user`` (or ``LLMROUTE["USER_ID"]``),
    tags from ``LLMROUTE["TAGS"]``.
    """
    settings = get_settings()
    user = getattr(request, "user", None)
    user_id: str | None = None
    groups: frozenset[str] | None = None
    if settings.user_id is not None:
        found = _hook(settings.user_id, request, "USER_ID")
        user_id = None if found is None else str(found)
    elif user is not None and getattr(user, "is_authenticated", False):
        user_id = str(user.pk)
    if (
        settings.django.GROUPS
        and user is not None
        and getattr(user, "is_authenticated", False)
        and hasattr(user, "groups")
    ):
        groups = frozenset(user.groups.values_list("name", flat=True))
    tags: frozenset[str] | None = None
    if settings.tags is not None:
        found_tags = _hook(settings.tags, request, "TAGS")
        if found_tags:
            tags = frozenset(
                [found_tags] if isinstance(found_tags, str) else (str(t) for t in found_tags)
            )
    return current_context().merged(
        user_id=user_id,
        user_groups=groups or None,
        tags=tags,
        request_id=_request_id(request, settings),
    )


def _server_timing(records: list[Any]) -> str:
    total_ms = sum(float(r.latency_ms or 0) for r in records)
    cost = sum((r.cost for r in records), Decimal(0))
    money = format(cost.normalize(), "f") if cost else "0"
    calls = len(records)
    return f'llm;dur={total_ms:.1f};desc="{calls} call{"" if calls == 1 else "s"}, ${money}"'


class _RequestState:
    """What one request's pass through the middleware keeps (never on ``self``).

    Never a ``ContextVar`` token: ``process_view`` may run in another copy of the
    request's context than ``__call__`` (see :meth:`LLMRouteMiddleware._push_view`).
    """

    __slots__ = ("base",)

    def __init__(self, base: RouteContext) -> None:
        self.base = base


class LLMRouteMiddleware:
    """Sets the routing context for each request; sync and async capable."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
            # A coroutine process_view runs in the request's own task (no thread
            # hop), so the hints it pushes are in the context the view runs in.
            self.process_view = self._aprocess_view  # type: ignore[method-assign,assignment]

    def __repr__(self) -> str:
        return f"<LLMRouteMiddleware get_response={self.get_response!r}>"

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        base = context_for_request(request)
        state = _RequestState(base)
        request._llmroute_state = state  # type: ignore[attr-defined]
        # The one token of the request is made and reset here, in __call__'s own
        # context; its reset also undoes what process_view set.
        with use_context(base), collect_records() as records:
            response = self.get_response(request)
            final = current_context()
        return self._finish(response, final, records)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        base = await self._acontext(request)
        state = _RequestState(base)
        request._llmroute_state = state  # type: ignore[attr-defined]
        with use_context(base), collect_records() as records:
            response = await self.get_response(request)  # type: ignore[misc]
            final = current_context()
        return self._finish(response, final, records)

    async def _acontext(self, request: HttpRequest) -> RouteContext:
        user = getattr(request, "auser", None)
        if user is not None:
            # Resolve the lazy user in async code first; then one thread hop reads
            # groups (and runs the USER_ID / TAGS hooks, which may query).
            request.user = await request.auser()  # type: ignore[attr-defined]
        settings = get_settings()
        user = getattr(request, "user", None)
        blocking = (
            settings.user_id is not None
            or settings.tags is not None
            or (settings.django.GROUPS and getattr(user, "is_authenticated", False))
        )
        if not blocking:
            return context_for_request(request)  # nothing to query: no thread hop
        return await sync_to_async(context_for_request, thread_sensitive=True)(request)

    # -- the view ---------------------------------------------------------------------

    def _push_view(self, request: HttpRequest, view: Callable[..., Any]) -> None:
        state: _RequestState | None = getattr(request, "_llmroute_state", None)
        if state is None:
            return
        hints = view_hints(view)
        match = getattr(request, "resolver_match", None)
        route = match.view_name if match is not None and match.view_name else None
        if route is not None:
            hints.setdefault("route", route)
        if hints:
            # No token is kept: under ASGI with a sync-only middleware after this one,
            # Django runs process_view through sync_to_async, in a copy of the context
            # __call__ runs in, and a token made here could not be reset there. The
            # value still reaches the view (asgiref carries context changes back), and
            # __call__'s own reset of the base context restores what came before.
            set_context(current_context().merged(**hints))

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: Any,
        view_kwargs: Any,
    ) -> None:
        """Add the resolved view's name and hints to the request's context.

        Sync or async, wherever Django calls it from: it only sets the context (until
        the request's base context is reset when the response leaves).
        """
        self._push_view(request, view_func)

    async def _aprocess_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: Any,
        view_kwargs: Any,
    ) -> None:
        self._push_view(request, view_func)

    # -- the response -----------------------------------------------------------------

    def _finish(
        self, response: HttpResponseBase, context: RouteContext, records: list[Any]
    ) -> HttpResponseBase:
        if isinstance(response, StreamingHttpResponse) and not isinstance(response, FileResponse):
            content = response.streaming_content
            if response.is_async:
                response.streaming_content = astream_within(content, lambda: use_context(context))  # type: ignore[arg-type]
            else:
                response.streaming_content = stream_within(content, lambda: use_context(context))  # type: ignore[arg-type]
            return response
        if records and get_settings().core.server_timing:
            timing = _server_timing(records)
            existing = response.headers.get(_HEADER)
            response.headers[_HEADER] = f"{existing}, {timing}" if existing else timing
        return response


#: What ``get_response`` may be; exported for type checkers of custom stacks.
GetResponse = Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]
