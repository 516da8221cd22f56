"""The gateway at its edges: callers that leave early, odd limits and key stores."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from routing_middleware import gateway
from routing_middleware.auth import ApiKeyInfo, RateLimit, RateLimiter
from routing_middleware.gateway import gateway_app
from routing_middleware.testing import Failure

from .test_gateway import CHAT, MESSAGE, Gateway, _anthropic_error, _openai_error, _scope

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------- callers leaving


@pytest.mark.parametrize("watch", ["asyncio", "anyio"])
@pytest.mark.parametrize(
    ("stream", "failure"),
    [
        # a stream whose first event comes, then nothing (a model thinking at length)
        (True, Failure(kind="stall", hang=60, after=1)),
        # a call whose answer does not come
        (False, Failure(kind="timeout", hang=60)),
    ],
)
async def test_a_caller_leaving_before_the_answer_starts_stops_the_upstream_call(
    stream: bool, failure: Failure, watch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if watch == "anyio":  # the watch used off asyncio (trio), run here on asyncio
        monkeypatch.setattr(gateway, "_unless_gone", gateway._unless_gone_anyio)
    config = {
        "mode": "observe",  # send the call where the caller sent it
        "retry": {"max_retries": 0, "attempt_timeout_s": 120},
        "breaker": {"enabled": False},
    }
    gw = Gateway(config)
    gw.engine.fake_network.providers["api.openai.com"].inject("gpt-4o-mini", always=failure)
    body = json.dumps({**CHAT, "stream": stream}).encode()
    delivered = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep(0.2)  # the caller gives up while the upstream is silent
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = _scope("POST", "/v1/chat/completions", [(b"x-api-key", gw.key.encode())])
    # The upstream would stay silent for a minute: the handler must end well before.
    with anyio.fail_after(20):
        await gw.app(scope, receive, send)
    assert sent == []  # nobody to answer
    (record,) = gw.sink.records  # the call is still metered
    assert record.api_key_id == gw.info.key_id


# --------------------------------------------------------------------------- key stores


async def test_a_key_a_store_answers_as_revoked_is_refused() -> None:
    """A store that maps its rows to ``ApiKeyInfo`` as they are (``revoked`` included)
    must not let a revoked key through."""

    class RowStore:
        def authenticate(self, plaintext: str) -> ApiKeyInfo | None:
            return ApiKeyInfo(key_id="k1", owner="u1", revoked=plaintext == "revoked")

    gw = Gateway()
    gw.app = gateway_app(gw.engine, authenticator=RowStore())
    assert (await gw.post("/v1/chat/completions", CHAT, key="live")).status_code == 200
    refused = await gw.post("/v1/chat/completions", CHAT, key="revoked")
    assert refused.status_code == 401
    assert _openai_error(refused)["message"] == "Invalid or revoked API key."
    refused = await gw.post("/v1/messages", MESSAGE, key="revoked")
    assert refused.status_code == 401
    assert _anthropic_error(refused)["type"] == "authentication_error"
    async with gw.client() as client:
        listed = await client.get("/v1/models", headers={"x-api-key": "revoked"})
    assert listed.status_code == 401
    assert len(gw.sink.records) == 1


@pytest.mark.parametrize("tags", [["team-a"], {"team-a"}, ("team-a",), "team-a"])
async def test_a_keys_tags_as_a_store_gives_them_are_its_tags_and_their_budgets_hold(
    tags: Any,
) -> None:
    """A store may build a key's info with its tags as a list, a set or one string:
    they are still the key's tags, and a budget on one of them still blocks (instead
    of failing the budget store, which lets every call through without budgets)."""

    class RowStore:
        def authenticate(self, plaintext: str) -> ApiKeyInfo | None:
            return ApiKeyInfo(key_id="k1", owner="u1", tags=tags)

    budget = {"name": "team", "scope": "tag", "value": "team-a", "limit_usd": "0.0000001"}
    gw = Gateway({"routing": {"budgets": [budget]}})
    gw.app = gateway_app(gw.engine, authenticator=RowStore())
    for stream in (False, True):
        blocked = await gw.post("/v1/chat/completions", {**CHAT, "stream": stream}, key="k")
        assert blocked.status_code == 402
        assert _openai_error(blocked)["code"] == "budget_exceeded"
    assert [record.tags for record in gw.sink.records] == [("team-a",), ("team-a",)]


@pytest.mark.parametrize(
    ("info", "budget"),
    [
        # a store that hands on its rows' integer ids as they are
        (ApiKeyInfo(key_id="k1", owner=42), {"scope": "user", "value": "42"}),  # type: ignore[arg-type]
        (ApiKeyInfo(key_id=7, owner="u1"), {"scope": "api_key", "value": "7"}),  # type: ignore[arg-type]
    ],
)
async def test_a_key_with_integer_ids_is_held_to_the_budgets_of_those_ids(
    info: ApiKeyInfo, budget: dict[str, str]
) -> None:
    class RowStore:
        def authenticate(self, plaintext: str) -> ApiKeyInfo | None:
            return info

    gw = Gateway({"routing": {"budgets": [{"name": "cap", **budget, "limit_usd": "0.0000001"}]}})
    gw.app = gateway_app(gw.engine, authenticator=RowStore())
    for stream in (False, True):
        blocked = await gw.post("/v1/chat/completions", {**CHAT, "stream": stream}, key="k")
        assert blocked.status_code == 402
    assert [(r.user_id, r.api_key_id) for r in gw.sink.records] == [(info.owner, info.key_id)] * 2
    assert all(
        isinstance(r.user_id, str) and isinstance(r.api_key_id, str) for r in gw.sink.records
    )


# --------------------------------------------------------------------------- 429


@pytest.mark.parametrize("per_minute", [7, 11, 13, 600])
async def test_a_caller_waiting_what_the_429_says_is_let_through(per_minute: int) -> None:
    """The SDKs wait exactly ``retry-after-ms`` when it is sent: it must not be rounded
    down to a moment before the bucket has a token again (another 429)."""
    now = [100.0]
    limit = RateLimit.per_minute(per_minute, burst=1)
    gw = Gateway(rate_limit=limit, limiter=RateLimiter(clock=lambda: now[0]))
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGE)):
        assert (await gw.post(path, body)).status_code == 200
        refused = await gw.post(path, body)
        assert refused.status_code == 429
        waited = int(refused.headers["retry-after-ms"]) / 1000
        assert int(refused.headers["retry-after"]) >= waited
        now[0] += waited
        assert (await gw.post(path, body)).status_code == 200
        now[0] += 3600.0  # a full bucket for the next dialect


@pytest.mark.parametrize("stream", [False, True])
async def test_a_handler_cancelled_mid_call_ends_after_the_call_is_metered(
    stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server cancelling the handler (shutting down) stops the upstream call, and the
    handler ends once that call's cleanup (its record) is done, not before: a task left
    running behind it could be lost with the loop."""
    import asyncio

    from routing_middleware import _dispatch_drivers

    ended = _dispatch_drivers._AsyncDriver._ended

    async def slow_ended(self: Any, effect: Any) -> None:  # (a store round trip)
        await asyncio.sleep(0.2)
        await ended(self, effect)

    monkeypatch.setattr(_dispatch_drivers._AsyncDriver, "_ended", slow_ended)
    config = {
        "mode": "observe",
        "retry": {"max_retries": 0, "attempt_timeout_s": 120},
        "breaker": {"enabled": False},
    }
    gw = Gateway(config)
    gw.engine.fake_network.providers["api.openai.com"].inject(
        "gpt-4o-mini", always=Failure(kind="timeout", hang=60)
    )
    body = json.dumps({**CHAT, "stream": stream}).encode()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the caller stays
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        raise AssertionError("nothing to send")

    scope = _scope("POST", "/v1/chat/completions", [(b"x-api-key", gw.key.encode())])
    handler = asyncio.ensure_future(gw.app(scope, receive, send))
    await asyncio.sleep(0.3)
    handler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handler
    (record,) = gw.sink.records
    assert record.api_key_id == gw.info.key_id
