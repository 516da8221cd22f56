"""RoutingMiddleware edge cases: failing callables, nesting, mounts with path params."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, BackgroundTasks, FastAPI
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from routing_middleware.asgi import RoutingMiddleware
from routing_middleware.context import RouteContext, current_context, route_hint
from tests.core.test_asgi import _client, _engine, _request

pytestmark = pytest.mark.anyio


class _AlwaysAda(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser]:
        return AuthCredentials(["authenticated"]), SimpleUser("ada")


async def test_a_failing_user_or_tags_callable_does_not_fail_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, sink = _engine()
    seen: list[RouteContext] = []

    @route_hint(feature="reports")
    async def report(request: Request) -> PlainTextResponse:
        seen.append(current_context())
        await engine.acomplete(_request())
        return PlainTextResponse("ok")

    def user(scope: Any) -> str:
        raise KeyError("secret-session-token")

    def tags(scope: Any) -> list[str]:
        raise RuntimeError("tags backend down")

    app = Starlette(
        routes=[Route("/report", report)],
        middleware=[
            Middleware(RoutingMiddleware, user=user, tags=tags),
            # writes scope["user"] inside: the user callable runs again then
            Middleware(AuthenticationMiddleware, backend=_AlwaysAda()),
        ],
    )
    async with _client(app) as client:
        response = await client.get("/report")
    assert response.status_code == 200
    assert (seen[0].feature, seen[0].user_id, seen[0].tags) == ("reports", None, None)
    (record,) = sink.records
    assert record.feature == "reports"
    assert "secret-session-token" not in caplog.text
    assert "KeyError" in caplog.text


async def test_nested_middlewares_send_one_llm_server_timing() -> None:
    engine, sink = _engine(server_timing=True)

    async def answer(request: Request) -> PlainTextResponse:
        await engine.acomplete(_request())
        return PlainTextResponse("ok", headers={"server-timing": 'db;dur=2;desc="llm, cache"'})

    sub = Starlette(
        routes=[Route("/answer", answer)],
        middleware=[Middleware(RoutingMiddleware, engine=engine)],
    )
    app = Starlette(
        routes=[Mount("/sub", sub)], middleware=[Middleware(RoutingMiddleware, engine=engine)]
    )
    async with _client(app) as client:
        response = await client.get("/sub/answer")
    timings = response.headers.get_list("server-timing")
    assert timings[0] == 'db;dur=2;desc="llm, cache"'
    assert len(timings) == 2
    (record,) = sink.records
    assert timings[1].startswith("llm;dur=")
    assert f'desc="1 call, ${record.cost.normalize():f}"' in timings[1]


async def test_routes_under_mounts_with_path_params_are_named_by_their_templates() -> None:
    engine, sink = _engine()

    @route_hint(feature="items")
    async def item(request: Request) -> PlainTextResponse:
        await engine.acomplete(_request())
        return PlainTextResponse("ok")

    api = FastAPI()
    router = APIRouter(prefix="/teams/{team}")

    @router.get("/notes/{note_id}")
    @route_hint(feature="notes")
    def note(team: str, note_id: int) -> dict[str, str | None]:
        engine.complete(_request())
        return {"feature": current_context().feature}

    api.include_router(router)
    deep = Starlette(routes=[Route("/items/{item_id:int}", item)])
    app = Starlette(
        routes=[
            Mount("/orgs/{org}", routes=[Mount("/projects/{project:int}", deep)]),
            Mount("/api/{version}", api),
        ],
        middleware=[Middleware(RoutingMiddleware)],
    )
    async with _client(app) as client:
        first = await client.get("/orgs/acme/projects/42/items/7")
        second = await client.get("/api/v1/teams/blue/notes/9")
    assert (first.status_code, second.json()) == (200, {"feature": "notes"})
    assert [(r.feature, r.route) for r in sink.records] == [
        ("items", "/orgs/{org}/projects/{project}/items/{item_id}"),
        ("notes", "/api/{version}/teams/{team}/notes/{note_id}"),
    ]


async def test_a_callable_instance_endpoints_hints_reach_its_background_task() -> None:
    engine, sink = _engine()

    class Summaries:
        @route_hint(feature="summaries", tier="cheap")
        async def __call__(self, tasks: BackgroundTasks) -> dict[str, str]:
            await engine.acomplete(_request())
            tasks.add_task(engine.acomplete, _request())  # after the response
            return {}

    app = FastAPI()
    app.add_api_route("/summaries", Summaries())
    app.add_middleware(RoutingMiddleware)
    async with _client(app) as client:
        response = await client.get("/summaries")
    assert response.status_code == 200
    assert [(r.feature, r.tier, r.route) for r in sink.records] == [
        ("summaries", 1, "/summaries"),
        ("summaries", 1, "/summaries"),
    ]


async def test_a_middleware_inside_a_mounted_app_names_routes_with_the_mounts_above() -> None:
    engine, sink = _engine()

    async def answer(request: Request) -> PlainTextResponse:
        await engine.acomplete(_request())
        return PlainTextResponse("ok")

    def sub() -> Starlette:
        return Starlette(
            routes=[Route("/answer/{x}", answer)],
            middleware=[Middleware(RoutingMiddleware, engine=engine)],
        )

    alone = Starlette(routes=[Mount("/sub", sub())])
    nested = Starlette(
        routes=[Mount("/orgs/{org}", sub())],
        middleware=[Middleware(RoutingMiddleware, engine=engine)],
    )
    async with _client(alone) as client:
        await client.get("/sub/answer/1")
    async with _client(nested) as client:
        await client.get("/orgs/acme/answer/2")
    assert [r.route for r in sink.records] == ["/sub/answer/{x}", "/orgs/{org}/answer/{x}"]
