"""The OpenAI chat-completions dialect, caller side.

Parses what an OpenAI SDK (or any chat-completions client) sent, and answers it
in the same format: a ``chat.completion`` body, a ``chat.completion.chunk`` SSE
stream, or an OpenAI error body the SDK turns into the right exception.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from pydantic import ValidationError

from ..schema import (
    AuthenticationFailed,
    BudgetExceeded,
    ChatRequest,
    ChatResponse,
    InsufficientQuota,
    InvalidRequest,
    LLMError,
    RateLimited,
    StreamChunk,
    Usage,
)
from .openai_wire import encode_usage, image_part_from_url, text_of
from .sse import encode_sse

__all__ = [
    "OPENAI_CALLER",
    "OpenAICallerDialect",
    "OpenAIStreamEncoder",
    "wants_stream_usage",
]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
#: Top-level fields with a normalized home; everything else goes to ``extra``.
_KNOWN = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "stream",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "seed",
        "user",
        "reasoning_effort",
        "metadata",
    }
)
_DONE = b"data: [DONE]\n\n"


def _bad(message: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _expect(value: Any, kind: type | tuple[type, ...], param: str, what: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _bad(f"'{param}' must be {what}.", param)
    return value


def _parse_content(raw: Any, where: str) -> Any:
    if raw is None or isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise _bad(f"'{where}' must be a string or an array of content parts.", where)
    parts: list[Any] = []
    for j, part in enumerate(raw):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise _bad(f"'{at}' must be an object.", at)
        kind = part.get("type")
        if kind == "text":
            parts.append(
                {"type": "text", "text": _expect(part.get("text"), str, f"{at}.text", "a string")}
            )
        elif kind == "image_url":
            image = part.get("image_url")
            if isinstance(image, str):
                image = {"url": image}
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise _bad(f"'{at}.image_url.url' must be a string.", f"{at}.image_url.url")
            detail = image.get("detail")
            if detail not in (None, "auto", "low", "high"):
                raise _bad(
                    f"'{at}.image_url.detail' must be auto, low or high.", f"{at}.image_url.detail"
                )
            parts.append(image_part_from_url(image["url"], detail).model_dump(exclude_none=True))
        else:
            raise _bad(
                f"Content part type {kind!r} in '{at}' is not supported (use text or image_url).",
                f"{at}.type",
            )
    return parts


def _parse_tool_calls(raw: Any, where: str) -> list[dict[str, Any]]:
    calls = _expect(raw, list, where, "an array")
    out: list[dict[str, Any]] = []
    for k, call in enumerate(calls):
        at = f"{where}[{k}]"
        if not isinstance(call, dict):
            raise _bad(f"'{at}' must be an object.", at)
        function = _expect(call.get("function"), dict, f"{at}.function", "an object")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise _bad(
                f"'{at}.function.arguments' must be a JSON string.", f"{at}.function.arguments"
            )
        out.append(
            {
                "id": _expect(call.get("id"), str, f"{at}.id", "a string"),
                "name": _expect(function.get("name"), str, f"{at}.function.name", "a string"),
                "arguments": arguments,
            }
        )
    return out


def _parse_message(raw: Any, i: int) -> dict[str, Any]:
    at = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise _bad(f"'{at}' must be an object.", at)
    role = raw.get("role")
    if role not in _ROLES:
        raise _bad(
            f"Invalid value for '{at}.role': {role!r}. Supported roles: "
            "system, developer, user, assistant, tool.",
            f"{at}.role",
        )
    message: dict[str, Any] = {
        "role": role,
        "content": _parse_content(raw.get("content"), f"{at}.content"),
    }
    if raw.get("name") is not None:
        message["name"] = _expect(raw["name"], str, f"{at}.name", "a string")
    if role == "assistant":
        if raw.get("tool_calls") is not None:
            message["tool_calls"] = _parse_tool_calls(raw["tool_calls"], f"{at}.tool_calls") or None
        if raw.get("refusal") is not None:
            message["refusal"] = _expect(raw["refusal"], str, f"{at}.refusal", "a string")
    if role == "tool":
        message["tool_call_id"] = _expect(
            raw.get("tool_call_id"), str, f"{at}.tool_call_id", "a string"
        )
    elif message["content"] is None and not message.get("tool_calls") and role != "assistant":
        raise _bad(f"'{at}.content' is required for role {role!r}.", f"{at}.content")
    return message


def _parse_tools(raw: Any) -> list[dict[str, Any]]:
    tools = _expect(raw, list, "tools", "an array")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise _bad(f"'{at}' must be a function tool.", f"{at}.type")
        function = _expect(tool.get("function"), dict, f"{at}.function", "an object")
        item: dict[str, Any] = {
            "name": _expect(function.get("name"), str, f"{at}.function.name", "a string")
        }
        if function.get("description") is not None:
            item["description"] = _expect(
                function["description"], str, f"{at}.function.description", "a string"
            )
        if function.get("parameters") is not None:
            item["parameters"] = _expect(
                function["parameters"], dict, f"{at}.function.parameters", "an object"
            )
        if function.get("strict") is not None:
            item["strict"] = _expect(function["strict"], bool, f"{at}.function.strict", "a boolean")
        out.append(item)
    return out


def _parse_tool_choice(raw: Any) -> dict[str, Any]:
    if raw in ("auto", "none", "required"):
        return {"mode": raw}
    if isinstance(raw, dict):
        function = raw.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return {"mode": "tool", "name": function["name"]}
    raise _bad(
        "'tool_choice' must be 'auto', 'none', 'required' or "
        '{"type": "function", "function": {"name": ...}}.',
        "tool_choice",
    )


def _parse_response_format(raw: Any) -> dict[str, Any]:
    fmt = _expect(raw, dict, "response_format", "an object")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        spec = _expect(fmt.get("json_schema"), dict, "response_format.json_schema", "an object")
        out: dict[str, Any] = {"type": "json_schema", "name": spec.get("name")}
        if spec.get("schema") is not None:
            out["json_schema"] = spec["schema"]
        if spec.get("strict") is not None:
            out["strict"] = spec["strict"]
        return out
    raise _bad(
        "'response_format.type' must be text, json_object or json_schema.", "response_format.type"
    )


def _param_of(error: ValidationError) -> str | None:
    first = error.errors()[0] if error.errors() else None
    if not first:
        return None
    param = ""
    for piece in first["loc"]:
        if isinstance(piece, int):
            param += f"[{piece}]"
        elif piece in ("TextPart", "ImagePart", "text", "image") and param.endswith("]"):
            continue  # discriminator names pydantic adds to the location
        else:
            param += f".{piece}" if param else str(piece)
    return {"max_tokens": "max_completion_tokens"}.get(param, param) or None


def wants_stream_usage(request: ChatRequest) -> bool:
    """Whether the caller asked for the final usage chunk (``stream_options.include_usage``)."""
    options = request.extra.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class OpenAIStreamEncoder:
    """Encodes a stream as ``chat.completion.chunk`` SSE events, OpenAI's way.

    The role goes on the first chunk, tool-call fragments keep their indexes, the
    usage chunk (``choices: []``) is sent only when the caller asked for it, and
    the stream always ends with ``data: [DONE]`` unless an error ended it.
    """

    __slots__ = ("_created", "_head", "_id", "_include_usage", "_model", "_started")

    def __init__(
        self,
        model: str,
        response_id: str,
        *,
        include_usage: bool = False,
        created: int | None = None,
    ) -> None:
        self._model = model
        self._id = response_id
        self._created = int(time.time()) if created is None else created
        self._include_usage = include_usage
        self._started = False
        # The fixed prefix of every chunk, serialized once.
        self._head = (
            '{"id":'
            + json.dumps(response_id)
            + ',"object":"chat.completion.chunk","created":'
            + str(self._created)
            + ',"model":'
            + json.dumps(model)
        )

    def _event(self, rest: str) -> bytes:
        return b"data: " + (self._head + rest).encode() + b"\n\n"

    def start(self) -> bytes:
        """The opening chunk: the assistant role with empty content."""
        if self._started:
            return b""
        self._started = True
        return self._event(
            ',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            '"logprobs":null,"finish_reason":null}]}'
        )

    def chunk(self, chunk: StreamChunk) -> bytes:
        """One decoded chunk as zero or one SSE events (usage waits for ``finish``)."""
        opening = self.start()
        text = chunk.text
        if (
            text
            and chunk.reasoning is None
            and chunk.tool_calls is None
            and chunk.finish_reason is None
        ):
            # Most chunks of a stream: one text delta, serialized without a dict.
            content = json.dumps(text, ensure_ascii=False)
            return opening + self._event(
                f',"choices":[{{"index":{chunk.index},"delta":{{"content":{content}}},'
                '"logprobs":null,"finish_reason":null}]}'
            )
        delta: dict[str, Any] = {}
        if chunk.text:
            delta["content"] = chunk.text
        if chunk.reasoning:
            delta["reasoning_content"] = chunk.reasoning
        if chunk.tool_calls:
            calls = []
            for call in chunk.tool_calls:
                item: dict[str, Any] = {"index": call.index}
                if call.id:
                    item["id"] = call.id
                    item["type"] = "function"
                function: dict[str, Any] = {"arguments": call.arguments}
                if call.name:
                    function["name"] = call.name
                item["function"] = function
                calls.append(item)
            delta["tool_calls"] = calls
        reason = chunk.finish_reason.value if chunk.finish_reason is not None else None
        if not delta and reason is None:
            return opening
        body = {"index": chunk.index, "delta": delta, "logprobs": None, "finish_reason": reason}
        return opening + self._event(',"choices":[' + json.dumps(body, ensure_ascii=False) + "]}")

    def finish(self, usage: Usage | None) -> bytes:
        """The usage chunk (when asked for and known) and ``[DONE]``."""
        out = self.start()
        if self._include_usage and usage is not None:
            out += self._event(',"choices":[],"usage":' + json.dumps(encode_usage(usage)) + "}")
        return out + _DONE

    def error(self, error: LLMError) -> bytes:
        """An in-stream error event; the openai SDK raises ``APIError`` on it."""
        return encode_sse(json.dumps({"error": _error_object(error)}, ensure_ascii=False))


def _error_type(error: LLMError) -> str:
    if isinstance(error, InsufficientQuota):
        return "insufficient_quota"
    if isinstance(error, BudgetExceeded):
        return "budget_exceeded"
    if isinstance(error, RateLimited):
        return "rate_limit_error"
    if isinstance(error, AuthenticationFailed):
        return "authentication_error"
    if error.status_code < 500:
        return "invalid_request_error"
    return "server_error"


def _error_object(error: LLMError) -> dict[str, Any]:
    return {
        "message": error.message,
        "type": _error_type(error),
        "param": error.param,
        "code": error.code,
    }


class OpenAICallerDialect:
    """Speaks chat completions to the caller: parse its request, answer in kind."""

    name = "openai"

    def parse_request(self, body: bytes, path: str = "") -> ChatRequest:
        """Parse a chat-completions request; bad input raises InvalidRequest with ``param``.

        ``path`` supplies the model for Azure deployment URLs whose body has none.
        """
        try:
            raw = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise _bad("The request body is not valid JSON.", None) from error
        if not isinstance(raw, dict):
            raise _bad("The request body must be a JSON object.", None)
        if "model" not in raw and "/deployments/" in path:
            # Azure's legacy route names the deployment in the path instead
            raw["model"] = path.split("/deployments/", 1)[1].split("/", 1)[0]
        if "model" not in raw:
            raise _bad("Missing required parameter: 'model'.", "model")
        if "messages" not in raw:
            raise _bad("Missing required parameter: 'messages'.", "messages")
        messages = _expect(raw["messages"], list, "messages", "an array")
        if not messages:
            raise _bad("'messages' must contain at least one message.", "messages")
        data: dict[str, Any] = {
            "model": _expect(raw["model"], str, "model", "a string"),
            "messages": [_parse_message(m, i) for i, m in enumerate(messages)],
        }
        limit = raw.get("max_completion_tokens")
        if limit is None:
            limit = raw.get("max_tokens")
        if limit is not None:
            data["max_tokens"] = limit
        for key in (
            "temperature",
            "top_p",
            "top_k",
            "seed",
            "parallel_tool_calls",
            "user",
            "reasoning_effort",
            "metadata",
        ):
            if raw.get(key) is not None:
                data[key] = raw[key]
        stop = raw.get("stop")
        if stop is not None:
            data["stop"] = [stop] if isinstance(stop, str) else stop
        if raw.get("stream") is not None:
            data["stream"] = _expect(raw["stream"], bool, "stream", "a boolean")
        if raw.get("tools") is not None:
            data["tools"] = _parse_tools(raw["tools"]) or None
        if raw.get("tool_choice") is not None:
            data["tool_choice"] = _parse_tool_choice(raw["tool_choice"])
        if raw.get("response_format") is not None:
            data["response_format"] = _parse_response_format(raw["response_format"])
        data["extra"] = {k: v for k, v in raw.items() if k not in _KNOWN}
        try:
            return ChatRequest.model_validate(data)
        except ValidationError as error:
            param = _param_of(error)
            detail = error.errors()[0]["msg"] if error.errors() else "invalid value"
            raise _bad(f"Invalid value for '{param}': {detail}.", param) from None

    def encode_response(self, response: ChatResponse, model: str) -> dict[str, Any]:
        """A ``chat.completion`` body reporting ``model``."""
        choices = []
        for choice in response.choices:
            message = choice.message
            out: dict[str, Any] = {
                "role": "assistant",
                "content": text_of(message.content),
                "refusal": message.refusal,
            }
            if message.tool_calls:
                out["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for call in message.tool_calls
                ]
            if message.reasoning:
                out["reasoning_content"] = message.reasoning
            choices.append(
                {
                    "index": choice.index,
                    "message": out,
                    "logprobs": None,
                    "finish_reason": choice.finish_reason.value,
                }
            )
        body: dict[str, Any] = {
            "id": response.id,
            "object": "chat.completion",
            "created": response.created or int(time.time()),
            "model": model,
            "choices": choices,
        }
        if response.usage is not None:
            body["usage"] = encode_usage(response.usage)
        return body

    def stream_encoder(
        self, model: str, response_id: str, *, include_usage: bool = False
    ) -> OpenAIStreamEncoder:
        """An encoder for one stream; ``include_usage`` mirrors the caller's stream_options."""
        return OpenAIStreamEncoder(model, response_id, include_usage=include_usage)

    def encode_error(self, error: LLMError) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and OpenAI error body.

        ``retry-after`` (and ``retry-after-ms``) carry a known wait; a non-retryable
        error gets ``x-should-retry: false`` so the SDK does not retry it (it would
        retry any 429 or 5xx otherwise).
        """
        headers = {"content-type": "application/json"}
        if error.retry_after is not None:
            headers["retry-after"] = str(max(math.ceil(error.retry_after), 0))
            headers["retry-after-ms"] = str(max(round(error.retry_after * 1000), 0))
        if not error.retryable:
            headers["x-should-retry"] = "false"
        body = json.dumps({"error": _error_object(error)}, ensure_ascii=False).encode()
        return error.status_code, headers, body


#: The shared instance; the dialect holds no state.
OPENAI_CALLER = OpenAICallerDialect()
