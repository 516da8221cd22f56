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
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..schema import (
    AuthenticationFailed,
    BudgetExceeded,
    ChatRequest,
    ChatResponse,
    Choice,
    ContextWindowExceeded,
    FinishReason,
    ImagePart,
    InvalidRequest,
    LLMError,
    Message,
    Overloaded,
    RateLimited,
    ResponseFormat,
    StreamChunk,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    UnknownModel,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
    Usage,
)
from ..tokens import estimate_request_tokens, estimate_text_tokens
from .base import EncodedRequest, ProviderConfig
from .errors import (
    MAX_RETRY_AFTER_S,
    error_for_status,
    looks_like_context_overflow,
    parse_json_body,
    parse_retry_after,
)
from .sse import SSEDecoder

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

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
#: Key of ``ChatRequest.extra`` holding Gemini-only fields a Gemini caller sent.
EXTRA_KEY = "gemini"
#: Separates a tool-call id from the thought signature carried inside it.
THOUGHT_SIGNATURE_MARK = "__ts_"
#: Image types Gemini accepts, by file extension, for URLs without a ``media_type``.
IMAGE_MIME_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".heif": "image/heif",
}
#: JSON-schema keywords Gemini's ``Schema`` accepts; everything else is dropped.
SCHEMA_KEYWORDS = frozenset(
    [
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "properties",
        "required",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "anyOf",
        "propertyOrdering",
        "default",
        "example",
    ]
)

_PROVIDER = "gemini"
_PROMPT_BLOCKED = "PROMPT_BLOCKED:"

_FINISH_IN: dict[str, FinishReason] = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    **dict.fromkeys(
        [
            "SAFETY",
            "RECITATION",
            "LANGUAGE",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
            "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT",
            "IMAGE_OTHER",
            "IMAGE_RECITATION",
            "NO_IMAGE",
            "OTHER",
        ],
        FinishReason.CONTENT_FILTER,
    ),
    # The model misfired rather than finished: "error", so fallbacks can tell.
    **dict.fromkeys(
        [
            "MALFORMED_FUNCTION_CALL",
            "UNEXPECTED_TOOL_CALL",
            "TOO_MANY_TOOL_CALLS",
            "MISSING_THOUGHT_SIGNATURE",
            "MALFORMED_RESPONSE",
            "FINISH_REASON_UNSPECIFIED",
        ],
        FinishReason.ERROR,
    ),
}
_FINISH_OUT = {
    FinishReason.STOP: "STOP",
    FinishReason.TOOL_CALLS: "STOP",
    FinishReason.LENGTH: "MAX_TOKENS",
    FinishReason.CONTENT_FILTER: "SAFETY",
    FinishReason.ERROR: "OTHER",
}
#: HTTP status → Google RPC status name, for answers to Gemini callers.
_RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
#: ``reasoning_effort`` → ``thinkingBudget`` for Gemini 2.x; later models take a level.
_THINKING_BUDGETS = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576}
_THINKING_LEVELS = {
    "none": "minimal",
    "minimal": "minimal",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
_PATH = re.compile(r"(?:^|/)((?:tuned)?[mM]odels/[^/:?]+):(generateContent|streamGenerateContent)")
_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)
_COMPACT = (",", ":")


# --------------------------------------------------------------------------- helpers


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=_COMPACT)


def _count(meta: Mapping[str, Any], key: str) -> int:
    value = meta.get(key)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _usage_from_meta(meta: Mapping[str, Any]) -> Usage:
    prompt = _count(meta, "promptTokenCount")
    thoughts = _count(meta, "thoughtsTokenCount")
    output = _count(meta, "candidatesTokenCount") + thoughts
    tool_use = _count(meta, "toolUsePromptTokenCount")
    # The tool-use prompt is billed as input on top of the prompt, unless the total
    # shows it already sits inside promptTokenCount: never count it twice.
    if tool_use and _count(meta, "totalTokenCount") != prompt + output:
        prompt += tool_use
    return Usage(
        input_tokens=prompt,
        # Inside promptTokenCount already: a subset, never an addition.
        cached_input_tokens=min(_count(meta, "cachedContentTokenCount"), prompt),
        output_tokens=output,
        reasoning_tokens=thoughts,
    )


def _usage_to_meta(usage: Usage) -> dict[str, int]:
    meta = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": usage.output_tokens - usage.reasoning_tokens,
        "totalTokenCount": usage.input_tokens + usage.output_tokens,
    }
    if usage.cached_input_tokens:
        meta["cachedContentTokenCount"] = usage.cached_input_tokens
    if usage.reasoning_tokens:
        meta["thoughtsTokenCount"] = usage.reasoning_tokens
    return meta


def _finish_in(native: str | None, has_calls: bool) -> FinishReason:
    if native is None:
        return FinishReason.TOOL_CALLS if has_calls else FinishReason.STOP
    reason = _FINISH_IN.get(native, FinishReason.STOP)
    if reason is FinishReason.STOP and has_calls:
        return FinishReason.TOOL_CALLS
    return reason


def _finish_out(reason: FinishReason, native: str | None) -> str:
    if native is not None and native in _FINISH_IN and _FINISH_IN[native] is reason:
        return native
    return _FINISH_OUT[reason]


def _pack_signature(call_id: str, signature: str | None) -> str:
    if not signature:
        return call_id
    safe = signature.replace("+", "-").replace("/", "_").rstrip("=")
    return f"{call_id}{THOUGHT_SIGNATURE_MARK}{safe}"


def _unpack_signature(call_id: str) -> tuple[str, str | None]:
    base, mark, safe = call_id.partition(THOUGHT_SIGNATURE_MARK)
    if not mark or not safe:
        return call_id, None
    signature = safe.replace("-", "+").replace("_", "/")
    return base, signature + "=" * (-len(signature) % 4)


def _derived_call_id(response_id: str, index: int, ordinal: int, name: str, args: str) -> str:
    seed = f"{response_id}\x1f{index}\x1f{ordinal}\x1f{name}\x1f{args}".encode()
    return "call_" + hashlib.sha256(seed).hexdigest()[:24]


def _tool_call_from_part(
    part: Mapping[str, Any], response_id: str, index: int, ordinal: int
) -> ToolCall:
    call = part["functionCall"]
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise UpstreamProtocolError("Gemini functionCall without a name", provider=_PROVIDER)
    args = _dumps(call.get("args") or {})
    name = call["name"]
    given = call.get("id")
    base = given if isinstance(given, str) and given else None
    base = base or _derived_call_id(response_id, index, ordinal, name, args)
    signature = part.get("thoughtSignature")
    call_id = _pack_signature(base, signature if isinstance(signature, str) else None)
    return ToolCall.model_construct(id=call_id, name=name, arguments=args)


def _parts_of(candidate: Mapping[str, Any]) -> list[Any]:
    content = candidate.get("content")
    if not isinstance(content, dict):
        return []
    parts = content.get("parts")
    return parts if isinstance(parts, list) else []


def _block_reason(payload: Mapping[str, Any]) -> str | None:
    feedback = payload.get("promptFeedback")
    if isinstance(feedback, dict):
        reason = feedback.get("blockReason")
        if isinstance(reason, str) and reason:
            return reason
    return None


def _retry_delay(details: Any) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"37s"``, ``"1.5s"``)."""
    if not isinstance(details, list):
        return None
    for detail in details:
        if not isinstance(detail, Mapping) or detail.get("@type") != _RETRY_INFO:
            continue
        delay = detail.get("retryDelay")
        seconds: float | None = None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = float(delay[:-1])
            except ValueError:
                seconds = None
        elif isinstance(delay, Mapping):
            try:
                seconds = float(delay.get("seconds") or 0) + float(delay.get("nanos") or 0) / 1e9
            except (TypeError, ValueError):
                seconds = None
        if seconds is not None and seconds == seconds:
            return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
    return None


def _error_from_payload(
    status: int, headers: Mapping[str, str], payload: Any, provider: str
) -> LLMError:
    """Map a Google RPC error payload (``{"error": {...}}``) to the LLMError family."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    err = payload.get("error") if isinstance(payload, Mapping) else None
    if not isinstance(err, Mapping):
        return error_for_status(status, f"Gemini answered HTTP {status}", provider=provider)
    message = str(err.get("message") or f"Gemini answered HTTP {status}")
    rpc = str(err.get("status") or "")
    if status < 400 and isinstance(err.get("code"), int):
        status = err["code"]  # an error inside a 200 stream carries its own code
    details = err.get("details")
    reasons = {d.get("reason") for d in details or () if isinstance(d, Mapping) and d.get("reason")}
    retry_after = _retry_delay(details)
    if retry_after is None:
        retry_after = parse_retry_after(headers)
    kwargs: dict[str, Any] = {"provider": provider, "retry_after": retry_after, "raw": dict(err)}
    if "API_KEY_INVALID" in reasons or rpc == "UNAUTHENTICATED" or status == 401:
        return AuthenticationFailed(message, status_code=401, **kwargs)
    if rpc in ("PERMISSION_DENIED", "FAILED_PRECONDITION") or status == 403:
        # FAILED_PRECONDITION: the account cannot use the API here (region, billing).
        return AuthenticationFailed(message, status_code=403, code=rpc.lower() or None, **kwargs)
    if rpc == "RESOURCE_EXHAUSTED" or status == 429:
        return RateLimited(message, **kwargs)
    if status in (400, 404, 413, 500) and looks_like_context_overflow(message):
        return ContextWindowExceeded(message, **kwargs)
    if rpc == "NOT_FOUND" or status == 404:
        found = re.search(r"models/([\w.\-]+)", message)
        if found:
            return UnknownModel(found.group(1), **kwargs)
        return InvalidRequest(message, status_code=404, code="not_found", **kwargs)
    if rpc == "UNAVAILABLE" or status == 503:
        return Overloaded(message, status_code=503, **kwargs)
    if rpc == "DEADLINE_EXCEEDED" or status == 504:
        return UpstreamTimeout(message, status_code=504, **kwargs)
    if rpc == "INTERNAL" or status == 500:
        return UpstreamUnavailable(message, status_code=500, **kwargs)
    if rpc == "INVALID_ARGUMENT":
        return InvalidRequest(message, status_code=400, code="invalid_argument", **kwargs)
    return error_for_status(status, message, **kwargs)


# --------------------------------------------------------------------------- schemas


def gemini_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` rewritten to the JSON-schema subset Gemini's ``Schema`` accepts."""
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        found = schema.get(key)
        if isinstance(found, Mapping):
            defs.update({f"#/{key}/{name}": value for name, value in found.items()})
    return _clean(schema, defs, ())


def _clean(node: Any, defs: Mapping[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(node, Mapping):
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen or ref not in defs:
            return {"type": "object"}
        merged = {**defs[ref], **{k: v for k, v in node.items() if k != "$ref"}}
        return _clean(merged, defs, (*seen, ref))
    out: dict[str, Any] = {}
    nullable = False
    for key, value in node.items():
        if key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            nullable = nullable or len(types) < len(value)
            if len(types) == 1:
                out["type"] = types[0]
            elif types:
                out["anyOf"] = [{"type": t} for t in types]
        elif key == "type" and value == "null":
            nullable = True
        elif key == "properties" and isinstance(value, Mapping):
            out["properties"] = {name: _clean(sub, defs, seen) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _clean(
                value[0] if isinstance(value, list) and value else value, defs, seen
            )
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            branches = []
            for branch in value:
                if (
                    isinstance(branch, Mapping)
                    and branch.get("type") == "null"
                    and len(branch) == 1
                ):
                    nullable = True
                else:
                    branches.append(_clean(branch, defs, seen))
            if len(branches) == 1:
                out.update({k: v for k, v in branches[0].items() if k not in out})
            elif branches:
                out["anyOf"] = branches
        elif key == "allOf" and isinstance(value, list) and len(value) == 1:
            out.update({k: v for k, v in _clean(value[0], defs, seen).items() if k not in out})
        elif key == "const" and isinstance(value, str):
            out["enum"] = [value]
        elif key in SCHEMA_KEYWORDS:
            out[key] = value
    if nullable:
        out["nullable"] = True
    required = out.get("required")
    if isinstance(required, list) and isinstance(out.get("properties"), Mapping):
        out["required"] = [name for name in required if name in out["properties"]]
    return out


def _standard_schema(node: Any) -> Any:
    """A Gemini caller's schema as standard JSON schema: lower-case types, nullable as type."""
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, str):
            out["type"] = value.lower()
        elif key == "properties" and isinstance(value, Mapping):
            out["properties"] = {name: _standard_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _standard_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            out["anyOf"] = [_standard_schema(branch) for branch in value]
        elif key != "nullable":
            out[key] = value
    if node.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


# --------------------------------------------------------------------------- upstream encode


def _image_part(part: ImagePart, where: str) -> dict[str, Any]:
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    url = part.url or ""
    if url.startswith("data:"):
        found = _DATA_URL.fullmatch(url)
        if not found:
            raise InvalidRequest(
                "an image data URL must look like data:<mime>;base64,<data>", param=where
            )
        return {"inlineData": {"mimeType": found.group(1), "data": found.group(2)}}
    mime = part.media_type
    if not mime:
        path = url.split("?", 1)[0].split("#", 1)[0].lower()
        dot = path.rfind(".")
        mime = IMAGE_MIME_TYPES.get(path[dot:]) if dot > path.rfind("/") else None
    if not mime:
        raise InvalidRequest(
            "Gemini needs the MIME type of an image URL: give media_type, or use a URL "
            f"ending in one of {', '.join(sorted(IMAGE_MIME_TYPES))}",
            param=where,
        )
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _content_parts(message: Message, where: str) -> list[dict[str, Any]]:
    content = message.content
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        else:
            parts.append(_image_part(part, f"{where}.content[{j}]"))
    return parts


def _function_call_part(call: ToolCall, where: str) -> dict[str, Any]:
    try:
        args = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError as error:
        raise InvalidRequest(
            f"tool call {call.name!r} has arguments that are not JSON", param=where
        ) from error
    if not isinstance(args, dict):
        raise InvalidRequest(
            f"tool call {call.name!r} has arguments that are not a JSON object", param=where
        )
    part: dict[str, Any] = {"functionCall": {"name": call.name, "args": args}}
    _, signature = _unpack_signature(call.id)
    if signature:
        part["thoughtSignature"] = signature
    return part


def _function_response_part(
    message: Message, names: Mapping[str, str], where: str
) -> dict[str, Any]:
    name = names.get(message.tool_call_id or "") or message.name
    if not name:
        raise InvalidRequest(
            "a tool result must answer an earlier tool call (no call has its tool_call_id)",
            param=f"{where}.tool_call_id",
        )
    text = message.text
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    response = value if isinstance(value, dict) else {"output": value}
    return {"functionResponse": {"name": name, "response": response}}


def _encode_contents(
    messages: list[Message],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role in ("system", "developer"):
            for part in _content_parts(message, where):
                if "text" not in part:
                    raise InvalidRequest("Gemini system instructions take text only", param=where)
                system.append(part)
            continue
        if message.role == "tool":
            role, parts = "user", [_function_response_part(message, names, where)]
        elif message.role == "assistant":
            role, parts = "model", _content_parts(message, where)
            for k, call in enumerate(message.tool_calls or ()):
                names[call.id] = call.name
                parts.append(_function_call_part(call, f"{where}.tool_calls[{k}].arguments"))
        else:
            role, parts = "user", _content_parts(message, where)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _thinking_config(effort: str, model: str) -> dict[str, Any]:
    bare = model.rsplit("/", 1)[-1].lower()
    if bare.startswith("gemini-2"):
        if effort not in _THINKING_BUDGETS:
            raise InvalidRequest(f"unknown reasoning_effort {effort!r}", param="reasoning_effort")
        budget = _THINKING_BUDGETS[effort]
        if budget == 0 and "pro" in bare:
            budget = 128  # the Pro models cannot switch thinking off; 128 is their floor
        return {"thinkingBudget": budget}
    if effort not in _THINKING_LEVELS:
        raise InvalidRequest(f"unknown reasoning_effort {effort!r}", param="reasoning_effort")
    return {"thinkingLevel": _THINKING_LEVELS[effort]}


def _tool_config(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode == "tool":
        config: dict[str, Any] = {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    else:
        config = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice.mode]}
    return {"functionCallingConfig": config}


def _function_declaration(tool: Tool) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": tool.name}
    if tool.description:
        declaration["description"] = tool.description
    parameters = gemini_schema(tool.parameters)
    if parameters.get("properties") or parameters.get("type") not in (None, "object"):
        declaration["parameters"] = parameters
    return declaration


def _encode_body(request: ChatRequest, model: str) -> dict[str, Any]:
    system, contents = _encode_contents(request.messages)
    if not contents:
        raise InvalidRequest("Gemini needs at least one user or assistant turn", param="messages")
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    extra = request.extra.get(EXTRA_KEY)
    native: Mapping[str, Any] = extra if isinstance(extra, Mapping) else {}
    tools: list[dict[str, Any]] = []
    if request.tools:
        tools.append({"functionDeclarations": [_function_declaration(t) for t in request.tools]})
        if request.tool_choice is not None:
            body["toolConfig"] = _tool_config(request.tool_choice)
    native_tools = native.get("tools")
    if isinstance(native_tools, list):
        tools.extend(native_tools)
    if tools:
        body["tools"] = tools

    config: dict[str, Any] = {}
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.top_k is not None:
        config["topK"] = request.top_k
    if request.stop:
        config["stopSequences"] = list(request.stop)
    if request.seed is not None:
        config["seed"] = request.seed
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.json_schema:
            config["responseSchema"] = gemini_schema(fmt.json_schema)
    native_config = native.get("generationConfig")
    if request.reasoning_effort and not (
        isinstance(native_config, Mapping) and "thinkingConfig" in native_config
    ):
        config["thinkingConfig"] = _thinking_config(request.reasoning_effort, model)
    if isinstance(native_config, Mapping):
        config.update(native_config)
        if "responseJsonSchema" in native_config:
            config.pop("responseSchema", None)
    if config:
        body["generationConfig"] = config
    for key, value in native.items():
        if key not in ("tools", "generationConfig", "contents", "systemInstruction"):
            body[key] = value
    return body


def _url(provider: ProviderConfig, model: str, stream: bool) -> str:
    base = (provider.base_url or DEFAULT_BASE_URL).rstrip("/")
    # A base naming its API version (".../v1beta", or a Vertex
    # ".../v1/projects/{p}/locations/{r}/publishers/google") is used as it is.
    if not re.search(r"/v1(?:beta\d*|alpha)?(?:/|$)", base):
        base = f"{base}/{provider.options.get('api_version', 'v1beta')}"
    if not model.startswith(("models/", "tunedModels/")):
        model = f"models/{model}"
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"{base}/{model}:{method}"


# --------------------------------------------------------------------------- upstream decode


def _decode_payload(payload: Mapping[str, Any], response_id: str) -> ChatResponse:
    candidates = payload.get("candidates")
    choices: list[Choice] = []
    if isinstance(candidates, list):
        for position, candidate in enumerate(candidates):
            if not isinstance(candidate, Mapping):
                raise UpstreamProtocolError("Gemini candidate is not an object", provider=_PROVIDER)
            index = candidate.get("index", position)
            texts: list[str] = []
            thoughts: list[str] = []
            calls: list[ToolCall] = []
            for part in _parts_of(candidate):
                if not isinstance(part, Mapping):
                    continue
                if "functionCall" in part:
                    calls.append(_tool_call_from_part(part, response_id, index, len(calls)))
                elif isinstance(part.get("text"), str):
                    (thoughts if part.get("thought") else texts).append(part["text"])
            native = candidate.get("finishReason")
            native = native if isinstance(native, str) else None
            message = Message.model_construct(
                role="assistant",
                content="".join(texts) if texts or not calls else None,
                tool_calls=calls or None,
                reasoning="".join(thoughts) if thoughts else None,
            )
            choices.append(
                Choice.model_construct(
                    index=index,
                    message=message,
                    finish_reason=_finish_in(native, bool(calls)),
                    native_finish_reason=native,
                )
            )
    if not choices:
        blocked = _block_reason(payload)
        if blocked is None:
            raise UpstreamProtocolError(
                "Gemini answered with no candidates and no block reason", provider=_PROVIDER
            )
        choices.append(
            Choice.model_construct(
                index=0,
                message=Message.model_construct(role="assistant", content=""),
                finish_reason=FinishReason.CONTENT_FILTER,
                native_finish_reason=_PROMPT_BLOCKED + blocked,
            )
        )
    meta = payload.get("usageMetadata")
    model = payload.get("modelVersion")
    return ChatResponse.model_construct(
        id=response_id,
        model=model if isinstance(model, str) else "",
        provider=_PROVIDER,
        created=0,
        choices=choices,
        usage=_usage_from_meta(meta) if isinstance(meta, Mapping) else None,
    )


class GeminiStreamDecoder:
    """Decodes one ``streamGenerateContent?alt=sse`` answer.

    Each SSE event is a whole GenerateContentResponse. There is no ``[DONE]``: the
    chunk whose candidates all carry a ``finishReason`` ends the stream, and ``close()``
    raises :class:`UpstreamProtocolError` if none came. The last ``usageMetadata`` seen
    holds the complete counts; when none came, usage is estimated (``estimated=True``).
    """

    __slots__ = (
        "_calls",
        "_done",
        "_final_usage",
        "_finished",
        "_id",
        "_meta",
        "_model",
        "_pieces",
        "_provider",
        "_request",
        "_sse",
    )

    def __init__(self, provider: str, request: ChatRequest) -> None:
        self._sse = SSEDecoder()
        self._provider = provider
        self._request = request
        self._meta: Mapping[str, Any] | None = None
        self._final_usage: Usage | None = None
        self._calls: dict[int, int] = {}  # candidate index → function calls seen
        self._finished: set[int] = set()
        self._done = False
        self._id: str | None = None
        self._model: str | None = None
        self._pieces: list[str] = []  # generated text, for estimates only

    @property
    def usage(self) -> Usage | None:
        """The final usage, or the latest reported so far (``None`` before any)."""
        if self._final_usage is not None:
            return self._final_usage
        return _usage_from_meta(self._meta) if self._meta is not None else None

    def feed(self, data: bytes) -> list[StreamChunk]:
        """Decode ``data``; raises the mapped LLMError for an error object in the stream."""
        chunks: list[StreamChunk] = []
        for event in self._sse.feed(data):
            self._event(event.data, chunks)
        return chunks

    def close(self) -> list[StreamChunk]:
        """End of input; raises UpstreamProtocolError when no ``finishReason`` arrived."""
        chunks: list[StreamChunk] = []
        for event in self._sse.close():
            self._event(event.data, chunks)
        if not self._done:
            self._final_usage = self._estimate(cut=True)
            raise UpstreamProtocolError(
                "Gemini stream ended before any finishReason (cut short)",
                provider=self._provider,
            )
        return chunks

    def _estimate(self, *, cut: bool) -> Usage:
        reported = _usage_from_meta(self._meta) if self._meta is not None else None
        output = estimate_text_tokens("".join(self._pieces))
        if reported is not None and (not cut or reported.output_tokens >= output):
            return reported if not cut else reported.model_copy(update={"estimated": True})
        input_tokens = reported.input_tokens if reported and reported.input_tokens else None
        return Usage(
            input_tokens=input_tokens or estimate_request_tokens(self._request),
            output_tokens=max(output, reported.output_tokens if reported else 0),
            reasoning_tokens=reported.reasoning_tokens if reported else 0,
            cached_input_tokens=reported.cached_input_tokens if reported else 0,
            estimated=True,
        )

    def _event(self, data: str, out: list[StreamChunk]) -> None:
        if not data or data == "[DONE]":
            return
        try:
            payload = json.loads(data)
        except ValueError as error:
            raise UpstreamProtocolError(
                f"Gemini stream event is not JSON: {data[:80]!r}", provider=self._provider
            ) from error
        if not isinstance(payload, dict):
            raise UpstreamProtocolError(
                "Gemini stream event is not an object", provider=self._provider
            )
        if "error" in payload:
            raise _error_from_payload(200, {}, payload, self._provider)
        response_id = payload.get("responseId")
        if isinstance(response_id, str):
            self._id = response_id
        model = payload.get("modelVersion")
        if isinstance(model, str):
            self._model = model
        meta = payload.get("usageMetadata")
        fresh_usage = isinstance(meta, dict)
        if fresh_usage:
            self._meta = meta
        candidates = payload.get("candidates")
        produced = False
        if isinstance(candidates, list):
            start = len(out)
            for position, candidate in enumerate(candidates):
                if isinstance(candidate, dict):
                    out.append(self._candidate(candidate, position))
                    produced = True
            if produced and not self._done and self._finished.issuperset(self._calls):
                # Every candidate seen so far has finished: this event ends the stream.
                self._done = True
                last = next(c for c in reversed(out[start:]) if c.finish_reason is not None)
                last.usage = self._settle()
        if not produced and not self._done:
            blocked = _block_reason(payload)
            if blocked is not None:
                self._done = True
                out.append(
                    StreamChunk.model_construct(
                        id=self._id,
                        model=self._model,
                        role="assistant",
                        finish_reason=FinishReason.CONTENT_FILTER,
                        native_finish_reason=_PROMPT_BLOCKED + blocked,
                        usage=self._settle(),
                    )
                )
                return
        if self._done and fresh_usage and not produced and self._final_usage is not None:
            # Counts arriving after the end: report the corrected total once more.
            self._final_usage = _usage_from_meta(meta)  # type: ignore[arg-type]
            out.append(StreamChunk.model_construct(id=self._id, usage=self._final_usage))

    def _settle(self) -> Usage:
        self._final_usage = (
            _usage_from_meta(self._meta) if self._meta is not None else self._estimate(cut=False)
        )
        return self._final_usage

    def _candidate(self, candidate: Mapping[str, Any], position: int) -> StreamChunk:
        index = candidate.get("index", position)
        first = index not in self._calls
        seen = self._calls.setdefault(index, 0)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCallDelta] = []
        for part in _parts_of(candidate):
            if not isinstance(part, dict):
                continue
            if "functionCall" in part:
                call = _tool_call_from_part(part, self._id or "", index, seen + len(calls))
                calls.append(
                    ToolCallDelta.model_construct(
                        index=seen + len(calls),
                        id=call.id,
                        name=call.name,
                        arguments=call.arguments,
                    )
                )
                self._pieces.append(call.arguments)
            elif isinstance(part.get("text"), str) and part["text"]:
                (thoughts if part.get("thought") else texts).append(part["text"])
        self._calls[index] = seen + len(calls)
        text = "".join(texts) if texts else None
        reasoning = "".join(thoughts) if thoughts else None
        if text:
            self._pieces.append(text)
        if reasoning:
            self._pieces.append(reasoning)
        native = candidate.get("finishReason")
        finish: FinishReason | None = None
        if isinstance(native, str) and native:
            finish = _finish_in(native, self._calls[index] > 0)
            self._finished.add(index)
        else:
            native = None
        return StreamChunk.model_construct(
            id=self._id,
            model=self._model,
            index=index,
            role="assistant" if first else None,
            text=text,
            reasoning=reasoning,
            tool_calls=calls or None,
            finish_reason=finish,
            native_finish_reason=native,
            usage=None,
        )


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
        if provider.api_key:
            body = body.replace(provider.api_key.encode(), b"[redacted]")
        try:
            payload: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            snippet = body[:200].decode("utf-8", "replace")
            return error_for_status(
                status,
                f"Gemini answered HTTP {status}: {snippet}",
                provider=provider.name,
                retry_after=parse_retry_after(headers),
            )
        return _error_from_payload(status, headers, payload, provider.name)


# --------------------------------------------------------------------------- caller side


def _get(mapping: Mapping[str, Any], camel: str) -> Any:
    """A field by its lowerCamel name or its snake_case twin (both are valid proto JSON)."""
    if camel in mapping:
        return mapping[camel]
    return mapping.get(re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower())


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidRequest(f"{where} must be {what}", param=where)
    return value


def _caller_image(part: Mapping[str, Any], key: str, where: str) -> ImagePart:
    blob = _expect(_get(part, key), Mapping, f"{where}.{key}", "an object")
    mime = _get(blob, "mimeType")
    if not isinstance(mime, str) or not mime.startswith("image/"):
        raise InvalidRequest(
            f"{where}.{key}.mimeType must be an image type (image/png, image/jpeg, ...)",
            param=f"{where}.{key}.mimeType",
        )
    if key == "inlineData":
        data = _expect(_get(blob, "data"), str, f"{where}.{key}.data", "base64 text")
        return ImagePart(data=data, media_type=mime)
    uri = _expect(_get(blob, "fileUri"), str, f"{where}.{key}.fileUri", "a URI")
    return ImagePart(url=uri, media_type=mime)


class _ContentsParser:
    """Turns ``contents`` into messages, pairing function responses with their calls."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._by_id: dict[str, str] = {}  # Gemini call id → our tool_call_id
        self._pending: list[tuple[str, str]] = []  # unanswered (name, tool_call_id)

    def content(self, content: Any, i: int) -> None:
        where = f"contents[{i}]"
        _expect(content, Mapping, where, "an object")
        role = content.get("role") or "user"
        if role not in ("user", "model", "function"):
            raise InvalidRequest(
                f"{where}.role must be 'user' or 'model', not {role!r}", param=f"{where}.role"
            )
        parts = _expect(content.get("parts"), list, f"{where}.parts", "a list of parts")
        if role == "model":
            self._model_turn(parts, where)
        else:
            self._user_turn(parts, where)

    def _model_turn(self, parts: list[Any], where: str) -> None:
        texts: list[TextPart] = []
        thoughts: list[str] = []
        calls: list[ToolCall] = []
        for j, part in enumerate(parts):
            at = f"{where}.parts[{j}]"
            _expect(part, Mapping, at, "an object")
            call = _get(part, "functionCall")
            if call is not None:
                calls.append(self._call(call, part, at))
            elif isinstance(part.get("text"), str):
                if part.get("thought"):
                    thoughts.append(part["text"])
                else:
                    texts.append(TextPart(text=part["text"]))
            else:
                raise InvalidRequest(f"{at}: unsupported part in a model turn", param=at)
        content: str | list[TextPart] | None = None
        if len(texts) == 1:
            content = texts[0].text
        elif texts:
            content = texts
        self.messages.append(
            Message(
                role="assistant",
                content=content,  # type: ignore[arg-type]
                tool_calls=calls or None,
                reasoning="".join(thoughts) if thoughts else None,
            )
        )

    def _call(self, call: Any, part: Mapping[str, Any], at: str) -> ToolCall:
        at = f"{at}.functionCall"
        _expect(call, Mapping, at, "an object")
        name = _expect(call.get("name"), str, f"{at}.name", "a function name")
        args = call.get("args") or {}
        _expect(args, Mapping, f"{at}.args", "an object")
        given = call.get("id")
        base = (
            given
            if isinstance(given, str) and given
            else "call_" + "_".join(re.findall(r"\d+", at))
        )
        signature = _get(part, "thoughtSignature")
        call_id = _pack_signature(base, signature if isinstance(signature, str) else None)
        if isinstance(given, str) and given:
            self._by_id[given] = call_id
        self._pending.append((name, call_id))
        return ToolCall(id=call_id, name=name, arguments=_dumps(args))

    def _user_turn(self, parts: list[Any], where: str) -> None:
        run: list[TextPart | ImagePart] = []
        for j, part in enumerate(parts):
            at = f"{where}.parts[{j}]"
            _expect(part, Mapping, at, "an object")
            answer = _get(part, "functionResponse")
            if answer is not None:
                self._flush(run)
                run = []
                self.messages.append(self._answer(answer, f"{at}.functionResponse"))
            elif isinstance(part.get("text"), str):
                run.append(TextPart(text=part["text"]))
            elif _get(part, "inlineData") is not None:
                run.append(_caller_image(part, "inlineData", at))
            elif _get(part, "fileData") is not None:
                run.append(_caller_image(part, "fileData", at))
            else:
                kinds = ", ".join(sorted(part)) or "empty part"
                raise InvalidRequest(f"{at}: unsupported part ({kinds})", param=at)
        self._flush(run)

    def _flush(self, run: list[TextPart | ImagePart]) -> None:
        if not run:
            return
        if len(run) == 1 and isinstance(run[0], TextPart):
            self.messages.append(Message(role="user", content=run[0].text))
        else:
            self.messages.append(Message(role="user", content=list(run)))

    def _answer(self, answer: Any, at: str) -> Message:
        _expect(answer, Mapping, at, "an object")
        name = _expect(answer.get("name"), str, f"{at}.name", "a function name")
        response = answer.get("response") or {}
        _expect(response, Mapping, f"{at}.response", "an object")
        given = answer.get("id")
        call_id = self._by_id.get(given) if isinstance(given, str) else None
        if call_id is None:
            call_id = next((cid for n, cid in self._pending if n == name), None)
        if call_id is None:
            call_id = f"call_{name}_{len(self.messages)}"
        else:
            self._pending = [(n, cid) for n, cid in self._pending if cid != call_id]
        return Message(role="tool", name=name, tool_call_id=call_id, content=_dumps(response))


def _caller_system(value: Any) -> Message | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Message(role="system", content=value)
    _expect(value, Mapping, "systemInstruction", "an object with parts")
    parts = _expect(value.get("parts"), list, "systemInstruction.parts", "a list of text parts")
    texts = []
    for j, part in enumerate(parts):
        where = f"systemInstruction.parts[{j}].text"
        texts.append(
            TextPart(
                text=_expect(
                    part.get("text") if isinstance(part, Mapping) else None, str, where, "text"
                )
            )
        )
    if not texts:
        return None
    return Message(role="system", content=texts[0].text if len(texts) == 1 else texts)  # type: ignore[arg-type]


def _caller_tools(value: Any, native: dict[str, Any]) -> list[Tool] | None:
    _expect(value, list, "tools", "a list")
    tools: list[Tool] = []
    others: list[Any] = []
    for i, entry in enumerate(value):
        _expect(entry, Mapping, f"tools[{i}]", "an object")
        declarations = _get(entry, "functionDeclarations")
        if declarations is None:
            others.append(entry)
            continue
        where = f"tools[{i}].functionDeclarations"
        for j, declaration in enumerate(_expect(declarations, list, where, "a list")):
            at = f"{where}[{j}]"
            _expect(declaration, Mapping, at, "an object")
            name = _expect(declaration.get("name"), str, f"{at}.name", "a function name")
            schema = _get(declaration, "parametersJsonSchema")
            if schema is None:
                schema = _standard_schema(declaration.get("parameters") or {"type": "object"})
            _expect(schema, Mapping, f"{at}.parameters", "a schema object")
            description = declaration.get("description")
            tools.append(
                Tool(
                    name=name,
                    description=description if isinstance(description, str) else None,
                    parameters=dict(schema),
                )
            )
    if others:
        native["tools"] = others
    return tools or None


def _caller_tool_choice(value: Any, native: dict[str, Any]) -> ToolChoice | None:
    _expect(value, Mapping, "toolConfig", "an object")
    calling = _get(value, "functionCallingConfig")
    exact = set(value) <= {"functionCallingConfig", "function_calling_config"}
    if not isinstance(calling, Mapping):
        native["toolConfig"] = dict(value)
        return None
    mode = str(calling.get("mode") or "AUTO").upper()
    names = _get(calling, "allowedFunctionNames") or []
    choice: ToolChoice | None
    if mode == "ANY" and isinstance(names, list) and len(names) == 1:
        choice = ToolChoice(mode="tool", name=str(names[0]))
    elif mode in ("AUTO", "NONE", "ANY"):
        choice = ToolChoice(mode={"AUTO": "auto", "NONE": "none", "ANY": "required"}[mode])  # type: ignore[arg-type]
        exact = exact and not names
    else:
        choice, exact = ToolChoice(mode="auto"), False
    if not exact:
        native["toolConfig"] = dict(value)
    return choice


def _effort_from_thinking(thinking: Any) -> str | None:
    if not isinstance(thinking, Mapping):
        return None
    level = _get(thinking, "thinkingLevel")
    if isinstance(level, str) and level:
        return level.lower()
    budget = _get(thinking, "thinkingBudget")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
        return None  # -1 is "dynamic": the model decides
    if budget == 0:
        return "none"
    return "low" if budget <= 1024 else "medium" if budget <= 8192 else "high"


_GENERATION_FIELDS = {
    "maxOutputTokens": "max_tokens",
    "temperature": "temperature",
    "topP": "top_p",
    "topK": "top_k",
    "stopSequences": "stop",
    "seed": "seed",
}
_PARAM_NAMES = {
    **{snake: f"generationConfig.{camel}" for camel, snake in _GENERATION_FIELDS.items()},
    "messages": "contents",
    "model": "model",
}


def _caller_generation(value: Any, fields: dict[str, Any], native: dict[str, Any]) -> None:
    _expect(value, Mapping, "generationConfig", "an object")
    rest: dict[str, Any] = {}
    for key, raw in value.items():
        camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
        if camel in _GENERATION_FIELDS:
            fields[_GENERATION_FIELDS[camel]] = raw
        elif camel not in ("responseMimeType", "responseSchema"):
            rest[camel] = raw
    mime = _get(value, "responseMimeType")
    schema = _get(value, "responseSchema")
    json_schema = _get(value, "responseJsonSchema")
    if mime == "application/json":
        if isinstance(json_schema, Mapping):
            fields["response_format"] = ResponseFormat(
                type="json_schema", json_schema=dict(json_schema)
            )
        elif isinstance(schema, Mapping):
            fields["response_format"] = ResponseFormat(
                type="json_schema", json_schema=_standard_schema(schema)
            )
        else:
            fields["response_format"] = ResponseFormat(type="json_object")
    elif mime is not None and mime != "text/plain":
        rest["responseMimeType"] = mime
        if schema is not None:
            rest["responseSchema"] = schema
    if "thinkingConfig" in rest:
        fields["reasoning_effort"] = _effort_from_thinking(rest["thinkingConfig"])
    if rest:
        native["generationConfig"] = rest


def _caller_path(path: str) -> tuple[str | None, bool]:
    found = _PATH.search(path)
    if not found:
        return None, ":streamGenerateContent" in path
    model = found.group(1).split("/", 1)[1]
    return model, found.group(2) == "streamGenerateContent"


def _rpc_error_payload(error: LLMError) -> tuple[int, dict[str, Any]]:
    status = 503 if error.status_code == 529 else error.status_code
    rpc = _RPC_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    details: list[dict[str, Any]] = [
        {"@type": _ERROR_INFO, "reason": error.code.upper(), "domain": "llmroute"}
    ]
    if error.retry_after is not None:
        details.append({"@type": _RETRY_INFO, "retryDelay": f"{round(error.retry_after, 3):g}s"})
    body = {"error": {"code": status, "message": error.message, "status": rpc, "details": details}}
    return status, body


class GeminiCallerStreamEncoder:
    """Writes a normalized stream as Gemini SSE (``data: {...}\\r\\n\\r\\n``).

    Text and reasoning go out as they come; tool calls are assembled from their
    fragments and sent whole (as Gemini does) with the last chunk, which carries the
    ``finishReason`` and the usage.
    """

    __slots__ = ("_blocked", "_calls", "_finish", "_model", "_response_id", "_usage")

    def __init__(self, model: str, response_id: str) -> None:
        self._model = model
        self._response_id = response_id
        self._calls: dict[int, dict[int, list[str]]] = {}  # candidate → index → id, name, args
        self._finish: dict[int, tuple[FinishReason, str | None]] = {}
        self._usage: Usage | None = None
        self._blocked: str | None = None

    def _event(self, payload: dict[str, Any]) -> bytes:
        payload["modelVersion"] = self._model
        payload["responseId"] = self._response_id
        return b"data: " + _dumps(payload).encode() + b"\r\n\r\n"

    def start(self) -> bytes:
        """Gemini streams have no preamble."""
        return b""

    def chunk(self, chunk: StreamChunk) -> bytes:
        """The SSE bytes for one normalized chunk (empty when it only buffers)."""
        index = chunk.index
        for delta in chunk.tool_calls or ():
            slot = self._calls.setdefault(index, {}).setdefault(delta.index, ["", "", ""])
            slot[0] = delta.id or slot[0]
            slot[1] = delta.name or slot[1]
            slot[2] += delta.arguments
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.finish_reason is not None:
            native = chunk.native_finish_reason
            if native and native.startswith(_PROMPT_BLOCKED):
                self._blocked = native[len(_PROMPT_BLOCKED) :]
            self._finish[index] = (chunk.finish_reason, native)
        parts: list[dict[str, Any]] = []
        if chunk.reasoning:
            parts.append({"text": chunk.reasoning, "thought": True})
        if chunk.text:
            parts.append({"text": chunk.text})
        if not parts:
            return b""
        candidate = {"content": {"role": "model", "parts": parts}, "index": index}
        return self._event({"candidates": [candidate]})

    def finish(self, usage: Usage | None) -> bytes:
        """The last chunk: buffered function calls, ``finishReason`` and usage."""
        usage = usage if usage is not None else self._usage
        payload: dict[str, Any] = {}
        if self._blocked is not None and not self._calls:
            payload["promptFeedback"] = {"blockReason": self._blocked}
        else:
            candidates = []
            for index in sorted(set(self._calls) | set(self._finish) | {0}):
                calls = self._calls.get(index, {})
                parts = [
                    _caller_call_part(ToolCall.model_construct(id=c[0], name=c[1], arguments=c[2]))
                    for _, c in sorted(calls.items())
                ]
                reason, native = self._finish.get(index, (FinishReason.STOP, None))
                candidate: dict[str, Any] = {
                    "content": {"role": "model", **({"parts": parts} if parts else {})},
                    "finishReason": _finish_out(reason, native),
                    "index": index,
                }
                candidates.append(candidate)
            payload["candidates"] = candidates
        if usage is not None:
            payload["usageMetadata"] = _usage_to_meta(usage)
        return self._event(payload)

    def error(self, error: LLMError) -> bytes:
        """A mid-stream error event in the Google RPC shape."""
        _, body = _rpc_error_payload(error)
        return b"data: " + _dumps(body).encode() + b"\r\n\r\n"


def _caller_call_part(call: ToolCall) -> dict[str, Any]:
    try:
        args: Any = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        args = {"arguments": call.arguments}  # not JSON: hand the text over untouched
    if not isinstance(args, dict):
        args = {"value": args}
    base, signature = _unpack_signature(call.id)
    part: dict[str, Any] = {"functionCall": {"name": call.name, "args": args}}
    if base:
        part["functionCall"]["id"] = base
    if signature:
        part["thoughtSignature"] = signature
    return part


class GeminiCallerDialect:
    """Caller side: a Gemini client's ``generateContent`` request, answered in kind."""

    name = "gemini"

    def parse_request(self, body: bytes, path: str = "") -> ChatRequest:
        """Parse a request; the model and streaming come from ``path``
        (``.../models/{model}:generateContent`` or ``:streamGenerateContent``).
        """
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidRequest("the request body is not valid JSON") from error
        _expect(data, Mapping, "body", "a JSON object")
        model, stream = _caller_path(path)
        if not model:
            raise InvalidRequest(
                "the URL must name the model: .../models/{model}:generateContent", param="model"
            )
        native: dict[str, Any] = {}
        fields: dict[str, Any] = {"model": model, "stream": stream}
        messages: list[Message] = []
        system = _caller_system(_get(data, "systemInstruction"))
        if system is not None:
            messages.append(system)
        contents = _expect(data.get("contents"), list, "contents", "a list of turns")
        if not contents:
            raise InvalidRequest("contents must hold at least one turn", param="contents")
        parser = _ContentsParser()
        for i, content in enumerate(contents):
            parser.content(content, i)
        messages.extend(parser.messages)
        known = {"contents", "systemInstruction", "system_instruction"}
        if (tools := _get(data, "tools")) is not None:
            fields["tools"] = _caller_tools(tools, native)
            known |= {"tools"}
        if (config := _get(data, "toolConfig")) is not None:
            fields["tool_choice"] = _caller_tool_choice(config, native)
            known |= {"toolConfig", "tool_config"}
        if (generation := _get(data, "generationConfig")) is not None:
            _caller_generation(generation, fields, native)
            known |= {"generationConfig", "generation_config"}
        for key, value in data.items():
            if key not in known:
                native[re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)] = value
        if native:
            fields["extra"] = {EXTRA_KEY: native}
        try:
            return ChatRequest(messages=messages, **fields)
        except ValidationError as error:
            first = error.errors()[0]
            loc = first["loc"]
            param = _PARAM_NAMES.get(str(loc[0]), ".".join(str(p) for p in loc)) if loc else None
            raise InvalidRequest(f"{param}: {first['msg']}", param=param) from error

    def encode_response(self, response: ChatResponse, model: str) -> dict[str, Any]:
        """A GenerateContentResponse for ``response``, usage in Gemini's convention."""
        payload: dict[str, Any] = {}
        first = response.choices[0] if response.choices else None
        native = first.native_finish_reason if first else None
        if first and native and native.startswith(_PROMPT_BLOCKED) and not first.message.text:
            payload["promptFeedback"] = {"blockReason": native[len(_PROMPT_BLOCKED) :]}
        else:
            payload["candidates"] = [_caller_candidate(choice) for choice in response.choices]
        if response.usage is not None:
            payload["usageMetadata"] = _usage_to_meta(response.usage)
        payload["modelVersion"] = model
        payload["responseId"] = response.id
        return payload

    def stream_encoder(
        self, model: str, response_id: str, *, include_usage: bool = False
    ) -> GeminiCallerStreamEncoder:
        """A fresh encoder for one streamed answer (Gemini streams always carry usage)."""
        return GeminiCallerStreamEncoder(model, response_id)

    def error_payload(self, error: LLMError) -> dict[str, Any]:
        """``error`` as a Google RPC body: ``{"error": {code, message, status, details}}``."""
        return _rpc_error_payload(error)[1]

    def encode_error(self, error: LLMError) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and Google RPC body; 529 is answered as 503 UNAVAILABLE."""
        status, body = _rpc_error_payload(error)
        headers = {"content-type": "application/json; charset=UTF-8"}
        if error.retry_after is not None and not isinstance(error, BudgetExceeded):
            headers["retry-after"] = str(max(1, round(error.retry_after)))
        return status, headers, _dumps(body).encode()


def _caller_candidate(choice: Choice) -> dict[str, Any]:
    message = choice.message
    parts: list[dict[str, Any]] = []
    if message.reasoning:
        parts.append({"text": message.reasoning, "thought": True})
    if isinstance(message.content, str):
        if message.content:
            parts.append({"text": message.content})
    elif message.content is not None:
        parts.extend({"text": p.text} for p in message.content if isinstance(p, TextPart))
    parts.extend(_caller_call_part(call) for call in message.tool_calls or ())
    return {
        "content": {"role": "model", **({"parts": parts} if parts else {})},
        "finishReason": _finish_out(choice.finish_reason, choice.native_finish_reason),
        "index": choice.index,
    }


#: The upstream Gemini dialect (the registry resolves ``"gemini"`` to it).
GEMINI_DIALECT = GeminiDialect()
#: The Gemini caller dialect.
GEMINI_CALLER = GeminiCallerDialect()
