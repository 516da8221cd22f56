"""Upstream requests: a ChatRequest as a Gemini ``generateContent`` call, schemas included."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..schema import (
    ChatRequest,
    ImagePart,
    InvalidRequest,
    Message,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)
from .base import ProviderConfig
from .gemini_wire import EXTRA_KEY, _unpack_signature

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
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
#: ``reasoning_effort`` → ``thinkingBudget`` for Gemini 2.x; later models take a level.
#: ``xhigh`` (OpenAI) and ``max`` (Anthropic ``effort``) get the largest budget every 2.x
#: model takes (Flash's ceiling), rather than a 400 for a word the caller's API accepts.
_THINKING_BUDGETS = {
    "none": 0,
    "minimal": 0,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 24576,
    "max": 24576,
}
_THINKING_LEVELS = {
    "none": "minimal",
    "minimal": "minimal",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)


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
