from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from routing_middleware.providers.sse import SSEDecoder, SSEEvent, encode_sse


def _decode_all(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def test_named_and_unnamed_events_with_comments() -> None:
    wire = (
        b": OPENROUTER PROCESSING\n\n"
        b'event: message_start\ndata: {"a": 1}\n\n'
        b"data: first\ndata: second\n\n"
        b": keep-alive\n"
        b"data: [DONE]\n\n"
    )
    assert _decode_all([wire]) == [
        SSEEvent(data='{"a": 1}', event="message_start"),
        SSEEvent(data="first\nsecond"),
        SSEEvent(data="[DONE]"),
    ]


def test_crlf_split_between_reads_and_cr_only() -> None:
    events = _decode_all([b"data: a\r", b"\n\r", b"\ndata: b\r\r"])
    assert events == [SSEEvent(data="a"), SSEEvent(data="b")]


def test_multibyte_character_split_across_reads() -> None:
    wire = "data: héllo 日本\n\n".encode()
    cut = wire.index("日".encode()) + 1
    assert _decode_all([wire[:cut], wire[cut:]]) == [SSEEvent(data="héllo 日本")]


def test_missing_final_blank_line_is_flushed_on_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: tail") == []
    assert decoder.close() == [SSEEvent(data="tail")]


def test_field_without_space_and_unknown_fields() -> None:
    assert _decode_all([b"data:x\nretry: 10\nfoo: bar\n\n"]) == [SSEEvent(data="x")]


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from(["delta", "message_stop", "error"])),
            st.text(
                alphabet=st.characters(
                    blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)
                ),
                min_size=1,
            ),
        ),
        max_size=6,
    ),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_any_split_of_any_stream_decodes_the_same(
    events: list[tuple[str | None, str]], cuts: list[int]
) -> None:
    wire = b"".join(encode_sse(data, event) for event, data in events)
    points = sorted({min(c, len(wire)) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    decoded = _decode_all(pieces)
    assert [(e.event, e.data) for e in decoded] == events
