"""The gateway answers a failure before the relay (the key lookup, say) in the caller's
dialect too, never with Django's HTML page nor the failure's details."""

# ruff: noqa: F811  (fixtures imported from llmroute_helpers are test arguments)

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import AsyncClient, Client

from django_llmroute import runtime
from django_llmroute.models import ApiKey

from .llmroute_helpers import closing_connections, llmroute, make_user  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

BODIES = {
    "v1/chat/completions": {
        "model": "gpt-5.4",
        "messages": [{"role": "user", "content": "Hi"}],
    },
    "v1/messages": {
        "model": "claude-sonnet-4-6",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hi"}],
    },
}


@pytest.fixture
def keys_unreachable(llmroute, make_user) -> Iterator[str]:
    """A valid key, then its table made unreachable, as in a database failure."""
    _, plaintext = ApiKey.objects.create_key(make_user("keyholder"), "ci")
    runtime.get_relay()  # the engine is up; only the key lookup fails
    table = ApiKey._meta.db_table
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {qn(table)} RENAME TO {qn(table + '_away')}")
    try:
        yield plaintext
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {qn(table + '_away')} RENAME TO {qn(table)}")


def _is_internal_error(response: Any, path: str) -> None:
    assert response.status_code == 500, response.content
    text = response.content.decode()
    assert ApiKey._meta.db_table not in text
    body = json.loads(text)
    if path == "v1/messages":
        assert body["type"] == "error"
        assert body["error"]["type"] == "api_error"
    else:
        assert body["error"]["code"] == "llmroute_internal_error"


@pytest.mark.parametrize("path", ["v1/chat/completions", "v1/messages", "v1/models"])
def test_sync_views(keys_unreachable, path, caplog):
    client = Client(raise_request_exception=False)
    headers = {"authorization": f"Bearer {keys_unreachable}"}
    if path == "v1/models":
        response = client.get(f"/llm/{path}", headers=headers)
    else:
        response = client.post(
            f"/llm/{path}", json.dumps(BODIES[path]), "application/json", headers=headers
        )
    _is_internal_error(response, path)
    assert "failed inside llmroute" in caplog.text  # the details go to the log
    assert keys_unreachable not in caplog.text


@pytest.mark.anyio
@closing_connections
@pytest.mark.parametrize("path", ["v1/chat/completions", "v1/messages", "v1/models"])
async def test_async_views(keys_unreachable, path):
    client = AsyncClient(raise_request_exception=False)
    headers = {"x-api-key": keys_unreachable}
    if path == "v1/models":
        response = await client.get(f"/llm-async/{path}", headers=headers)
    else:
        response = await client.post(
            f"/llm-async/{path}", json.dumps(BODIES[path]), "application/json", headers=headers
        )
    _is_internal_error(response, path)
