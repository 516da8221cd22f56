"""``@llm_route``, ``LLMRouteMixin``, ``method_decorator``, DRF, django-ninja, and blocks."""

# ruff: noqa: F811  (fixtures imported from llmroute_helpers are test arguments)

from __future__ import annotations

import asyncio
import inspect

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from django_llmroute.decorators import llm_route
from django_llmroute.runtime import get_engine
from routing_middleware.context import HINTS_ATTRIBUTE, RouteContext, current_context, route_hint

from .llmroute_helpers import llmroute  # noqa: F401
from .views_integration import question

# -- the decorator itself ------------------------------------------------------------


def test_sync_view_stays_sync_and_carries_its_hints():
    @llm_route(tier="cheap", feature="ticket-summary", max_latency_ms=800)
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(current_context().feature or "")

    assert not inspect.iscoroutinefunction(view)
    assert getattr(view, HINTS_ATTRIBUTE) == {
        "tier": "cheap",
        "feature": "ticket-summary",
        "max_latency_ms": 800,
    }
    assert view.__name__ == "view"
    # The hints hold while the view runs, middleware or not, and not after.
    assert view(RequestFactory().get("/")).content == b"ticket-summary"
    assert current_context() == RouteContext()


def test_async_view_stays_a_coroutine_function():
    @llm_route(feature="async-feature", min_quality=70, mode="observe")
    async def view(request: HttpRequest) -> HttpResponse:
        ctx = current_context()
        return HttpResponse(f"{ctx.feature}|{ctx.min_quality}|{ctx.mode}")

    assert inspect.iscoroutinefunction(view)
    response = asyncio.run(view(RequestFactory().get("/")))
    assert response.content == b"async-feature|70|observe"


def test_bad_hints_fail_at_decoration_time():
    with pytest.raises(TypeError, match="unknown route hint"):
        llm_route(teir="cheap")
    with pytest.raises(ValueError, match="mode must be"):
        llm_route(mode="sometimes")


def test_inner_decorator_wins_field_by_field():
    @llm_route(feature="outer", tier="premium")
    @llm_route(feature="inner")
    def view(request: HttpRequest) -> str:
        ctx = current_context()
        return f"{ctx.feature}|{ctx.tier}"

    assert view(RequestFactory().get("/")) == "inner|premium"


# -- class-based views, DRF and ninja through the middleware --------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "feature", "extra"),
    [
        ("/it/cbv/mixin/", "cbv-mixin", {"tier": "balanced"}),
        ("/it/cbv/amixin/", "cbv-async-mixin", {}),
        ("/it/cbv/decorated/", "cbv-method-decorator", {}),
        ("/it/cbv/adecorated/", "cbv-async-decorator", {}),
        ("/it/drf/mixin/", "drf-mixin", {"tier": "cheap"}),
        ("/it/drf/decorated/", "drf-decorated", {}),
    ],
)
def test_class_based_views(client, llmroute, url, feature, extra):
    if url.startswith("/it/drf/"):
        pytest.importorskip("rest_framework")
    seen = client.get(url).json()
    assert seen["feature"] == feature
    assert seen["route"].startswith("it:")
    for key, value in extra.items():
        assert seen[key] == value


@pytest.mark.django_db
def test_django_ninja_operation_keeps_its_signature_and_hints(client, llmroute):
    pytest.importorskip("ninja")
    seen = client.get("/it/ninja/hinted", {"word": "hello"}).json()
    assert seen["word"] == "hello"  # ninja still read the parameter through the wrapper
    assert seen["feature"] == "ninja-endpoint"
    assert seen["tier"] == "cheap"


# -- hints as a block (a task, a script, part of a view) -------------------------------


def nightly_digest() -> str:
    """A Celery-style task: no request, hints for one block."""
    engine = get_engine()
    with route_hint(feature="nightly-digest", tier="cheap", user_id="system"):
        inside = engine.complete(question("Digest the day's tickets."))
    outside = engine.complete(question("And this one, unhinted."))
    return f"{inside.records[-1].call_id}|{outside.records[-1].call_id}"


@pytest.mark.django_db(transaction=True)
def test_route_hint_block_in_a_plain_function(llmroute):
    inside_id, outside_id = nightly_digest().split("|")
    calls = {c.call_id: c for c in llmroute.calls()}
    assert calls[inside_id].feature == "nightly-digest"
    assert calls[inside_id].user_ref == "system"
    assert calls[inside_id].tier == 1
    assert calls[outside_id].feature is None
    assert calls[outside_id].user_ref is None


@pytest.mark.anyio
async def test_route_hint_async_block():
    async with route_hint(feature="async-block"):
        assert current_context().feature == "async-block"
    assert current_context().feature is None
