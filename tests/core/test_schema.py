from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from routing_middleware.schema import (
    BudgetExceeded,
    ChatRequest,
    ImagePart,
    InsufficientQuota,
    LLMError,
    Message,
    Overloaded,
    RateLimited,
    TextPart,
    ToolChoice,
    UnknownModel,
    Usage,
)


def test_usage_subsets_must_fit_inside_totals() -> None:
    with pytest.raises(ValidationError, match="exceed input_tokens"):
        Usage(input_tokens=10, cached_input_tokens=8, cache_write_tokens=3)
    with pytest.raises(ValidationError, match="reasoning_tokens exceed"):
        Usage(output_tokens=5, reasoning_tokens=6)
    with pytest.raises(ValidationError, match="cache_write_long_tokens"):
        Usage(input_tokens=10, cache_write_tokens=2, cache_write_long_tokens=3)


def test_usage_uncached_and_total() -> None:
    usage = Usage(input_tokens=100, cached_input_tokens=60, cache_write_tokens=10, output_tokens=7)
    assert usage.uncached_input_tokens == 30
    assert usage.total_tokens == 107


def test_usage_addition_sums_fields_and_keeps_estimated_and_cost() -> None:
    a = Usage(input_tokens=10, output_tokens=2, provider_cost=Decimal("0.01"))
    b = Usage(input_tokens=5, cached_input_tokens=5, output_tokens=3, estimated=True)
    total = a + b
    assert (total.input_tokens, total.cached_input_tokens, total.output_tokens) == (15, 5, 5)
    assert total.estimated is True
    assert total.provider_cost == Decimal("0.01")
    assert (Usage() + Usage()).provider_cost is None


def test_negative_tokens_are_rejected() -> None:
    with pytest.raises(ValidationError, match="input_tokens"):
        Usage(input_tokens=-1)


def test_request_needs_messages_and_valid_sampling() -> None:
    with pytest.raises(ValidationError, match="messages"):
        ChatRequest(model="m", messages=[])
    with pytest.raises(ValidationError, match="temperature"):
        ChatRequest(model="m", messages=[Message(role="user", content="hi")], temperature=3)


def test_request_helpers() -> None:
    request = ChatRequest(
        model="m",
        messages=[
            Message(role="system", content="be brief"),
            Message(role="developer", content="no emojis"),
            Message(
                role="user",
                content=[TextPart(text="what is "), ImagePart(url="https://x/y.png")],
            ),
        ],
    )
    assert request.system_text == "be brief\n\nno emojis"
    assert request.last_user_text == "what is "
    assert request.has_images is True
    assert request.wants_json is False


def test_image_needs_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        ImagePart()
    with pytest.raises(ValidationError, match="media_type"):
        ImagePart(data="aGk=")
    assert ImagePart(data="aGk=", media_type="image/png").data == "aGk="


def test_tool_choice_names_a_tool_only_in_tool_mode() -> None:
    with pytest.raises(ValidationError):
        ToolChoice(mode="tool")
    with pytest.raises(ValidationError):
        ToolChoice(mode="auto", name="x")
    assert ToolChoice(mode="tool", name="x").name == "x"


def test_error_family_flags() -> None:
    assert RateLimited("slow down", retry_after=1.5).retryable
    assert RateLimited("x").status_code == 429
    assert Overloaded("busy").retryable
    quota = InsufficientQuota("no credit")
    assert not quota.retryable
    assert isinstance(quota, LLMError)
    assert BudgetExceeded("over", budget="support").status_code == 402
    assert LLMError("x", status_code=418).status_code == 418
    assert LLMError("x").status_code == 500


def test_unknown_model_lists_suggestions() -> None:
    error = UnknownModel("gpt-4o-minj", ["openai/gpt-4o-mini"])
    assert "Did you mean: openai/gpt-4o-mini?" in str(error)
    assert error.status_code == 404
    assert error.param == "model"
