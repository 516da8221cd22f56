"""The native pass over a request's messages (``routing_middleware/_messagescan.c``)
against the Python paths it stands in for; skipped when the extension was not built."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_middleware import classify, tokens
from routing_middleware import router as router_module
from routing_middleware.catalog import Catalog
from routing_middleware.config import RoutingConfig
from routing_middleware.context import RouteContext
from routing_middleware.router import Router
from routing_middleware.schema import ChatRequest, ImagePart, Message, TextPart, Tool, ToolCall
from tests.core.child import assert_runs

scan = tokens.scan_messages
pytestmark = pytest.mark.skipif(scan is None, reason="the native message scan is not built")
_BUNDLED = Catalog.bundled()

# Text with what the Python paths treat apart: non-ASCII, empty, long.
texts = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=127), max_size=60),
    st.text(max_size=20),
    st.sampled_from(["", "x" * 4001, "héllo", "日本語"]),
)
contents = st.one_of(
    st.none(),
    texts,
    st.lists(
        st.one_of(texts.map(lambda t: TextPart(text=t)), st.just(ImagePart(url="https://i/x.png"))),
        max_size=3,
    ),
)
calls = st.one_of(
    st.none(), st.just([]), st.just([ToolCall(id="c1", name="f", arguments='{"a":1}')])
)
messages = st.builds(
    Message,
    role=st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
    content=contents,
    tool_calls=calls,
)
requests = st.builds(
    ChatRequest,
    model=st.just("m"),
    messages=st.lists(messages, min_size=1, max_size=5),
    tools=st.one_of(st.none(), st.just([Tool(name="lookup", description="Find an order")])),
)


def _python_paths(request: ChatRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    with monkeypatch.context() as patched:
        patched.setattr(tokens, "scan_messages", None)  # (classify reads it there too)
        return tokens.request_tokens_and_images(request), classify.request_texts(request)


def _plain(message: Message) -> bool:
    content = message.content
    return (content is None or (isinstance(content, str) and content.isascii())) and (
        not message.tool_calls
    )


@settings(max_examples=500, deadline=None)
@given(requests)
def test_scan_gives_what_the_python_paths_give(request: ChatRequest) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        python_tokens, python_texts = _python_paths(request, monkeypatch)
    assert tokens.request_tokens_and_images(request) == python_tokens
    assert classify.request_texts(request) == python_texts
    found = scan(request.messages)  # type: ignore[misc]
    # The native pass answers for every request of plain-text messages, and only those.
    assert (found is not None) == all(_plain(m) for m in request.messages)
    if found is not None:
        assert found[1:] == python_texts
        assert (
            tokens.scanned_tokens(found[0], len(request.messages), request.tools)
            == (python_tokens[0])
        )


@pytest.mark.parametrize(
    ("roles", "joined"),
    [
        (("user",), ""),
        (("system", "user"), "s0"),
        (("system", "developer", "user", "system"), "s0\n\ns1\n\ns3"),
    ],
)
def test_scan_joins_system_and_developer_texts(roles: tuple[str, ...], joined: str) -> None:
    request = ChatRequest(
        model="m",
        messages=[Message(role=role, content=f"s{i}") for i, role in enumerate(roles)],  # type: ignore[arg-type]
    )
    assert scan(request.messages)[2] == joined  # type: ignore[index,misc]
    assert classify.request_texts(request)[1] == joined


class _Bare:
    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


class _Loud(Message):
    @property
    def text(self) -> str:  # type: ignore[override]
        return self.content.upper() if isinstance(self.content, str) else ""


def _without(field: str) -> Message:
    message = Message(role="user", content="hi")
    del message.__dict__[field]
    return message


@pytest.mark.parametrize(
    "messages",
    [
        (Message(role="user", content="hi"),),  # not a list
        [1, 2],  # not messages
        [_Bare(role="user", content="hi", tool_calls=None)],  # another type, same fields
        [_Loud(role="user", content="hi")],  # a subclass, which may read its text otherwise
        [_without("role")],
        [_without("content")],
        [_without("tool_calls")],
        [Message.model_construct(role="user", content=b"hi")],  # content not text
        [Message.model_construct(role=1, content="hi")],  # role not text
        [Message.model_construct(role="user", content="hi", tool_calls=())],  # not a list
        [Message(role="user", content="plain"), Message(role="user", content="héllo")],
    ],
)
def test_scan_leaves_what_it_cannot_read_to_the_python_path(messages: Any) -> None:
    assert scan(messages) is None  # type: ignore[misc]


def test_a_message_subclass_reads_its_own_text() -> None:
    request = ChatRequest(model="m", messages=[_Loud(role="user", content="hi")])
    assert classify.request_texts(request)[0] == "HI"


def test_scan_takes_the_message_type_then_the_messages() -> None:
    native = tokens._native_scan
    with pytest.raises(TypeError, match="message type and the messages"):
        native([Message(role="user", content="hi")])  # type: ignore[misc]
    assert native(Message, [Message(role="user", content="hi")]) == (1, "hi", "", 1)  # type: ignore[misc]


def test_pure_python_setting_turns_the_native_scan_off() -> None:
    code = "from routing_middleware import tokens; assert tokens.scan_messages is None"
    assert_runs(code, pure_python=True)


_ROUTER_CONFIG = {
    "rules": [
        {"name": "refunds", "when": {"keywords": ["refund"]}, "then": {"tier": 2}},
        {"name": "sql", "when": {"regex": r"\bSQL\b"}, "then": {"tier": 3}},
    ]
}


# Texts the rules and the scorer tell apart (cues, a refund, SQL, length), or any.
_PROMPTS = st.sampled_from(
    [
        "hi",
        "Please refund my order",
        "Write a SQL query joining orders and users",
        "You are a careful legal and medical analyst. Prove it step by step.",
        "Analyze the trade-offs, then design a distributed system and prove it correct. " * 6,
        "Résumé the contract clauses step by step",
    ]
)
_DECIDED = st.builds(
    ChatRequest,
    model=st.just("openai/gpt-4o"),
    messages=st.lists(
        st.builds(
            Message,
            role=st.sampled_from(["system", "developer", "user", "assistant"]),
            content=st.one_of(_PROMPTS, contents),
            tool_calls=calls,
        ),
        min_size=1,
        max_size=4,
    ),
)


@settings(max_examples=200, deadline=None)
@given(_DECIDED, st.sampled_from([None, 1, 3]))
def test_decide_reads_the_messages_alike_on_both_paths(
    request: ChatRequest, tier: int | None
) -> None:
    # ``Router.decide`` takes the scan's answer when it has one and reads the messages
    # in Python otherwise: tokens, the rules' text and the scorer's texts must agree.
    config = RoutingConfig.model_validate(_ROUTER_CONFIG)
    ctx = RouteContext(tier=tier)
    scorers = (_Recording(), _Recording())
    native = Router(_BUNDLED, config=config, classifier=scorers[0]).decide(request, ctx)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(router_module, "scan_messages", None)
        python = Router(_BUNDLED, config=config, classifier=scorers[1]).decide(request, ctx)
    assert (native.input_tokens, native.tier, native.model, native.reasons) == (
        python.input_tokens,
        python.tier,
        python.model,
        python.reasons,
    )
    assert native.input_tokens == tokens.estimate_request_tokens(request)
    assert scorers[0].asked == scorers[1].asked  # the same texts, system text and turns


class _Recording(classify.ComplexityScorer):
    """The built-in scorer, noting what the router asks it (``__call__`` is not
    overridden, so the router hands it the texts it read)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, str, int, int]] = []

    def tier_of_texts(self, text: str, system: str, turns: int, tools: int) -> int:
        self.asked.append((text, system, turns, tools))
        return super().tier_of_texts(text, system, turns, tools)
