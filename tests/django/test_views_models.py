"""The gateway views answer a model the catalog does not know as the Starlette gateway
does: a 404 in the caller's dialect with suggestions, never a retryable 503."""

# ruff: noqa: F811  (fixtures imported from llmroute_helpers are test arguments)

from __future__ import annotations

from typing import Any

import pytest

from django_llmroute.models import ApiKey

from .llmroute_helpers import closing_connections, llmroute, make_user  # noqa: F401
from .test_views import CHAT, MESSAGES, anthropic_body, chat_body, post

pytestmark = pytest.mark.django_db(transaction=True)

ASYNC_CHAT = "/llm-async/v1/chat/completions"
ASYNC_MESSAGES = "/llm-async/v1/messages"


@pytest.fixture
def key(make_user) -> tuple[ApiKey, str]:
    return ApiKey.objects.create_key(make_user("typist"), "typos")


def is_not_found_suggesting(response: Any, anthropic: bool, suggestion: str) -> bool:
    """Whether ``response`` is the 404 of an unknown model in the dialect, suggesting
    ``suggestion``."""
    assert response.status_code == 404, response.content
    body = response.json()
    error = body["error"]
    if anthropic:
        assert body["type"] == "error"
        assert error["type"] == "not_found_error"
    else:
        assert error["code"] == "model_not_found"
    return "Did you mean" in error["message"] and suggestion in error["message"]


TYPOS = [
    (CHAT, ASYNC_CHAT, chat_body(model="gpt-4o-mni"), False, "openai/gpt-4o-mini"),
    (MESSAGES, ASYNC_MESSAGES, anthropic_body(model="claude-sonet-4-6"), True, "claude-sonnet-4-6"),
]


@pytest.mark.parametrize(("url", "async_url", "body", "anthropic", "suggestion"), TYPOS)
def test_a_mistyped_model_is_404_with_suggestions_in_the_dialect(
    client, llmroute, key, url, async_url, body, anthropic, suggestion
):
    api_key, plaintext = key
    response = post(client, url, body, authorization=f"Bearer {plaintext}")
    assert is_not_found_suggesting(response, anthropic, suggestion)
    assert "retry-after" not in response.headers
    assert llmroute.calls(user=api_key.owner) == []


@pytest.mark.anyio
@closing_connections
@pytest.mark.parametrize(("url", "async_url", "body", "anthropic", "suggestion"), TYPOS)
async def test_the_async_views_answer_a_mistyped_model_with_a_404(
    async_client, llmroute, key, url, async_url, body, anthropic, suggestion
):
    _, plaintext = key
    response = await async_client.post(
        async_url, body, content_type="application/json", headers={"x-api-key": plaintext}
    )
    assert is_not_found_suggesting(response, anthropic, suggestion)


@pytest.mark.parametrize(
    ("url", "body"),
    [
        (CHAT, chat_body(model="gpt-4o-mini")),  # bare, qualified with the endpoint's provider
        (CHAT, chat_body(model="OpenAI/GPT-4o-mini ")),  # as the catalog reads names
        (MESSAGES, anthropic_body(model="anthropic/claude-sonnet-4-6")),
    ],
)
def test_catalog_models_however_named_are_served(client, llmroute, key, url, body):
    _, plaintext = key
    response = post(client, url, body, authorization=f"Bearer {plaintext}")
    assert response.status_code == 200, response.content


def test_a_body_the_check_cannot_read_is_left_to_the_relay_which_names_the_field(
    client, llmroute, key
):
    _, plaintext = key
    response = post(client, CHAT, chat_body(model=42), authorization=f"Bearer {plaintext}")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "model"
