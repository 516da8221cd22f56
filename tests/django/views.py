"""Views the tests drive through the test client (the database runs ATOMIC_REQUESTS)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from django_llmroute.models import Budget

from .factories import make_record

#: The sink the views emit into; each test that uses the views sets it.
SINK = None


def record_then_fail(request: HttpRequest) -> HttpResponse:
    """Write a row in the request's transaction, emit a record, then fail.

    The failure rolls the request's transaction back: the budget row disappears,
    the usage record must not.
    """
    assert SINK is not None
    Budget.objects.create(name=f"doomed-{request.GET.get('rid')}", limit_usd=1)
    SINK.emit(make_record(feature="doomed-view", request_id=request.GET.get("rid")))
    raise RuntimeError("the view failed after recording")


def record_ok(request: HttpRequest) -> HttpResponse:
    """Emit a record and answer."""
    assert SINK is not None
    SINK.emit(make_record(feature="ok-view", request_id=request.GET.get("rid")))
    return HttpResponse("ok")
