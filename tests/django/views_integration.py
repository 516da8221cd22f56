"""Views (and their URLs) that make LLM calls through the engine, for the integration tests.

Each answers with the routing context it saw, as JSON, so a test can compare what
the view saw with what was recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View

from django_llmroute.decorators import LLMRouteMixin, llm_route
from django_llmroute.models import Budget
from django_llmroute.runtime import get_engine
from routing_middleware.context import RouteContext, current_context
from routing_middleware.schema import BudgetExceeded, ChatRequest, Message


def question(
    text: str = "Summarise this support ticket in one line.", **fields: Any
) -> ChatRequest:
    """A small chat request for the premium model (routing may pick a cheaper one)."""
    return ChatRequest(
        model=fields.pop("model", "openai/gpt-5.4"),
        messages=[Message(role="user", content=text)],
        **fields,
    )


def seen(context: RouteContext | None = None) -> dict[str, Any]:
    """The parts of a routing context the tests look at, JSON-ready."""
    ctx = current_context() if context is None else context
    return {
        "user_id": ctx.user_id,
        "user_groups": sorted(ctx.user_groups or ()),
        "feature": ctx.feature,
        "route": ctx.route,
        "tags": sorted(ctx.tags or ()),
        "tier": ctx.tier,
        "request_id": ctx.request_id,
        "max_latency_ms": ctx.max_latency_ms,
    }


def _answer(done: Any) -> dict[str, Any]:
    served = done.served_by
    return {
        "context": seen(),
        "model": served.chosen_model if served else None,
        "cost": str(done.cost),
        "call_id": done.records[-1].call_id if done.records else None,
    }


# -- function views ------------------------------------------------------------------


def context_view(request: HttpRequest) -> JsonResponse:
    """No LLM call: what the context is while an undecorated view runs."""
    return JsonResponse(seen())


@llm_route(feature="ticket-summary", tier="cheap", max_latency_ms=800)
def decorated_context_view(request: HttpRequest) -> JsonResponse:
    """No LLM call: what the context is while a decorated view runs."""
    return JsonResponse(seen())


@transaction.non_atomic_requests
async def acontext_view(request: HttpRequest) -> JsonResponse:
    """Async twin of :func:`context_view`."""
    return JsonResponse(seen())


@transaction.non_atomic_requests
@llm_route(feature="async-summary", tier="cheap")
async def adecorated_context_view(request: HttpRequest) -> JsonResponse:
    """Async twin of :func:`decorated_context_view`."""
    return JsonResponse(seen())


def ask(request: HttpRequest) -> JsonResponse:
    """One LLM call, undecorated."""
    return JsonResponse(_answer(get_engine().complete(question())))


@llm_route(feature="ticket-summary", tier="cheap")
def ask_decorated(request: HttpRequest) -> JsonResponse:
    """One LLM call from a decorated sync view."""
    return JsonResponse(_answer(get_engine().complete(question())))


@transaction.non_atomic_requests
async def aask(request: HttpRequest) -> JsonResponse:
    """One LLM call from an async view."""
    return JsonResponse(_answer(await get_engine().acomplete(question())))


@transaction.non_atomic_requests
@llm_route(feature="async-summary")
async def aask_decorated(request: HttpRequest) -> JsonResponse:
    """One LLM call from a decorated async view."""
    return JsonResponse(_answer(await get_engine().acomplete(question())))


@llm_route(feature="doomed-feature")
def ask_then_fail(request: HttpRequest) -> HttpResponse:
    """Write a row in the request's transaction, make an LLM call, then fail."""
    Budget.objects.create(name=f"doomed-{request.GET.get('n', '0')}", limit_usd=1)
    get_engine().complete(question())
    raise RuntimeError("the view failed after its LLM call")


@llm_route(feature="streamed-feature")
def stream_later(request: HttpRequest) -> StreamingHttpResponse:
    """The LLM call starts and ends while the response streams, after the view returned."""

    def chunks() -> Iterator[bytes]:
        yield (repr(seen()) + "\n").encode()
        _, stream = get_engine().stream(question(stream=True))
        try:
            for chunk in stream:
                if chunk.text:
                    yield chunk.text.encode()
        finally:
            stream.close()
        yield b"\n" + repr(seen()).encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain")


@transaction.non_atomic_requests
@llm_route(feature="astreamed-feature")
async def astream_later(request: HttpRequest) -> StreamingHttpResponse:
    """Async twin of :func:`stream_later`."""

    async def chunks() -> AsyncIterator[bytes]:
        yield (repr(seen()) + "\n").encode()
        _, stream = await get_engine().astream(question(stream=True))
        try:
            async for chunk in stream:
                if chunk.text:
                    yield chunk.text.encode()
        finally:
            await stream.aclose()
        yield b"\n" + repr(seen()).encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain")


@llm_route(feature="budgeted", tier="premium")
def budgeted(request: HttpRequest) -> JsonResponse:
    """One call under the budgets; 402 with the budget's name when one blocks."""
    try:
        done = get_engine().complete(question(max_tokens=50))
    except BudgetExceeded as exc:
        return JsonResponse({"blocked": exc.budget}, status=402)
    answer = _answer(done)
    answer["tier"] = done.decision.tier
    answer["reasons"] = list(done.decision.reason_codes)
    return JsonResponse(answer)


@llm_route(feature="sdk-feature", tier="cheap")
def sdk_call(request: HttpRequest) -> JsonResponse:
    """The official OpenAI SDK, unchanged; interception (INSTRUMENT_HTTPX) routes the call."""
    import openai

    client = openai.OpenAI(api_key="sk-test-not-a-real-key", max_retries=0)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-5.4",
            messages=[{"role": "user", "content": "Summarise this ticket in one line."}],
        )
    finally:
        client.close()
    done = raw.parse()
    return JsonResponse(
        {
            "context": seen(),
            "content": done.choices[0].message.content,
            "routed_to": raw.headers.get("x-llmroute-model"),
        }
    )


# -- class-based views ---------------------------------------------------------------


class MixinView(LLMRouteMixin, View):
    """Hints from the class attribute."""

    llm_route = {"feature": "cbv-mixin", "tier": "balanced"}

    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(seen())


class AsyncMixinView(LLMRouteMixin, View):
    """Async handler, hints from the class attribute."""

    llm_route = {"feature": "cbv-async-mixin"}

    async def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(seen())


@method_decorator(llm_route(feature="cbv-method-decorator", min_quality=60), name="dispatch")
class DecoratedView(View):
    """Hints from ``method_decorator`` on ``dispatch``."""

    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(seen())


@method_decorator(llm_route(feature="cbv-async-decorator"), name="dispatch")
class AsyncDecoratedView(View):
    """Async handler, hints from ``method_decorator`` on ``dispatch``."""

    async def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(seen())


class AskView(LLMRouteMixin, View):
    """An LLM call from a class-based view."""

    llm_route = {"feature": "cbv-ask"}

    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(_answer(get_engine().complete(question())))


urlpatterns: list[Any] = [
    path("context/", context_view, name="context"),
    path("context/decorated/", decorated_context_view, name="context-decorated"),
    path("acontext/", acontext_view, name="acontext"),
    path("acontext/decorated/", adecorated_context_view, name="acontext-decorated"),
    path("ask/", ask, name="ask"),
    path("ask/decorated/", ask_decorated, name="ask-decorated"),
    path("aask/", aask, name="aask"),
    path("aask/decorated/", aask_decorated, name="aask-decorated"),
    path("ask/fail/", ask_then_fail, name="ask-fail"),
    path("stream/", stream_later, name="stream"),
    path("astream/", astream_later, name="astream"),
    path("budgeted/", budgeted, name="budgeted"),
    path("sdk/", sdk_call, name="sdk"),
    path("cbv/mixin/", MixinView.as_view(), name="cbv-mixin"),
    path(
        "cbv/amixin/", transaction.non_atomic_requests(AsyncMixinView.as_view()), name="cbv-amixin"
    ),
    path("cbv/decorated/", DecoratedView.as_view(), name="cbv-decorated"),
    path(
        "cbv/adecorated/",
        transaction.non_atomic_requests(AsyncDecoratedView.as_view()),
        name="cbv-adecorated",
    ),
    path("cbv/ask/", AskView.as_view(), name="cbv-ask"),
]

# -- DRF and django-ninja (when installed) -------------------------------------------

try:
    from rest_framework.renderers import JSONRenderer
    from rest_framework.response import Response
    from rest_framework.views import APIView
except ImportError:  # pragma: no cover - the dev extra installs it
    pass
else:

    class DRFMixinView(LLMRouteMixin, APIView):
        """A DRF view taking hints from the mixin."""

        renderer_classes = [JSONRenderer]
        llm_route = {"feature": "drf-mixin", "tier": "cheap"}

        def get(self, request: Any) -> Response:
            return Response(seen())

    @method_decorator(llm_route(feature="drf-decorated"), name="dispatch")
    class DRFDecoratedView(APIView):
        """A DRF view taking hints from ``method_decorator``."""

        renderer_classes = [JSONRenderer]

        def get(self, request: Any) -> Response:
            return Response(seen())

    urlpatterns += [
        path("drf/mixin/", DRFMixinView.as_view(), name="drf-mixin"),
        path("drf/decorated/", DRFDecoratedView.as_view(), name="drf-decorated"),
    ]

try:
    from ninja import NinjaAPI
except ImportError:  # pragma: no cover - the dev extra installs it
    pass
else:
    ninja_api = NinjaAPI(urls_namespace="llmroute-tests-ninja")

    @ninja_api.get("/hinted")
    @llm_route(feature="ninja-endpoint", tier="cheap")
    def ninja_hinted(request: HttpRequest, word: str = "none") -> dict[str, Any]:
        """A django-ninja operation with hints (and a query parameter ninja must still see)."""
        return {**seen(), "word": word}

    urlpatterns += [path("ninja/", ninja_api.urls)]
