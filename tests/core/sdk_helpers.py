"""Test helpers the provider tests share.

The real ``openai`` and ``anthropic`` SDKs judge our bytes: :func:`sdk` builds one
that talks to a handler (wrapped in ``httpx2.MockTransport``) or to a given
transport, such as a :class:`~routing_middleware.testing.FakeProvider`'s.
:func:`feed` runs bytes through a stream decoder, whole or in pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx2

from routing_middleware.schema import StreamChunk

Handler = Callable[[httpx2.Request], httpx2.Response]
SDK = TypeVar("SDK")


def sdk(
    sdk_class: Callable[..., SDK],
    handler: Handler | None = None,
    *,
    transport: Any = None,
    api_key: str,
    base_url: str,
    **options: Any,
) -> SDK:
    """``sdk_class`` (``openai.OpenAI``, ``anthropic.AsyncAnthropic``, ...) sending its
    requests to ``handler`` or ``transport``; no retries unless ``max_retries`` says so."""
    if (handler is None) == (transport is None):
        raise TypeError("give a handler or a transport")
    if transport is None:
        transport = httpx2.MockTransport(handler)
    is_async = getattr(sdk_class, "__name__", "").startswith("Async")
    http = (httpx2.AsyncClient if is_async else httpx2.Client)(transport=transport)
    options.setdefault("max_retries", 0)
    return sdk_class(api_key=api_key, base_url=base_url, http_client=http, **options)


def feed(decoder: Any, data: bytes, step: int = 0) -> list[StreamChunk]:
    """Everything ``decoder`` makes of ``data`` (in ``step``-byte pieces when given), closed."""
    chunks: list[StreamChunk] = []
    if step:
        for start in range(0, len(data), step):
            chunks += decoder.feed(data[start : start + step])
    else:
        chunks += decoder.feed(data)
    chunks += decoder.close()
    return chunks
