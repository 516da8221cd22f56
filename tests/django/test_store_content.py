"""Prompts and completions reach the database only when STORE_CONTENT says so, redacted."""

from __future__ import annotations

import pytest

from django_llmroute import runtime
from routing_middleware.context import route_hint
from routing_middleware.schema import ChatRequest, Message

from .llmroute_helpers import llmroute  # noqa: F401

# Calls are looked up by feature: a stream another test dropped may be recorded late.
FEATURE = "store-content-test"


def _ask() -> str:
    request = ChatRequest(
        model="openai/gpt-5.4",
        messages=[Message(role="user", content="Card 4111 1111 1111 1111 was charged twice")],
    )
    with route_hint(feature=FEATURE):
        return runtime.get_engine().complete(request).response.text


@pytest.mark.django_db(transaction=True)
def test_no_content_is_stored_by_default(llmroute):  # noqa: F811
    _ask()
    [call] = llmroute.calls(feature=FEATURE)
    assert call.prompt is None
    assert call.completion is None


@pytest.mark.django_db(transaction=True)
def test_stored_content_goes_through_the_redaction_hook(llmroute):  # noqa: F811
    llmroute(STORE_CONTENT=True, REDACT="tests.django.test_conf.redact_digits")
    answer = _ask()
    [call] = llmroute.calls(feature=FEATURE)
    assert call.prompt == "user: Card #### #### #### #### was charged twice"
    assert call.completion == "".join("#" if c.isdigit() else c for c in answer)
