"""LLMRouteMiddleware: the routing context of sync, async and streaming requests."""

# ruff: noqa: F811  (fixtures imported from llmroute_helpers are test arguments)

from __future__ import annotations

import ast
import asyncio
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import RequestFactory

from django_llmroute.middleware import LLMRouteMiddleware, view_hints
from django_llmroute.models import Budget
from routing_middleware.context import RouteContext, current_context

from .llmroute_helpers import (  # noqa: F401
    closing_connections,
    in_thread,
    llmroute,
    make_user,
)

pytestmark = pytest.mark.django_db(transaction=True)


def user_from_header(request: HttpRequest) -> str | None:
    """A ``USER_ID`` hook: the tenant user named by a header."""
    return request.headers.get("x-tenant-user")


def tags_of(request: HttpRequest) -> list[str]:
    """A ``TAGS`` hook."""
    return ["web", request.method.lower()]


# -- context per request -------------------------------------------------------------


def test_anonymous_request_has_no_user_but_a_route_and_request_id(client, llmroute):
    seen = client.get("/it/context/").json()
    assert seen["user_id"] is None
    assert seen["route"] == "it:context"
    assert seen["feature"] is None
    assert len(seen["request_id"]) == 32
    assert current_context() == RouteContext()  # reset once the response left


def test_signed_in_user_and_groups(client, llmroute, make_user):
    user = make_user("bob", groups=("support", "beta"))
    client.force_login(user)
    seen = client.get("/it/context/").json()
    assert seen["user_id"] == str(user.pk)
    assert seen["user_groups"] == ["beta", "support"]


def test_groups_can_be_switched_off(client, llmroute, make_user):
    llmroute(GROUPS=False)
    client.force_login(make_user("carol", groups=("support",)))
    assert client.get("/it/context/").json()["user_groups"] == []


def test_decorated_view_hints_and_route(client, llmroute):
    seen = client.get("/it/context/decorated/").json()
    assert seen["feature"] == "ticket-summary"
    assert seen["tier"] == "cheap"
    assert seen["max_latency_ms"] == 800
    assert seen["route"] == "it:context-decorated"


def test_request_id_header_is_kept(client, llmroute):
    seen = client.get("/it/context/", headers={"x-request-id": "req-42"}).json()
    assert seen["request_id"] == "req-42"


@pytest.mark.parametrize(
    "given",
    ["A" * 128, "0f8e-4b2a_9c:1/x.y=z", "!~"],
    ids=["128-chars", "punctuation", "edges-of-printable-ascii"],
)
def test_request_id_header_of_printable_ascii_is_kept(client, llmroute, given):
    seen = client.get("/it/context/", headers={"x-request-id": given}).json()
    assert seen["request_id"] == given


@pytest.mark.parametrize(
    "given",
    [
        "A" * 129,
        "has space",
        " leading",
        "tab\there",
        "line\nbreak",
        "esc\x1b[31m",
        "del\x7f",
        "caf\xe9",
        "nbsp\xa0id",
    ],
    ids=[
        "too-long",
        "space",
        "leading-space",
        "tab",
        "newline",
        "escape",
        "del",
        "latin-1",
        "nbsp",
    ],
)
def test_request_id_header_that_is_not_printable_ascii_is_replaced(client, llmroute, given):
    seen = client.get("/it/context/", headers={"x-request-id": given}).json()
    assert seen["request_id"] != given
    assert len(seen["request_id"]) == 32  # a fresh one
    int(seen["request_id"], 16)


def test_user_id_and_tags_hooks(client, llmroute):
    llmroute(
        USER_ID="tests.django.test_middleware.user_from_header",
        TAGS="tests.django.test_middleware.tags_of",
    )
    seen = client.get("/it/context/", headers={"x-tenant-user": "tenant-7"}).json()
    assert seen["user_id"] == "tenant-7"
    assert seen["tags"] == ["get", "web"]


@pytest.mark.anyio
@closing_connections
async def test_async_views_get_the_context(async_client, llmroute, make_user):
    user = await in_thread(make_user, "dora", groups=("ops",))
    await async_client.aforce_login(user)
    plain = (await async_client.get("/it/acontext/")).json()
    assert plain["user_id"] == str(user.pk)
    assert plain["user_groups"] == ["ops"]
    assert plain["route"] == "it:acontext"
    assert plain["feature"] is None
    hinted = (await async_client.get("/it/acontext/decorated/")).json()
    assert hinted["feature"] == "async-summary"
    assert hinted["tier"] == "cheap"
    assert current_context() == RouteContext()


# -- the middleware object, both modes --------------------------------------------------


def test_sync_and_async_capable(llmroute):
    def sync_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(current_context().request_id or "")

    async def async_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(current_context().request_id or "")

    assert LLMRouteMiddleware.sync_capable
    assert LLMRouteMiddleware.async_capable
    sync = LLMRouteMiddleware(sync_view)
    asynchronous = LLMRouteMiddleware(async_view)
    assert not iscoroutinefunction(sync)
    assert iscoroutinefunction(asynchronous)
    request = RequestFactory().get("/", headers={"x-request-id": "abc"})
    assert sync(request).content == b"abc"
    request = RequestFactory().get("/", headers={"x-request-id": "def"})
    assert asyncio.run(asynchronous(request)).content == b"def"


def test_context_is_reset_when_the_view_raises(llmroute):
    def failing(request: HttpRequest) -> HttpResponse:
        assert current_context().request_id == "boom"
        raise ValueError("view failed")

    middleware = LLMRouteMiddleware(failing)
    with pytest.raises(ValueError, match="view failed"):
        middleware(RequestFactory().get("/", headers={"x-request-id": "boom"}))
    assert current_context() == RouteContext()


def test_view_hints_reads_function_class_attribute_and_dispatch():
    from .views_integration import DecoratedView, MixinView, decorated_context_view

    assert view_hints(decorated_context_view)["feature"] == "ticket-summary"
    assert view_hints(MixinView.as_view()) == {"feature": "cbv-mixin", "tier": "balanced"}
    assert view_hints(DecoratedView.as_view())["min_quality"] == 60
    assert view_hints(lambda request: None) == {}


# -- LLM calls, records and Server-Timing -----------------------------------------------


def test_records_carry_user_feature_route_and_request_id(client, llmroute, make_user):
    user = make_user("erin")
    client.force_login(user)
    answer = client.get("/it/ask/decorated/", headers={"x-request-id": "rid-1"}).json()
    [call] = llmroute.calls(call_id=answer["call_id"])
    assert call.user == user
    assert call.user_ref == str(user.pk)
    assert call.feature == "ticket-summary"
    assert call.route == "it:ask-decorated"
    assert call.request_id == "rid-1"
    assert call.tier == 1


@pytest.mark.anyio
@closing_connections
async def test_async_view_records_are_attributed(async_client, llmroute, make_user):
    user = await in_thread(make_user, "fay")
    await async_client.aforce_login(user)
    plain = (await async_client.get("/it/aask/")).json()
    hinted = (await async_client.get("/it/aask/decorated/")).json()
    calls = await in_thread(llmroute.calls, user_ref=str(user.pk))
    by_call = {c.call_id: c for c in calls}
    assert by_call[plain["call_id"]].feature is None
    assert by_call[plain["call_id"]].route == "it:aask"
    assert by_call[hinted["call_id"]].feature == "async-summary"


def test_server_timing_header(client, llmroute):
    assert "Server-Timing" not in client.get("/it/ask/")
    llmroute(SERVER_TIMING=True)
    response = client.get("/it/ask/")
    timing = response.headers["Server-Timing"]
    assert timing.startswith("llm;dur=")
    assert "1 call, $" in timing
    cost = response.json()["cost"]
    assert timing.endswith(f'${cost.rstrip("0").rstrip(".")}"')
    assert "Server-Timing" not in client.get("/it/context/")  # no LLM call, no header


def test_atomic_request_rollback_keeps_the_llm_record(client, llmroute):
    with pytest.raises(RuntimeError, match="failed after its LLM call"):
        client.get("/it/ask/fail/?n=1")
    assert not Budget.objects.filter(name="doomed-1").exists()  # the request rolled back
    [call] = llmroute.wait_for_calls(1, feature="doomed-feature")
    assert call.route == "it:ask-fail"
    assert call.status == "ok"


# -- streaming after the middleware returned ------------------------------------------


def _lines(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    first, *_, last = body.decode().split("\n")
    return ast.literal_eval(first), ast.literal_eval(last)


def test_stream_that_ends_after_the_middleware_returned(client, llmroute, make_user):
    user = make_user("gus")
    client.force_login(user)
    response = client.get("/it/stream/")
    assert isinstance(response, StreamingHttpResponse)
    # The middleware is done; the generator (and the LLM call) only runs now.
    assert current_context() == RouteContext()
    before, after = _lines(b"".join(response.streaming_content))
    response.close()
    for seen in (before, after):
        assert seen["feature"] == "streamed-feature"
        assert seen["user_id"] == str(user.pk)
        assert seen["route"] == "it:stream"
    assert current_context() == RouteContext()
    [call] = llmroute.wait_for_calls(1, feature="streamed-feature")
    assert call.user == user
    assert call.streamed
    assert call.route == "it:stream"


@pytest.mark.anyio
@closing_connections
async def test_async_stream_that_ends_after_the_middleware_returned(
    async_client, llmroute, make_user
):
    user = await in_thread(make_user, "hal")
    await async_client.aforce_login(user)
    response = await async_client.get("/it/astream/")
    assert response.is_async
    body = b"".join([chunk async for chunk in response.streaming_content])
    before, after = _lines(body)
    for seen in (before, after):
        assert seen["feature"] == "astreamed-feature"
        assert seen["user_id"] == str(user.pk)
    calls = await in_thread(llmroute.wait_for_calls, 1, feature="astreamed-feature")
    assert [c.user_ref for c in calls] == [str(user.pk)]
    assert calls[0].streamed


def failing_hook(request: HttpRequest) -> str:
    """A ``USER_ID`` hook with a bug."""
    raise KeyError("tenant")


def test_a_failing_hook_costs_the_attribution_not_the_request(client, llmroute, caplog):
    llmroute(USER_ID="tests.django.test_middleware.failing_hook")
    response = client.get("/it/context/")
    assert response.status_code == 200
    assert response.json()["user_id"] is None
    assert "LLMROUTE['USER_ID'] hook failed" in caplog.text


# -- what is stored of the content ----------------------------------------------------


def _redact(text: str) -> str:
    return text.replace("secret", "[redacted]")


def _boom(text: str) -> str:
    raise RuntimeError("redaction bug")


def test_record_filter_content_policy():
    from django_llmroute.runtime import RecordFilter, collect_records
    from routing_middleware.metering import MemorySink

    from .factories import make_record

    record = make_record(prompt="my secret prompt", completion="a secret answer")
    kept = MemorySink()
    RecordFilter(kept).emit(record)
    RecordFilter(kept, store_content=True).emit(record)
    RecordFilter(kept, store_content=True, redact=_redact).emit(record)
    RecordFilter(kept, store_content=True, redact=_boom).emit(record)
    stored = [(r.prompt, r.completion) for r in kept.records]
    assert stored == [
        (None, None),
        ("my secret prompt", "a secret answer"),
        ("my [redacted] prompt", "a [redacted] answer"),
        (None, None),
    ]
    assert record.prompt == "my secret prompt"  # the caller's record is left alone
    with collect_records() as seen:
        RecordFilter(kept).emit(record)
    assert seen == [record]
