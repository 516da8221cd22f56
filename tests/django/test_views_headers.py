"""The gateway views answer bad headers and failing calls as the Starlette gateway does:
in the caller's dialect, naming the header, and never with Django's HTML 500 page."""

# ruff: noqa: F811  (fixtures imported from llmroute_helpers are test arguments)

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client

from django_llmroute import runtime
from django_llmroute.models import ApiKey, DailyUsage, LLMCall
from routing_middleware._hint_headers import MAX_FEATURE_LENGTH, MAX_HINT_LENGTH

from .llmroute_helpers import closing_connections, llmroute, make_user  # noqa: F401
from .test_views import CHAT, MESSAGES, anthropic_body, chat_body, post

pytestmark = pytest.mark.django_db(transaction=True)

LLMROUTE_MIDDLEWARE = "django_llmroute.middleware.LLMRouteMiddleware"
ASYNC_CHAT = "/llm-async/v1/chat/completions"
ASYNC_MESSAGES = "/llm-async/v1/messages"
DEEP = "[" * 100_000 + "]" * 100_000  # deeper than the JSON parser goes, well under the body limit


def names_the_header(response: Any, url: str, header: str) -> bool:
    """Whether ``response`` is a 400 in ``url``'s dialect that names ``header``."""
    assert response.status_code == 400, response.content
    body = response.json()
    if url == MESSAGES:
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        return header in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    return bool(body["error"]["param"] == header and header in body["error"]["message"])


@pytest.fixture
def hint_key(make_user) -> tuple[ApiKey, str]:
    """A key whose caller may steer routing with the X-LLMRoute-* headers."""
    return ApiKey.objects.create_key(make_user("hinter"), "hints", allow_hint_headers=True)


@pytest.fixture
def bare_client(settings) -> Client:
    """A client of a project that serves the gateway without llmroute's middleware."""
    settings.MIDDLEWARE = [m for m in django_settings.MIDDLEWARE if m != LLMROUTE_MIDDLEWARE]
    return Client(raise_request_exception=False)


# -- X-Request-Id ----------------------------------------------------------------------


def test_without_the_middleware_request_ids_are_kept_only_when_safe_to_store(
    bare_client, llmroute, hint_key
):
    api_key, plaintext = hint_key
    sent = ["req-1", "r" * 128, "r" * 129, "two words", "tab\there", "caf\xe9"]
    for request_id in sent:
        response = post(
            bare_client,
            CHAT,
            chat_body(),
            authorization=f"Bearer {plaintext}",
            **{"x-request-id": request_id},
        )
        assert response.status_code == 200, response.content
    stored = [c.request_id for c in llmroute.calls(user=api_key.owner)]
    # The others are not stored (as the Starlette gateway does): not clipped, not as sent.
    assert sorted(stored, key=str) == sorted(["req-1", "r" * 128, None, None, None, None], key=str)


# -- X-LLMRoute-Tier -------------------------------------------------------------------


@pytest.mark.parametrize("tier", ["nonsense", "\xb2", "0x2", "--2", "0", "-1"])
@pytest.mark.parametrize(("url", "body"), [(CHAT, chat_body()), (MESSAGES, anthropic_body())])
def test_a_tier_routing_does_not_know_is_400_naming_the_header(
    client, llmroute, hint_key, tier, url, body
):
    api_key, plaintext = hint_key
    response = post(
        client, url, body, authorization=f"Bearer {plaintext}", **{"x-llmroute-tier": tier}
    )
    assert names_the_header(response, url, "X-LLMRoute-Tier")
    assert llmroute.calls(user=api_key.owner) == []


@pytest.mark.anyio
@closing_connections
async def test_the_async_views_answer_a_bad_hint_header_with_a_400_naming_it(
    async_client, llmroute, hint_key
):
    _, plaintext = hint_key
    for url, body in ((ASYNC_CHAT, chat_body()), (ASYNC_MESSAGES, anthropic_body())):
        headers = {"x-api-key": plaintext, "x-llmroute-tier": "--2"}
        response = await async_client.post(
            url, body, content_type="application/json", headers=headers
        )
        assert names_the_header(response, url.replace("-async", ""), "X-LLMRoute-Tier")


def test_tier_names_and_levels_in_the_header(client, llmroute, hint_key):
    api_key, plaintext = hint_key
    for tier in ("CHEAP", "premium", "2"):
        headers = {"authorization": f"Bearer {plaintext}", "x-llmroute-tier": tier}
        response = post(client, CHAT, chat_body(), **headers)
        assert response.status_code == 200, response.content
    assert sorted(c.tier for c in llmroute.calls(user=api_key.owner)) == [1, 2, 3]


# -- X-LLMRoute-Max-Latency-Ms and X-LLMRoute-Min-Quality --------------------------------


def test_a_quality_hint_routes(client, llmroute, hint_key):
    _, plaintext = hint_key
    auth = {"authorization": f"Bearer {plaintext}"}
    low = post(client, CHAT, chat_body(), **auth, **{"x-llmroute-min-quality": "0"})
    high = post(client, CHAT, chat_body(), **auth, **{"x-llmroute-min-quality": "60"})
    assert low.status_code == high.status_code == 200
    assert low.json()["model"] != high.json()["model"]


def test_a_latency_hint_routes(client, llmroute, hint_key):
    _, plaintext = hint_key
    headers = {"authorization": f"Bearer {plaintext}", "x-llmroute-max-latency-ms": "2500.5"}
    assert post(client, CHAT, chat_body(), **headers).status_code == 200


# -- X-LLMRoute-Feature, X-LLMRoute-Tags and X-LLMRoute-Mode -----------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [
        *[("X-LLMRoute-Max-Latency-Ms", v) for v in ("fast", "nan", "inf", "-5", "0", "1_000")],
        *[("X-LLMRoute-Min-Quality", v) for v in ("high", "-3", "2.5", "\xb2")],
        ("X-LLMRoute-Feature", "f" * 129),  # more than the feature column holds
        ("X-LLMRoute-Feature", "f" * 201),
        ("X-LLMRoute-Feature", "bell\x07"),
        ("X-LLMRoute-Tags", "t" * 201),
        ("X-LLMRoute-Tags", "a,\x7fb"),
        ("X-LLMRoute-Mode", "bogus"),
    ],
)
@pytest.mark.parametrize(("url", "body"), [(CHAT, chat_body()), (MESSAGES, anthropic_body())])
def test_a_hint_that_cannot_be_read_or_stored_as_sent_is_400_naming_the_header(
    client, llmroute, hint_key, header, value, url, body
):
    api_key, plaintext = hint_key
    response = post(client, url, body, authorization=f"Bearer {plaintext}", **{header: value})
    assert names_the_header(response, url, header)
    assert llmroute.calls(user=api_key.owner) == []


def test_text_hints_are_recorded(client, llmroute, hint_key):
    api_key, plaintext = hint_key
    headers = {
        "authorization": f"Bearer {plaintext}",
        "x-llmroute-feature": " " + "f" * 128,
        "x-llmroute-tags": "b, a,,",
        "x-llmroute-mode": "observe",
    }
    assert post(client, CHAT, chat_body(), **headers).status_code == 200
    [call] = llmroute.calls(user=api_key.owner)
    assert (call.feature, sorted(call.tags), call.mode) == ("f" * 128, ["a", "b"], "observe")


def test_the_longest_hints_taken_are_stored_as_sent(client, llmroute, hint_key):
    """What the header check takes, the columns hold whole: no feature or tag is cut."""
    api_key, plaintext = hint_key
    feature = "f" * MAX_FEATURE_LENGTH
    tag = "t" * MAX_HINT_LENGTH  # the tags column is JSON: one tag may fill the header
    headers = {"x-llmroute-feature": feature, "x-llmroute-tags": tag}
    response = post(client, CHAT, chat_body(), authorization=f"Bearer {plaintext}", **headers)
    assert response.status_code == 200, response.content
    [call] = llmroute.calls(user=api_key.owner)
    assert (call.feature, call.tags) == (feature, [tag])
    for model in (LLMCall, DailyUsage):  # the check and the columns agree
        assert model._meta.get_field("feature").max_length == MAX_FEATURE_LENGTH


# -- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "body"),
    [(CHAT, chat_body()[:-1] + ', "metadata": ' + DEEP + "}"), (MESSAGES, DEEP)],
)
def test_a_body_nested_deeper_than_the_parser_goes_is_400_in_the_dialect(
    client, llmroute, hint_key, url, body
):
    api_key, plaintext = hint_key
    response = post(client, url, body, authorization=f"Bearer {plaintext}")
    assert response.status_code == 400, response.content
    payload = response.json()
    if url == MESSAGES:
        assert payload["error"]["type"] == "invalid_request_error"
    else:
        assert "nested too deeply" in payload["error"]["message"]
    assert llmroute.calls(user=api_key.owner) == []


@pytest.mark.anyio
@closing_connections
async def test_the_async_views_answer_a_too_deep_body_with_a_400(async_client, llmroute, hint_key):
    _, plaintext = hint_key
    for url in (ASYNC_CHAT, ASYNC_MESSAGES):
        response = await async_client.post(
            url, DEEP, content_type="application/json", headers={"x-api-key": plaintext}
        )
        assert response.status_code == 400, response.content


# A failure inside llmroute (a bug, not an upstream error): an app's own classifier
# that raises.
@pytest.fixture
def broken_classifier(llmroute):
    def broken(request: Any) -> int:
        raise IndexError("tuple index out of range")

    router = runtime.get_engine().router
    router.classifier = broken
    return router


def is_internal_error(response: Any, anthropic: bool) -> bool:
    """A 500 in the dialect that tells nothing of what failed."""
    assert response.status_code == 500, response.content
    assert "IndexError" not in response.content.decode()
    assert "tuple index" not in response.content.decode()
    error = response.json()["error"]
    return bool(
        error["type"] == "api_error" if anthropic else error["code"] == "llmroute_internal_error"
    )


def test_a_failure_inside_llmroute_is_a_500_in_the_callers_dialect(
    llmroute, broken_classifier, hint_key, caplog
):
    _, plaintext = hint_key
    client = Client(raise_request_exception=False)
    headers = {"authorization": f"Bearer {plaintext}"}
    with caplog.at_level(logging.ERROR, logger="django_llmroute.gateway"):
        chat = post(client, CHAT, chat_body(), **headers)
        message = post(client, MESSAGES, anthropic_body(stream=True), **headers)
    assert is_internal_error(chat, anthropic=False)
    assert is_internal_error(message, anthropic=True)
    failures = [r for r in caplog.records if r.name == "django_llmroute.gateway"]
    assert len(failures) == 2
    assert all(r.exc_info for r in failures)
    assert plaintext not in caplog.text


@pytest.mark.anyio
@closing_connections
async def test_the_async_views_answer_a_failure_inside_llmroute_with_a_500_in_the_dialect(
    async_client, llmroute, broken_classifier, hint_key
):
    _, plaintext = hint_key
    async_client.raise_request_exception = False
    headers = {"x-api-key": plaintext}
    chat = await async_client.post(
        ASYNC_CHAT, chat_body(), content_type="application/json", headers=headers
    )
    message = await async_client.post(
        ASYNC_MESSAGES,
        anthropic_body(stream=True),
        content_type="application/json",
        headers=headers,
    )
    assert is_internal_error(chat, anthropic=False)
    assert is_internal_error(message, anthropic=True)


# -- methods ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/llm", "/llm-async"])
@pytest.mark.parametrize(
    ("path", "method", "allow", "anthropic"),
    [
        ("/v1/chat/completions", "GET", "POST", False),
        ("/v1/messages", "PUT", "POST", True),
        ("/v1/models", "POST", "GET", False),
    ],
)
def test_a_wrong_method_is_405_with_allow_in_the_dialect(
    client, llmroute, hint_key, prefix, path, method, allow, anthropic
):
    _, plaintext = hint_key
    response = client.generic(method, prefix + path, headers={"x-api-key": plaintext})
    assert response.status_code == 405, response.content
    assert response.headers["Allow"] == allow
    body = response.json()
    assert (body.get("type") == "error") is anthropic
    assert body["error"]["type"] == "invalid_request_error"


def _wire(text: str) -> str:
    """``text`` sent as UTF-8, as a WSGI or ASGI server hands the header to Django
    (its bytes read as latin-1)."""
    return text.encode("utf-8").decode("latin-1")


def test_utf8_feature_and_tags_are_recorded_as_sent(client, llmroute, hint_key):
    api_key, plaintext = hint_key
    headers = {"x-llmroute-feature": _wire("résumé"), "x-llmroute-tags": _wire("café, 日本")}
    response = post(client, CHAT, chat_body(), authorization=f"Bearer {plaintext}", **headers)
    assert response.status_code == 200, response.content
    [call] = llmroute.calls(user=api_key.owner)
    assert (call.feature, sorted(call.tags)) == ("résumé", ["café", "日本"])


@pytest.mark.parametrize("header", ["X-LLMRoute-Feature", "X-LLMRoute-Tags"])
@pytest.mark.parametrize(("url", "body"), [(CHAT, chat_body()), (MESSAGES, anthropic_body())])
def test_a_hint_header_that_is_not_utf8_is_400_naming_it(
    client, llmroute, hint_key, header, url, body
):
    api_key, plaintext = hint_key
    latin1 = b"r\xe9sum\xe9".decode("latin-1")  # "résumé" sent in latin-1: not UTF-8
    response = post(client, url, body, authorization=f"Bearer {plaintext}", **{header: latin1})
    assert names_the_header(response, url, header)
    assert llmroute.calls(user=api_key.owner) == []
