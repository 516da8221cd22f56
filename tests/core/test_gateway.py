"""The gateway judged by the official SDKs, and every failure in the caller's dialect."""

from __future__ import annotations

import json
import logging
from typing import Any

import anthropic
import anyio
import httpx2
import openai
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from routing_middleware.auth import ApiKeyInfo, MemoryKeyStore, RateLimit, RateLimiter
from routing_middleware.engine import LLMRoute
from routing_middleware.gateway import gateway_app
from routing_middleware.metering import MemorySink
from routing_middleware.testing import Failure

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {"offline_latency": "none"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarize: jams."}]}
MESSAGE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Classify: refund request"}],
}


class Gateway:
    """A gateway over an offline engine, with one plain key and one hint-setting key."""

    def __init__(self, config: dict[str, Any] | None = None, **options: Any) -> None:
        self.sink = MemorySink()
        self.engine = LLMRoute({**FAST, **(config or {})}, sink=self.sink, environ={})
        self.keys = MemoryKeyStore()
        self.key, self.info = self.keys.create(owner="user-1", name="plain")
        self.hint_key, self.hint_info = self.keys.create(owner="user-2", allow_hints=True)
        self.app = gateway_app(self.engine, authenticator=self.keys, **options)

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.ASGITransport(self.app), base_url="http://gw")

    async def post(
        self, path: str, body: Any, key: str | None = "default", **headers: str
    ) -> httpx2.Response:
        sent = dict(headers)
        if key is not None:
            sent["authorization"] = f"Bearer {self.key if key == 'default' else key}"
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.client() as client:
            return await client.post(path, content=content, headers=sent)

    def openai(self, key: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=key or self.key,
            base_url="http://gw/v1",
            http_client=self.client(),
            max_retries=0,
        )

    def anthropic(self, key: str | None = None) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=key or self.key, base_url="http://gw", http_client=self.client(), max_retries=0
        )


def _openai_error(response: httpx2.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def _anthropic_error(response: httpx2.Response) -> dict[str, Any]:
    body = response.json()
    assert body["type"] == "error"
    return body["error"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- SDKs


async def test_openai_sdk_completion_is_attributed_to_the_keys_owner() -> None:
    gw = Gateway()
    raw = await gw.openai().chat.completions.with_raw_response.create(**CHAT)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert raw.headers["x-llmroute-model"].endswith(completion.model)
    (record,) = gw.sink.records
    assert (record.user_id, record.api_key_id) == ("user-1", gw.info.key_id)
    assert gw.key not in repr(record)


async def test_openai_sdk_stream_with_usage() -> None:
    gw = Gateway()
    stream = await gw.openai().chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    (record,) = gw.sink.records
    assert record.streamed
    assert record.api_key_id == gw.info.key_id


async def test_anthropic_sdk_on_messages_streamed_and_not() -> None:
    gw = Gateway()
    client = gw.anthropic()
    message = await client.messages.create(**MESSAGE)
    assert message.content[0].type == "text"
    assert message.usage.output_tokens > 0
    async with client.messages.stream(**MESSAGE) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "end_turn"
    assert [r.user_id for r in gw.sink.records] == ["user-1", "user-1"]


async def test_x_api_key_is_accepted_by_the_openai_endpoint_too() -> None:
    gw = Gateway()
    response = await gw.post("/v1/chat/completions", CHAT, key=None, **{"x-api-key": gw.key})
    assert response.status_code == 200


async def test_models_lists_the_catalog_with_prices_context_and_tier() -> None:
    gw = Gateway()
    client = gw.openai()
    models = await client.models.list()
    assert len(models.data) >= 171
    by_id = {m.id: m for m in models.data}
    mini = by_id["openai/gpt-4o-mini"]
    assert mini.owned_by == "openai"
    extra = mini.model_dump()
    assert extra["pricing"]["input"] == "0.15"
    assert extra["pricing"]["output"] == "0.6"
    assert extra["context_window"] == 128_000
    assert extra["tier"] == 1
    one = await client.models.retrieve("openai/gpt-4o-mini")
    assert one.id == "openai/gpt-4o-mini"
    with pytest.raises(openai.NotFoundError, match="Did you mean"):
        await client.models.retrieve("openai/gpt-4o-mni")


async def test_the_anthropic_sdk_lists_and_retrieves_models_in_its_own_shape() -> None:
    gw = Gateway()
    client = gw.anthropic()
    page = await client.models.list()
    models = [model async for model in page]
    assert len(models) >= 171
    by_id = {m.id: m for m in models}
    mini = by_id["openai/gpt-4o-mini"]
    assert (mini.type, mini.display_name, mini.lifecycle) == ("model", "gpt-4o-mini", "active")
    assert mini.created_at.year >= 2024
    assert mini.max_input_tokens == 128_000
    assert mini.model_dump()["pricing"]["output"] == "0.6"
    one = await client.models.retrieve("anthropic/claude-sonnet-4-6")
    assert (one.type, one.id) == ("model", "anthropic/claude-sonnet-4-6")
    with pytest.raises(anthropic.NotFoundError, match="Did you mean") as caught:
        await client.models.retrieve("openai/gpt-4o-mni")
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        await gw.anthropic(key="sk-wrong").models.list()


async def test_mounted_under_a_prefix() -> None:
    gw = Gateway()
    outer = Starlette(routes=[Mount("/llm", app=gw.app)])
    transport = httpx2.ASGITransport(outer)
    async with httpx2.AsyncClient(transport=transport, base_url="http://site") as client:
        response = await client.post(
            "/llm/v1/chat/completions", json=CHAT, headers={"x-api-key": gw.key}
        )
    assert response.status_code == 200


# --------------------------------------------------------------------------- 401


@pytest.mark.parametrize("key", [None, "not-a-key", "lrk_0123456789ab_" + "x" * 43])
async def test_no_or_invalid_key_is_401_in_both_dialects(key: str | None) -> None:
    gw = Gateway()
    response = await gw.post("/v1/chat/completions", CHAT, key=key)
    assert response.status_code == 401
    assert _openai_error(response)["code"] == "invalid_api_key"
    assert response.headers["x-should-retry"] == "false"
    response = await gw.post("/v1/messages", MESSAGE, key=key)
    assert response.status_code == 401
    assert _anthropic_error(response)["type"] == "authentication_error"
    async with gw.client() as client:
        assert (await client.get("/v1/models")).status_code == 401
    assert gw.sink.records == []


async def test_a_failing_key_store_is_503_in_both_dialects_and_names_nothing_of_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Down:
        def authenticate(self, plaintext: str) -> ApiKeyInfo | None:
            raise ConnectionError("could not connect: postgres://admin:s3cret@db-7/keys")

    sink = MemorySink()
    app = gateway_app(LLMRoute(FAST, sink=sink, environ={}), authenticator=Down())
    transport = httpx2.ASGITransport(app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://gw") as client:
        chat = await client.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": "k"})
        message = await client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": "k"})
        models = await client.get("/v1/models", headers={"x-api-key": "k"})
    assert (chat.status_code, message.status_code, models.status_code) == (503, 503, 503)
    assert _openai_error(chat)["code"] == "service_unavailable"
    assert _anthropic_error(message)["type"] == "api_error"
    for response in (chat, message, models):
        assert response.headers["retry-after"]
        assert "s3cret" not in response.text
        assert "db-7" not in response.text
    assert "key store Down failed (ConnectionError)" in caplog.text
    assert "s3cret" not in caplog.text
    assert sink.records == []


async def test_revoked_key_is_refused_and_the_sdks_see_their_own_errors() -> None:
    gw = Gateway()
    assert gw.keys.revoke(gw.info.key_id)
    with pytest.raises(openai.AuthenticationError):
        await gw.openai().chat.completions.create(**CHAT)
    with pytest.raises(anthropic.AuthenticationError):
        await gw.anthropic().messages.create(**MESSAGE)
    response = await gw.post("/v1/chat/completions", CHAT)
    assert gw.key not in response.text


# --------------------------------------------------------------------------- 400 / 404


async def test_invalid_field_is_400_naming_it() -> None:
    gw = Gateway()
    response = await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": "hi"})
    assert response.status_code == 400
    assert _openai_error(response)["param"].startswith("messages")
    response = await gw.post("/v1/chat/completions", b"{not json")
    assert response.status_code == 400
    response = await gw.post("/v1/messages", {**MESSAGE, "max_tokens": "many"})
    assert response.status_code == 400
    assert _anthropic_error(response)["type"] == "invalid_request_error"


async def test_a_body_nested_deeper_than_the_parser_goes_is_400_in_both_dialects() -> None:
    gw = Gateway()
    deep = b"[" * 100_000 + b"]" * 100_000  # well under the body limit
    chat = json.dumps(CHAT).encode()[:-1] + b', "metadata": ' + deep + b"}"
    response = await gw.post("/v1/chat/completions", chat)
    assert response.status_code == 400
    assert "nested too deeply" in _openai_error(response)["message"]
    response = await gw.post("/v1/messages", deep)
    assert response.status_code == 400
    assert _anthropic_error(response)["type"] == "invalid_request_error"
    assert gw.sink.records == []


# A lone surrogate: an escape JSON allows but that decodes to no text.
LONE_SURROGATE_CHAT = (
    b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud800"}]}'
)
LONE_SURROGATE_MESSAGE = (
    b'{"model": "claude-sonnet-4-6", "max_tokens": 50, "stream": true,'
    b' "messages": [{"role": "user", "content": "x \\udc00"}]}'
)


async def test_a_failure_inside_llmroute_is_a_500_in_the_callers_dialect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = Gateway()

    def broken(request: Any) -> int:  # an app's own classifier, with a bug
        raise RuntimeError("classifier bug")

    gw.engine.router.classifier = broken
    with caplog.at_level(logging.ERROR, logger="llmroute.gateway"):
        chat = await gw.post("/v1/chat/completions", CHAT)
        message = await gw.post("/v1/messages", {**MESSAGE, "stream": True})
    assert chat.status_code == message.status_code == 500
    assert _openai_error(chat)["code"] == "llmroute_internal_error"
    assert _anthropic_error(message)["type"] == "api_error"
    assert "classifier bug" not in chat.text + message.text  # details stay in the log
    assert "classifier bug" in caplog.text
    assert len([r for r in caplog.records if r.exc_info]) == 2
    assert gw.key not in caplog.text


async def test_a_lone_surrogate_in_the_body_is_400() -> None:
    gw = Gateway()
    response = await gw.post("/v1/chat/completions", LONE_SURROGATE_CHAT)
    assert response.status_code == 400
    assert "lone UTF-16 surrogate (\\ud800)" in _openai_error(response)["message"]
    response = await gw.post("/v1/messages", LONE_SURROGATE_MESSAGE)
    assert response.status_code == 400
    assert _anthropic_error(response)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "raw",
    [
        b"\xed\xa0\x80",  # U+D800 written as UTF-8, as CESU-8 and WTF-8 writers do
        b"\xed\xa0\xbd\xed\xb8\x80",  # a pair, each half written as UTF-8 on its own
    ],
)
async def test_a_surrogate_written_as_utf8_bytes_is_400_in_both_dialects(raw: bytes) -> None:
    """Not UTF-8, yet Python's JSON parser reads it (as a lone surrogate) from bytes:
    unchecked, it failed inside llmroute when the upstream body was encoded."""
    gw = Gateway()
    chat = LONE_SURROGATE_CHAT.replace(b"\\ud800", raw)
    message = LONE_SURROGATE_MESSAGE.replace(b"\\udc00", raw)
    response = await gw.post("/v1/chat/completions", chat)
    assert response.status_code == 400, response.text
    assert "surrogate written as UTF-8" in _openai_error(response)["message"]
    response = await gw.post("/v1/messages", message)
    assert response.status_code == 400, response.text
    assert _anthropic_error(response)["type"] == "invalid_request_error"
    assert gw.sink.records == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32-be"])
async def test_a_lone_surrogate_in_a_utf16_or_utf32_body_is_400(encoding: str) -> None:
    """JSON in UTF-16 or UTF-32, which the parser reads as well, is checked too."""
    gw = Gateway()
    for text in ("\\ud800", "\ud800"):  # an escape, or the code unit itself
        body = LONE_SURROGATE_CHAT.decode().replace("\\ud800", text)
        response = await gw.post("/v1/chat/completions", body.encode(encoding, "surrogatepass"))
        assert response.status_code == 400, response.text
        assert "surrogate" in _openai_error(response)["message"]
    fine = LONE_SURROGATE_CHAT.decode().replace("\\ud800", "caf\u00e9 \U0001f600")
    response = await gw.post("/v1/chat/completions", fine.encode(encoding))
    assert response.status_code == 200, response.text


async def test_korean_text_next_to_the_surrogate_range_is_not_refused() -> None:
    gw = Gateway()
    text = "\ud7a3\ud000".encode()  # the last syllable and a letter whose UTF-8 starts ED
    response = await gw.post("/v1/chat/completions", LONE_SURROGATE_CHAT.replace(b"\\ud800", text))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "text",
    [
        "caf\\u00e9 \\ud83d\\ude00",  # an escaped pair: one character
        "\\\\ud800",  # an escaped backslash, then the letters: no surrogate
        "\\ud83d\\ude00\\\\udc00",
    ],
)
async def test_escapes_that_are_text_are_not_taken_for_lone_surrogates(text: str) -> None:
    gw = Gateway()
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "%s"}]}'
    response = await gw.post("/v1/chat/completions", body % text.encode())
    assert response.status_code == 200, response.text


async def test_unknown_model_is_404_with_suggestions() -> None:
    gw = Gateway()
    response = await gw.post("/v1/chat/completions", {**CHAT, "model": "gpt-4o-mni"})
    assert response.status_code == 404
    error = _openai_error(response)
    assert error["code"] == "model_not_found"
    assert "openai/gpt-4o-mini" in error["message"]
    response = await gw.post("/v1/messages", {**MESSAGE, "model": "claude-sonet-4-6"})
    assert response.status_code == 404
    assert _anthropic_error(response)["type"] == "not_found_error"
    assert "claude-sonnet-4-6" in _anthropic_error(response)["message"]


async def test_unknown_path_and_wrong_method_answer_in_the_dialect() -> None:
    gw = Gateway()
    async with gw.client() as client:
        missing = await client.post("/v1/completions", json=CHAT)
        wrong = await client.get("/v1/chat/completions")
        wrong_messages = await client.get("/v1/messages")
    assert missing.status_code == 404
    assert _openai_error(missing)["code"] == "not_found"
    assert wrong.status_code == 405
    assert _openai_error(wrong)
    assert wrong_messages.status_code == 405
    assert _anthropic_error(wrong_messages)
    # a 405 names the methods the endpoint takes (RFC 9110)
    assert wrong.headers["allow"] == wrong_messages.headers["allow"] == "POST"
    assert "allow" not in missing.headers


async def test_the_anthropic_sdk_gets_its_own_errors_on_endpoints_not_served() -> None:
    """``count_tokens`` is not served: the Anthropic SDK must still read the 404."""
    gw = Gateway()
    with pytest.raises(anthropic.NotFoundError) as caught:
        await gw.anthropic().messages.count_tokens(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    async with gw.client() as client:
        elsewhere = await client.get("/v1/files", headers={"anthropic-version": "2023-06-01"})
    assert _anthropic_error(elsewhere)["type"] == "not_found_error"


# --------------------------------------------------------------------------- 413


async def test_declared_body_over_the_limit_is_413_before_reading_it() -> None:
    gw = Gateway(max_body_bytes=200)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 500}]}
    response = await gw.post("/v1/chat/completions", big)
    assert response.status_code == 413
    assert _openai_error(response)["code"] == "request_too_large"
    response = await gw.post("/v1/messages", {**MESSAGE, "system": "y" * 500})
    assert response.status_code == 413
    assert _anthropic_error(response)["type"] == "request_too_large"
    assert (await gw.post("/v1/chat/completions", CHAT)).status_code == 200


async def test_streamed_body_over_the_limit_is_413_without_reading_the_rest() -> None:
    gw = Gateway(max_body_bytes=100)
    pieces = [b"{", b'"model": "gpt-4o-mini", ', b'"messages": ' + b"[" * 80, b"never read"]
    delivered: list[bytes] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        piece = pieces[len(delivered)]
        delivered.append(piece)
        return {"type": "http.request", "body": piece, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = _scope("POST", "/v1/chat/completions", [(b"x-api-key", gw.key.encode())])
    await gw.app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert b"never read" not in delivered


# --------------------------------------------------------------------------- 429


async def test_rate_limit_is_429_with_retry_after_per_key() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    gw = Gateway(rate_limit=RateLimit(rate=0.5, burst=2), limiter=limiter)
    statuses = [(await gw.post("/v1/chat/completions", CHAT)).status_code for _ in range(2)]
    assert statuses == [200, 200]
    refused = await gw.post("/v1/chat/completions", CHAT)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"
    assert _openai_error(refused)["type"]
    refused = await gw.post("/v1/messages", MESSAGE)
    assert refused.status_code == 429
    assert _anthropic_error(refused)["type"] == "rate_limit_error"
    other = await gw.post("/v1/chat/completions", CHAT, key=gw.hint_key)
    assert other.status_code == 200  # buckets are per key
    now[0] += 2.0
    assert (await gw.post("/v1/chat/completions", CHAT)).status_code == 200
    assert len(gw.sink.records) == 4


async def test_a_keys_own_rate_limit_overrides_the_default() -> None:
    gw = Gateway(rate_limit=RateLimit(rate=1000, burst=1000))
    strict, _ = gw.keys.create(owner="user-3", rate_limit=RateLimit(rate=0.001, burst=1))
    assert (await gw.post("/v1/chat/completions", CHAT, key=strict)).status_code == 200
    assert (await gw.post("/v1/chat/completions", CHAT, key=strict)).status_code == 429
    assert (await gw.post("/v1/chat/completions", CHAT)).status_code == 200


# --------------------------------------------------------------------------- 402


async def test_a_keys_budget_blocks_that_key_with_402() -> None:
    gw = Gateway()
    budget = {"name": "key-cap", "scope": "api_key", "value": gw.info.key_id}
    config = {"routing": {"budgets": [{**budget, "limit_usd": "0.0000001"}]}}
    engine = LLMRoute({**FAST, **config}, sink=gw.sink, environ={})
    gw.app = gateway_app(engine, authenticator=gw.keys)
    blocked = await gw.post("/v1/chat/completions", CHAT)
    assert blocked.status_code == 402
    assert _openai_error(blocked)["code"] == "budget_exceeded"
    blocked = await gw.post("/v1/messages", MESSAGE)
    assert blocked.status_code == 402
    assert _anthropic_error(blocked)["type"] == "billing_error"
    assert (await gw.post("/v1/chat/completions", CHAT, key=gw.hint_key)).status_code == 200


# --------------------------------------------------------------------------- 5xx


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (Failure(kind="malformed"), 502),
        (Failure(kind="reset"), 503),
        (Failure(kind="timeout", hang=30), 504),
    ],
)
async def test_upstream_failures_are_502_503_504(failure: Failure, status: int) -> None:
    config = {
        "mode": "observe",  # send the call where the caller sent it
        "retry": {"max_retries": 0, "attempt_timeout_s": 0.2},
        "breaker": {"enabled": False},
    }
    gw = Gateway(config)
    gw.engine.fake_network.providers["api.openai.com"].inject("gpt-4o-mini", always=failure)
    response = await gw.post("/v1/chat/completions", CHAT)
    assert response.status_code == status
    assert _openai_error(response)
    with anyio.fail_after(30):  # a hang guard, not a timing assertion
        response = await gw.post("/v1/messages", {**MESSAGE, "model": "openai/gpt-4o-mini"})
    assert response.status_code == status
    assert _anthropic_error(response)


# --------------------------------------------------------------------------- hints


async def test_hint_headers_are_honoured_only_for_keys_allowed_to_set_them() -> None:
    gw = Gateway()
    hints = {"x-llmroute-tier": "cheap", "x-llmroute-feature": "search"}
    body = {**CHAT, "model": "gpt-5.4"}
    allowed = await gw.post("/v1/chat/completions", body, key=gw.hint_key, **hints)
    assert allowed.status_code == 200
    assert "hint_tier" in allowed.headers["x-llmroute-decision"]
    assert "x-llmroute-ignored-hints" not in allowed.headers
    plain = await gw.post("/v1/chat/completions", body, **hints)
    assert plain.status_code == 200
    assert "hint_tier" not in plain.headers["x-llmroute-decision"]
    assert plain.headers["x-llmroute-ignored-hints"] == "tier,feature"
    first, second = gw.sink.records
    assert (first.feature, first.tier, first.user_id) == ("search", 1, "user-2")
    assert (second.feature, second.user_id) == (None, "user-1")


async def test_invalid_hint_header_is_400_naming_it() -> None:
    gw = Gateway()
    response = await gw.post(
        "/v1/chat/completions", CHAT, key=gw.hint_key, **{"x-llmroute-tier": "0"}
    )
    assert response.status_code == 400
    assert _openai_error(response)["param"] == "X-LLMRoute-Tier"


@pytest.mark.parametrize(
    ("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGE)]
)
async def test_a_feature_longer_than_records_store_is_400_naming_the_header(
    path: str, body: dict[str, Any]
) -> None:
    """A feature is an attribution key: one the usage record would store cut short
    (its column holds 128) is refused, one that fits is recorded as sent."""
    gw = Gateway()
    too_long = await gw.post(path, body, key=gw.hint_key, **{"x-llmroute-feature": "f" * 129})
    assert too_long.status_code == 400
    if path == "/v1/messages":
        assert "X-LLMRoute-Feature" in _anthropic_error(too_long)["message"]
    else:
        assert _openai_error(too_long)["param"] == "X-LLMRoute-Feature"
    assert gw.sink.records == []
    fits = await gw.post(path, body, key=gw.hint_key, **{"x-llmroute-feature": "f" * 128})
    assert fits.status_code == 200
    assert [r.feature for r in gw.sink.records] == ["f" * 128]


async def test_request_ids_are_kept_only_when_safe_to_store() -> None:
    """The same rule as the middlewares': at most 128 printable ASCII characters
    without spaces (the stored column holds 128), else the call has none."""
    gw = Gateway()
    sent = ["req-1", "r" * 128, "r" * 129, "has space", "caf\xe9", "tab\there"]
    for request_id in sent:
        headers = {"x-request-id": request_id.encode("latin-1")}
        async with gw.client() as client:
            response = await client.post(
                "/v1/chat/completions",
                json=CHAT,
                headers={"authorization": f"Bearer {gw.key}", **headers},
            )
        assert response.status_code == 200
    assert [r.request_id for r in gw.sink.records] == ["req-1", "r" * 128, None, None, None, None]


@pytest.mark.parametrize("tier", [b"nonsense", "\xb2".encode("latin-1"), b"0x2", b"--2"])
@pytest.mark.parametrize(
    ("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGE)]
)
async def test_a_tier_header_routing_does_not_know_is_400_in_the_dialect(
    tier: bytes, path: str, body: dict[str, Any]
) -> None:
    gw = Gateway()
    headers = {"x-api-key": gw.hint_key.encode(), "x-llmroute-tier": tier}
    async with gw.client() as client:
        response = await client.post(path, json=body, headers=headers)
    assert response.status_code == 400
    if path == "/v1/messages":
        assert "X-LLMRoute-Tier" in _anthropic_error(response)["message"]
    else:
        assert _openai_error(response)["param"] == "X-LLMRoute-Tier"
    assert gw.sink.records == []


async def test_tier_names_in_the_header_are_read_in_any_case() -> None:
    gw = Gateway()
    response = await gw.post(
        "/v1/chat/completions", CHAT, key=gw.hint_key, **{"x-llmroute-tier": "CHEAP"}
    )
    assert response.status_code == 200
    assert [r.tier for r in gw.sink.records] == [1]


# --------------------------------------------------------------------------- streaming


async def test_stream_goes_out_event_by_event_and_records_on_close() -> None:
    gw = Gateway()
    body = json.dumps({**CHAT, "stream": True}).encode()
    sent: list[dict[str, Any]] = []
    events = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive() -> dict[str, Any]:
        for message in events:
            return message
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = _scope(
        "POST", "/v1/chat/completions", [(b"authorization", f"Bearer {gw.key}".encode())]
    )
    with anyio.fail_after(30):  # a hang guard, not a timing assertion
        await gw.app(scope, receive, send)
    start, *bodies = sent
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream") in start["headers"]
    assert not any(name == b"content-length" for name, _ in start["headers"])
    assert len(bodies) > 3
    assert all(m["more_body"] for m in bodies[:-1])
    assert bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    (record,) = gw.sink.records
    assert record.streamed


async def test_caller_leaving_mid_stream_stops_it_and_still_records() -> None:
    gw = Gateway()
    body = json.dumps({**CHAT, "stream": True}).encode()
    gone = anyio.Event()
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 3:
            gone.set()
            await anyio.wait_all_tasks_blocked()  # the disconnect is seen

    scope = _scope("POST", "/v1/chat/completions", [(b"x-api-key", gw.key.encode())])
    with anyio.fail_after(30):  # a hang guard, not a timing assertion
        await gw.app(scope, receive, send)
    # The stream stopped when the caller left: no further events, no clean end.
    assert len(sent) == 3
    assert all(m.get("more_body") for m in sent[1:])
    (record,) = gw.sink.records
    assert record.streamed


# --------------------------------------------------------------------------- setup


def test_gateway_needs_a_key_store_and_a_positive_body_limit() -> None:
    engine = LLMRoute(FAST, environ={})
    with pytest.raises(TypeError, match="KeyStore"):
        gateway_app(engine, authenticator=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_body_bytes"):
        gateway_app(engine, authenticator=MemoryKeyStore(), max_body_bytes=0)


async def test_async_key_stores_are_awaited() -> None:
    class AsyncStore:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def authenticate(self, plaintext: str) -> ApiKeyInfo | None:
            raise AssertionError("the async method should be used")

        async def aauthenticate(self, plaintext: str) -> ApiKeyInfo | None:
            self.seen.append(plaintext)
            return ApiKeyInfo(key_id="k-async", owner="db-user") if plaintext == "ok" else None

    store = AsyncStore()
    sink = MemorySink()
    app = gateway_app(LLMRoute(FAST, sink=sink, environ={}), authenticator=store)
    transport = httpx2.ASGITransport(app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://gw") as client:
        good = await client.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": "ok"})
        bad = await client.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": "no"})
    assert (good.status_code, bad.status_code) == (200, 401)
    assert [r.api_key_id for r in sink.records] == ["k-async"]


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


@pytest.mark.parametrize(
    ("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGE)]
)
async def test_a_utf8_feature_header_is_recorded_as_sent(path: str, body: dict[str, Any]) -> None:
    """Header bytes in UTF-8 are read as UTF-8 (not latin-1, which would garble them);
    bytes that are not UTF-8 are refused naming the header, never guessed at."""
    gw = Gateway()
    sent = await gw.post(path, body, key=gw.hint_key, **{"x-llmroute-feature": "résumé".encode()})  # type: ignore[arg-type]
    assert sent.status_code == 200, sent.text
    assert [r.feature for r in gw.sink.records] == ["résumé"]
    bad = await gw.post(path, body, key=gw.hint_key, **{"x-llmroute-feature": b"r\xe9sum\xe9"})  # type: ignore[arg-type]
    assert bad.status_code == 400
    if path == "/v1/messages":
        assert "X-LLMRoute-Feature" in _anthropic_error(bad)["message"]
    else:
        assert _openai_error(bad)["param"] == "X-LLMRoute-Feature"
    assert len(gw.sink.records) == 1
