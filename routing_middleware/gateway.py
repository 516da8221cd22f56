"""The engine as an OpenAI- and Anthropic-compatible HTTP gateway (a Starlette app).

::

    keys = MemoryKeyStore()
    plaintext, info = keys.create(owner="user-42")
    app = gateway_app(engine, authenticator=keys, rate_limit=RateLimit.per_minute(600))
    # mount it: Starlette(routes=[Mount("/llm", app=app)]) -> /llm/v1/chat/completions

Endpoints: ``POST /v1/chat/completions`` (OpenAI dialect, streamed or not),
``POST /v1/messages`` (Anthropic dialect), ``GET /v1/models`` and
``GET /v1/models/{id}`` (the catalog with prices per 1M tokens, context window
and tier; in Anthropic's shape for a request with ``anthropic-version``). Every
request needs an API key, sent as ``Authorization: Bearer`` or
``x-api-key``; its calls are attributed to the key's owner and id, the key's
budgets (``scope: api_key``) and rate limit apply, and only keys allowed to may
steer routing with ``X-LLMRoute-Tier`` / ``X-LLMRoute-Feature``.

Every failure answers in the caller's dialect: 401 (no, invalid or revoked key),
400 (invalid input, naming the field), 404 (a model the catalog does not know, with
suggestions: the gateway serves catalog models only, as it must price them), 413
(body over ``max_body_bytes``), 429 (rate limit, with ``Retry-After``), 402
(budget), 502/503/504 (upstream), 500 (a failure inside llmroute). The handlers
are plain ASGI callables: bodies are read once, answers are sent as they come,
and streams are never buffered.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._hint_headers import feature_hint, tier_hint
from ._model_listing import ModelListing
from .auth import ApiKeyInfo, KeyStore, RateLimit, RateLimiter
from .context import RouteContext, current_context, is_valid_request_id
from .schema import AuthenticationFailed, InvalidRequest, LLMError, RateLimited, UnknownModel

logger = logging.getLogger("llmroute.gateway")

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.types import Message, Receive, Scope, Send

    from .engine import LLMRoute
    from .relay import Relay, RelayResponse

__all__ = ["gateway_app"]

_ASGIHandler = Callable[["Scope", "Receive", "Send"], Awaitable[None]]
_EMPTY = RouteContext()
_WANTED_HEADERS = frozenset(
    {
        b"authorization",
        b"x-api-key",
        b"content-length",
        b"x-request-id",
        b"x-llmroute-tier",
        b"x-llmroute-feature",
        b"anthropic-version",  # (Anthropic's SDKs: their model list has its own shape)
    }
)


class _Disconnected(Exception):
    """The caller went away before its request body arrived."""


class _Endpoint:
    """A plain ASGI endpoint for a Starlette ``Route`` (not wrapped in a Request)."""

    __slots__ = ("handler",)

    def __init__(self, handler: _ASGIHandler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


class _Gateway:
    """The handlers and what they share; holds no per-request state."""

    def __init__(
        self,
        engine: LLMRoute,
        relay: Relay,
        keys: KeyStore,
        limiter: RateLimiter,
        rate_limit: RateLimit | None,
        max_body_bytes: int,
    ) -> None:
        self.engine = engine
        self.relay = relay
        self.keys = keys
        self.aauthenticate: Callable[[str], Awaitable[ApiKeyInfo | None]] | None = getattr(
            keys, "aauthenticate", None
        )
        self.limiter = limiter
        self.rate_limit = rate_limit
        self.max_body_bytes = max_body_bytes
        #: ``GET /v1/models`` answers, per dialect
        self.models = ModelListing(engine)

    # ------------------------------------------------------------------ calls

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._call("openai", "openai", scope, receive, send)

    async def messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._call("anthropic", "anthropic", scope, receive, send)

    async def _call(
        self, dialect: str, provider: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = _headers(scope)
        try:
            info = await self._authenticate(headers)
            self._check_rate(info)
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                raise self._too_large()
            body = await _read_body(receive, self.max_body_bytes)
            if body is None:
                raise self._too_large()
            context, ignored = self._context(info, headers)
        except LLMError as error:
            await _send_answer(send, self.relay.error(dialect, error))
            return
        except _Disconnected:
            return
        try:
            # Watched for the caller leaving: until its first event, a stream is as
            # silent as a call that is not streamed (a model thinking for minutes)
            answer = await _unless_gone(
                receive,
                self.relay.ahandle(
                    dialect, body, scope.get("path", ""), provider=provider, context=context
                ),
            )
        except Exception:
            answer = self._failed(dialect)
        if answer is None:  # the caller left: the call was stopped (and metered)
            return
        if ignored:
            answer.headers["x-llmroute-ignored-hints"] = ignored
        await _send_answer(send, answer, receive)

    # ------------------------------------------------------------------ models

    async def list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        dialect = "anthropic" if headers.get(b"anthropic-version") else "openai"
        try:
            self._check_rate(await self._authenticate(headers))
        except LLMError as error:
            await _send_answer(send, self.relay.error(dialect, error))
            return
        await _send_json(send, 200, self.models.listing(dialect))

    async def retrieve_model(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = str(scope.get("path_params", {}).get("model", ""))
        headers = _headers(scope)
        dialect = "anthropic" if headers.get(b"anthropic-version") else "openai"
        try:
            self._check_rate(await self._authenticate(headers))
            info = self.engine.catalog.get(name)  # UnknownModel with suggestions
            body = self.models.one(dialect, info.id)
            if body is None:  # known, but at a provider this engine does not serve
                raise UnknownModel(name)
        except LLMError as error:
            await _send_answer(send, self.relay.error(dialect, error))
            return
        await _send_json(send, 200, body)

    # ------------------------------------------------------------------ checks

    async def _authenticate(self, headers: dict[bytes, bytes]) -> ApiKeyInfo:
        plaintext = _presented_key(headers)
        if plaintext is None:
            raise AuthenticationFailed(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key'.",
                retryable=False,
            )
        try:
            if self.aauthenticate is not None:
                info = await self.aauthenticate(plaintext)
            else:
                info = self.keys.authenticate(plaintext)
        except LLMError:
            raise  # (a store's own answer, e.g. a key it rate-limits)
        except Exception as exc:
            # The key store is down: a 503 the caller's SDK retries, and no detail of
            # the store (its error's message could hold a connection string).
            logger.warning(
                "llmroute gateway: key store %s failed (%s)",
                type(self.keys).__name__,
                type(exc).__name__,
            )
            raise LLMError(
                "API keys cannot be checked right now; try again shortly.",
                status_code=503,
                code="service_unavailable",
                retryable=True,
                retry_after=1.0,
            ) from None
        # ``revoked`` too: a store may hand back its row's info as it is, flag included
        if info is None or info.revoked:
            raise AuthenticationFailed("Invalid or revoked API key.", retryable=False)
        return info

    def _check_rate(self, info: ApiKeyInfo) -> None:
        limit = info.rate_limit or self.rate_limit
        if limit is None:
            return
        wait = self.limiter.acquire(info.key_id, limit)
        if wait > 0:
            # In whole milliseconds, rounded up: the SDKs wait exactly what
            # ``retry-after-ms`` says, and rounded down it sent them back too early.
            wait = math.ceil(wait * 1000) / 1000
            raise RateLimited(
                f"Rate limit of API key {info.key_id} reached; retry in {wait:.1f}s.",
                retry_after=wait,
            )

    def _failed(self, dialect: str) -> RelayResponse:
        """The answer to a call llmroute itself failed on (a bug, not an upstream
        error, which the relay answers): a 500 in the caller's dialect, the details
        in the log only."""
        logger.exception(
            "llmroute gateway: a call in the %s dialect failed inside llmroute", dialect
        )
        return self.relay.internal_error(dialect)

    def _too_large(self) -> InvalidRequest:
        return InvalidRequest(
            f"The request body exceeds the gateway's limit of {self.max_body_bytes} bytes.",
            status_code=413,
            code="request_too_large",
            retryable=False,
        )

    def _context(self, info: ApiKeyInfo, headers: dict[bytes, bytes]) -> tuple[RouteContext, str]:
        """The key's routing context, with hint headers when the key may set them;
        also the names of hint headers that were ignored."""
        raw_id = headers.get(b"x-request-id")
        request_id = raw_id.decode("latin-1") if raw_id else None
        fields: dict[str, Any] = {
            "user_id": info.owner,
            "api_key_id": info.key_id,
            "tags": info.tags or None,
            # kept only when safe to store and log as is, as the middlewares do
            "request_id": request_id if request_id and is_valid_request_id(request_id) else None,
        }
        tier = headers.get(b"x-llmroute-tier")
        feature = headers.get(b"x-llmroute-feature")
        ignored: list[str] = []
        if tier is not None:
            if info.allow_hints:
                fields["tier"] = tier_hint(
                    tier.decode("latin-1"), self.engine.router.config.all_tier_names
                )
            else:
                ignored.append("tier")
        if feature is not None:
            if info.allow_hints:
                fields["feature"] = feature_hint(feature.decode("latin-1"))
            else:
                ignored.append("feature")
        outer = current_context()
        try:
            if outer == _EMPTY and len(fields) == 4:
                # The usual case (no outer context, no hints): nothing to merge or check.
                context = RouteContext(**fields)
            else:
                context = outer.merged(**fields)
        except ValueError as error:
            raise InvalidRequest(
                f"Invalid X-LLMRoute-Tier header: {error}", param="X-LLMRoute-Tier"
            ) from None
        return context, ",".join(ignored)


# --------------------------------------------------------------------------- helpers


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request headers the gateway reads (first value of each)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", ()):
        lowered = name.lower()
        if lowered in _WANTED_HEADERS and lowered not in found:
            found[lowered] = value
    return found


def _presented_key(headers: dict[bytes, bytes]) -> str | None:
    raw = headers.get(b"authorization")
    if raw is not None:
        scheme, _, token = raw.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip().decode("latin-1")
    raw = headers.get(b"x-api-key")
    if raw is not None and raw.strip():
        return raw.strip().decode("latin-1")
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or ``None`` as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _raw_headers(headers: dict[str, str], length: int | None) -> list[tuple[bytes, bytes]]:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    return raw


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_answer(send: Send, answer: RelayResponse, receive: Receive | None = None) -> None:
    stream = answer.astream
    if stream is None:
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": _raw_headers(answer.headers, len(answer.body)),
            }
        )
        await send({"type": "http.response.body", "body": answer.body})
        return
    try:
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": _raw_headers(answer.headers, None),
            }
        )
        if receive is None:
            await _pump(send, stream)
        else:
            await _pump_until_gone(send, receive, stream)
    finally:
        await _aclose(stream)


async def _pump(send: Send, stream: AsyncIterator[bytes], gone: list[bool] | None = None) -> None:
    async for chunk in stream:
        if gone:
            return
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _pump_until_gone(send: Send, receive: Receive, stream: AsyncIterator[bytes]) -> None:
    """Send the stream, stopping it (and so the upstream call) if the caller leaves:
    at once when waiting for the upstream, else before the next event."""
    import anyio

    gone: list[bool] = []
    async with anyio.create_task_group() as group:
        group.start_soon(_watch, receive, group.cancel_scope, gone)
        await _pump(send, stream, gone)
        group.cancel_scope.cancel()


async def _watch(receive: Receive, scope: Any, gone: list[bool]) -> None:
    """Wait for the caller to leave; then note it in ``gone`` and cancel ``scope``
    (an anyio cancel scope: what runs for the caller)."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            gone.append(True)
            scope.cancel()
            return


async def _unless_gone(receive: Receive, call: Awaitable[RelayResponse]) -> RelayResponse | None:
    """``call``'s answer, or ``None`` once the caller went away first: the call is
    then cancelled, which closes its upstream request and records what it cost."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): anyio's task group, a little slower
        return await _unless_gone_anyio(receive, call)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    running = asyncio.ensure_future(call)
    try:
        await asyncio.wait((running, watcher), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # This handler cancelled itself: the call is stopped and its cleanup (the
        # record of what it cost) done before this ends, as when it ran inline.
        watcher.cancel()
        running.cancel()
        await _stopped(running)
        raise
    watcher.cancel()
    if watcher.done() and not watcher.cancelled():
        watcher.exception()  # (taken: a receive that failed only ends the call)
    if not running.done() or running.cancelled():  # the caller left first
        running.cancel()
        await _stopped(running)
        return None
    return running.result()


async def _stopped(running: asyncio.Future[RelayResponse]) -> None:
    """Wait for a cancelled call to end (its cancellation and record done); an
    answer it gave all the same has its stream closed."""
    await asyncio.wait((running,))
    if not running.cancelled() and running.exception() is None:
        await _aclose_answer(running.result())


async def _unless_gone_anyio(
    receive: Receive, call: Awaitable[RelayResponse]
) -> RelayResponse | None:
    import anyio

    answers: list[RelayResponse] = []
    gone: list[bool] = []
    async with anyio.create_task_group() as group:
        group.start_soon(_watch, receive, group.cancel_scope, gone)
        answers.append(await call)
        group.cancel_scope.cancel()
    if gone:
        if answers:
            await _aclose_answer(answers[0])
        return None
    return answers[0]


async def _aclose_answer(answer: RelayResponse) -> None:
    """Stop the stream of an answer that came as the caller left."""
    if answer.astream is not None:
        await _aclose(answer.astream)


async def _aclose(stream: AsyncIterator[bytes]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def _not_found_handler(dialect_of: Callable[[Any], str]) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, exc: Any) -> Any:
        from starlette.responses import Response

        from .providers.registry import caller_dialect

        status = getattr(exc, "status_code", 404)
        message = (
            "Method not allowed." if status == 405 else f"No such endpoint: {request.url.path}"
        )
        error = InvalidRequest(message, status_code=status, retryable=False)
        if status == 404:
            error.code = "not_found"
        dialect = dialect_of(request)
        _, headers, body = caller_dialect(dialect).encode_error(error)
        allow = (getattr(exc, "headers", None) or {}).get("Allow")
        if allow:  # a 405 must say which methods the endpoint takes
            headers = {**headers, "allow": allow}
        return Response(body, status_code=status, headers=headers)

    return handle


def gateway_app(
    engine: LLMRoute | None = None,
    *,
    authenticator: KeyStore,
    max_body_bytes: int = 1_000_000,
    rate_limit: RateLimit | None = None,
    limiter: RateLimiter | None = None,
    response_headers: bool | None = None,
) -> Starlette:
    """The gateway as a Starlette app; mount it anywhere.

    ``engine`` routes and meters the calls (a default :class:`LLMRoute` when
    ``None``, closed at the app's shutdown). ``authenticator`` checks API keys
    (:class:`~routing_middleware.auth.MemoryKeyStore` or any
    :class:`~routing_middleware.auth.KeyStore`). ``rate_limit`` applies to keys
    without their own; ``limiter`` holds the buckets (share one between apps to
    share limits). ``max_body_bytes`` caps request bodies (413 beyond).
    ``response_headers`` adds the ``x-llmroute-*`` headers (default: the engine
    config's ``response_headers``).
    """
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import Route

    from .relay import Relay

    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be at least 1")
    if not callable(getattr(authenticator, "authenticate", None)):
        raise TypeError("authenticator must be a KeyStore (with an authenticate(key) method)")
    owned = engine is None
    if engine is None:
        from .engine import LLMRoute

        engine = LLMRoute()
    headers = engine.config.response_headers if response_headers is None else response_headers
    gateway = _Gateway(
        engine,
        Relay(engine, response_headers=headers, catalog_models_only=True),
        authenticator,
        limiter if limiter is not None else RateLimiter(),
        rate_limit,
        max_body_bytes,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owned:
                await gateway.engine.aclose()

    def dialect_of(request: Any) -> str:
        # Anthropic's SDKs say who they are; ``/v1/messages`` and what lies under it
        # (``count_tokens``, ``batches``) is theirs whoever asks
        if request.headers.get("anthropic-version") or "/v1/messages" in request.url.path:
            return "anthropic"
        return "openai"

    not_found = _not_found_handler(dialect_of)
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _Endpoint(gateway.chat_completions), methods=["POST"]),
            Route("/v1/messages", _Endpoint(gateway.messages), methods=["POST"]),
            Route("/v1/models", _Endpoint(gateway.list_models), methods=["GET"]),
            Route("/v1/models/{model:path}", _Endpoint(gateway.retrieve_model), methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_found},
        lifespan=lifespan,
    )
    app.state.engine = engine
    return app
