"""Routing hints on Django views: ``@llm_route`` and ``LLMRouteMixin``.

Function views, sync or async (an async view stays a coroutine function)::

    @llm_route(tier="cheap", feature="ticket-summary", max_latency_ms=800)
    def summarize(request, pk): ...

Class-based views, either way::

    class TicketView(LLMRouteMixin, View):
        llm_route = {"feature": "tickets", "min_quality": 70}

    @method_decorator(llm_route(feature="tickets"), name="dispatch")
    class TicketView(View): ...

DRF ``APIView`` subclasses take the mixin or ``method_decorator`` the same way;
django-ninja operations take ``@llm_route`` under the router's decorator.

The hints are the core's :func:`~routing_middleware.context.route_hint`: the
decorator records them on the view (``__llmroute_hints__``, which
:class:`~django_llmroute.middleware.LLMRouteMiddleware` reads to name the view's
feature before it runs) and makes them current while it runs, middleware or not.
Inside a view, a Celery task or any function, the same hints work as a block::

    from routing_middleware.context import RouteHint, route_hint

    with route_hint(feature="nightly-digest", tier="cheap"):
        client.chat.completions.create(...)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from django.http import FileResponse, StreamingHttpResponse

from routing_middleware.context import RouteHint, route_hint

from ._streams import astream_within, stream_within

__all__ = ["LLMRouteMixin", "llm_route"]

_F = TypeVar("_F", bound=Callable[..., Any])


def llm_route(**hints: Any) -> RouteHint:
    """Routing hints for a view: ``tier``, ``feature``, ``max_latency_ms``, ``min_quality``,
    ``max_cost_per_call``, ``allow_models``, ``deny_models``, ``allow_providers``,
    ``mode``, ``allow_upgrade``, ``tags`` (any :class:`~routing_middleware.context.RouteContext`
    field).

    Unknown names and bad values raise at decoration time. The result decorates a
    function (sync, async, generator) or works as a ``with`` / ``async with`` block.
    """
    return route_hint(**hints)


def _keep_hints_while_streaming(response: Any, hints: dict[str, Any]) -> Any:
    """A streaming body runs after ``dispatch`` returned, outside its ``with hint``
    block (and the middleware only knows the class attribute, not what
    ``get_llm_route()`` computed): the hints are made current around each step of
    the body instead, merged onto whatever context the consumer has then.
    """
    if isinstance(response, StreamingHttpResponse) and not isinstance(response, FileResponse):
        # A fresh RouteHint per response: its token stack is never shared.
        content = response.streaming_content
        hint = route_hint(**hints)
        if response.is_async:
            response.streaming_content = astream_within(content, lambda: hint)  # type: ignore[arg-type]
        else:
            response.streaming_content = stream_within(content, lambda: hint)  # type: ignore[arg-type]
    return response


class LLMRouteMixin:
    """Class-based view mixin: hints from the ``llm_route`` class attribute (a dict).

    Override :meth:`get_llm_route` to compute them per request. Works with sync and
    async views (the hints stay current while an async handler runs, and around each
    step of a streaming response's body).
    """

    llm_route: dict[str, Any] = {}

    def get_llm_route(self) -> dict[str, Any]:
        """The hints for this request (the ``llm_route`` attribute by default)."""
        return dict(self.llm_route)

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the view with this view's hints current."""
        parent = super().dispatch  # type: ignore[misc]
        hints = self.get_llm_route()
        if not hints:
            return parent(request, *args, **kwargs)
        hint = route_hint(**hints)
        if getattr(self, "view_is_async", False):

            async def run() -> Any:
                with hint:
                    result = parent(request, *args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                return _keep_hints_while_streaming(result, hints)

            return run()
        with hint:
            response = parent(request, *args, **kwargs)
        return _keep_hints_while_streaming(response, hints)
