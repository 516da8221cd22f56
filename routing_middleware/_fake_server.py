"""The fake upstream's request handler: one pure function of a request, shared by the
in-process transports and the ASGI app."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from . import _fake_anthropic, _fake_flavors, _fake_gemini, _fake_openai, _fake_responses
from ._fake_config import Failure, FakeModel
from ._fake_gen import Generation, billed_cost, generate, prompt_of
from ._fake_ledger import FakeCall, Ledger
from ._fake_wire import Ctx, Reply
from .schema import Usage
from .tokens import estimate_text_tokens

__all__ = ["RawRequest", "Server"]

_GEMINI = re.compile(
    r"/models/(?P<model>[^/:]+):(?P<op>generateContent|streamGenerateContent|countTokens)$"
)
_AZURE = re.compile(r"/openai/deployments/(?P<model>[^/]+)/(?P<op>chat/completions|embeddings)$")
_GEMINI_LIST = re.compile(r"/v1(alpha|beta)?/models$")
_MODEL_ONE = re.compile(r"/models/(?P<model>[^/:]+)$")
_ANTHROPIC_BARE_VERSIONS = ("2023-06-01", "2026-10-21")
_NO_SAMPLING_VERSION = "2026-10-21"


@dataclass(frozen=True, slots=True)
class RawRequest:
    """An HTTP request as the fake sees it: lower-case header names, decoded query."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    host: str = ""


@dataclass(frozen=True, slots=True)
class _Route:
    dialect: str  # openai | anthropic | gemini
    endpoint: str
    model: str | None = None
    stream: bool = False
    sse: bool = True


def _route(raw: RawRequest, path: str) -> _Route | None:
    method, headers, query = raw.method.upper(), raw.headers, raw.query
    if method == "POST":
        if m := _GEMINI.search(path):
            op = m["op"]
            endpoint = "countTokens" if op == "countTokens" else "generateContent"
            return _Route(
                "gemini",
                endpoint,
                m["model"],
                stream=op == "streamGenerateContent",
                sse=query.get("alt") == "sse",
            )
        if path.endswith("/v1/messages"):
            return _Route("anthropic", "messages")
        if path.endswith("/v1/messages/count_tokens"):
            return _Route("anthropic", "count_tokens")
        if m := _AZURE.search(path):
            endpoint = "chat.completions" if m["op"] == "chat/completions" else "embeddings"
            return _Route("openai", endpoint, m["model"])
        for suffix, endpoint in (
            ("/chat/completions", "chat.completions"),
            ("/responses", "responses"),
            ("/embeddings", "embeddings"),
        ):
            if path.endswith(suffix):
                return _Route("openai", endpoint)
        return None
    if method != "GET":
        return None
    google = "x-goog-api-key" in headers or "key" in query
    if _GEMINI_LIST.search(path) and google:
        return _Route("gemini", "models")
    if path.endswith("/models"):
        return _Route("anthropic" if "anthropic-version" in headers else "openai", "models")
    if (m := _MODEL_ONE.search(path)) and not google:
        return _Route("openai", "model", m["model"])
    return None


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Server:
    """Configuration, failure queues and the ledger, plus :meth:`handle`.

    Thread-safe: handling touches shared state only under a lock.
    """

    def __init__(
        self,
        models: Iterable[FakeModel],
        *,
        flavor: str,
        require_key: str | Iterable[str] | None,
        default_model: FakeModel | None,
        created: int | None,
    ) -> None:
        if flavor not in _fake_flavors.FLAVORS:
            known = ", ".join(sorted(_fake_flavors.FLAVORS))
            raise ValueError(f"unknown flavor {flavor!r}; known: {known}")
        self.flavor = flavor
        keys = [require_key] if isinstance(require_key, str) else require_key
        self.require_keys = frozenset(keys) if keys is not None else None
        self.default_model = default_model
        self.created = created if created is not None else int(time.time())
        self.ledger = Ledger()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._models: dict[str, FakeModel] = {}
        self._queues: dict[str, deque[Failure]] = {}
        self._always: dict[str, Failure] = {}
        for model in models:
            self.add_model(model)

    # -- configuration ---------------------------------------------------------

    def add_model(self, model: FakeModel) -> None:
        with self._lock:
            self._models[model.name] = model
            self._queues[model.name] = deque(model.failures)
            if model.always_fail is not None:
                self._always[model.name] = model.always_fail
            else:
                self._always.pop(model.name, None)

    @property
    def models(self) -> list[FakeModel]:
        with self._lock:
            return list(self._models.values())

    def inject(self, model: str, failures: Iterable[Failure], always: Failure | None) -> None:
        with self._lock:
            self._queues.setdefault(model, deque()).extend(failures)
            if always is not None:
                self._always[model] = always

    def clear_failures(self, model: str | None) -> None:
        with self._lock:
            for name in [model] if model is not None else list(self._queues):
                self._queues.get(name, deque()).clear()
                self._always.pop(name, None)

    def _lookup(self, name: str) -> tuple[FakeModel | None, Failure | None]:
        with self._lock:
            model = self._models.get(name)
            if model is None and self.default_model is not None:
                model = replace(self.default_model, name=name, failures=(), always_fail=None)
            if model is None:
                return None, None
            queue = self._queues.get(name)
            failure = queue.popleft() if queue else self._always.get(name)
            return model, failure

    # -- handling --------------------------------------------------------------

    def handle(self, raw: RawRequest) -> Reply:
        """Answer one request; records it in the ledger."""
        path = raw.path.rstrip("/") or "/"
        route = _route(raw, path) or _Route("unknown", "unknown")
        seq = next(self._ids)
        api_key = self._api_key(route.dialect, raw)
        record: dict[str, Any] = {
            "seq": seq,
            "method": raw.method.upper(),
            "path": raw.path,
            "dialect": route.dialect,
            "endpoint": route.endpoint,
            "flavor": self.flavor,
            "api_key": api_key,
            "headers": dict(raw.headers),
            "received_at": time.monotonic(),
        }
        if route.dialect == "unknown":
            message = f"Unknown request URL: {raw.method} {raw.path}."
            reply = _fake_openai.error_reply(self.flavor, 404, code="unknown_url", message=message)
            call: dict[str, Any] = {"model": None, "stream": False, "failure": None}
            call |= {"usage": None, "reported": False, "cost": None, "body": None}
        else:
            reply, call = self._handle(raw, route, seq, api_key)
        self.ledger.add(FakeCall(**record, **call, status=reply.status))
        return reply

    def _api_key(self, dialect: str, raw: RawRequest) -> str | None:
        h = raw.headers
        if dialect == "anthropic":
            return h.get("x-api-key") or _bearer(h)
        if dialect == "gemini":
            return h.get("x-goog-api-key") or raw.query.get("key") or _bearer(h)
        return _bearer(h) or h.get("api-key")

    def _error(self, route: _Route, status: int, **kw: Any) -> Reply:
        if route.dialect == "anthropic":
            kw.pop("param", None)
            kw.pop("model", None)
            return _fake_anthropic.error_reply(status, **kw)
        if route.dialect == "gemini":
            kw.pop("param", None)
            return _fake_gemini.error_reply(status, **kw)
        kw.pop("model", None)
        return _fake_openai.error_reply(self.flavor, status, **kw)

    def _auth_error(self, route: _Route, api_key: str | None) -> Reply | None:
        if self.require_keys is None or api_key in self.require_keys:
            return None
        if route.dialect == "gemini":
            if api_key is None:
                return self._error(
                    route,
                    403,
                    message="Method doesn't allow unregistered callers. "
                    "Please use an API key or other form of API consumer identity.",
                )
            message = "API key not valid. Please pass a valid API key."
            return self._error(route, 400, code="API_KEY_INVALID", message=message)
        if route.dialect == "anthropic":
            return self._error(route, 401, message="invalid x-api-key")
        message = (
            "You didn't provide an API key."
            if api_key is None
            else "Incorrect API key provided. You can find your API key in your account settings."
        )
        return self._error(route, 401, message=message)

    def _handle(
        self, raw: RawRequest, route: _Route, seq: int, api_key: str | None
    ) -> tuple[Reply, dict[str, Any]]:
        call: dict[str, Any] = {
            "model": route.model,
            "stream": route.stream,
            "failure": None,
            "usage": None,
            "reported": False,
            "cost": None,
            "body": None,
        }
        denied = self._auth_error(route, api_key)
        if denied is not None:
            return denied, call
        if route.endpoint in ("models", "model"):
            return self._models_reply(route), call
        try:
            body = json.loads(raw.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return self._error(
                route, 400, message="We could not parse the JSON body of your request."
            ), call
        call["body"] = body
        if route.dialect != "gemini":
            call["stream"] = body.get("stream") is True
        invalid = self._validate(route, raw, body)
        if invalid is not None:
            return invalid, call
        name = route.model or body.get("model")
        call["model"] = name
        if not isinstance(name, str) or not name:
            return self._error(
                route, 400, message="you must provide a model parameter", param="model"
            ), call
        model, failure = self._lookup(name)
        if model is None:
            return self._unknown_model(route, name), call
        call["failure"] = failure.kind if failure else None
        if failure is not None and failure.kind == "http":
            assert failure.status is not None
            reply = self._error(
                route,
                failure.status,
                code=failure.code,
                message=failure.message,
                model=name,
                failure=failure,
            )
            return reply, call
        if failure is not None and failure.kind == "reset":
            return Reply(0, [], reset=True), call

        gen = self._generate(route, model, body)
        usage = self._billed(route, gen)
        cost = billed_cost(usage, model) if usage is not None else None
        if usage is not None and route.dialect == "openai" and self.flavor == "openrouter":
            usage = usage.model_copy(update={"provider_cost": cost or Decimal(0)})
        prefix = {"chat.completions": "chatcmpl-", "responses": "resp_", "messages": "msg_"}
        response_id = f"{prefix.get(route.endpoint, '')}fake{seq:08d}"
        ctx = Ctx(
            endpoint=route.endpoint,
            flavor=self.flavor,
            body=body,
            headers=raw.headers,
            model=model,
            gen=gen,
            stream=call["stream"],
            response_id=response_id,
            created=self.created,
            cost=cost,
            failure=failure,
        )
        if route.dialect == "anthropic":
            reply = _fake_anthropic.render(ctx)
        elif route.dialect == "gemini":
            reply = _fake_gemini.render(ctx, sse_mode=route.sse)
        else:
            reply = _fake_openai.render(ctx)
        if failure is not None and failure.kind == "timeout":
            reply.hang = failure.hang
        call.update(
            usage=usage, cost=cost, reported=failure is None or failure.kind in ("timeout", "stall")
        )
        return reply, call

    def _validate(self, route: _Route, raw: RawRequest, body: dict[str, Any]) -> Reply | None:
        if route.dialect != "anthropic":
            return None
        version = raw.headers.get("anthropic-version")
        if not version:
            return self._error(route, 400, message="anthropic-version: header is required")
        if route.endpoint == "messages" and "max_tokens" not in body:
            return self._error(route, 400, message="max_tokens: Field required")
        if version == _NO_SAMPLING_VERSION:
            for name in ("temperature", "top_p", "top_k"):
                if name in body:
                    return self._error(
                        route, 400, message=f"{name}: Extra inputs are not permitted"
                    )
        return None

    def _unknown_model(self, route: _Route, name: str) -> Reply:
        if route.dialect == "anthropic":
            return self._error(route, 404, message=f"model: {name}")
        if route.dialect == "gemini":
            message = (
                f"models/{name} is not found for API version v1beta, or is not supported "
                "for generateContent."
            )
            return self._error(route, 404, message=message)
        message = f"The model `{name}` does not exist or you do not have access to it."
        return self._error(route, 404, code="model_not_found", message=message)

    def _models_reply(self, route: _Route) -> Reply:
        models = self.models
        if route.dialect == "anthropic":
            return _fake_anthropic.models_reply(models)
        if route.dialect == "gemini":
            return _fake_gemini.models_reply(models)
        if route.endpoint == "model":
            for model in models:
                if model.name == route.model:
                    return _fake_openai.model_reply(model, self.created)
            assert route.model is not None
            return self._unknown_model(route, route.model)
        return _fake_openai.models_reply(models, self.created)

    def _generate(self, route: _Route, model: FakeModel, body: dict[str, Any]) -> Generation:
        if route.endpoint != "embeddings":
            prompt = prompt_of(route.endpoint, body)
            return generate(model, prompt)
        tokens = model.input_tokens
        if tokens is None:
            tokens = sum(
                estimate_text_tokens(item) if isinstance(item, str) else len(item)
                for item in _fake_responses.embedding_inputs(body)
            )
        return Generation(model.name, [], [], [], "stop", None, tokens, 0, 0, 0, 0, 0)

    def _billed(self, route: _Route, gen: Generation) -> Usage | None:
        if route.endpoint in ("count_tokens", "countTokens"):
            return None
        if route.dialect == "anthropic":
            return _fake_anthropic.billed(gen)
        if route.dialect == "gemini":
            return _fake_gemini.billed(gen)
        if route.endpoint == "embeddings":
            return Usage(input_tokens=gen.input_tokens)
        return _fake_flavors.billed(route.endpoint, _fake_flavors.FLAVORS[self.flavor], gen)
