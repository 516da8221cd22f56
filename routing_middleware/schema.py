"""The normalized schema every provider dialect converts into and out of.

One shape for requests, responses, stream chunks, usage and errors, whatever the
provider. The conventions that matter for money live on :class:`Usage`.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

__all__ = [
    "AuthenticationFailed",
    "BudgetExceeded",
    "ChatRequest",
    "ChatResponse",
    "Choice",
    "ContentFiltered",
    "ContentPart",
    "ContextWindowExceeded",
    "FinishReason",
    "ImagePart",
    "InsufficientQuota",
    "InvalidRequest",
    "LLMError",
    "Message",
    "NoRouteAvailable",
    "Overloaded",
    "RateLimited",
    "ResponseFormat",
    "Role",
    "StreamChunk",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "UnknownModel",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "Usage",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)


Role = Literal["system", "developer", "user", "assistant", "tool"]


class FinishReason(StrEnum):
    """Why generation stopped, in the OpenAI vocabulary every dialect maps into."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    ERROR = "error"


class TextPart(_Model):
    """A piece of text inside a message."""

    type: Literal["text"] = "text"
    text: str


class ImagePart(_Model):
    """An image, either by URL or inline base64 ``data`` with its ``media_type``."""

    type: Literal["image"] = "image"
    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    detail: Literal["auto", "low", "high"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImagePart:
        if (self.url is None) == (self.data is None):
            raise ValueError("an image needs exactly one of 'url' or 'data'")
        if self.data is not None and not self.media_type:
            raise ValueError("an inline image needs 'media_type' (e.g. 'image/png')")
        return self


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ToolCall(_Model):
    """A function call the model asked for; ``arguments`` is a JSON document as text."""

    id: str
    name: str
    arguments: str = "{}"


class Message(_Model):
    """One turn of a conversation.

    ``content`` is plain text or a list of parts (text, images). Assistant turns may
    carry ``tool_calls``; ``tool`` turns answer one of them through ``tool_call_id``.
    """

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    #: The model's visible reasoning (DeepSeek ``reasoning_content``, Anthropic thinking).
    reasoning: str | None = None
    #: A refusal message, when the model declined (OpenAI ``message.refusal``).
    refusal: str | None = None

    @property
    def text(self) -> str:
        """All text of the message joined, images left out."""
        content = self.content  # (read once: a model's attribute costs a lookup each time)
        if isinstance(content, str):
            return content
        if content is None:
            return ""
        return "".join(p.text for p in content if isinstance(p, TextPart))

    @property
    def has_images(self) -> bool:
        return isinstance(self.content, list) and any(
            isinstance(p, ImagePart) for p in self.content
        )


class Tool(_Model):
    """A function the model may call; ``parameters`` is a JSON schema."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None


class ToolChoice(_Model):
    """How the model may use tools: ``auto``, ``none``, ``required`` or one named ``tool``."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None

    @model_validator(mode="after")
    def _name_for_tool(self) -> ToolChoice:
        if (self.mode == "tool") != (self.name is not None):
            raise ValueError("tool_choice names a tool exactly when mode is 'tool'")
        return self


class ResponseFormat(_Model):
    """Structured output: free text, any JSON object, or JSON matching ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    json_schema: dict[str, Any] | None = None
    strict: bool | None = None


class ChatRequest(_Model):
    """A chat request in normalized form.

    ``extra`` keeps provider-specific fields the caller sent that have no normalized
    home, so a request to the caller's own provider loses nothing.
    """

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: NonNegativeInt | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: NonNegativeInt | None = None
    stop: list[str] | None = None
    stream: bool = False
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    user: str | None = None
    reasoning_effort: str | None = None
    metadata: dict[str, str] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def system_text(self) -> str:
        """System and developer instructions joined, in order."""
        return "\n\n".join(m.text for m in self.messages if m.role in ("system", "developer"))

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return ""

    @property
    def has_images(self) -> bool:
        return any(m.has_images for m in self.messages)

    @property
    def wants_json(self) -> bool:
        return self.response_format is not None and self.response_format.type != "text"


class Usage(_Model):
    """Token usage of one call, in one convention across providers.

    - ``input_tokens`` counts *every* prompt token: uncached, cached reads and cache
      writes. ``cached_input_tokens`` and ``cache_write_tokens`` are subsets of it.
      (Anthropic reports cache reads and writes outside ``input_tokens``; its adapter
      adds them in.)
    - ``cache_write_long_tokens`` is the subset of ``cache_write_tokens`` written with
      the provider's longer TTL (Anthropic 1 h, OpenAI 12 h+), priced differently.
    - ``output_tokens`` counts every generated token, ``reasoning_tokens`` included.
      (Gemini reports thoughts outside its candidates count; its adapter adds them in.)
    - ``estimated`` is true when the provider did not report usage and the figures were
      counted locally. Usage is never silently zero.
    - ``provider_cost`` is the cost the provider itself billed, when it says
      (OpenRouter ``usage.cost``).
    """

    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    cached_input_tokens: NonNegativeInt = 0
    cache_write_tokens: NonNegativeInt = 0
    cache_write_long_tokens: NonNegativeInt = 0
    reasoning_tokens: NonNegativeInt = 0
    estimated: bool = False
    provider_cost: Decimal | None = None

    @model_validator(mode="after")
    def _subsets(self) -> Usage:
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError("cached_input_tokens + cache_write_tokens exceed input_tokens")
        if self.cache_write_long_tokens > self.cache_write_tokens:
            raise ValueError("cache_write_long_tokens exceed cache_write_tokens")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning_tokens exceed output_tokens")
        return self

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        return self.input_tokens - self.cached_input_tokens - self.cache_write_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        costs = [c for c in (self.provider_cost, other.provider_cost) if c is not None]
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cache_write_long_tokens=self.cache_write_long_tokens + other.cache_write_long_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            estimated=self.estimated or other.estimated,
            provider_cost=sum(costs, Decimal(0)) if costs else None,
        )


class Choice(_Model):
    """One alternative answer; ``native_finish_reason`` keeps the provider's own word."""

    index: int = 0
    message: Message
    finish_reason: FinishReason = FinishReason.STOP
    native_finish_reason: str | None = None


class ChatResponse(_Model):
    """A complete answer, decoded from whichever provider produced it."""

    id: str
    model: str
    provider: str | None = None
    created: int = 0
    choices: list[Choice] = Field(default_factory=list)
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return self.choices[0].message.text if self.choices else ""


class ToolCallDelta(_Model):
    """A fragment of a tool call in a stream; fragments with the same ``index`` join."""

    index: int = 0
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class StreamChunk(_Model):
    """One decoded increment of a streamed answer.

    Text and reasoning arrive as deltas; tool calls as fragments. The chunk that
    carries ``finish_reason`` ends a choice; ``usage`` arrives once, usually last.
    """

    id: str | None = None
    model: str | None = None
    index: int = 0
    role: Role | None = None
    text: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: FinishReason | None = None
    native_finish_reason: str | None = None
    usage: Usage | None = None


# --------------------------------------------------------------------------- errors


class LLMError(Exception):
    """Base of every error llmroute raises or decodes from a provider.

    ``status_code`` is the HTTP status the caller's dialect should answer with,
    ``retryable`` says whether the dispatcher may try again (same or another
    deployment), ``code`` is a stable machine word, ``param`` names the offending
    field for invalid input. Messages never contain API keys.
    """

    status_code: int = 500
    retryable: bool = False
    default_code: ClassVar[str] = "llm_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        code: str | None = None,
        param: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
        raw: Any = None,
    ) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.message = message
        self.provider = provider
        self.model = model
        self.code = code or self.default_code
        self.param = param
        if status_code is not None:
            self.status_code = status_code
        self.retry_after = retry_after
        self.raw = raw

    @property
    def kind(self) -> str:
        """The error's class name, as recorded on usage records."""
        return type(self).__name__

    def __repr__(self) -> str:
        where = f", provider={self.provider!r}" if self.provider else ""
        return f"{self.kind}({self.message!r}, status={self.status_code}{where})"


class RateLimited(LLMError):
    """429: too many requests or tokens; ``retry_after`` says how long to wait."""

    status_code = 429
    retryable = True
    default_code = "rate_limit_exceeded"


class Overloaded(LLMError):
    """The provider is overloaded (Anthropic 529, OpenAI/DeepSeek/Gemini 503)."""

    status_code = 529
    retryable = True
    default_code = "overloaded"


class ContextWindowExceeded(LLMError):
    """The prompt plus requested output does not fit the model's context window."""

    status_code = 400
    default_code = "context_length_exceeded"


class ContentFiltered(LLMError):
    """The provider's safety system refused the prompt."""

    status_code = 400
    default_code = "content_filter"


class AuthenticationFailed(LLMError):
    """The provider rejected the credentials (or none were configured)."""

    status_code = 401
    default_code = "invalid_api_key"


class InsufficientQuota(LLMError):
    """Out of credit or over a spend limit at the provider. Never retried."""

    status_code = 429
    default_code = "insufficient_quota"


class InvalidRequest(LLMError):
    """The request is malformed or asks for something the model cannot do."""

    status_code = 400
    default_code = "invalid_request_error"


class UnknownModel(InvalidRequest):
    """No model of that name; ``suggestions`` lists the closest known ids."""

    status_code = 404
    default_code = "model_not_found"

    def __init__(self, model: str, suggestions: list[str] | None = None, **kwargs: Any) -> None:
        self.suggestions = list(suggestions or [])
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"Unknown model {model!r}.{hint}", model=model, param="model", **kwargs)


class UpstreamTimeout(LLMError):
    """The provider did not answer in time."""

    status_code = 504
    retryable = True
    default_code = "timeout"


class UpstreamUnavailable(LLMError):
    """The provider could not be reached or answered with a server error."""

    status_code = 503
    retryable = True
    default_code = "upstream_unavailable"


class UpstreamProtocolError(LLMError):
    """The provider's answer was malformed or cut short (e.g. a stream without its end)."""

    status_code = 502
    retryable = True
    default_code = "upstream_protocol_error"


class BudgetExceeded(LLMError):
    """A budget blocks the call.

    Answered with 402 rather than 429: SDKs retry 429 on their own, and a spent
    budget does not come back within a retry's wait.
    """

    status_code = 402
    default_code = "budget_exceeded"

    def __init__(self, message: str, *, budget: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.budget = budget


class NoRouteAvailable(LLMError):
    """Every candidate was excluded (constraints, open breakers, missing keys)."""

    status_code = 503
    default_code = "no_route_available"
