"""A deterministic, offline LLM upstream for tests, benchmarks and the demo.

:class:`FakeProvider` answers like the real providers do on the wire: OpenAI chat
completions (with the quirks of each OpenAI-compatible provider, picked by
``flavor``), the Responses API, embeddings and the model list, Anthropic messages
and Gemini ``generateContent``, streamed or not, with usage in each provider's own
convention. It builds its answers itself, independently of llmroute's dialect
adapters, so the adapters can be tested against it.

Use it in-process (``fake.transport()`` / ``fake.async_transport()`` for httpx,
``lib="httpx2"`` for httpx2 and the official SDKs) or over a real socket
(``fake.asgi_app()``, ``fake.serve()``, ``python -m routing_middleware.testing``).
:class:`FakeNetwork` puts several fakes behind their real host names for clients
that keep the providers' default URLs. Every call lands in ``fake.ledger`` with
what the provider billed and the headers (API keys included) that reached it.

Example::

    fake = FakeProvider([FakeModel("gpt-x", content="Hi!", cached_tokens=8)])
    client = openai.OpenAI(
        api_key="k", base_url="https://fake.invalid/v1",
        http_client=httpx2.Client(transport=fake.transport(lib="httpx2")),
    )
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from ._fake_config import Failure, FailureKind, FakeModel, FakeToolCall, FinishMode
from ._fake_ledger import FakeCall, Ledger

__all__ = [
    "FLAVORS",
    "Failure",
    "FailureKind",
    "FakeCall",
    "FakeModel",
    "FakeNetwork",
    "FakeProvider",
    "FakeToolCall",
    "FinishMode",
    "Ledger",
    "demo_provider",
    "main",
]

#: The OpenAI-compatible providers whose quirks the fake reproduces.
FLAVORS = (
    "azure",
    "cerebras",
    "deepseek",
    "fireworks",
    "gemini",
    "groq",
    "mistral",
    "ollama",
    "openai",
    "openrouter",
    "qwen",
    "together",
    "vllm",
    "xai",
)

Lib = Literal["httpx", "httpx2"]


class FakeProvider:
    """One fake provider endpoint serving ``models`` in every dialect it knows.

    ``flavor`` picks the OpenAI-compatible provider's quirks (usage fields, stream
    comments, error bodies); Anthropic and Gemini paths always answer in their own
    format. ``require_key`` (one key or several) makes calls without a matching API
    key fail with the dialect's auth error. ``default_model`` serves any model name
    not configured (handy for demos); otherwise unknown models get the provider's
    404. ``created`` fixes the timestamps in responses.
    """

    def __init__(
        self,
        models: Iterable[FakeModel] = (),
        *,
        flavor: str = "openai",
        require_key: str | Iterable[str] | None = None,
        default_model: FakeModel | None = None,
        created: int | None = None,
    ) -> None:
        from ._fake_server import Server

        self._server = Server(
            models,
            flavor=flavor,
            require_key=require_key,
            default_model=default_model,
            created=created,
        )

    def __repr__(self) -> str:
        names = ", ".join(m.name for m in self.models)
        return f"FakeProvider(flavor={self.flavor!r}, models=[{names}])"

    # -- configuration ---------------------------------------------------------

    @property
    def flavor(self) -> str:
        """The OpenAI-compatible provider this fake imitates."""
        return self._server.flavor

    @property
    def models(self) -> list[FakeModel]:
        """The configured models, in the order they were added."""
        return self._server.models

    def add_model(self, model: FakeModel) -> None:
        """Add or replace a model (its failure queue restarts from ``model.failures``)."""
        self._server.add_model(model)

    def inject(self, model: str, *failures: Failure, always: Failure | None = None) -> None:
        """Queue ``failures`` for the next calls to ``model``; ``always`` fails every call
        after the queue runs out (until :meth:`clear_failures`)."""
        self._server.inject(model, failures, always)

    def clear_failures(self, model: str | None = None) -> None:
        """Drop queued and permanent failures of ``model`` (of every model when ``None``)."""
        self._server.clear_failures(model)

    # -- what happened ---------------------------------------------------------

    @property
    def ledger(self) -> Ledger:
        """Every call served so far, with what it billed."""
        return self._server.ledger

    @property
    def calls(self) -> list[FakeCall]:
        """Shortcut for ``ledger.calls``."""
        return self._server.ledger.calls

    # -- ways to run -----------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Answer one request directly (no delays): status, headers and whole body.

        A dropped connection (``Failure.reset()``) comes back as status 0.
        """
        from ._fake_server import RawRequest

        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        raw = RawRequest(method, path, dict(query or {}), lowered, body)
        reply = self._server.handle(raw)
        return reply.status, reply.headers, b"".join(p.data for p in reply.pieces)

    def transport(self, lib: Lib = "httpx") -> Any:
        """A sync transport for ``httpx.Client`` (or ``httpx2.Client`` with ``lib="httpx2"``)."""
        from ._fake_http import transport_classes

        return transport_classes(lib)[0](self._server.handle)

    def async_transport(self, lib: Lib = "httpx") -> Any:
        """An async transport for ``httpx.AsyncClient`` / ``httpx2.AsyncClient``."""
        from ._fake_http import transport_classes

        return transport_classes(lib)[1](self._server.handle)

    def asgi_app(self) -> Any:
        """The fake as a pure ASGI app (serve it with uvicorn or mount it)."""
        from ._fake_asgi import make_app

        return make_app(self._server.handle)

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the fake with uvicorn on a background thread; yields the base URL."""
        from ._fake_asgi import serve

        with serve(self.asgi_app(), host, port) as url:
            yield url


class FakeNetwork:
    """Several fake providers behind their host names, in one transport.

    For clients that keep the real base URLs (the SDKs' defaults, globally
    instrumented code): ``FakeNetwork({"api.openai.com": openai_fake,
    "api.anthropic.com": anthropic_fake})``. A host may include its port. Hosts
    not listed, and hosts in ``down``, refuse the connection (the library's
    ``ConnectError``).
    """

    def __init__(self, providers: Mapping[str, FakeProvider]) -> None:
        self.providers = dict(providers)
        self.down: set[str] = set()

    def _handle(self, raw: Any) -> Any:
        from ._fake_wire import Reply

        host = raw.host
        name = host if host in self.providers else host.rpartition(":")[0] or host
        provider = self.providers.get(name)
        if provider is None or name in self.down:
            return Reply(0, [], refuse=True)
        return provider._server.handle(raw)

    def transport(self, lib: Lib = "httpx") -> Any:
        """A sync transport reaching every provider by host name."""
        from ._fake_http import transport_classes

        return transport_classes(lib)[0](self._handle)

    def async_transport(self, lib: Lib = "httpx") -> Any:
        """An async transport reaching every provider by host name."""
        from ._fake_http import transport_classes

        return transport_classes(lib)[1](self._handle)


def demo_provider(*, fast: bool = False) -> FakeProvider:
    """A provider with a few well-known model names and demo-like latency.

    Any other model name is served too, by a default model. ``fast`` drops the
    latency (for smoke tests).
    """

    def model(name: str, ttft: float, rate: float, **kw: Any) -> FakeModel:
        if fast:
            return FakeModel(name, output_tokens=kw.pop("output_tokens", 60), **kw)
        return FakeModel.realistic(name, ttft=ttft, tokens_per_second=rate, **kw)

    models = [
        model("gpt-4o-mini", 0.35, 90),
        model("gpt-5.4", 0.8, 60, reasoning_tokens=64),
        model("claude-haiku-4-5", 0.4, 110),
        model("claude-sonnet-4-6", 0.7, 70),
        model("gemini-2.5-flash", 0.3, 150),
        model("deepseek-chat", 0.6, 50),
    ]
    return FakeProvider(models, default_model=model("default", 0.5, 80))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m routing_middleware.testing --port 8100``: serve the demo provider."""
    parser = argparse.ArgumentParser(
        prog="python -m routing_middleware.testing",
        description="Serve a fake, offline LLM provider (OpenAI, Anthropic and Gemini APIs).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--flavor", default="openai", choices=FLAVORS)
    parser.add_argument("--fast", action="store_true", help="no artificial latency")
    args = parser.parse_args(argv)
    import uvicorn

    fake = demo_provider(fast=args.fast)
    if args.flavor != "openai":
        fake = FakeProvider(
            fake.models, flavor=args.flavor, default_model=fake._server.default_model
        )
    uvicorn.run(fake.asgi_app(), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
