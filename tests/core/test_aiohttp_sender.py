"""The async path on aiohttp, against FakeProvider served over a real socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from routing_middleware import _aiohttp_sender
from routing_middleware._aiohttp_sender import AiohttpSender
from routing_middleware._upstream import UpstreamSender
from routing_middleware.dispatch import Dispatcher
from routing_middleware.engine import LLMRoute
from routing_middleware.metering import MemorySink
from routing_middleware.retry import RetryPolicy
from routing_middleware.schema import UpstreamTimeout, UpstreamUnavailable
from routing_middleware.testing import Failure, FakeProvider
from tests.core.served_upstream import KEY, TEXT, chat, decision, served_fake
from tests.core.served_upstream import dispatcher as make_dispatcher

aiohttp = pytest.importorskip("aiohttp")


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeProvider, str]]:
    with served_fake() as found:
        yield found


@pytest.fixture(autouse=True)
def _clean(served: tuple[FakeProvider, str]) -> None:
    served[0].clear_failures()


def dispatcher(url: str, sink: MemorySink | None = None, **kw: Any) -> Dispatcher:
    return make_dispatcher(url, sink, **{"async_client": "aiohttp", **kw})


def test_a_call_and_a_stream_over_aiohttp(served: tuple[FakeProvider, str]) -> None:
    fake, url = served
    sink = MemorySink()
    d = dispatcher(url, sink)
    assert isinstance(d.async_sender(), AiohttpSender)
    before = len(fake.ledger.calls)

    async def main() -> list[str]:
        answer = await d.adispatch(chat(), decision())
        assert answer.text == TEXT
        stream = await d.astream(chat(stream=True), decision())
        pieces = [chunk.text or "" async for chunk in stream]
        await d.aclose()
        return pieces

    pieces = anyio.run(main)
    assert "".join(pieces) == TEXT
    assert len(pieces) > 1  # arrived as a stream, not one body
    assert len(fake.ledger.calls) == before + 2
    assert [r.status for r in sink.records] == ["ok", "ok"]
    assert all(r.usage.output_tokens and r.cost > 0 for r in sink.records)


def test_rate_limits_are_retried_over_aiohttp(served: tuple[FakeProvider, str]) -> None:
    fake, url = served
    fake.inject("gpt-a", Failure(status=429, retry_after=0))
    sink = MemorySink()
    d = dispatcher(url, sink)

    async def main() -> str:
        try:
            return (await d.adispatch(chat(), decision())).text
        finally:
            await d.aclose()

    assert anyio.run(main) == TEXT
    assert [r.status for r in sink.records][-1] == "ok"
    assert len(sink.records) == 2


def test_an_early_closed_stream_is_recorded(served: tuple[FakeProvider, str]) -> None:
    _, url = served
    sink = MemorySink()
    d = dispatcher(url, sink)

    async def main() -> None:
        stream = await d.astream(chat(stream=True), decision())
        async for _ in stream:
            break
        await stream.aclose()
        # The connection went back or was dropped: the next call still works.
        assert (await d.adispatch(chat(), decision())).text == TEXT
        await d.aclose()

    anyio.run(main)
    assert len(sink.records) == 2


def test_a_refused_connection_is_upstream_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the call
    d = dispatcher(f"http://127.0.0.1:{port}", MemorySink(), retry=RetryPolicy(max_retries=0))

    async def main() -> None:
        try:
            with pytest.raises(UpstreamUnavailable):
                await d.adispatch(chat(), decision())
        finally:
            await d.aclose()

    anyio.run(main)


def test_a_read_timeout_is_upstream_timeout(served: tuple[FakeProvider, str]) -> None:
    fake, url = served
    fake.inject("gpt-a", Failure(kind="timeout", hang=2.0))
    policy = RetryPolicy(max_retries=0, attempt_timeout=0.2)
    d = dispatcher(url, MemorySink(), retry=policy)

    async def main() -> None:
        try:
            with pytest.raises(UpstreamTimeout):
                await d.adispatch(chat(), decision())
        finally:
            await d.aclose()

    anyio.run(main)


def test_one_session_per_event_loop(served: tuple[FakeProvider, str]) -> None:
    _, url = served
    d = dispatcher(url, MemorySink())
    sessions = []

    async def main() -> str:
        sessions.append(await d.async_sender().session())  # type: ignore[union-attr]
        return (await d.adispatch(chat(), decision())).text

    # Two loops one after the other, as async_to_sync or repeated asyncio.run make.
    assert anyio.run(main) == TEXT
    assert anyio.run(main) == TEXT
    assert sessions[0] is not sessions[1]
    # Each loop closed its own session on the way out, keep-alive connections included.
    assert sessions[0].closed
    assert sessions[1].closed
    assert anyio.run(main) == TEXT
    anyio.run(d.aclose)


def test_a_given_session_is_used_and_left_open(served: tuple[FakeProvider, str]) -> None:
    _, url = served

    async def main() -> None:
        session = aiohttp.ClientSession()
        d = dispatcher(url, MemorySink(), async_client=session)
        assert (await d.adispatch(chat(), decision())).text == TEXT
        await d.aclose()
        assert not session.closed
        await session.close()

    anyio.run(main)


def test_the_engine_picks_aiohttp_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"providers": {"openai": {"api_key": KEY}}, "offline": "never"}
    assert isinstance(LLMRoute(config).dispatcher.async_sender(), AiohttpSender)
    httpx_only = LLMRoute({**config, "async_client": "httpx"})
    assert isinstance(httpx_only.dispatcher.async_sender(), UpstreamSender)

    monkeypatch.setattr(_aiohttp_sender, "available", lambda: False)
    assert isinstance(LLMRoute(config).dispatcher.async_sender(), UpstreamSender)
    with pytest.raises(ValueError, match=r"llmroute\[aiohttp\]"):
        LLMRoute({**config, "async_client": "aiohttp"})


def test_proxy_variables_are_honoured_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def trusts_env() -> bool:
        sender = AiohttpSender()
        session = await sender.session()
        await sender.aclose()
        return bool(session.trust_env)

    assert anyio.run(trusts_env) is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert anyio.run(trusts_env) is True


def test_tls_is_verified_against_the_bundle_httpx_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    import certifi

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)

    async def context() -> ssl.SSLContext:
        sender = AiohttpSender()
        session = await sender.session()
        found = session.connector._ssl
        await sender.aclose()
        return found  # type: ignore[no-any-return]

    found = anyio.run(context)
    assert isinstance(found, ssl.SSLContext)
    assert found.verify_mode == ssl.CERT_REQUIRED
    assert found.check_hostname
    bundle = ssl.create_default_context(cafile=certifi.where())
    assert len(found.get_ca_certs()) == len(bundle.get_ca_certs()) > 0


def test_building_an_engine_does_not_import_aiohttp() -> None:
    """aiohttp takes ~0.2 s to import: it loads on the first async call, not before."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from routing_middleware.engine import LLMRoute\n"
        "engine = LLMRoute({'providers': {'openai': {'api_key': 'sk-test-x'}},"
        " 'offline': 'never'}, environ={})\n"
        "assert type(engine.dispatcher.async_sender()).__name__ == 'AiohttpSender'\n"
        "print('aiohttp' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
