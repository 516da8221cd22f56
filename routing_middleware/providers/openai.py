"""The OpenAI chat-completions dialect, upstream side.

One dialect serves OpenAI and every OpenAI-compatible provider; their differences
are options on :class:`~routing_middleware.providers.base.ProviderConfig`:

``max_tokens_field``
    ``"max_completion_tokens"`` (default) or ``"max_tokens"`` (Mistral, open-weight hosts).
``seed_field``
    ``"seed"`` (default) or ``"random_seed"`` (Mistral).
``developer_role``
    what to send for ``developer`` messages (``"system"`` where unsupported).
``tool_choice_required``
    the word for "must call a tool" (``"any"`` for Mistral).
``tool_call_ids``
    ``"mistral"`` re-issues foreign tool-call ids as 9-char alphanumerics.
``drop_fields``
    request fields the provider rejects (e.g. ``("user", "metadata")``).
``azure_api_version`` / ``azure_deployment``
    use Azure's legacy ``/openai/deployments/{deployment}/...?api-version=`` route.
``stream_options``
    ``False`` to never send ``stream_options`` (default: always, so usage arrives).
``top_k``
    ``True`` where the provider accepts ``top_k`` (vLLM, Qwen, ...); otherwise it is dropped.
``openai_fields``
    whether OpenAI-only ``extra`` fields (``store``, ``service_tier``, ...) are sent;
    default: only to the providers named ``openai`` and ``azure``.

``extra`` passes through last: never over a field set here, never another dialect's
fields (Anthropic ``thinking``...), never OpenAI-only fields to other hosts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ..schema import (
    ChatRequest,
    ChatResponse,
    Choice,
    FinishReason,
    ImagePart,
    LLMError,
    Message,
    TextPart,
    Tool,
    UpstreamProtocolError,
)
from .base import EncodedRequest, ProviderConfig
from .errors import parse_json_body
from .openai_errors import decode_openai_error, error_from_stream_payload
from .openai_forward_json import forwardable_usage
from .openai_stream import OpenAIStreamDecoder, ToolCallAssembler
from .openai_wire import (
    constructor,
    data_url,
    decode_message,
    decode_usage,
    finish_reason,
    mistral_tool_call_id,
)

__all__ = [
    "OPENAI_DIALECT",
    "OpenAIDialect",
    "ToolCallAssembler",
    "encode_messages",
    "mistral_tool_call_id",
    "restore_tool_call_ids",
]

#: Top-level fields of other dialects that callers' ``extra`` may carry (Anthropic's
#: ``thinking``, Gemini's namespaced settings). No chat-completions host takes them.
_FOREIGN = frozenset(
    {
        "system",
        "stop_sequences",
        "thinking",
        "container",
        "mcp_servers",
        "context_management",
        "output_config",
        "anthropic_server_tools",
        "inference_geo",
        "speed",
        "gemini",
    }
)
#: OpenAI-only request fields; compatible hosts reject or misread them, so they go
#: only to OpenAI and Azure (or where the ``openai_fields`` option says so).
_OPENAI_ONLY = frozenset(
    {
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "verbosity",
        "prediction",
        "modalities",
        "audio",
        "web_search_options",
    }
)
_NATIVE = frozenset({"openai", "azure"})
#: Fields whose value we decide; ``extra`` never overrides them.
_PROTECTED = frozenset(
    {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens"}
)


def restore_tool_call_ids(response: ChatResponse, request: ChatRequest) -> ChatResponse:
    """Map re-issued tool-call ids in ``response`` back to the caller's own ids.

    Only ids the request's history carried can come back; new calls keep the
    provider's ids. Mutates and returns ``response``.
    """
    back = {
        mistral_tool_call_id(call.id): call.id
        for message in request.messages
        for call in message.tool_calls or ()
    }
    back = {new: old for new, old in back.items() if new != old}
    if not back:
        return response
    for choice in response.choices:
        for call in choice.message.tool_calls or ():
            call.id = back.get(call.id, call.id)
    return response


def _encode_content(content: str | list[Any] | None) -> Any:
    if content is None or isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            image: dict[str, Any] = {"url": data_url(part)}
            if part.detail is not None:
                image["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": image})
    return parts


def encode_messages(
    messages: list[Message], developer_role: str = "developer", mistral_ids: bool = False
) -> list[dict[str, Any]]:
    """Messages in the chat-completions wire shape.

    Reasoning from earlier assistant turns is not sent back: DeepSeek rejects it
    and no provider reads it.
    """
    fix_id = mistral_tool_call_id if mistral_ids else str
    out: list[dict[str, Any]] = []
    for message in messages:
        role = developer_role if message.role == "developer" else message.role
        item: dict[str, Any] = {"role": role, "content": _encode_content(message.content)}
        if message.name is not None:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": fix_id(call.id),
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ]
        if message.tool_call_id is not None:
            item["tool_call_id"] = fix_id(message.tool_call_id)
        if message.refusal is not None:
            item["refusal"] = message.refusal
        out.append(item)
    return out


def _tool_choice(request: ChatRequest, required_word: str) -> Any:
    choice = request.tool_choice
    if choice is None:
        return None
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    if choice.mode == "required":
        return required_word
    return choice.mode


def _response_format(request: ChatRequest) -> dict[str, Any] | None:
    fmt = request.response_format
    if fmt is None:
        return None
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    schema: dict[str, Any] = {"name": fmt.name or "response"}
    if fmt.json_schema is not None:
        schema["schema"] = fmt.json_schema
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def _url(provider: ProviderConfig, model: str) -> str:
    options = provider.options
    version = options.get("azure_api_version")
    base = provider.base_url.rstrip("/")
    if not version:
        return f"{base}/chat/completions"
    root = base.removesuffix("/openai/v1").removesuffix("/openai")
    deployment = quote(str(options.get("azure_deployment") or model), safe="")
    return (
        f"{root}/openai/deployments/{deployment}/chat/completions"
        f"?api-version={quote(str(version), safe='')}"
    )


class OpenAIDialect:
    """Chat completions for OpenAI and the OpenAI-compatible providers."""

    name = "openai"

    def encode_request(
        self, request: ChatRequest, provider: ProviderConfig, model: str
    ) -> EncodedRequest:
        """The POST for ``model`` at ``provider``, quirks applied from its options."""
        options = provider.options
        body: dict[str, Any] = {
            "model": model,
            "messages": encode_messages(
                request.messages,
                developer_role=options.get("developer_role", "developer"),
                mistral_ids=options.get("tool_call_ids") == "mistral",
            ),
        }
        if request.max_tokens is not None:
            body[options.get("max_tokens_field", "max_completion_tokens")] = request.max_tokens
        optional: dict[str, Any] = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            # OpenAI rejects top_k; only hosts that say they take it get it.
            "top_k": request.top_k if options.get("top_k") else None,
            "stop": request.stop,
            options.get("seed_field", "seed"): request.seed,
            # Without tools, OpenAI answers parallel_tool_calls with a 400.
            "parallel_tool_calls": request.parallel_tool_calls if request.tools else None,
            "user": request.user,
            "reasoning_effort": request.reasoning_effort,
            "metadata": request.metadata,
            "response_format": _response_format(request),
            "tool_choice": _tool_choice(request, options.get("tool_choice_required", "required")),
        }
        if request.tools:
            optional["tools"] = [_encode_tool(tool) for tool in request.tools]
        for key, value in optional.items():
            if value is not None:
                body[key] = value
        if request.stream:
            body["stream"] = True
            if options.get("stream_options", True):
                merged = request.extra.get("stream_options")
                stream_options = dict(merged) if isinstance(merged, dict) else {}
                stream_options["include_usage"] = True
                body["stream_options"] = stream_options
        if request.extra:
            native = options.get("openai_fields", provider.name in _NATIVE)
            for key, value in request.extra.items():
                if key in body or key in _PROTECTED or key in _FOREIGN:
                    continue
                if key in _OPENAI_ONLY and not native:
                    continue
                body[key] = value
        for key in options.get("drop_fields", ()):
            body.pop(key, None)
        headers = {"content-type": "application/json", "accept": "application/json"}
        if request.stream:
            headers["accept"] = "text/event-stream"
        headers.update(provider.headers)
        headers.update(provider.auth_headers())
        return EncodedRequest(method="POST", url=_url(provider, model), headers=headers, json=body)

    def decode_response(self, body: bytes, provider: ProviderConfig) -> ChatResponse:
        """A ``chat.completion`` body as ChatResponse; garbage raises UpstreamProtocolError."""
        return _decode(_payload(body, provider), provider)

    def forward_response(self, body: bytes, provider: ProviderConfig) -> tuple[ChatResponse, bool]:
        """:meth:`decode_response` for a chat-completions caller that can take ``body``
        as it came (its errors are the same).

        ``(response, True)`` when ``body`` is a plain completion (see
        :func:`~.openai_forward_json.forwardable_usage`): ``response`` has its id,
        model and usage but no choices, the caller reading ``body`` itself.
        ``(response, False)``: decoded in full, for the caller's encoder.
        """
        payload = _payload(body, provider)
        usage = forwardable_usage(payload)
        if usage is None:
            return _decode(payload, provider), False
        response = _new_response(
            {
                "id": payload["id"],
                "model": payload["model"],
                "provider": provider.name,
                "created": payload["created"],
                "choices": [],
                "usage": usage,
            }
        )
        return response, True

    def stream_decoder(self, provider: ProviderConfig, request: ChatRequest) -> OpenAIStreamDecoder:
        """A decoder for one ``chat.completion.chunk`` stream answering ``request``."""
        return OpenAIStreamDecoder(provider, request)

    def decode_error(
        self, status: int, headers: Mapping[str, str], body: bytes, provider: ProviderConfig
    ) -> LLMError:
        """Map a non-2xx answer to the LLMError family (see :mod:`.openai_errors`)."""
        return decode_openai_error(status, headers, body, provider.name, provider.api_key)


_new_response = constructor(ChatResponse)


def _payload(body: bytes, provider: ProviderConfig) -> dict[str, Any]:
    """A ``chat.completion`` body's object; garbage and error objects raise."""
    payload = parse_json_body(body, provider.name)
    if not isinstance(payload, dict):
        raise UpstreamProtocolError(
            "provider returned JSON that is not an object", provider=provider.name
        )
    if isinstance(payload.get("error"), dict | str) and not payload.get("choices"):
        raise error_from_stream_payload(payload, provider.name, provider.api_key)
    return payload


def _decode(payload: dict[str, Any], provider: ProviderConfig) -> ChatResponse:
    choices: list[Choice] = []
    raw_choices = payload.get("choices")
    for position, raw in enumerate(raw_choices if isinstance(raw_choices, list) else ()):
        if not isinstance(raw, dict):
            continue
        mapped, native = finish_reason(raw.get("finish_reason"))
        message = decode_message(raw.get("message"))
        if mapped is None:
            mapped = _implied_finish(message)
        index = raw.get("index")
        choices.append(
            Choice.model_construct(
                index=index if isinstance(index, int) else position,
                message=message,
                finish_reason=mapped,
                native_finish_reason=native,
            )
        )
    created = payload.get("created")
    return ChatResponse.model_construct(
        id=str(payload.get("id") or ""),
        model=str(payload.get("model") or ""),
        provider=provider.name,
        created=created if isinstance(created, int) else 0,
        choices=choices,
        usage=decode_usage(payload.get("usage")),
    )


def _implied_finish(message: Message) -> FinishReason:
    return FinishReason.TOOL_CALLS if message.tool_calls else FinishReason.STOP


def _encode_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


#: The shared instance; the dialect holds no state.
OPENAI_DIALECT = OpenAIDialect()
