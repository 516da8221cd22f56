"""Non-streamed answers forwarded as bytes: an OpenAI caller, an OpenAI-compatible upstream.

The relay gives such a call's plain ``chat.completion`` body to the caller as the
upstream sent it instead of decoding and re-encoding it. Judged here against the
decoded path on the same upstream answers: what the caller reads, and what gets
recorded, settled and sampled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from decimal import Decimal
from typing import Any, cast
from unittest import mock

import anyio
import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_middleware import relay as relay_module
from routing_middleware._dispatch_state import JsonOffer, forward_json
from routing_middleware.budgets import Budget, Budgets
from routing_middleware.cache import ResponseCache
from routing_middleware.dispatch import Dispatcher
from routing_middleware.engine import LLMRoute
from routing_middleware.metering import MemorySink, UsageRecord
from routing_middleware.providers.base import ProviderConfig
from routing_middleware.providers.openai import OPENAI_DIALECT
from routing_middleware.providers.openai_forward_json import forwardable_usage
from routing_middleware.providers.openai_wire import decode_usage
from routing_middleware.relay import Relay, RelayResponse
from routing_middleware.retry import RetryPolicy
from routing_middleware.router import Decision, Deployment
from routing_middleware.schema import ChatRequest
from routing_middleware.testing import Failure, FakeProvider
from tests.core.relay_fixtures import (
    CALL,
    CLAUDE,
    KEY,
    TEXT,
    TOOLS,
    A,
    B,
    StubEngine,
    fake_provider,
    make_relay,
)
from tests.core.served_upstream import TEXT as SERVED_TEXT
from tests.core.served_upstream import decision as served_decision
from tests.core.served_upstream import dispatcher as served_dispatcher
from tests.core.served_upstream import served_fake


class Upstream:
    """A mock transport's handler answering from ``fake``; ``bodies`` holds every
    answer's body (``rewrite``, when given, changes bodies before they are sent)."""

    def __init__(self, fake: FakeProvider, rewrite: Any = None) -> None:
        self.fake = fake
        self.rewrite = rewrite
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        status, headers, body = self.fake.handle(
            request.method, request.url.path, headers=dict(request.headers), body=request.read()
        )
        if status == 0:
            raise httpx2.ConnectError("connection reset")
        if self.rewrite is not None and status == 200:
            body = self.rewrite(body)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        self.bodies.append(body)
        return httpx2.Response(status, headers=headers, content=body)

    async def handle_async(self, request: httpx2.Request) -> httpx2.Response:
        return self(request)


def records(dispatcher: Dispatcher) -> list[UsageRecord]:
    return cast("MemorySink", dispatcher.sink).records


TOOL_SPEC = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]


def body(model: str = "gpt-a", **extra: Any) -> bytes:
    payload = {"model": model, "messages": [{"role": "user", "content": "What is 2+2?"}], **extra}
    if model == "gpt-tools":
        payload["tools"] = TOOL_SPEC
    return json.dumps(payload).encode()


@contextmanager
def decoded() -> Iterator[None]:
    """The relay as it answers without forwarding: every body decoded and re-encoded."""
    with mock.patch.object(relay_module, "JsonOffer", return_value=None):
        yield


def facts(found: list[UsageRecord]) -> list[tuple[Any, ...]]:
    return [
        (
            r.status,
            r.error_kind,
            r.chosen_model,
            r.provider,
            r.attempt,
            r.attempts,
            r.fallback_from,
            r.usage,
            r.cost,
            r.requested_cost,
            r.streamed,
            r.deployment,
            dict(r.extra),
        )
        for r in found
    ]


def seen(answer: RelayResponse) -> dict[str, Any]:
    """What an OpenAI caller makes of an answer: status, and the body's meaning."""
    data = json.loads(answer.body)
    if answer.status != 200:
        return {"status": answer.status, "body": data}
    choice = data["choices"][0]
    message = choice["message"]
    usage = data["usage"]
    return {
        "status": 200,
        "id": data["id"],
        "object": data["object"],
        "text": message["content"],
        "tool_calls": message.get("tool_calls"),
        "finish": choice["finish_reason"],
        "usage": (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]),
    }


def headers(answer: RelayResponse) -> dict[str, str]:
    return dict(answer.headers)


def forwarded(answer: RelayResponse) -> bool:
    """Whether the caller got the upstream's own body (re-encoding drops these fields)."""
    return b'"system_fingerprint"' in answer.body


# --------------------------------------------------------------------------- bytes


def test_the_callers_body_is_the_upstreams_byte_for_byte() -> None:
    upstream = Upstream(fake_provider())
    relay, dispatcher = make_relay(upstream)
    answer = relay.handle("openai", body(), provider="openai")
    assert answer.status == 200
    assert answer.body == upstream.bodies[0]
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-llmroute-model"] == "openai/gpt-a"
    assert answer.headers["x-llmroute-provider"] == "openai"
    [record] = records(dispatcher)
    assert answer.headers["x-llmroute-cost-usd"] == format(record.cost.normalize(), "f")
    assert json.loads(answer.body)["choices"][0]["message"]["content"] == TEXT


def test_an_unusual_but_plain_body_reaches_the_caller_unchanged() -> None:
    """Spacing, key order and extra fields are the upstream's own."""

    def rewrite(raw: bytes) -> bytes:
        data = json.loads(raw)
        data["choices"][0]["logprobs"] = {"content": []}
        data["x_vendor"] = {"region": "eu"}
        return json.dumps(data, indent=1, ensure_ascii=True).encode() + b"\n"

    upstream = Upstream(fake_provider(), rewrite=rewrite)
    relay, _ = make_relay(upstream)
    answer = relay.handle("openai", body(), provider="openai")
    assert answer.body == upstream.bodies[0]
    assert answer.body.endswith(b"}\n")


# --------------------------------------------------------------------------- equivalence


def _both(
    failure: Failure | None, run: Any, rewrite: Any = None, **kw: Any
) -> list[tuple[RelayResponse, Dispatcher, Upstream]]:
    results = []
    for plain in (False, True):
        fake = fake_provider()
        if failure is not None:
            fake.inject("gpt-a", failure)
        upstream = Upstream(fake, rewrite=rewrite)
        relay, dispatcher = make_relay(upstream, fallbacks=(B,), **kw)
        if plain:
            with decoded():
                results.append((run(relay), dispatcher, upstream))
        else:
            results.append((run(relay), dispatcher, upstream))
    return results


FAILURES = [
    None,
    Failure.no_usage(),
    Failure.malformed(),
    Failure.reset(),
    Failure.unavailable(),
    Failure.rate_limit(retry_after=0),
    Failure.insufficient_quota(),
]


def _sync(relay: Relay) -> RelayResponse:
    return relay.handle("openai", body(), provider="openai")


def _async(relay: Relay) -> RelayResponse:
    async def main() -> RelayResponse:
        return await relay.ahandle("openai", body(), provider="openai")

    return anyio.run(main)


@pytest.mark.parametrize("failure", FAILURES, ids=lambda f: f.kind if f else "ok")
@pytest.mark.parametrize("run", [_sync, _async], ids=["sync", "async"])
def test_records_and_what_the_caller_sees_match_the_decoded_path(
    failure: Failure | None, run: Any
) -> None:
    (fwd, fdisp, _), (plain, pdisp, _) = _both(failure, run)
    assert facts(records(fdisp)) == facts(records(pdisp))
    assert seen(fwd) == seen(plain)
    assert fwd.status == plain.status
    assert headers(fwd) == headers(plain)
    assert sum(r.cost for r in records(fdisp)) == fwd.cost


def test_a_body_without_usage_is_decoded_and_gets_the_estimate() -> None:
    (fwd, fdisp, upstream), (plain, _, _) = _both(Failure.no_usage(), _sync)
    assert not forwarded(fwd)
    assert fwd.body == plain.body  # re-encoded exactly as without forwarding
    [record] = records(fdisp)
    assert record.usage.estimated
    assert json.loads(fwd.body)["usage"]["completion_tokens"] == record.usage.output_tokens
    assert b'"usage"' not in upstream.bodies[0]


def test_a_malformed_body_falls_over_and_the_next_answer_is_forwarded() -> None:
    (fwd, fdisp, upstream), _ = _both(Failure.malformed(), _sync)
    assert [(r.status, r.error_kind) for r in records(fdisp)] == [
        ("error", "UpstreamProtocolError"),
        ("ok", None),
    ]
    assert fwd.body == upstream.bodies[-1]
    assert json.loads(fwd.body)["choices"][0]["message"]["content"] == "B answers instead."


def test_an_upstream_error_reaches_the_caller_in_its_dialect_as_before() -> None:
    fake = fake_provider()
    fake.inject("gpt-a", always=Failure.insufficient_quota())
    fake.inject("gpt-b", always=Failure.insufficient_quota())
    out = []
    for plain in (False, True):
        relay, dispatcher = make_relay(Upstream(fake), fallbacks=(B,))
        with decoded() if plain else nullcontext():
            out.append((relay.handle("openai", body(), provider="openai"), records(dispatcher)))
    (fwd, frec), (dec, prec) = out
    assert fwd.status == dec.status == 429
    assert fwd.body == dec.body
    assert json.loads(fwd.body)["error"]["code"] == "insufficient_quota"
    assert KEY.encode() not in fwd.body
    assert facts(frec) == facts(prec)


class RecordingStats:
    """The stats calls an attempt makes, latencies left out (they are clock readings)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def started(self, deployment: str) -> None:
        self.calls.append(("started", deployment))

    def finished(self, deployment: str) -> None:
        self.calls.append(("finished", deployment))

    def record(self, deployment: str, **sample: Any) -> None:
        sample.pop("latency_ms")
        sample.pop("ttft_ms")
        self.calls.append(("record", deployment, sorted(sample.items())))


def test_retries_settle_budgets_and_feed_stats_as_the_decoded_path() -> None:
    """A retried attempt, then an answer: holds settled, stats fed, records alike."""
    results = []
    for plain in (False, True):
        fake = fake_provider()
        fake.inject("gpt-a", Failure.unavailable())
        budgets = Budgets([Budget(name="all", limit_usd=Decimal("10"))])
        stats = RecordingStats()
        relay, dispatcher = make_relay(
            Upstream(fake),
            retry=RetryPolicy(max_retries=1, base_delay=0, max_delay=0),
            budgets=budgets,
            stats=cast("Any", stats),
        )
        with decoded() if plain else nullcontext():
            answer = relay.handle("openai", body(), provider="openai")
        spent = [s.spent_micros for s in budgets.status()]
        results.append((seen(answer), facts(records(dispatcher)), spent, stats.calls))
    assert results[0] == results[1]
    assert [f[0] for f in results[0][1]] == ["error", "ok"]
    assert results[0][2][0] > 0
    assert [c[0] for c in results[0][3]].count("record") == 2


def test_tool_calls_are_forwarded_and_read_alike() -> None:
    (fwd, fdisp, upstream), (plain, pdisp, _) = _both(
        None,
        lambda relay: relay.handle("openai", body("gpt-tools"), provider="openai"),
        primary=TOOLS,
    )
    assert facts(records(fdisp)) == facts(records(pdisp))
    assert fwd.body == upstream.bodies[0]
    got, expected = seen(fwd), seen(plain)
    assert got == expected
    [call] = got["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == CALL.arguments
    assert got["finish"] == "tool_calls"


# --------------------------------------------------------------------------- eligibility


@pytest.mark.parametrize(
    ("options", "primary", "extra", "expected"),
    [
        ({}, A, {}, True),
        ({"store_content": True}, A, {}, False),
        ({"cache": ResponseCache()}, A, {"temperature": 0}, False),
        ({"cache": ResponseCache()}, A, {"temperature": 0.5}, True),
        ({}, CLAUDE, {}, False),
    ],
    ids=["default", "store", "cached", "uncached", "anthropic"],
)
def test_what_answers_are_forwarded(
    options: dict[str, Any], primary: Deployment, extra: dict[str, Any], expected: bool
) -> None:
    relay, dispatcher = make_relay(Upstream(fake_provider()), primary=primary, **options)
    answer = relay.handle("openai", body(**extra), provider="openai")
    assert forwarded(answer) is expected
    assert json.loads(answer.body)["choices"][0]["message"]["content"] == TEXT
    assert records(dispatcher)[-1].status == "ok"


def test_a_cached_answer_is_stored_decoded_and_replayed() -> None:
    relay, dispatcher = make_relay(Upstream(fake_provider()), cache=ResponseCache())
    first = relay.handle("openai", body(temperature=0), provider="openai")
    second = relay.handle("openai", body(temperature=0), provider="openai")
    assert seen(first)["text"] == seen(second)["text"] == TEXT
    assert [r.status for r in records(dispatcher)] == ["ok", "cache_hit"]


def test_another_caller_dialect_gets_its_own_encoding() -> None:
    relay, _ = make_relay(Upstream(fake_provider()))
    data = json.dumps(
        {"model": "gpt-a", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
    ).encode()
    answer = relay.handle("anthropic", data, provider="anthropic")
    assert json.loads(answer.body)["type"] == "message"
    assert b"system_fingerprint" not in answer.body


def test_a_fallback_in_another_dialect_is_encoded_an_openai_one_forwarded() -> None:
    fake = fake_provider()
    fake.inject("claude-a", Failure.unavailable())
    relay, _ = make_relay(Upstream(fake), primary=CLAUDE, fallbacks=(A,))
    assert forwarded(relay.handle("openai", body(), provider="openai"))
    fake.inject("gpt-a", Failure.unavailable())
    relay, _ = make_relay(Upstream(fake), primary=A, fallbacks=(CLAUDE,))
    answer = relay.handle("openai", body(), provider="openai")
    assert not forwarded(answer)
    assert seen(answer)["text"] == TEXT


def test_only_the_first_call_takes_the_offer() -> None:
    upstream = Upstream(fake_provider())
    _, dispatcher = make_relay(upstream)
    request = ChatRequest.model_validate(json.loads(body()))
    decide = Decision(
        primary=A,
        fallbacks=(),
        tier=1,
        estimated_cost=None,
        requested_model=A.key,
        requested_cost=None,
        mode="enforce",
        reasons=(),
    )
    offer = JsonOffer()
    token = forward_json.set(offer)
    try:
        dispatcher.dispatch(request, decide)
        first = offer.body
        dispatcher.dispatch(request.model_copy(update={"model": "gpt-b"}), decide)
    finally:
        forward_json.reset(token)
    assert first == upstream.bodies[0]
    assert offer.body == first
    assert dispatcher.dispatch(request, decide).choices  # no offer: decoded in full


# --------------------------------------------------------------------------- the SDK


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("model", ["gpt-a", "gpt-tools"])
def test_the_openai_sdk_reads_a_forwarded_answer(is_async: bool, model: str) -> None:
    upstream = Upstream(fake_provider())
    relay, dispatcher = make_relay(upstream, primary=TOOLS if model == "gpt-tools" else A)
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "What is 2+2?"}],
    }
    if model == "gpt-tools":
        kwargs["tools"] = TOOL_SPEC
    if is_async:

        async def ahandle(request: httpx2.Request) -> httpx2.Response:
            answer = await relay.ahandle("openai", await request.aread(), provider="openai")
            return httpx2.Response(answer.status, headers=answer.headers, content=answer.body)

        aclient = openai.AsyncOpenAI(
            api_key="caller",
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(ahandle)),
            max_retries=0,
        )

        async def create() -> Any:
            return await aclient.chat.completions.create(**kwargs)

        completion = anyio.run(create)
    else:

        def handle(request: httpx2.Request) -> httpx2.Response:
            answer = relay.handle("openai", request.read(), provider="openai")
            return httpx2.Response(answer.status, headers=answer.headers, content=answer.body)

        client = openai.OpenAI(
            api_key="caller",
            http_client=httpx2.Client(transport=httpx2.MockTransport(handle)),
            max_retries=0,
        )
        completion = client.chat.completions.create(**kwargs)
    [record] = records(dispatcher)
    assert completion.id.startswith("chatcmpl-fake")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        record.usage.input_tokens,
        record.usage.output_tokens,
    )
    message = completion.choices[0].message
    if model == "gpt-a":
        assert message.content == TEXT
        assert completion.choices[0].finish_reason == "stop"
    else:
        assert message.tool_calls is not None
        call = message.tool_calls[0]
        assert call.function.name == "weather"
        assert json.loads(call.function.arguments) == CALL.arguments
        assert completion.choices[0].finish_reason == "tool_calls"


# --------------------------------------------------------------------------- plain or not


def _completion(**change: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "Hi", "refusal": None}
    payload: dict[str, Any] = {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "up-model",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    for path, value in change.items():
        target: Any = payload
        *parents, leaf = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        key: Any = int(leaf) if leaf.isdigit() else leaf
        if value is _DROP:
            del target[key]
        else:
            target[key] = value
    return payload


_DROP = object()
CONFIG = ProviderConfig(name="openai", dialect="openai", base_url="https://fake.invalid/v1")
_TOOL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def test_a_plain_completion_gives_its_decoded_usage() -> None:
    payload = _completion()
    assert forwardable_usage(payload) == decode_usage(payload["usage"])
    tools = _completion(
        choices__0__message__tool_calls=[_TOOL], choices__0__finish_reason="tool_calls"
    )
    assert forwardable_usage(tools) is not None
    assert forwardable_usage(_completion(choices__0__message__reasoning_content="hmm")) is not None
    assert forwardable_usage(_completion(choices__0__message__tool_calls=[])) is not None


@pytest.mark.parametrize(
    "change",
    [
        {"object": "chat.completion.chunk"},
        {"id": ""},
        {"created": 0},
        {"created": "1700000000"},
        {"model": _DROP},
        {"choices": []},
        {"error": {"message": "partial"}},
        {"choices__0__index": "0"},
        {"choices__0__finish_reason": None},
        {"choices__0__finish_reason": "model_length"},
        {"choices__0__finish_reason": "end_turn"},
        {"choices__0__finish_reason": ["stop"]},
        {"choices__0__message__role": "user"},
        {"choices__0__message__content": [{"type": "text", "text": "Hi"}]},
        {"choices__0__message__reasoning": "hmm"},
        {"choices__0__message__reasoning_content": ""},
        {"choices__0__message__refusal": 3},
        {"choices__0__message__tool_calls": [{**_TOOL, "id": ""}]},
        {
            "choices__0__message__tool_calls": [
                {**_TOOL, "function": {"name": "f", "arguments": ""}}
            ]
        },
        {
            "choices__0__message__tool_calls": [
                {**_TOOL, "function": {"name": "f", "arguments": {}}}
            ]
        },
        {"choices__0__message__tool_calls": {"id": "x"}},
        {"usage": _DROP},
        {"usage": None},
        {"usage__total_tokens": 9},  # output counted from the total: re-encoded
        {"usage__total_tokens": _DROP},
        {"usage__prompt_tokens": 3.0},
        {"usage__prompt_tokens": _DROP, "usage__prompt_cache_hit_tokens": 3},
        {"usage__prompt_cache_hit_tokens": 2, "usage__prompt_cache_miss_tokens": 1},
        {"usage__completion_tokens_details": {"reasoning_tokens": "2"}},
    ],
)
def test_what_is_not_plain_is_re_encoded(change: dict[str, Any]) -> None:
    payload = _completion(**change)
    if "usage__completion_tokens_details" in change:
        payload["usage"]["total_tokens"] = 9  # reasoning left out of completion: 2 more
    assert forwardable_usage(payload) is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from(
        [
            "object",
            "id",
            "created",
            "choices",
            "choices__0",
            "choices__0__index",
            "choices__0__finish_reason",
            "choices__0__message",
            "choices__0__message__content",
            "choices__0__message__tool_calls",
            "usage",
            "usage__prompt_tokens",
            "usage__completion_tokens",
            "usage__prompt_tokens_details",
        ]
    ),
    value=_JSON,
)
def test_any_json_in_any_field_is_judged_without_raising(path: str, value: Any) -> None:
    payload = _completion(**{path: value})
    usage = forwardable_usage(payload)
    if usage is not None:  # what is forwarded is metered as decoding meters it
        assert usage == OPENAI_DIALECT.decode_response(json.dumps(payload).encode(), CONFIG).usage


# --------------------------------------------------------------------------- real sockets


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeProvider, str]]:
    with served_fake() as found:
        yield found


@pytest.mark.parametrize(
    ("client", "is_async"), [("httpx", False), ("httpx2", False), ("httpx2", True)]
)
def test_forwarding_over_a_real_socket(
    served: tuple[FakeProvider, str], client: str, is_async: bool
) -> None:
    import httpx

    lib: Any = {"httpx": httpx, "httpx2": httpx2}[client]
    data = json.dumps(
        {"model": "gpt-a", "messages": [{"role": "user", "content": "What is two plus two?"}]}
    ).encode()

    def run() -> tuple[RelayResponse, MemorySink]:
        sink = MemorySink()
        if is_async:

            async def main() -> RelayResponse:
                async with lib.AsyncClient() as upstream:
                    dispatcher = served_dispatcher(served[1], sink, async_client=upstream)
                    engine = _SinkEngine(dispatcher, served_decision(), sink)
                    return await Relay(cast("LLMRoute", engine)).ahandle(
                        "openai", data, provider="openai"
                    )

            return anyio.run(main), sink
        with lib.Client() as upstream:
            dispatcher = served_dispatcher(served[1], sink, client=upstream)
            engine = _SinkEngine(dispatcher, served_decision(), sink)
            return Relay(cast("LLMRoute", engine)).handle("openai", data, provider="openai"), sink

    with decoded():
        plain, psink = run()
    fwd, fsink = run()
    assert forwarded(fwd)
    assert not forwarded(plain)
    assert seen(fwd)["text"] == seen(plain)["text"] == SERVED_TEXT
    assert seen(fwd)["usage"] == seen(plain)["usage"]
    assert facts(fsink.records) == facts(psink.records)
    assert fsink.records[0].cost > 0


class _SinkEngine(StubEngine):
    def __init__(self, dispatcher: Dispatcher, decision: Decision, sink: MemorySink) -> None:
        super().__init__(dispatcher, decision)
        dispatcher.sink = sink


# --------------------------------------------------------------------------- construction


def test_the_fast_constructor_builds_what_model_construct_builds() -> None:
    from pydantic import BaseModel, PrivateAttr

    from routing_middleware.providers.openai_wire import constructor
    from routing_middleware.schema import ChatResponse, Usage

    values: dict[str, Any] = {
        "input_tokens": 8,
        "output_tokens": 40,
        "cached_input_tokens": 2,
        "cache_write_tokens": 1,
        "cache_write_long_tokens": 0,
        "reasoning_tokens": 3,
        "estimated": False,
        "provider_cost": Decimal("0.5"),
    }
    made, expected = constructor(Usage)(dict(values)), Usage.model_construct(**values)
    assert made == expected
    assert made.__pydantic_fields_set__ == expected.__pydantic_fields_set__
    assert made.model_dump(exclude_unset=True) == expected.model_dump(exclude_unset=True)
    assert repr(made) == repr(expected)
    built = constructor(ChatResponse)(
        {
            "id": "x",
            "model": "m",
            "provider": "p",
            "created": 1,
            "choices": [],
            "usage": made,
        }
    )
    assert built.usage is made
    assert built.text == ""

    class Private(BaseModel):
        value: int = 0
        _seen: list[int] = PrivateAttr(default_factory=list)

    # A model pydantic builds with more state: model_construct itself is used.
    build = constructor(Private)
    thing = build({"value": 3})
    assert thing.value == 3
    assert thing._seen == []
