"""A call's own timeout: ``RouteContext.timeout_s``, which interception takes from the
read timeout of the client that made the call, bounds each attempt when it is
tighter than the engine's ``attempt_timeout_s``."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from routing_middleware.context import RouteContext, route_hint
from routing_middleware.engine import LLMRoute
from routing_middleware.metering import MemorySink
from routing_middleware.retry import RetryPolicy
from routing_middleware.schema import UpstreamTimeout
from routing_middleware.testing import Failure
from routing_middleware.transport import RoutingTransport

from .served_upstream import CATALOG, KEY, TEXT, chat, decision, dispatcher, served_fake


def test_timeout_s_is_checked_as_a_hint() -> None:
    for bad in (0, -1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="timeout_s"):
            RouteContext().merged(timeout_s=bad)
    assert RouteContext().merged(timeout_s=2).timeout_s == 2


@pytest.mark.parametrize(
    ("own", "policy", "expected"),
    [(None, 12.0, 12.0), (0.5, 12.0, 0.5), (30.0, 12.0, 12.0), (0.5, None, 0.5)],
)
def test_the_tighter_of_the_calls_timeout_and_the_policys_is_sent(
    own: float | None, policy: float | None, expected: float
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-a",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            },
        )

    d = dispatcher(
        "https://m.fake",
        client=httpx.Client(transport=httpx.MockTransport(answer)),
        retry=RetryPolicy(attempt_timeout=policy, deadline=None),
    )
    assert d.dispatch(chat(), decision(), RouteContext(timeout_s=own)).text == "ok"
    (request,) = seen
    assert request.extensions["timeout"]["read"] == expected


def test_a_hanging_provider_is_left_after_the_calls_own_timeout() -> None:
    with served_fake() as (fake, url):
        fake.inject("gpt-a", Failure.timeout(hang=5))
        d = dispatcher(url, retry=RetryPolicy(max_retries=0, attempt_timeout=30.0))
        start = time.monotonic()
        with route_hint(timeout_s=0.3), pytest.raises(UpstreamTimeout):
            d.dispatch(chat(), decision())
        assert time.monotonic() - start < 3  # not the policy's 30 s, nor the 5 s hang


def _engine(url: str) -> LLMRoute:
    config: dict[str, Any] = {
        "providers": {"openai": {"api_key": KEY, "base_url": f"{url}/v1"}},
        "offline": "never",
        "cache": {"enabled": False},
        "retry": {"max_retries": 0, "attempt_timeout_s": 30.0},
    }
    return LLMRoute(config, catalog=CATALOG, sink=MemorySink(), environ={})


def test_interception_keeps_the_callers_client_timeout() -> None:
    # The caller addresses OpenAI; the engine's own upstream is the fake on a real
    # socket, where the timeout is enforced.
    chat_url = "https://api.openai.com/v1/chat/completions"
    headers = {"authorization": "Bearer sk-caller-0123456789"}
    body = {"model": "gpt-a", "messages": [{"role": "user", "content": "What is 2+2?"}]}
    with served_fake() as (fake, url):
        engine = _engine(url)
        inner = httpx.MockTransport(lambda request: httpx.Response(599))  # (never reached)
        with httpx.Client(transport=RoutingTransport(inner, engine=engine)) as client:
            ok = client.post(chat_url, json=body, headers=headers, timeout=5.0)
            assert ok.status_code == 200, ok.text
            assert ok.json()["choices"][0]["message"]["content"] == TEXT
            fake.inject("gpt-a", Failure.timeout(hang=5))
            start = time.monotonic()
            late = client.post(chat_url, json=body, headers=headers, timeout=0.3)
            took = time.monotonic() - start
    # the caller hears of its timeout in its dialect, well before the engine's 30 s
    assert late.status_code == 504, late.text
    assert late.json()["error"]["type"]
    assert took < 3


def test_async_interception_keeps_the_callers_client_timeout() -> None:
    import asyncio

    from routing_middleware.transport import AsyncRoutingTransport

    chat_url = "https://api.openai.com/v1/chat/completions"
    headers = {"authorization": "Bearer sk-caller-0123456789"}
    body = {"model": "gpt-a", "messages": [{"role": "user", "content": "What is 2+2?"}]}

    async def main(url: str, fake: Any) -> tuple[int, float]:
        engine = _engine(url)
        inner = httpx.MockTransport(lambda request: httpx.Response(599))  # (never reached)
        async with httpx.AsyncClient(transport=AsyncRoutingTransport(inner, engine=engine)) as c:
            ok = await c.post(chat_url, json=body, headers=headers, timeout=5.0)
            assert ok.status_code == 200, ok.text
            fake.inject("gpt-a", Failure.timeout(hang=5))
            start = time.monotonic()
            late = await c.post(chat_url, json=body, headers=headers, timeout=0.3)
            return late.status_code, time.monotonic() - start

    with served_fake() as (fake, url):
        status, took = asyncio.run(main(url, fake))
    assert status == 504
    assert took < 3


def test_a_client_timeout_looser_than_the_engines_is_not_kept() -> None:
    from routing_middleware._intercept import _client_timeout

    engine = LLMRoute(
        {"offline": "always", "retry": {"attempt_timeout_s": 60.0}}, sink=MemorySink(), environ={}
    )

    def request(**timeout: Any) -> httpx.Request:
        extensions = {"timeout": {"connect": 5.0, "read": None, **timeout}}
        return httpx.Request("POST", "https://api.openai.com/v1/x", extensions=extensions)

    # the SDKs' default (600 s per read), no read timeout, or nonsense: nothing kept
    assert _client_timeout(engine, request(read=600.0)) is None
    assert _client_timeout(engine, request()) is None
    assert _client_timeout(engine, request(read=float("nan"))) is None
    assert _client_timeout(engine, request(read=10)) == 10.0


def test_the_tighter_of_a_hint_and_the_client_timeout_bounds_the_call() -> None:
    from routing_middleware.context import call_timeout, client_timeout

    assert call_timeout(RouteContext()) is None
    assert call_timeout(RouteContext(timeout_s=2.0)) == 2.0
    token = client_timeout.set(10.0)
    try:
        assert call_timeout(RouteContext()) == 10.0
        assert call_timeout(RouteContext(timeout_s=2.0)) == 2.0
        assert call_timeout(RouteContext(timeout_s=20.0)) == 10.0
    finally:
        client_timeout.reset(token)
    assert call_timeout(RouteContext()) is None  # set only around the call it is for
