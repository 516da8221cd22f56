"""Caller side: a Gemini client's request parsed, and answered in kind (streams included)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..schema import (
    BudgetExceeded,
    ChatRequest,
    ChatResponse,
    Choice,
    FinishReason,
    ImagePart,
    InvalidRequest,
    LLMError,
    Message,
    ResponseFormat,
    StreamChunk,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)
from ._json import compact as _dumps
from .gemini_errors import _rpc_error_payload
from .gemini_request import _standard_schema
from .gemini_wire import (
    _PROMPT_BLOCKED,
    EXTRA_KEY,
    _finish_out,
    _pack_signature,
    _unpack_signature,
    _usage_to_meta,
)

_PATH = re.compile(r"(?:^|/)((?:tuned)?[mM]odels/[^/:?]+):(generateContent|streamGenerateContent)")


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
    if message.refusal and not message.text:
        parts.append({"text": message.refusal})  # Gemini has no refusal field
    parts.extend(_caller_call_part(call) for call in message.tool_calls or ())
    return {
        "content": {"role": "model", **({"parts": parts} if parts else {})},
        "finishReason": _finish_out(choice.finish_reason, choice.native_finish_reason),
        "index": choice.index,
    }


#: The Gemini caller dialect.
GEMINI_CALLER = GeminiCallerDialect()
