from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_middleware import tokens
from routing_middleware.schema import ChatRequest, ImagePart, Message, TextPart, Tool, ToolCall
from routing_middleware.tokens import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    _compact_json_length,
    estimate_request_tokens,
    estimate_text_tokens,
)


def test_ascii_text_is_about_four_chars_per_token() -> None:
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcd") == 1
    assert estimate_text_tokens("abcde") == 2
    assert estimate_text_tokens("x" * 4000) == 1000


def test_non_ascii_counts_one_token_per_character() -> None:
    assert estimate_text_tokens("日本語のテキスト") == 8
    assert estimate_text_tokens("ab日本") == 1 + 2


def test_request_estimate_counts_framing_images_tools_and_calls() -> None:
    text_only = ChatRequest(model="m", messages=[Message(role="user", content="x" * 400)])
    assert estimate_request_tokens(text_only) == 3 + MESSAGE_OVERHEAD_TOKENS + 100

    with_image = ChatRequest(
        model="m",
        messages=[
            Message(
                role="user", content=[TextPart(text="x" * 400), ImagePart(url="https://i/x.png")]
            )
        ],
    )
    assert estimate_request_tokens(with_image) == estimate_request_tokens(text_only) + IMAGE_TOKENS

    with_tools = text_only.model_copy(
        update={"tools": [Tool(name="lookup", parameters={"type": "object", "properties": {}})]}
    )
    assert estimate_request_tokens(with_tools) > estimate_request_tokens(text_only) + 8

    call = Message(role="assistant", tool_calls=[ToolCall(id="c1", name="f", arguments='{"a":1}')])
    with_call = ChatRequest(model="m", messages=[*text_only.messages, call])
    assert estimate_request_tokens(with_call) > estimate_request_tokens(text_only) + 4


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_tool_schema_length_is_the_compact_json_length(value: object) -> None:
    # The encoder made once must write what ``json.dumps`` writes, NaN and escapes included.
    assert _compact_json_length(value) == len(json.dumps(value, separators=(",", ":")))


def test_tool_schema_length_has_a_native_encoder_here() -> None:
    # CPython ships ``_json``: the fast path is the one measured, not the fallback.
    assert tokens._NATIVE_COMPACT is not None


def test_tool_schema_that_json_cannot_write_is_refused() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        _compact_json_length({"a": object()})


def test_a_tool_schema_with_a_cycle_is_named_as_one() -> None:
    # The encoder made once keeps no record of containers; encode() names the cycle.
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        _compact_json_length({"a": loop})
