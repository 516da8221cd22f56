"""The fake upstream as a pure ASGI app, and a helper that serves it with uvicorn."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl

from ._fake_server import RawRequest
from ._fake_wire import Reply

__all__ = ["make_app", "serve"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ConnectionDropped(Exception):
    """Raised inside the app to make the server drop the connection (reset / cut)."""


async def _unless_gone(receive: Receive, work: Callable[[], Awaitable[None]]) -> bool:
    """Run ``work``, cancelling it if the client disconnects; True if it did."""
    import anyio

    gone = False
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            group.cancel_scope.cancel()

        group.start_soon(watch)
        await work()
        group.cancel_scope.cancel()
    return gone


def make_app(handler: Callable[[RawRequest], Reply]) -> ASGIApp:
    """An ASGI app answering every request with ``handler``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        raw = RawRequest(
            scope["method"], scope["path"], query, headers, body, headers.get("host", "")
        )
        reply = handler(raw)
        import anyio

        start_delay = reply.start_delay()
        if start_delay > 0 and await _unless_gone(receive, lambda: anyio.sleep(start_delay)):
            return
        if reply.reset:
            # ASGI cannot reset a socket; promise a body and drop the connection instead.
            start = {"type": "http.response.start", "status": 200}
            await send(start | {"headers": [(b"content-length", b"64")]})
            raise ConnectionDropped("connection reset")
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
        if not reply.stream and not reply.abort:
            length = sum(len(p.data) for p in reply.pieces)
            out.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": out})

        async def write_body() -> None:
            for delay, data in reply.schedule():
                if delay > 0:
                    await anyio.sleep(delay)
                await send({"type": "http.response.body", "body": data, "more_body": True})

        if await _unless_gone(receive, write_body):
            return  # the client left mid-stream (a stall, a read timeout)
        if reply.abort:
            raise ConnectionDropped("stream cut")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


@contextmanager
def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields the base URL."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level="critical", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fake-provider", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake provider's server did not start")
        time.sleep(0.005)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
