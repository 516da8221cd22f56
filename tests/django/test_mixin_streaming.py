"""``LLMRouteMixin.get_llm_route()`` hints hold while a streaming response streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import RequestFactory
from django.views import View

from django_llmroute.decorators import LLMRouteMixin
from django_llmroute.middleware import LLMRouteMiddleware
from routing_middleware.context import RouteContext, current_context


def _seen() -> bytes:
    ctx = current_context()
    return f"{ctx.feature}|{ctx.tier}\n".encode()


class StreamingHintView(LLMRouteMixin, View):
    """Hints computed per request; the body is produced after ``dispatch`` returned."""

    def get_llm_route(self) -> dict[str, Any]:
        return {"feature": f"stream-{self.request.GET['who']}", "tier": "cheap"}

    def get(self, request: HttpRequest) -> StreamingHttpResponse:
        def body() -> Iterator[bytes]:
            yield _seen()
            yield _seen()

        return StreamingHttpResponse(body())


class AsyncStreamingHintView(LLMRouteMixin, View):
    def get_llm_route(self) -> dict[str, Any]:
        return {"feature": f"astream-{self.request.GET['who']}", "tier": "cheap"}

    async def get(self, request: HttpRequest) -> StreamingHttpResponse:
        async def body() -> AsyncIterator[bytes]:
            yield _seen()
            await asyncio.sleep(0)
            yield _seen()

        return StreamingHttpResponse(body())


def test_sync_streaming_response_keeps_the_mixin_hints():
    view = StreamingHintView.as_view()
    response = view(RequestFactory().get("/", {"who": "ann"}))
    assert current_context() == RouteContext()
    body = b"".join(response.streaming_content)
    response.close()
    assert body == b"stream-ann|cheap\nstream-ann|cheap\n"
    # Only while a step runs: nothing leaks into the consumer.
    assert current_context() == RouteContext()


def test_sync_streaming_response_through_the_middleware_keeps_the_mixin_hints():
    view = StreamingHintView.as_view()
    middleware = LLMRouteMiddleware(view)
    response = middleware(RequestFactory().get("/", {"who": "bob"}))
    body = b"".join(response.streaming_content)
    response.close()
    assert body == b"stream-bob|cheap\nstream-bob|cheap\n"
    assert current_context() == RouteContext()


def test_async_streaming_response_keeps_the_mixin_hints():
    view = AsyncStreamingHintView.as_view()

    async def run() -> bytes:
        response = await view(RequestFactory().get("/", {"who": "cy"}))
        assert current_context() == RouteContext()
        return b"".join([chunk async for chunk in response.streaming_content])

    assert asyncio.run(run()) == b"astream-cy|cheap\nastream-cy|cheap\n"


def test_plain_responses_are_untouched():
    class Plain(LLMRouteMixin, View):
        llm_route = {"feature": "plain"}

        def get(self, request: HttpRequest) -> HttpResponse:
            return HttpResponse(_seen())

    response = Plain.as_view()(RequestFactory().get("/"))
    assert response.content == b"plain|None\n"
