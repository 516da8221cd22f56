"""The small interface every wire dialect implements.

A *dialect* is a wire format (OpenAI chat completions, Anthropic messages, Gemini
generateContent). A *provider* is a configured endpoint speaking one dialect, with
its base URL, credentials and quirks. Many providers share the OpenAI dialect; they
are configurations, not copies of code.

Two directions:

- upstream (:class:`Dialect`): encode a normalized request for a provider, decode its
  response, stream and errors;
- caller side (:class:`CallerDialect`): parse a request the caller's SDK sent, and
  answer it in that same dialect (response, stream, error).

Everything here is pure: bytes and dicts in, schema objects out. The I/O shells live
in the dispatcher and transport.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..schema import ChatRequest, ChatResponse, LLMError, StreamChunk, Usage

__all__ = [
    "CallerDialect",
    "CallerStreamEncoder",
    "Dialect",
    "EncodedRequest",
    "ProviderConfig",
    "StreamDecoder",
]


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One provider endpoint: where it is, how to authenticate, which quirks apply.

    ``api_key`` never appears in ``repr``. ``options`` holds dialect-specific
    settings (e.g. ``{"anthropic_version": "2023-06-01"}``,
    ``{"max_tokens_field": "max_tokens"}``).
    """

    name: str
    dialect: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    auth_header: str = "authorization"
    auth_scheme: str | None = "Bearer"
    headers: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def auth_headers(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        value = f"{self.auth_scheme} {self.api_key}" if self.auth_scheme else self.api_key
        return {self.auth_header: value}


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """An HTTP request ready to send upstream."""

    method: str
    url: str
    headers: dict[str, str]
    json: dict[str, Any]

    def __repr__(self) -> str:  # headers carry credentials
        return f"EncodedRequest({self.method} {self.url})"


class StreamDecoder(Protocol):
    """Incremental decoder of one upstream stream.

    ``feed`` takes raw bytes as they arrive (any split, multi-byte characters
    included) and returns the chunks completed so far; it raises an
    :class:`~routing_middleware.schema.LLMError` for an error event in the stream.
    ``close`` is called at end of input: it returns any last chunks and raises
    :class:`~routing_middleware.schema.UpstreamProtocolError` if the stream ended
    without its terminal event. ``usage`` is the final usage seen so far (``None``
    if none arrived yet).
    """

    def feed(self, data: bytes) -> list[StreamChunk]: ...

    def close(self) -> list[StreamChunk]: ...

    @property
    def usage(self) -> Usage | None: ...


class Dialect(Protocol):
    """Upstream side: talk to a provider in its wire format."""

    name: str

    def encode_request(
        self, request: ChatRequest, provider: ProviderConfig, model: str
    ) -> EncodedRequest:
        """Build the HTTP request for ``model`` (the provider's own model name)."""
        ...

    def decode_response(self, body: bytes, provider: ProviderConfig) -> ChatResponse:
        """Decode a successful (2xx) body; malformed input raises UpstreamProtocolError."""
        ...

    def stream_decoder(self, provider: ProviderConfig, request: ChatRequest) -> StreamDecoder:
        """A fresh decoder for one streamed response to ``request``."""
        ...

    def decode_error(
        self, status: int, headers: Mapping[str, str], body: bytes, provider: ProviderConfig
    ) -> LLMError:
        """Map a non-2xx answer to the LLMError family, ``retry_after`` included."""
        ...


class CallerStreamEncoder(Protocol):
    """Encodes a stream back into the caller's dialect, as SSE bytes."""

    def start(self) -> bytes: ...

    def chunk(self, chunk: StreamChunk) -> bytes: ...

    def finish(self, usage: Usage | None) -> bytes: ...

    def error(self, error: LLMError) -> bytes: ...


class CallerDialect(Protocol):
    """Caller side: understand the caller's SDK and answer it in its own format."""

    name: str

    def parse_request(self, body: bytes, path: str = "") -> ChatRequest:
        """Parse an inbound request body; bad input raises InvalidRequest naming the field."""
        ...

    def encode_response(self, response: ChatResponse, model: str) -> dict[str, Any]:
        """The response body the caller's SDK expects; ``model`` is the name to report."""
        ...

    def stream_encoder(
        self, model: str, response_id: str, *, include_usage: bool = False
    ) -> CallerStreamEncoder:
        """An encoder for one streamed answer; ``include_usage`` when the caller asked
        for usage in the stream (OpenAI ``stream_options.include_usage``)."""
        ...

    def encode_error(self, error: LLMError) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for ``error`` in this dialect."""
        ...
