"""The Anthropic Messages dialect, both directions.

Upstream (:data:`ANTHROPIC_DIALECT`) talks to ``POST {base_url}/v1/messages``;
caller side (:data:`ANTHROPIC_CALLER`) reads what the ``anthropic`` SDK sends and
answers it in kind, streaming included.

Provider options (``ProviderConfig.options``):

``anthropic_version``
    The ``anthropic-version`` header; default ``2026-10-21``, the newest.
``sampling_params``
    ``"pin"`` (default) or ``"drop"``. Version ``2026-10-21`` rejects
    ``temperature``/``top_p``/``top_k`` with a 400. With ``"pin"``, a request that
    carries any of them is sent with ``anthropic-version: 2023-06-01`` and keeps
    them, so the caller gets the sampling it asked for; without them the newest
    version is used. With ``"drop"``, the newest version is always sent and the
    sampling parameters are dropped. An explicit ``anthropic_version`` older than
    ``2026-10-21`` keeps them either way.
``default_max_tokens``
    ``max_tokens`` is required by the API; used when the request has none (4096).
``reasoning``
    What ``reasoning_effort`` becomes. Absent (default): nothing — not every
    model accepts thinking or effort, and a wrong guess is a 400. ``"thinking"``:
    ``thinking: {type: enabled, budget_tokens}`` from a per-effort budget, kept
    below ``max_tokens`` and left off when that leaves less than the API's 1,024
    minimum. ``"effort"``: ``output_config.effort``. ``"adaptive"``: adaptive
    thinking plus ``output_config.effort``.

Other choices:

- System and developer messages, wherever they are, become the top-level
  ``system`` (a string when there is one plain-text instruction, blocks otherwise).
- Consecutive same-role turns are merged (tool results join the user turn they
  belong to); a leading assistant turn gets a short user turn before it.
- Tool-call ids Anthropic would reject are re-issued as stable ``toolu_`` ids, the
  same for a call and the result answering it.
- ``response_format`` ``json_schema`` becomes ``output_config.format`` (structured
  outputs, in the installed SDK's ``OutputConfigParam``); ``json_object`` has no
  Anthropic equivalent and becomes an instruction appended to ``system``.
- Anthropic-only fields an Anthropic caller sent (``thinking``,
  ``cache_control``, ``output_config``, ``service_tier``, server tools…) wait in
  ``ChatRequest.extra`` and are passed through only to an Anthropic upstream;
  so are ``cache_control`` breakpoints on blocks (see ``anthropic_cache``), which
  keep cached prompts cached, and ``is_error`` on tool results. The caller's
  own ``thinking`` / ``effort`` win over the ``reasoning`` option. When that
  option turns thinking on, the sampling parameters are dropped (thinking
  rejects them).
- Thinking-block signatures have no place in the normalized schema, so with
  thinking on, a tool-use continuation (the last assistant turn used a tool)
  is sent with thinking off rather than fail with Anthropic's 400.
- Not carried (no place in the normalized schema): thinking-block signatures,
  ``document`` and other non-image blocks (rejected with a clear
  InvalidRequest), citations.
- Responses to an Anthropic caller carry no thinking blocks: a block needs a
  signature only Anthropic can make, and a thinking block first in ``content``
  breaks callers that read ``content[0].text``.
- Usage is converted both ways between Anthropic's convention (cache reads and
  writes outside ``input_tokens``) and ours (inside).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..schema import ChatRequest, ChatResponse, LLMError
from .anthropic_caller import AnthropicStreamEncoder, encode_response, parse_request
from .anthropic_errors import decode_error, encode_error
from .anthropic_request import encode_request
from .anthropic_response import AnthropicStreamDecoder, decode_response
from .base import EncodedRequest, ProviderConfig

__all__ = [
    "ANTHROPIC_CALLER",
    "ANTHROPIC_DIALECT",
    "AnthropicCaller",
    "AnthropicDialect",
    "AnthropicStreamDecoder",
    "AnthropicStreamEncoder",
]


class AnthropicDialect:
    """Upstream side: encode for and decode from the Anthropic Messages API."""

    name = "anthropic"

    def encode_request(
        self, request: ChatRequest, provider: ProviderConfig, model: str
    ) -> EncodedRequest:
        """The ``POST /v1/messages`` request for ``model``."""
        return encode_request(request, provider, model)

    def decode_response(self, body: bytes, provider: ProviderConfig) -> ChatResponse:
        """A ``message`` body as a ChatResponse, usage in our convention."""
        return decode_response(body, provider.name)

    def stream_decoder(
        self, provider: ProviderConfig, request: ChatRequest
    ) -> AnthropicStreamDecoder:
        """A fresh decoder for one streamed answer to ``request``."""
        return AnthropicStreamDecoder(request, provider.name)

    def decode_error(
        self, status: int, headers: Mapping[str, str], body: bytes, provider: ProviderConfig
    ) -> LLMError:
        """An Anthropic error answer as an LLMError, ``retry_after`` included."""
        return decode_error(status, headers, body, provider.name, provider.api_key)


class AnthropicCaller:
    """Caller side: a Messages request in, Messages-shaped answers out."""

    name = "anthropic"

    def parse_request(self, body: bytes, path: str = "") -> ChatRequest:
        """An inbound ``/v1/messages`` body as a ChatRequest."""
        return parse_request(body)

    def encode_response(self, response: ChatResponse, model: str) -> dict[str, Any]:
        """The ``message`` body the ``anthropic`` SDK expects."""
        return encode_response(response, model)

    def stream_encoder(
        self, model: str, response_id: str, *, include_usage: bool = False
    ) -> AnthropicStreamEncoder:
        """An encoder producing Anthropic's named SSE events.

        Anthropic streams always carry usage, so ``include_usage`` changes nothing.
        """
        return AnthropicStreamEncoder(model, response_id)

    def encode_error(self, error: LLMError) -> tuple[int, dict[str, str], bytes]:
        """Status (529 for overload), headers (``retry-after``) and an error body."""
        return encode_error(error)


#: The upstream dialect the registry resolves for ``"anthropic"``.
ANTHROPIC_DIALECT = AnthropicDialect()
#: The caller dialect the registry resolves for ``"anthropic"``.
ANTHROPIC_CALLER = AnthropicCaller()
