"""LLMRouteMiddleware in every middleware stack: sync or async chain, sync or async views.

Under ASGI, a sync-only middleware after ``LLMRouteMiddleware`` makes Django run
``LLMRouteMiddleware`` synchronously, in a worker thread, and call its
``process_view`` through ``sync_to_async`` in another copy of the request's
context; one before it runs it asynchronously under ``async_to_sync``. The view's
hints must still reach the view (and the response must not fail) in each
combination, under WSGI and ASGI, and a streaming response must still see them.
"""

# ruff: noqa: F811  (fixtures imported from llmroute_helpers are test arguments)

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.test import override_settings

from routing_middleware.context import RouteContext, current_context

from .llmroute_helpers import closing_connections, in_thread, llmroute  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


class SyncOnlyMiddleware:
    """A middleware that can only run synchronously (like many third-party ones)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        response["X-Sync-Only"] = "passed"
        return response


SYNC_ONLY = "tests.django.test_middleware_stacks.SyncOnlyMiddleware"
LLMROUTE_MIDDLEWARE = "django_llmroute.middleware.LLMRouteMiddleware"


def _stacks() -> dict[str, list[str]]:
    base = list(settings.MIDDLEWARE)
    assert base[-1] == LLMROUTE_MIDDLEWARE
    return {
        "async-capable": base,
        "sync-only-after": [*base, SYNC_ONLY],
        "sync-only-before": [*base[:-1], SYNC_ONLY, LLMROUTE_MIDDLEWARE],
    }


@pytest.fixture(params=["async-capable", "sync-only-after", "sync-only-before"])
def stack(request: pytest.FixtureRequest):
    """The test project's middleware, alone or followed by a sync-only middleware."""
    middleware = _stacks()[request.param]
    with override_settings(MIDDLEWARE=middleware):
        yield request.param


def _check_stack(stack: str, response: Any) -> None:
    assert response.status_code == 200, response.content
    if stack.startswith("sync-only"):
        assert response["X-Sync-Only"] == "passed"  # the sync-only middleware ran
    else:
        assert "X-Sync-Only" not in response


#: URL, then what the view must see: the route name and its declared hints.
CONTEXT_VIEWS = [
    ("/it/context/", {"route": "it:context", "feature": None, "tier": None}),
    (
        "/it/context/decorated/",
        {"route": "it:context-decorated", "feature": "ticket-summary", "tier": "cheap"},
    ),
    ("/it/acontext/", {"route": "it:acontext", "feature": None}),
    (
        "/it/acontext/decorated/",
        {"route": "it:acontext-decorated", "feature": "async-summary", "tier": "cheap"},
    ),
    ("/it/cbv/mixin/", {"route": "it:cbv-mixin", "feature": "cbv-mixin", "tier": "balanced"}),
    ("/it/cbv/amixin/", {"route": "it:cbv-amixin", "feature": "cbv-async-mixin"}),
    ("/it/cbv/adecorated/", {"route": "it:cbv-adecorated", "feature": "cbv-async-decorator"}),
]
CONTEXT_IDS = [url.strip("/").replace("/", "-") for url, _ in CONTEXT_VIEWS]


def _matches(seen: dict[str, Any], expected: dict[str, Any]) -> None:
    assert {key: seen[key] for key in expected} == expected
    assert seen["request_id"] == "stack-rid"


# -- the view sees its hints --------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), CONTEXT_VIEWS, ids=CONTEXT_IDS)
def test_wsgi_views_see_their_hints(client, llmroute, stack, url, expected):
    response = client.get(url, headers={"x-request-id": "stack-rid"})
    _check_stack(stack, response)
    _matches(response.json(), expected)
    assert current_context() == RouteContext()


@pytest.mark.anyio
@pytest.mark.parametrize(("url", "expected"), CONTEXT_VIEWS, ids=CONTEXT_IDS)
@closing_connections
async def test_asgi_views_see_their_hints(async_client, llmroute, stack, url, expected):
    response = await async_client.get(url, headers={"x-request-id": "stack-rid"})
    _check_stack(stack, response)
    _matches(response.json(), expected)
    assert current_context() == RouteContext()


# -- the LLM calls are attributed ---------------------------------------------------------


def test_wsgi_llm_calls_are_attributed(client, llmroute, stack):
    sync = client.get("/it/ask/decorated/")
    _check_stack(stack, sync)
    asynchronous = client.get("/it/aask/decorated/")
    _check_stack(stack, asynchronous)
    [sync_call] = llmroute.calls(call_id=sync.json()["call_id"])
    assert (sync_call.feature, sync_call.route, sync_call.tier) == (
        "ticket-summary",
        "it:ask-decorated",
        1,
    )
    [async_call] = llmroute.calls(call_id=asynchronous.json()["call_id"])
    assert (async_call.feature, async_call.route) == ("async-summary", "it:aask-decorated")


@pytest.mark.anyio
@closing_connections
async def test_asgi_llm_calls_are_attributed(async_client, llmroute, stack):
    sync = await async_client.get("/it/ask/decorated/")
    _check_stack(stack, sync)
    asynchronous = await async_client.get("/it/aask/decorated/")
    _check_stack(stack, asynchronous)
    [sync_call] = await in_thread(llmroute.calls, call_id=sync.json()["call_id"])
    assert (sync_call.feature, sync_call.route, sync_call.tier) == (
        "ticket-summary",
        "it:ask-decorated",
        1,
    )
    [async_call] = await in_thread(llmroute.calls, call_id=asynchronous.json()["call_id"])
    assert (async_call.feature, async_call.route) == ("async-summary", "it:aask-decorated")


# -- streaming responses keep the context while they iterate ------------------------------


def _lines(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    first, *_, last = body.decode().split("\n")
    return ast.literal_eval(first), ast.literal_eval(last)


def _streamed(body: bytes, feature: str, route: str) -> None:
    for seen in _lines(body):
        assert (seen["feature"], seen["route"], seen["request_id"]) == (feature, route, "s-rid")


def test_wsgi_streams_keep_the_context(client, llmroute, stack):
    response = client.get("/it/stream/", headers={"x-request-id": "s-rid"})
    _check_stack(stack, response)
    assert current_context() == RouteContext()  # the middleware is done
    body = b"".join(response.streaming_content)
    response.close()
    _streamed(body, "streamed-feature", "it:stream")
    [call] = llmroute.wait_for_calls(1, feature="streamed-feature")
    assert call.route == "it:stream"


@pytest.mark.anyio
@closing_connections
async def test_asgi_streams_keep_the_context(async_client, llmroute, stack):
    response = await async_client.get("/it/astream/", headers={"x-request-id": "s-rid"})
    _check_stack(stack, response)
    assert response.is_async
    assert current_context() == RouteContext()
    body = b"".join([chunk async for chunk in response.streaming_content])
    _streamed(body, "astreamed-feature", "it:astream")

    response = await async_client.get("/it/stream/", headers={"x-request-id": "s-rid"})
    _check_stack(stack, response)
    assert not response.is_async
    # What Django's ASGI handler does with a sync iterator: consume it in a thread.
    body = b"".join(await sync_to_async(list)(response.streaming_content))
    await sync_to_async(response.close)()
    _streamed(body, "streamed-feature", "it:stream")
    calls = await in_thread(llmroute.wait_for_calls, 1, feature="streamed-feature")
    assert [c.route for c in calls] == ["it:stream"]
