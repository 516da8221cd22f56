"""The gateway inside Django: OpenAI- and Anthropic-compatible endpoints over the engine.

Include the URLs under any prefix::

    urlpatterns = [path("llm/", include("django_llmroute.urls"))]

which serves ``llm/v1/chat/completions``, ``llm/v1/messages`` and ``llm/v1/models``
(sync views; :func:`django_llmroute.urls.gateway_urls` gives the async ones). A
client authenticates with an :class:`~django_llmroute.models.ApiKey`
(``Authorization: Bearer llmr_…`` or ``x-api-key: llmr_…``) or, unless
``GATEWAY["SESSION_AUTH"]`` is off, as the signed-in session user (CSRF-checked).
Calls are attributed to the key's owner (and the key id) or the session user.
Every error answers in the caller's dialect, so its SDK reads it.

The views only move bytes: parsing, routing, dispatch and encoding are the core's
:class:`~routing_middleware.relay.Relay`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from routing_middleware._hint_headers import (
    feature_hint,
    latency_hint,
    mode_hint,
    quality_hint,
    tags_hint,
    tier_hint,
)
from routing_middleware._model_listing import ModelListing
from routing_middleware.context import RouteContext, current_context, is_valid_request_id
from routing_middleware.relay import RelayResponse
from routing_middleware.schema import (
    AuthenticationFailed,
    InvalidRequest,
    LLMError,
    RateLimited,
    UnknownModel,
)

from .conf import get_settings
from .runtime import get_engine, get_rate_limiter, get_relay

logger = logging.getLogger("django_llmroute.gateway")

__all__ = [
    "Caller",
    "achat_completions",
    "amessages",
    "amodels",
    "authenticate",
    "chat_completions",
    "messages",
    "models",
]


def _tier(value: str) -> int | str:
    return tier_hint(value, get_engine().router.config.all_tier_names)


#: Each hint header's context field, and the core's reading of it (a refusal names it).
_HINT_HEADERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "X-LLMRoute-Feature": ("feature", feature_hint),
    "X-LLMRoute-Tier": ("tier", _tier),
    "X-LLMRoute-Max-Latency-Ms": ("max_latency_ms", latency_hint),
    "X-LLMRoute-Min-Quality": ("min_quality", quality_hint),
    "X-LLMRoute-Tags": ("tags", tags_hint),
    "X-LLMRoute-Mode": ("mode", mode_hint),
}


class Caller:
    """Who is calling the gateway: the user (and key) the calls are attributed to."""

    __slots__ = ("api_key", "user")

    def __init__(self, user: Any, api_key: Any = None) -> None:
        self.user = user
        self.api_key = api_key

    def context(self, request: HttpRequest) -> RouteContext:
        """The routing context for this caller's calls (blocking: reads groups, headers)."""
        settings = get_settings()
        # Always set (empty included): a session user's groups must not stick to a key's owner.
        groups: frozenset[str] = frozenset()
        if settings.django.GROUPS and hasattr(self.user, "groups"):
            groups = frozenset(self.user.groups.values_list("name", flat=True))
        fields: dict[str, Any] = {
            "user_id": str(self.user.pk),
            "user_groups": groups,
            "api_key_id": None if self.api_key is None else str(self.api_key.pk),
        }
        if (
            self.api_key is not None
            and self.api_key.allow_hint_headers
            and settings.django.GATEWAY.HINT_HEADERS
        ):
            fields.update(_header_hints(request))
        base = current_context()
        if base.request_id is None:  # no middleware took one
            given = request.headers.get("x-request-id")
            # Kept only when safe to store and log as is, as the middlewares do.
            fields["request_id"] = given if given and is_valid_request_id(given) else None
        return base.merged(**fields)


def _header_hints(request: HttpRequest) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for header, (name, read) in _HINT_HEADERS.items():
        value = request.headers.get(header)
        if value:
            hints[name] = read(value)
    return hints


def _presented_key(request: HttpRequest) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key") or None


def _csrf_ok(request: HttpRequest) -> bool:
    check = CsrfViewMiddleware(lambda r: HttpResponse())
    check.process_request(request)
    return check.process_view(request, lambda r: HttpResponse(), (), {}) is None


def authenticate(request: HttpRequest) -> Caller | None:
    """The caller of ``request``: by API key when one is presented, else the session user.

    A presented key that does not match an active key never falls back to the session.
    """
    from .models import ApiKey

    presented = _presented_key(request)
    if presented is not None:
        key = ApiKey.objects.authenticate(presented)
        if key is None or not key.owner.is_active:
            return None
        return Caller(key.owner, key)
    if not get_settings().django.GATEWAY.SESSION_AUTH:
        return None
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not _csrf_ok(request):
        return None
    return Caller(user)


def _to_django(answer: RelayResponse) -> HttpResponseBase:
    response: HttpResponseBase
    if answer.stream is not None:
        response = StreamingHttpResponse(answer.stream, status=answer.status)
    elif answer.astream is not None:
        response = StreamingHttpResponse(answer.astream, status=answer.status)
    else:
        response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response.headers[name] = value
    return response


def _error(dialect: str, error: LLMError) -> HttpResponseBase:
    return _to_django(get_relay().error(dialect, error))


def _refused(dialect: str) -> HttpResponseBase:
    response = _error(
        dialect,
        AuthenticationFailed(
            "Missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key'.",
            code="invalid_api_key",
        ),
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="llmroute"'
    return response


def _not_allowed(dialect: str, allowed: str) -> HttpResponseBase:
    response = _error(
        dialect, InvalidRequest(f"Use {allowed} here.", code="method_not_allowed", status_code=405)
    )
    # The Anthropic dialect answers every invalid request as a 400: a 405 it must stay.
    response.status_code = 405
    response.headers["Allow"] = allowed
    return response


def _body(request: HttpRequest) -> bytes | None:
    try:
        return request.body
    except RequestDataTooBig:
        return None


def _too_big(dialect: str) -> HttpResponseBase:
    return _error(
        dialect,
        InvalidRequest(
            "The request body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE allows.",
            code="request_too_large",
            status_code=413,
        ),
    )


def _failed(dialect: str, exc: Exception) -> HttpResponseBase:
    """The answer to a call the relay raised on (it answers upstream errors itself):
    a failure inside llmroute, a 500 the caller's SDK reads, the details in the log only."""
    logger.error(
        "llmroute gateway: a call in the %s dialect failed inside llmroute",
        dialect,
        exc_info=exc,
    )
    return _to_django(get_relay().internal_error(dialect))


def _rate_limited(caller: Caller, dialect: str) -> HttpResponseBase | None:
    gateway = get_settings().django.GATEWAY
    if gateway.RATE_LIMIT_PER_MINUTE is None:
        return None
    from routing_middleware.auth import RateLimit

    limit = RateLimit.per_minute(gateway.RATE_LIMIT_PER_MINUTE, gateway.RATE_LIMIT_BURST)
    who = f"key:{caller.api_key.pk}" if caller.api_key is not None else f"user:{caller.user.pk}"
    wait = get_rate_limiter().acquire(who, limit)
    if wait <= 0:
        return None
    seconds = max(1, math.ceil(wait))
    response = _error(
        dialect,
        RateLimited(
            f"Rate limit of {gateway.RATE_LIMIT_PER_MINUTE:g} requests per minute reached; "
            f"retry in {seconds}s.",
            code="rate_limit_exceeded",
            retry_after=seconds,
        ),
    )
    response.headers["Retry-After"] = str(seconds)
    return response


def _prepare(request: HttpRequest, dialect: str) -> tuple[HttpResponseBase | None, Any]:
    """Method, authentication, rate and body checks; ``(refusal, None)`` or
    ``(None, (body, ctx))`` (the relay checks the model)."""
    if request.method != "POST":
        return _not_allowed(dialect, "POST"), None
    caller = authenticate(request)
    if caller is None:
        return _refused(dialect), None
    limited = _rate_limited(caller, dialect)
    if limited is not None:
        return limited, None
    try:
        context = caller.context(request)
    except LLMError as error:  # a hint header that cannot be used, named
        return _error(dialect, error), None
    except (TypeError, ValueError) as exc:
        return _error(dialect, InvalidRequest(f"Bad routing hint header: {exc}")), None
    body = _body(request)
    if body is None:
        return _too_big(dialect), None
    return None, (body, context)


def _checked(request: HttpRequest, dialect: str) -> tuple[HttpResponseBase | None, Any]:
    """:func:`_prepare`, a failure in it (the key lookup's database, say) answered as
    a failure inside llmroute in the caller's dialect, not Django's HTML page."""
    try:
        return _prepare(request, dialect)
    except Exception as exc:
        return _failed(dialect, exc), None


def _relay_sync(request: HttpRequest, dialect: str, provider: str | None) -> HttpResponseBase:
    refused, prepared = _checked(request, dialect)
    if refused is not None:
        return refused
    body, context = prepared
    try:
        answer = get_relay().handle(dialect, body, request.path, provider=provider, context=context)
    except Exception as exc:
        return _failed(dialect, exc)
    return _to_django(answer)


async def _relay_async(
    request: HttpRequest, dialect: str, provider: str | None
) -> HttpResponseBase:
    if request.method == "POST":
        # Resolve the lazy session user in async code before the thread hop.
        auser = getattr(request, "auser", None)
        if auser is not None and not _presented_key(request):
            request.user = await auser()  # type: ignore[attr-defined]
    refused, prepared = await sync_to_async(_checked)(request, dialect)
    if refused is not None:
        return refused
    body, context = prepared
    relay = await sync_to_async(get_relay)()
    try:
        answer = await relay.ahandle(
            dialect, body, request.path, provider=provider, context=context
        )
    except Exception as exc:
        return _failed(dialect, exc)
    return _to_django(answer)


@transaction.non_atomic_requests
@csrf_exempt
def chat_completions(request: HttpRequest) -> HttpResponseBase:
    """``POST v1/chat/completions`` in the OpenAI dialect (streaming included)."""
    return _relay_sync(request, "openai", "openai")


@transaction.non_atomic_requests
@csrf_exempt
def messages(request: HttpRequest) -> HttpResponseBase:
    """``POST v1/messages`` in the Anthropic dialect (streaming included)."""
    return _relay_sync(request, "anthropic", "anthropic")


@transaction.non_atomic_requests
@csrf_exempt
async def achat_completions(request: HttpRequest) -> HttpResponseBase:
    """Async twin of :func:`chat_completions`."""
    return await _relay_async(request, "openai", "openai")


@transaction.non_atomic_requests
@csrf_exempt
async def amessages(request: HttpRequest) -> HttpResponseBase:
    """Async twin of :func:`messages`."""
    return await _relay_async(request, "anthropic", "anthropic")


_listing: ModelListing | None = None


def _model_listing() -> ModelListing:
    """The Starlette gateway's lists, from the same code (made once per catalog)."""
    global _listing
    engine = get_engine()
    listing = _listing
    if listing is None or listing.engine is not engine:
        listing = _listing = ModelListing(engine)
    return listing


def _listing_dialect(request: HttpRequest) -> str:
    """Anthropic's SDKs say who they are; what lies under ``v1/messages`` is theirs."""
    if request.headers.get("anthropic-version") or "/v1/messages" in request.path:
        return "anthropic"
    return "openai"


def _models_response(request: HttpRequest, model: str | None = None) -> HttpResponseBase:
    dialect = _listing_dialect(request)
    if request.method != "GET":
        return _not_allowed(dialect, "GET")
    try:
        caller = authenticate(request)
    except Exception as exc:  # as in _checked
        return _failed(dialect, exc)
    if caller is None:
        return _refused(dialect)
    listing = _model_listing()
    if model is None:
        return HttpResponse(listing.listing(dialect), content_type="application/json")
    try:
        info = listing.engine.catalog.get(model)  # UnknownModel with suggestions
        body = listing.one(dialect, info.id)
        if body is None:  # known, but at a provider this engine does not serve
            raise UnknownModel(model)
    except LLMError as error:
        return _error(dialect, error)
    return HttpResponse(body, content_type="application/json")


@transaction.non_atomic_requests
@csrf_exempt
def models(request: HttpRequest, model: str | None = None) -> HttpResponseBase:
    """``GET v1/models`` and ``GET v1/models/<id>``: the catalog models of the
    providers the engine serves."""
    return _models_response(request, model)


@transaction.non_atomic_requests
@csrf_exempt
async def amodels(request: HttpRequest, model: str | None = None) -> HttpResponseBase:
    """Async twin of :func:`models`."""
    auser = getattr(request, "auser", None)
    if auser is not None and not _presented_key(request):
        request.user = await auser()  # type: ignore[attr-defined]
    return await sync_to_async(_models_response)(request, model)


@csrf_exempt
def not_found(request: HttpRequest, rest: str = "") -> HttpResponseBase:
    """Any other path under ``v1/``: a 404 the caller's SDK can read."""
    error = InvalidRequest(
        f"No such endpoint: {request.path}", code="not_found", status_code=404, retryable=False
    )
    return _error(_listing_dialect(request), error)
