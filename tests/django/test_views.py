"""The gateway views: authentication, attribution, dialects, streaming, and the real SDKs."""

# ruff: noqa: F811  (fixtures imported from llmroute_helpers are test arguments)

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from django_llmroute.models import ApiKey

from .llmroute_helpers import (  # noqa: F401
    closing_connections,
    in_thread,
    llmroute,
    make_user,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "/llm/v1/chat/completions"
MESSAGES = "/llm/v1/messages"
MODELS = "/llm/v1/models"
CSRF = "c" * 32


def chat_body(**fields: Any) -> str:
    return json.dumps(
        {
            "model": "gpt-5.4",
            "messages": [{"role": "user", "content": "Summarise this ticket in one line."}],
            **fields,
        }
    )


def anthropic_body(**fields: Any) -> str:
    return json.dumps(
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "Summarise this ticket in one line."}],
            **fields,
        }
    )


@pytest.fixture
def key(make_user) -> tuple[ApiKey, str]:
    owner = make_user("keyholder", groups=("api",))
    return ApiKey.objects.create_key(owner, "ci")


def post(client: Client, url: str, body: str, **headers: str) -> Any:
    return client.post(url, body, content_type="application/json", headers=headers)


# -- authentication ------------------------------------------------------------------


def test_no_key_is_401_in_each_dialect(client, llmroute):
    response = post(client, CHAT, chat_body())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = post(client, MESSAGES, anthropic_body())
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"


def test_bearer_key_works_and_records_go_to_its_owner(client, llmroute, key):
    api_key, plaintext = key
    response = post(client, CHAT, chat_body(), authorization=f"Bearer {plaintext}")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    [call] = llmroute.calls(api_key_ref=str(api_key.pk))
    assert response.headers["x-llmroute-provider"] == call.provider
    assert response.headers["x-llmroute-model"] == call.chosen_model
    assert call.user == api_key.owner
    assert call.api_key_ref == str(api_key.pk)
    assert call.route == "llmroute:chat-completions"


def test_x_api_key_on_the_anthropic_endpoint(client, llmroute, key):
    api_key, plaintext = key
    response = post(client, MESSAGES, anthropic_body(), **{"x-api-key": plaintext})
    assert response.status_code == 200, response.content
    assert response.json()["type"] == "message"
    # Only this key owner's calls: a stream another test dropped may be recorded late.
    [call] = llmroute.calls(user=api_key.owner)
    assert call.endpoint == "chat"


def test_revoked_key_fails(client, llmroute, key):
    api_key, plaintext = key
    api_key.revoked = True
    api_key.save()
    assert post(client, CHAT, chat_body(), authorization=f"Bearer {plaintext}").status_code == 401


def test_key_of_an_inactive_user_fails(client, llmroute, key):
    api_key, plaintext = key
    api_key.owner.is_active = False
    api_key.owner.save()
    assert post(client, CHAT, chat_body(), authorization=f"Bearer {plaintext}").status_code == 401


def test_a_bad_key_never_falls_back_to_the_session(client, llmroute, make_user):
    client.force_login(make_user("sessioned"))
    response = post(client, CHAT, chat_body(), authorization="Bearer llmr_not-a-key")
    assert response.status_code == 401


def test_session_user_needs_a_csrf_token(llmroute, make_user):
    user = make_user("browser")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert post(client, CHAT, chat_body()).status_code == 401
    client.cookies["csrftoken"] = CSRF
    response = post(client, CHAT, chat_body(), **{"x-csrftoken": CSRF})
    assert response.status_code == 200, response.content
    [call] = llmroute.calls(user=user)
    assert call.api_key_ref is None


def test_session_auth_can_be_switched_off(client, llmroute, make_user):
    llmroute(GATEWAY={"SESSION_AUTH": False})
    client.force_login(make_user("browser"))
    assert post(client, CHAT, chat_body()).status_code == 401


# -- requests and answers ------------------------------------------------------------


def test_bad_json_is_an_openai_style_400(client, llmroute, key):
    _, plaintext = key
    response = post(client, CHAT, "{not json", authorization=f"Bearer {plaintext}")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_wrong_method_is_405(client, llmroute, key):
    _, plaintext = key
    response = client.get(CHAT, headers={"authorization": f"Bearer {plaintext}"})
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_body_over_the_upload_limit_is_413(client, llmroute, key, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    _, plaintext = key
    response = post(client, CHAT, chat_body(), authorization=f"Bearer {plaintext}")
    assert response.status_code == 413


def test_models_list(client, llmroute, key):
    llmroute(PROVIDERS={"openai": {}, "anthropic": {}})
    _, plaintext = key
    assert client.get(MODELS).status_code == 401
    response = client.get(MODELS, headers={"authorization": f"Bearer {plaintext}"})
    assert response.status_code == 200
    listed = response.json()
    assert listed["object"] == "list"
    owners = {m["owned_by"] for m in listed["data"]}
    assert owners == {"openai", "anthropic"}
    assert "openai/gpt-5.4" in {m["id"] for m in listed["data"]}


def test_the_sdks_read_the_model_list_in_their_own_shape(client, llmroute, key):
    """The list the Starlette gateway serves, from the same code: prices included,
    and Anthropic's shape for Anthropic's SDK (refusals in its dialect too)."""
    import anthropic
    import httpx2
    import openai

    llmroute(PROVIDERS={"openai": {}, "anthropic": {}})
    _, plaintext = key
    http = httpx2.Client(transport=django_transport(client))
    base = "http://testserver/llm"
    listed = openai.OpenAI(base_url=f"{base}/v1", api_key=plaintext, http_client=http)
    by_id = {m.id: m for m in listed.models.list()}
    assert by_id["openai/gpt-4o-mini"].model_dump()["pricing"]["output"] == "0.6"
    sdk = anthropic.Anthropic(base_url=base, api_key=plaintext, max_retries=0, http_client=http)
    models = {m.id: m for m in sdk.models.list()}
    assert set(models) == set(by_id)
    claude = models["anthropic/claude-sonnet-4-6"]
    assert (claude.type, claude.lifecycle) == ("model", "active")
    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic.Anthropic(
            base_url=base, api_key="sk-wrong", max_retries=0, http_client=http
        ).models.list()
    assert refused.value.body["error"]["type"] == "authentication_error"
    http.close()


def test_the_sdks_retrieve_a_model_and_read_404s_of_their_own(client, llmroute, key):
    import anthropic
    import httpx2
    import openai

    llmroute(PROVIDERS={"openai": {}, "anthropic": {}})
    _, plaintext = key
    http = httpx2.Client(transport=django_transport(client))
    base = "http://testserver/llm"
    oai = openai.OpenAI(base_url=f"{base}/v1", api_key=plaintext, http_client=http)
    one = oai.models.retrieve("openai/gpt-4o-mini")
    assert one.model_dump()["context_window"] == 128_000
    with pytest.raises(openai.NotFoundError, match="Did you mean"):
        oai.models.retrieve("openai/gpt-4o-mni")
    sdk = anthropic.Anthropic(base_url=base, api_key=plaintext, max_retries=0, http_client=http)
    claude = sdk.models.retrieve("anthropic/claude-sonnet-4-6")
    assert (claude.type, claude.id) == ("model", "anthropic/claude-sonnet-4-6")
    with pytest.raises(anthropic.NotFoundError) as missing:  # not served here
        sdk.messages.count_tokens(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hi"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"
    elsewhere = client.get("/llm/v1/files", headers={"authorization": f"Bearer {plaintext}"})
    assert elsewhere.status_code == 404
    assert elsewhere.json()["error"]["code"] == "not_found"
    http.close()


@pytest.mark.anyio
@closing_connections
async def test_the_async_views_retrieve_a_model_in_each_shape(async_client, llmroute, key):
    llmroute(PROVIDERS={"openai": {}, "anthropic": {}})
    _, plaintext = key
    url = "/llm-async/v1/models/anthropic/claude-sonnet-4-6"
    plain = await async_client.get(url, headers={"x-api-key": plaintext})
    assert (plain.status_code, plain.json()["object"]) == (200, "model")
    shaped = await async_client.get(
        url, headers={"x-api-key": plaintext, "anthropic-version": "2023-06-01"}
    )
    assert (shaped.json()["type"], shaped.json()["lifecycle"]) == ("model", "active")
    missing = await async_client.get("/llm-async/v1/models/nope", headers={"x-api-key": plaintext})
    assert missing.status_code == 404


def test_hint_headers_only_for_keys_that_allow_them(client, llmroute, make_user):
    owner = make_user("hinter")
    _, allowed = ApiKey.objects.create_key(owner, "hints", allow_hint_headers=True)
    _, plain = ApiKey.objects.create_key(owner, "no-hints")
    headers = {"x-llmroute-feature": "from-header", "x-llmroute-tier": "cheap"}
    post(client, CHAT, chat_body(), authorization=f"Bearer {allowed}", **headers)
    post(client, CHAT, chat_body(), authorization=f"Bearer {plain}", **headers)
    features = sorted(str(c.feature) for c in llmroute.calls(user=owner))
    assert features == ["None", "from-header"]


def test_streaming(client, llmroute, key):
    api_key, plaintext = key
    response = post(
        client,
        CHAT,
        chat_body(stream=True, stream_options={"include_usage": True}),
        authorization=f"Bearer {plaintext}",
    )
    assert response.status_code == 200
    assert response["content-type"] == "text/event-stream"
    body = b"".join(response.streaming_content).decode()
    response.close()
    events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    [call] = llmroute.wait_for_calls(1)
    assert call.streamed
    assert call.user == api_key.owner


# -- the async views -----------------------------------------------------------------


@pytest.mark.anyio
@closing_connections
async def test_async_gateway_views(async_client, llmroute, key):
    api_key, plaintext = key
    auth = {"authorization": f"Bearer {plaintext}"}
    response = await async_client.post(
        "/llm-async/v1/chat/completions",
        chat_body(),
        content_type="application/json",
        headers=auth,
    )
    assert response.status_code == 200, response.content
    assert response.json()["object"] == "chat.completion"
    streamed = await async_client.post(
        "/llm-async/v1/messages",
        anthropic_body(stream=True),
        content_type="application/json",
        headers={"x-api-key": plaintext},
    )
    assert streamed.is_async
    body = b"".join([chunk async for chunk in streamed.streaming_content]).decode()
    assert "event: message_stop" in body
    listed = await async_client.get("/llm-async/v1/models", headers=auth)
    assert listed.status_code == 200
    refused = await async_client.post(
        "/llm-async/v1/chat/completions", chat_body(), content_type="application/json"
    )
    assert refused.status_code == 401
    calls = await in_thread(llmroute.wait_for_calls, 2)
    assert {c.user_id for c in calls} == {api_key.owner_id}


# -- the official SDKs, through a transport into the test client -------------------


def django_transport(client: Client) -> Any:
    """An ``httpx2`` transport that hands each SDK request to Django's test client."""
    import httpx2

    def handle(request: Any) -> Any:
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "content-type")
        }
        response = client.generic(
            request.method,
            request.url.raw_path.decode(),
            request.read(),
            content_type=request.headers.get("content-type", "application/json"),
            headers=headers,
        )
        content = (
            b"".join(response.streaming_content)
            if getattr(response, "streaming", False)
            else response.content
        )
        response.close()
        return httpx2.Response(
            response.status_code, headers=dict(response.items()), content=content
        )

    return httpx2.MockTransport(handle)


def test_openai_sdk_through_the_gateway(client, llmroute, key):
    openai = pytest.importorskip("openai")
    import httpx2

    api_key, plaintext = key
    http = httpx2.Client(transport=django_transport(client))
    sdk = openai.OpenAI(
        base_url="http://testserver/llm/v1", api_key=plaintext, max_retries=0, http_client=http
    )
    done = sdk.chat.completions.create(
        model="gpt-5.4",
        messages=[{"role": "user", "content": "Summarise this ticket in one line."}],
    )
    assert done.choices[0].message.content
    assert done.usage.total_tokens > 0
    text = ""
    for chunk in sdk.chat.completions.create(
        model="gpt-5.4",
        messages=[{"role": "user", "content": "And stream it."}],
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text
    assert "openai/gpt-5.4" in {m.id for m in sdk.models.list()}
    wrong = openai.OpenAI(
        base_url="http://testserver/llm/v1", api_key="llmr_wrong", max_retries=0, http_client=http
    )
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="gpt-5.4", messages=[{"role": "user", "content": "x"}])
    http.close()
    calls = llmroute.wait_for_calls(2)
    assert {c.user_id for c in calls} == {api_key.owner_id}
    assert any(c.streamed for c in calls)


def test_anthropic_sdk_through_the_gateway(client, llmroute, key):
    anthropic = pytest.importorskip("anthropic")
    import httpx2

    api_key, plaintext = key
    http = httpx2.Client(transport=django_transport(client))
    sdk = anthropic.Anthropic(
        base_url="http://testserver/llm", api_key=plaintext, max_retries=0, http_client=http
    )
    message = sdk.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        messages=[{"role": "user", "content": "Summarise this ticket in one line."}],
    )
    assert message.content[0].text
    http.close()
    [call] = llmroute.wait_for_calls(1)
    assert call.user == api_key.owner


def test_rate_limit_per_key(client, llmroute, key):
    llmroute(GATEWAY={"RATE_LIMIT_PER_MINUTE": 6, "RATE_LIMIT_BURST": 2})
    api_key, plaintext = key
    auth = {"authorization": f"Bearer {plaintext}"}
    assert post(client, CHAT, chat_body(), **auth).status_code == 200
    assert post(client, CHAT, chat_body(), **auth).status_code == 200
    limited = post(client, CHAT, chat_body(), **auth)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["Retry-After"]) <= 10
    # Another key has its own bucket.
    _, other = ApiKey.objects.create_key(api_key.owner, "second")
    assert post(client, CHAT, chat_body(), authorization=f"Bearer {other}").status_code == 200
    assert len(llmroute.calls(user=api_key.owner)) == 3
