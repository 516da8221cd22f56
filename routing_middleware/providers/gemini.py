"""Google Gemini ``generateContent``, in both directions.

Upstream (:data:`GEMINI_DIALECT`) encodes a :class:`ChatRequest` for
``POST {base}/v1beta/models/{model}:generateContent`` (``:streamGenerateContent?alt=sse``
when streaming) and decodes answers, streams and Google RPC errors. Caller side
(:data:`GEMINI_CALLER`) parses a request a Gemini client sent and answers it in kind.

Decisions worth knowing:

- **Auth** goes in the ``x-goog-api-key`` header, never in ``?key=`` (URLs get logged).
  ``ProviderConfig.options["auth"] == "bearer"`` sends ``provider.auth_headers()``
  instead, for OAuth-fronted deployments.
- **Usage** follows the schema's convention. ``input_tokens`` is ``promptTokenCount``
  plus ``toolUsePromptTokenCount`` (the tool-use prompt is billed as input and is not
  inside ``promptTokenCount``; ``totalTokenCount`` sums all four counts).
  When ``totalTokenCount`` equals prompt + candidates + thoughts, the tool-use count
  is taken to be inside the prompt count already and is not added.
  ``cached_input_tokens`` is ``cachedContentTokenCount``, which is already *inside*
  ``promptTokenCount`` and is never added again. ``output_tokens`` is
  ``candidatesTokenCount + thoughtsTokenCount``; ``reasoning_tokens`` the thoughts.
  A non-streamed body without ``usageMetadata`` decodes with ``usage=None`` (the
  dispatcher holds the request and estimates); a stream without it estimates here.
- **Finish reasons**: ``STOP`` → stop, or tool_calls when the candidate holds function
  calls; ``MAX_TOKENS`` → length; safety-like values → content_filter; the tool and
  protocol failures (``MALFORMED_FUNCTION_CALL``, ``UNEXPECTED_TOOL_CALL``,
  ``TOO_MANY_TOOL_CALLS``, ``MISSING_THOUGHT_SIGNATURE``, ``MALFORMED_RESPONSE``,
  ``FINISH_REASON_UNSPECIFIED``) → error, so fallback logic can tell them from a clean
  stop; unknown values → stop. The raw value stays in ``native_finish_reason``.
- **A blocked prompt** (``promptFeedback.blockReason``, no candidates) decodes as a
  response, not an exception: one empty choice, finish content_filter,
  ``native_finish_reason = "PROMPT_BLOCKED:<reason>"``. The same holds mid-stream
  (it arrives on an HTTP 200) and the usage stays metered.
- **Tool-call ids**: Gemini's id is used when present, else a stable one is derived
  from the response id, candidate, position, name and arguments (the same for a
  streamed and a whole answer). A ``thoughtSignature`` (which Gemini 3 requires back
  on the next turn) rides inside the id, after :data:`THOUGHT_SIGNATURE_MARK`, in
  URL-safe base64, so any caller that echoes ids echoes the signature too.
  Upstream requests never send ids: Gemini pairs results with calls by name and order.
- **Tool results** go out as ``functionResponse.response``: the result text when it is
  a JSON object, else ``{"output": <JSON value or text>}``.
- **Images**: inline base64 → ``inlineData``; ``data:`` URLs are unpacked to
  ``inlineData``; other URLs → ``fileData`` with ``media_type`` or a MIME type
  guessed from the extension (see :data:`IMAGE_MIME_TYPES`), else InvalidRequest.
- **JSON schemas** (tool parameters, ``responseSchema``) are rewritten to the subset
  Gemini accepts (:func:`gemini_schema`): keys outside :data:`SCHEMA_KEYWORDS` are
  dropped (``additionalProperties``, ``$schema``, ``$id``, ``$defs``, ``definitions``,
  ``examples``, ``exclusiveMinimum``, ``exclusiveMaximum``, ``multipleOf``,
  ``uniqueItems``, ``patternProperties``, ``not``, ``if``/``then``/``else``,
  ``readOnly``, ``writeOnly``, ``strict``, …); local ``$ref`` are inlined (a cycle
  becomes a bare object), ``oneOf`` becomes ``anyOf``, a string ``const`` becomes a
  one-value ``enum``, ``["T", "null"]`` types and ``{"type": "null"}`` branches become
  ``nullable``, ``required`` keeps only declared properties. Parameters with no
  properties are omitted (Gemini rejects an empty OBJECT).
- **Gemini-only fields** a Gemini caller sent (``safetySettings``, ``cachedContent``,
  non-function tools, raw ``thinkingConfig``, unmapped ``generationConfig`` keys, …)
  travel in ``ChatRequest.extra["gemini"]`` and are re-applied by the upstream encoder,
  so Gemini-to-Gemini loses nothing. Reasoning text (``thought`` parts) of earlier
  turns is not sent back upstream.

The code lives in siblings: ``gemini_wire`` (what both directions share),
``gemini_request`` (upstream encoding and schemas), ``gemini_response`` (upstream
decoding, streams included), ``gemini_errors`` (Google RPC errors both ways) and
``gemini_caller`` (the caller side); this module holds the upstream dialect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from ..schema import ChatRequest, ChatResponse, LLMError, UpstreamProtocolError
from .base import EncodedRequest, ProviderConfig
from .errors import parse_json_body
from .gemini_caller import GEMINI_CALLER, GeminiCallerDialect, GeminiCallerStreamEncoder
from .gemini_errors import _error_from_payload, decode_error
from .gemini_request import (
    DEFAULT_BASE_URL,
    IMAGE_MIME_TYPES,
    SCHEMA_KEYWORDS,
    _encode_body,
    _url,
    gemini_schema,
)
from .gemini_response import GeminiStreamDecoder, _decode_payload
from .gemini_wire import EXTRA_KEY, THOUGHT_SIGNATURE_MARK

__all__ = [
    "DEFAULT_BASE_URL",
    "EXTRA_KEY",
    "GEMINI_CALLER",
    "GEMINI_DIALECT",
    "IMAGE_MIME_TYPES",
    "SCHEMA_KEYWORDS",
    "THOUGHT_SIGNATURE_MARK",
    "GeminiCallerDialect",
    "GeminiCallerStreamEncoder",
    "GeminiDialect",
    "GeminiStreamDecoder",
    "gemini_schema",
]


class GeminiDialect:
    """Upstream side: ``generateContent`` / ``streamGenerateContent`` at a Gemini endpoint."""

    name = "gemini"

    def encode_request(
        self, request: ChatRequest, provider: ProviderConfig, model: str
    ) -> EncodedRequest:
        """The POST for ``model``; the key goes in ``x-goog-api-key``, never in the URL."""
        body = _encode_body(request, model)
        headers = {"content-type": "application/json"}
        if request.stream:
            headers["accept"] = "text/event-stream"
        headers.update(provider.headers)
        if provider.options.get("auth") == "bearer":
            headers.update(provider.auth_headers())
        elif provider.api_key:
            headers["x-goog-api-key"] = provider.api_key
        return EncodedRequest(
            method="POST", url=_url(provider, model, request.stream), headers=headers, json=body
        )

    def decode_response(self, body: bytes, provider: ProviderConfig) -> ChatResponse:
        """A GenerateContentResponse as ChatResponse; garbage raises UpstreamProtocolError."""
        payload = parse_json_body(body, provider.name)
        if not isinstance(payload, Mapping):
            raise UpstreamProtocolError(
                "Gemini answer is not a JSON object", provider=provider.name
            )
        if "error" in payload:
            raise _error_from_payload(200, {}, payload, provider.name)
        response_id = payload.get("responseId")
        if not isinstance(response_id, str) or not response_id:
            response_id = "gen-" + hashlib.sha256(body).hexdigest()[:24]
        response = _decode_payload(payload, response_id)
        response.provider = provider.name
        return response

    def stream_decoder(self, provider: ProviderConfig, request: ChatRequest) -> GeminiStreamDecoder:
        """A fresh decoder for one streamed answer to ``request``."""
        return GeminiStreamDecoder(provider.name, request)

    def decode_error(
        self, status: int, headers: Mapping[str, str], body: bytes, provider: ProviderConfig
    ) -> LLMError:
        """A Google RPC error body as LLMError; ``retry_after`` from ``RetryInfo`` first."""
        return decode_error(status, headers, body, provider)


#: The upstream Gemini dialect (the registry resolves ``"gemini"`` to it).
GEMINI_DIALECT = GeminiDialect()
