"""The dispatcher's upstream sender: straight to the transport, or through the client.

The direct path must send what ``client.send(client.build_request(..., json=...))``
would have sent (default headers, JSON bytes, timeout, the upstream marker) through
the transport the client would pick, and step aside for clients whose auth or event
hooks must run.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import httpx2
import pytest

from routing_middleware._upstream import UPSTREAM_EXTENSION, UpstreamSender, encode_json
from routing_middleware.providers.base import EncodedRequest

URL = "https://api.example.test/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "héllo ✓"}], "n": 1}


def encoded(**headers: str) -> EncodedRequest:
    return EncodedRequest(
        method="POST",
        url=URL,
        headers={"content-type": "application/json", "Authorization": "Bearer sk-x", **headers},
        json=BODY,
    )


class Recorder:
    """A transport (sync and async) that keeps each request and answers 200."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.seen: list[Any] = []

    def handle(self, request: Any) -> Any:
        request.read()
        self.seen.append(request)
        return self.lib.Response(200, json={"ok": True}, headers={"set-cookie": "c=1"})

    def sync(self) -> Any:
        return self.lib.MockTransport(self.handle)


@pytest.mark.parametrize("lib", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_direct_send_matches_what_the_client_would_send(lib: Any) -> None:
    recorder = Recorder(lib)
    client = lib.Client(transport=recorder.sync(), headers={"x-app": "desk"}, timeout=7)
    sender = UpstreamSender(client)
    assert sender.direct
    reference = client.build_request("POST", URL, headers=encoded().headers, json=BODY)

    response = sender.send(sender.build(encoded(), 3.5))
    assert response.status_code == 200
    assert json.loads(response.read()) == {"ok": True}
    assert response.request is recorder.seen[0]

    sent = recorder.seen[0]
    assert sent.content == reference.content == encode_json(BODY)
    assert json.loads(sent.content)["messages"][0]["content"] == "héllo ✓"
    for name in ("x-app", "user-agent", "accept-encoding", "authorization", "content-type"):
        assert sent.headers[name] == reference.headers[name], name
    assert sent.headers["content-length"] == str(len(sent.content))
    assert sent.headers["host"] == "api.example.test"
    assert sent.extensions[UPSTREAM_EXTENSION] is True
    assert sent.extensions["timeout"] == lib.Timeout(3.5).as_dict()

    # No timeout given (attempt_timeout=None): no limit, not the client's 7 s.
    sender.send(sender.build(encoded(), None)).read()
    assert recorder.seen[1].extensions["timeout"] == lib.Timeout(None).as_dict()


def test_headers_from_the_request_override_the_clients_defaults() -> None:
    recorder = Recorder(httpx)
    client = httpx.Client(transport=recorder.sync(), headers={"Accept": "text/plain"})
    sender = UpstreamSender(client)
    sender.send(sender.build(encoded(Accept="application/json"), 1.0)).read()
    assert recorder.seen[0].headers.get_list("accept") == ["application/json"]


def test_the_transport_the_client_would_mount_is_used() -> None:
    default, mounted = Recorder(httpx), Recorder(httpx)
    client = httpx.Client(
        transport=default.sync(), mounts={"https://api.example.test": mounted.sync()}
    )
    sender = UpstreamSender(client)
    sender.send(sender.build(encoded(), 1.0)).read()
    assert len(mounted.seen) == 1
    assert not default.seen


def test_no_timeout_means_none_through_the_client_too() -> None:
    recorder = Recorder(httpx)
    hooked = httpx.Client(transport=recorder.sync(), auth=("u", "p"), timeout=7)
    sender = UpstreamSender(hooked)
    assert not sender.direct
    sender.send(sender.build(encoded(), None)).read()
    assert recorder.seen[0].extensions["timeout"] == httpx.Timeout(None).as_dict()


def test_a_client_with_event_hooks_sends_through_the_client() -> None:
    recorder = Recorder(httpx)
    hooked: list[str] = []
    client = httpx.Client(
        transport=recorder.sync(),
        event_hooks={"request": [lambda request: hooked.append(str(request.url))]},
    )
    sender = UpstreamSender(client)
    assert not sender.direct
    sender.send(sender.build(encoded(), 1.0)).read()
    assert hooked == [URL]
    assert recorder.seen[0].extensions[UPSTREAM_EXTENSION] is True
    assert recorder.seen[0].content == encode_json(BODY)


def test_a_client_with_auth_sends_through_the_client() -> None:
    recorder = Recorder(httpx)
    client = httpx.Client(transport=recorder.sync(), auth=("user", "pw"))
    sender = UpstreamSender(client)
    assert not sender.direct
    request = sender.build(EncodedRequest(method="POST", url=URL, headers={}, json=BODY), 1.0)
    sender.send(request).read()
    assert recorder.seen[0].headers["authorization"].startswith("Basic ")


def test_cookies_a_provider_sets_are_not_sent_back() -> None:
    recorder = Recorder(httpx)
    client = httpx.Client(transport=recorder.sync())
    sender = UpstreamSender(client)
    for _ in range(2):
        sender.send(sender.build(encoded(), 1.0)).read()
    assert "cookie" not in recorder.seen[1].headers


def test_a_closed_client_refuses_to_send() -> None:
    client = httpx.Client(transport=Recorder(httpx).sync())
    sender = UpstreamSender(client)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        sender.send(sender.build(encoded(), 1.0))


@pytest.mark.parametrize("lib", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_async_direct_send(lib: Any) -> None:
    recorder = Recorder(lib)

    async def main() -> None:
        async with lib.AsyncClient(transport=lib.MockTransport(recorder.handle)) as client:
            sender = UpstreamSender(client)
            assert sender.direct
            response = await sender.asend(sender.build(encoded(), 2.0))
            assert json.loads(await response.aread()) == {"ok": True}
            await response.aclose()
            await client.aclose()
            with pytest.raises(RuntimeError, match="closed"):
                await sender.asend(sender.build(encoded(), 2.0))

    anyio.run(main)
    assert recorder.seen[0].content == encode_json(BODY)
    assert recorder.seen[0].extensions["timeout"] == lib.Timeout(2.0).as_dict()


def test_json_the_encoder_refuses_is_an_error() -> None:
    with pytest.raises(ValueError):
        encode_json({"x": float("nan")})
