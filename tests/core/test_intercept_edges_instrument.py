"""Edges of global interception: instrument() / uninstrument() racing with requests.

The engine runs offline (its FakeProviders answer routed calls); a separate "caller"
fake stands behind the host the code addressed, so a call sent on unchanged lands there.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import httpx2
import pytest

from routing_middleware import transport
from routing_middleware.context import route_hint
from routing_middleware.engine import LLMRoute
from routing_middleware.metering import MemorySink
from routing_middleware.testing import FakeModel, FakeNetwork, FakeProvider
from routing_middleware.transport import instrument, set_engine, uninstrument

FAST: dict[str, Any] = {"offline": "always", "offline_latency": "none"}
CHAT_URL = "https://api.openai.com/v1/chat/completions"
BODY = {"model": "gpt-5.4", "messages": [{"role": "user", "content": "Summarize: hi"}]}


def _engine() -> LLMRoute:
    return LLMRoute(FAST, sink=MemorySink(), environ={})


def _records(engine: LLMRoute) -> list[Any]:
    sink = engine.sink
    assert isinstance(sink, MemorySink)
    return sink.records


class _OtherThreadUninstruments:
    """A mount pattern that matches nothing; while the client looks its transport up
    (inside the patched method), another thread runs uninstrument() to the end."""

    def matches(self, url: Any) -> bool:
        thread = threading.Thread(target=uninstrument)
        thread.start()
        thread.join()
        return False


@pytest.mark.parametrize("lib_name", ["httpx", "httpx2"])
def test_a_request_racing_uninstrument_is_never_routed_by_another_engine(lib_name: str) -> None:
    lib: Any = httpx if lib_name == "httpx" else httpx2
    caller = FakeProvider(default_model=FakeModel("default", output_tokens=12))
    network = FakeNetwork({"api.openai.com": caller})
    instrumented, default = _engine(), _engine()
    previous = transport._engine
    set_engine(default)
    client = lib.Client(transport=network.transport(lib_name))
    client._mounts[_OtherThreadUninstruments()] = None
    instrument(instrumented)
    try:
        with route_hint(tier=1):
            response = client.post(CHAT_URL, json=BODY)
    finally:
        uninstrument()
        set_engine(previous)
    assert response.status_code == 200
    # Once uninstrument() is done the call goes out as sent; it was never routed by
    # the process default engine, which instrument() was not given.
    assert _records(default) == []
    assert "x-llmroute-model" not in response.headers
    assert len(caller.calls) == 1
