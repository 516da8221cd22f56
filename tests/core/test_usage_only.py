"""Usage decoding for pass-through endpoints: hand-written fixtures and the fake's output."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_middleware.providers.usage_only import UsageStreamScanner, decode_usage
from routing_middleware.schema import Usage
from routing_middleware.testing import Failure, FakeModel, FakeProvider

RESPONSES_BODY = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "output": [],
    "usage": {
        "input_tokens": 1200,
        "input_tokens_details": {
            "cached_tokens": 700,
            "cache_write_tokens": 300,
            "cache_write_tokens_details": {"ttl_30m_tokens": 100, "ttl_12h_tokens": 200},
        },
        "output_tokens": 90,
        "output_tokens_details": {"reasoning_tokens": 64},
        "total_tokens": 1290,
    },
}


def test_responses_body_fixture() -> None:
    usage = decode_usage("responses", json.dumps(RESPONSES_BODY).encode())
    assert usage == Usage(
        input_tokens=1200,
        output_tokens=90,
        cached_input_tokens=700,
        cache_write_tokens=300,
        cache_write_long_tokens=200,
        reasoning_tokens=64,
    )
    assert usage.uncached_input_tokens == 200


def test_responses_body_without_details() -> None:
    body = {"usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}}
    assert decode_usage("responses", json.dumps(body).encode()) == Usage(
        input_tokens=5, output_tokens=7
    )


def test_inconsistent_details_are_clamped_not_raised() -> None:
    body = {
        "usage": {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 8},
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 9},
        }
    }
    usage = decode_usage("responses", json.dumps(body).encode())
    assert usage == Usage(
        input_tokens=10,
        output_tokens=2,
        cached_input_tokens=8,
        cache_write_tokens=2,
        reasoning_tokens=2,
    )


def test_embeddings_fixture() -> None:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 42, "total_tokens": 42},
    }
    assert decode_usage("embeddings", json.dumps(body).encode()) == Usage(input_tokens=42)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("responses", b"{not json"),
        ("responses", b"[]"),
        ("responses", b'{"id": "resp_1", "usage": null}'),
        ("responses", b'{"usage": {"prompt_tokens": 3}}'),
        ("embeddings", b'{"data": []}'),
        ("embeddings", b'{"usage": {"prompt_tokens": "many"}}'),
    ],
)
def test_bodies_without_usable_usage_give_none(kind: str, body: bytes) -> None:
    assert decode_usage(kind, body) is None  # type: ignore[arg-type]


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown usage kind"):
        decode_usage("chat", b"{}")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- against the fake

MODEL = FakeModel(
    "gpt-r",
    content="A reasonably long answer that spans a number of streamed pieces.",
    cached_tokens=40,
    cache_write_tokens=30,
    cache_write_long_tokens=10,
    reasoning_tokens=12,
    input_tokens=100,
)


def _call(fake: FakeProvider, path: str, body: dict[str, object]) -> bytes:
    status, _, data = fake.handle("POST", path, body=json.dumps(body).encode())
    assert status == 200
    return data


def test_decodes_what_the_fake_billed_for_responses() -> None:
    fake = FakeProvider([MODEL])
    data = _call(fake, "/v1/responses", {"model": "gpt-r", "input": "hi"})
    usage = decode_usage("responses", data)
    assert usage is not None
    assert usage == fake.calls[-1].usage
    assert (usage.cached_input_tokens, usage.cache_write_long_tokens) == (40, 10)


def test_decodes_what_the_fake_billed_for_embeddings() -> None:
    fake = FakeProvider([FakeModel("emb")])
    data = _call(fake, "/v1/embeddings", {"model": "emb", "input": ["one two", "three"]})
    usage = decode_usage("embeddings", data)
    assert usage is not None
    assert usage.input_tokens > 0
    assert usage == fake.calls[-1].usage


def _stream(fake: FakeProvider, **extra: object) -> bytes:
    body = {"model": "gpt-r", "input": "hi", "stream": True, **extra}
    return _call(fake, "/v1/responses", body)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_scanner_finds_usage_whatever_the_split(cuts: list[int]) -> None:
    fake = FakeProvider([MODEL])
    data = _stream(fake)
    scanner = UsageStreamScanner()
    points = sorted({c % (len(data) + 1) for c in cuts})
    previous = 0
    for point in [*points, len(data)]:
        scanner.feed(data[previous:point])
        previous = point
    assert scanner.close() == fake.calls[-1].usage
    assert scanner.complete
    assert scanner.status == "completed"


def test_scanner_byte_by_byte_and_crlf() -> None:
    fake = FakeProvider([MODEL])
    data = _stream(fake).replace(b"\n", b"\r\n")
    scanner = UsageStreamScanner()
    for i in range(len(data)):
        scanner.feed(data[i : i + 1])
    assert scanner.close() == fake.calls[-1].usage


def test_scanner_reports_incomplete_responses() -> None:
    fake = FakeProvider([MODEL])
    data = _stream(fake, max_output_tokens=5)
    scanner = UsageStreamScanner()
    scanner.feed(data)
    usage = scanner.close()
    assert scanner.status == "incomplete"
    assert usage is not None
    assert usage.output_tokens == 5


def test_scanner_on_a_cut_stream_has_no_usage() -> None:
    fake = FakeProvider([MODEL])
    fake.inject("gpt-r", Failure.cut(after=4))
    scanner = UsageStreamScanner()
    scanner.feed(_stream(fake))
    assert scanner.close() is None
    assert not scanner.complete


def test_scanner_without_event_lines() -> None:
    response = {"type": "response.completed", "response": RESPONSES_BODY}
    delta = {"type": "response.output_text.delta", "delta": "x" * 500, "sequence_number": 1}
    data = f"data: {json.dumps(delta)}\n\ndata: {json.dumps(response)}\n\n".encode()
    scanner = UsageStreamScanner()
    for i in range(0, len(data), 7):
        scanner.feed(data[i : i + 7])
    usage = scanner.close()
    assert usage is not None
    assert usage.input_tokens == 1200


def test_scanner_handles_a_final_event_without_blank_line() -> None:
    response = {"type": "response.completed", "response": RESPONSES_BODY}
    scanner = UsageStreamScanner()
    scanner.feed(f"event: response.completed\ndata: {json.dumps(response)}".encode())
    assert scanner.close() is not None


def test_scanner_never_holds_long_deltas() -> None:
    big = "y" * 200_000
    delta = {"type": "response.output_text.delta", "delta": big, "sequence_number": 3}
    events = [
        f"event: response.output_text.delta\ndata: {json.dumps(delta)}\n\n",
        f"data: {json.dumps(delta)}\n\n",  # no event line: judged by its JSON type
        ": " + "z" * 5000 + "\n\n",
    ]
    scanner = UsageStreamScanner()
    high_water = 0
    for text in events:
        data = text.encode()
        for i in range(0, len(data), 1000):
            scanner.feed(data[i : i + 1000])
            high_water = max(high_water, scanner.buffered)
    assert high_water < 2_000
    assert scanner.close() is None


def test_scanner_ignores_malformed_terminal_event() -> None:
    scanner = UsageStreamScanner()
    scanner.feed(b'event: response.completed\ndata: {"type": "response.comp\n\n')
    assert scanner.close() is None
    assert not scanner.complete
