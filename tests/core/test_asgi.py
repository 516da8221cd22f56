"""RoutingMiddleware in Starlette and FastAPI: context in, records attributed, bytes untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from decimal import Decimal
from typing import Any

import anyio
import httpx2
import pytest
from fastapi import APIRouter, BackgroundTasks, FastAPI
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.background import BackgroundTask
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route

from routing_middleware.asgi import RoutingMiddleware, request_records
from routing_middleware.context import RouteContext, current_context, route_hint, use_context
from routing_middleware.engine import LLMRoute
from routing_middleware.metering import MemorySink, UsageRecord
from routing_middleware.schema import ChatRequest, Message

pytestmark = pytest.mark.anyio

FAST = {"offline_latency": "none"}


def _request() -> ChatRequest:
    return ChatRequest(
        model="openai/gpt-5.4",
        messages=[Message(role="user", content="Summarize: the printer jams on page two.")],
    )


def _engine(**config: Any) -> tuple[LLMRoute, MemorySink]:
    sink = MemorySink()
    return LLMRoute({**FAST, **config}, sink=sink, environ={}), sink


class _HeaderAuth(AuthenticationBackend):
    """Authenticates ``x-user: <name>``; anything else is anonymous."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def _client(app: Any) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://app.test")


def _only(sink: MemorySink) -> UsageRecord:
    (record,) = sink.records
    return record


# --------------------------------------------------------------------------- Starlette


async def test_starlette_async_endpoint_hints_and_user_reach_the_router() -> None:
    engine, sink = _engine()

    @route_hint(tier="cheap", feature="summaries")
    async def summarize(request: Request) -> JSONResponse:
        done = await engine.acomplete(_request())
        return JSONResponse({"model": done.decision.model, "tier": done.decision.tier})

    app = Starlette(
        routes=[Route("/docs/{doc}/summary", summarize, methods=["POST"])],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=_HeaderAuth()),
            Middleware(RoutingMiddleware, engine=engine),
        ],
    )
    async with _client(app) as client:
        response = await client.post("/docs/7/summary", headers={"x-user": "ada"})
    assert response.status_code == 200
    record = _only(sink)
    assert record.feature == "summaries"
    assert record.user_id == "ada"
    assert record.route == "/docs/{doc}/summary"
    assert record.request_id
    assert response.json()["tier"] == record.tier == 1
    assert record.chosen_model == response.json()["model"] != "openai/gpt-5.4"
    assert current_context() == RouteContext()


async def test_starlette_sync_endpoint_runs_in_a_thread_with_the_context() -> None:
    engine, sink = _engine()

    @route_hint(feature="sync-report", tier=1)
    def report(request: Request) -> PlainTextResponse:
        done = engine.complete(_request())
        return PlainTextResponse(done.decision.model)

    app = Starlette(
        routes=[Route("/report", report)],
        middleware=[Middleware(RoutingMiddleware, user=lambda scope: "from-callable")],
    )
    async with _client(app) as client:
        response = await client.get("/report")
    record = _only(sink)
    assert (record.feature, record.user_id, record.route) == (
        "sync-report",
        "from-callable",
        "/report",
    )
    assert response.text == record.chosen_model


async def test_hints_apply_to_a_streaming_body_and_a_background_task_after_the_response() -> None:
    engine, sink = _engine()
    seen: list[RouteContext] = []

    async def late_call() -> None:
        seen.append(current_context())
        await engine.acomplete(_request())

    @route_hint(feature="chat", tier="cheap")
    async def chat(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            seen.append(current_context())
            yield b"data: one\n\n"

        return StreamingResponse(
            body(), media_type="text/event-stream", background=BackgroundTask(late_call)
        )

    app = Starlette(
        routes=[Mount("/api", routes=[Route("/chat", chat)])],
        middleware=[
            Middleware(RoutingMiddleware, tags=lambda scope: ["beta"]),
            Middleware(AuthenticationMiddleware, backend=_HeaderAuth()),  # inside: set later
        ],
    )
    async with _client(app) as client:
        response = await client.get("/api/chat", headers={"x-user": "grace"})
    assert response.text == "data: one\n\n"
    assert [c.feature for c in seen] == ["chat", "chat"]
    assert {c.route for c in seen} == {"/api/chat"}
    record = _only(sink)
    assert (record.feature, record.user_id, record.tags) == ("chat", "grace", ("beta",))
    assert record.tier == 1
    assert record.request_id == seen[0].request_id


async def test_class_endpoint_hints_come_from_the_method_handler() -> None:
    engine, sink = _engine()

    class Tickets(HTTPEndpoint):
        @route_hint(tier="cheap", feature="tickets")
        async def post(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok", background=BackgroundTask(engine.acomplete, _request()))

    app = Starlette(routes=[Route("/tickets", Tickets)], middleware=[Middleware(RoutingMiddleware)])
    async with _client(app) as client:
        await client.post("/tickets")
    record = _only(sink)
    assert (record.feature, record.tier) == ("tickets", 1)


async def test_anonymous_users_are_nobody_and_request_ids_are_taken_from_the_header() -> None:
    captured: list[RouteContext] = []

    async def whoami(request: Request) -> PlainTextResponse:
        captured.append(current_context())
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", whoami)],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=_HeaderAuth()),
            Middleware(RoutingMiddleware, tags=["site"]),
        ],
    )
    async with _client(app) as client:
        await client.get("/", headers={"x-request-id": "req-123"})
        await client.get("/")
    assert captured[0].user_id is None
    assert captured[0].request_id == "req-123"
    assert captured[0].tags == frozenset({"site"})
    assert captured[1].request_id not in (None, "req-123")


# --------------------------------------------------------------------------- FastAPI


async def test_fastapi_sync_async_included_router_and_background_tasks() -> None:
    engine, sink = _engine()
    router = APIRouter(prefix="/v2")

    @router.post("/answer/{item_id}")
    @route_hint(feature="answers", tier="cheap")
    async def answer(item_id: int, tasks: BackgroundTasks) -> dict[str, Any]:
        done = await engine.acomplete(_request())
        tasks.add_task(engine.acomplete, _request())  # after the response is sent
        return {"item": item_id, "tier": done.decision.tier}

    app = FastAPI()

    @app.get("/sync")
    @route_hint(feature="sync-feature")
    def sync_view() -> dict[str, str]:
        return {"model": engine.complete(_request()).decision.model}

    app.include_router(router)
    app.add_middleware(RoutingMiddleware, user=lambda scope: "u-1")
    async with _client(app) as client:
        first = await client.post("/v2/answer/5")
        second = await client.get("/sync")
    assert first.json() == {"item": 5, "tier": 1}
    assert second.status_code == 200
    records = sink.records
    assert [r.feature for r in records] == ["answers", "answers", "sync-feature"]
    assert {r.user_id for r in records} == {"u-1"}
    assert records[0].request_id == records[1].request_id != records[2].request_id
    assert records[1].tier == 1
    assert records[2].route == "/sync"
    assert records[0].route == "/v2/answer/{item_id}"


async def test_fastapi_exception_in_the_endpoint_still_resets_the_context() -> None:
    app = FastAPI()

    @app.get("/boom")
    @route_hint(feature="boom")
    async def boom() -> None:
        raise RuntimeError("endpoint failed")

    app.add_middleware(RoutingMiddleware, user=lambda scope: "u-2")
    outer = RouteContext(feature="outer")
    with use_context(outer):
        transport = httpx2.ASGITransport(app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://app.test") as client:
            response = await client.get("/boom")
        assert response.status_code == 500
        assert current_context() == outer
    assert current_context() == RouteContext()


# --------------------------------------------------------------------------- raw ASGI


async def test_exception_propagates_and_the_context_is_restored() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["endpoint"] = route_hint(feature="x")(lambda: None)
        assert current_context().feature == "x"
        raise ValueError("boom")

    middleware = RoutingMiddleware(app)
    with pytest.raises(ValueError, match="boom"):
        await middleware(_http_scope(), _no_body, _discard)
    assert current_context() == RouteContext()


async def test_lifespan_and_websocket_scopes_pass_straight_through() -> None:
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append((scope, receive, send, current_context()))

    middleware = RoutingMiddleware(app, user=lambda scope: "never-called")
    for kind in ("lifespan", "websocket"):
        scope = {"type": kind, "asgi": {"version": "3.0"}}
        await middleware(scope, _no_body, _discard)
        assert got[-1] == (scope, _no_body, _discard, RouteContext())
        assert got[-1][0] is scope


async def test_a_streaming_response_is_sent_chunk_by_chunk_not_buffered() -> None:
    engine, _ = _engine()
    first_chunk_sent = anyio.Event()
    sent: list[dict[str, Any]] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        # Buffering middleware would wait for the whole body before sending
        # anything: this chunk is produced only once the first one went out.
        await first_chunk_sent.wait()
        yield b"data: 2\n\n"

    app = StreamingResponse(body(), media_type="text/event-stream")
    middleware = RoutingMiddleware(app, engine=engine, server_timing=True)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))
        if message.get("body") == b"data: 1\n\n":
            first_chunk_sent.set()

    with anyio.fail_after(10):  # a hang guard, not a timing assertion
        await middleware(_http_scope(), _receive_once(), send)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert bodies[:2] == [b"data: 1\n\n", b"data: 2\n\n"]
    start = sent[0]
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert not any(name == b"server-timing" for name, _ in start["headers"])


async def test_server_timing_sums_the_requests_calls() -> None:
    engine, _ = _engine(server_timing=True)
    inside: list[list[UsageRecord]] = []

    async def two_calls(request: Request) -> PlainTextResponse:
        await engine.acomplete(_request())
        await engine.acomplete(_request())
        inside.append(request_records())
        return PlainTextResponse("ok", headers={"server-timing": "db;dur=3"})

    async def no_calls(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/two", two_calls), Route("/none", no_calls)],
        middleware=[Middleware(RoutingMiddleware, engine=engine)],
    )
    async with _client(app) as client:
        two = await client.get("/two")
        none = await client.get("/none")
    timings = two.headers.get_list("server-timing")
    assert timings[0] == "db;dur=3"
    llm = timings[1]
    assert llm.startswith("llm;dur=")
    cost = sum((r.cost for r in inside[0]), start=Decimal(0))
    assert f'desc="2 calls, ${cost.normalize():f}"' in llm
    assert "server-timing" not in none.headers
    assert request_records() == []


def test_server_timing_follows_the_engine_config_and_tags_are_not_a_string() -> None:
    # Records are collected from any engine, so Server-Timing needs none of its own.
    assert RoutingMiddleware(_discard, server_timing=True).server_timing
    assert not RoutingMiddleware(_discard).server_timing
    with pytest.raises(TypeError, match="string"):
        RoutingMiddleware(_discard, tags="beta")
    engine, _ = _engine(server_timing=True)
    assert RoutingMiddleware(_discard, engine=engine).server_timing
    assert not RoutingMiddleware(_discard, engine=engine, server_timing=False).server_timing


def _http_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _receive_once() -> Any:
    """The request's empty body, then nothing until cancelled (the client stays)."""
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls > 1:
            await anyio.sleep_forever()
        return {"type": "http.request", "body": b"", "more_body": False}

    return receive


async def _discard(*args: Any) -> None:
    return None


def test_request_ids_from_headers_are_kept_only_when_safe_to_store() -> None:
    from routing_middleware.asgi import _request_id

    def scope(value: bytes) -> dict[str, Any]:
        return {"headers": [(b"x-request-id", value)]}

    assert _request_id(scope(b"req-123_ABC")) == "req-123_ABC"
    for bad in (b"x" * 129, b"has space", b"tab\there", "caf\u00e9".encode("latin-1"), b""):
        generated = _request_id(scope(bad))
        assert generated != bad.decode("latin-1")
        assert len(generated) == 32
