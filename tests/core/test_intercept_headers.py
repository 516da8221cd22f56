"""Headers on interception's side: the relayed answer's headers and the caller's keys."""

from __future__ import annotations

import importlib
import types
from typing import Any

import pytest

from routing_middleware._intercept import _caller_keyed
from routing_middleware._intercept_kit import _ascii_headers_builder, kit_for
from routing_middleware.relay import RelayResponse

LIBS = ["httpx", "httpx2"]
URL = "https://api.openai.com/v1/chat/completions"


@pytest.mark.parametrize("lib_name", LIBS)
def test_ascii_headers_are_the_librarys_own(lib_name: str) -> None:
    lib: Any = importlib.import_module(lib_name)
    build = _ascii_headers_builder(lib)
    items = [
        ("Content-Type", "application/json"),
        ("x-llmroute-model", "openai/gpt-a"),
        ("X-Dup", "1"),
        ("x-dup", "2"),
        ("x-empty", ""),
    ]
    made = build(items)
    expected = lib.Headers(items, encoding="ascii")
    assert type(made) is lib.Headers
    assert vars(made) == vars(expected)
    assert made == expected
    assert repr(made) == repr(expected)
    assert made.multi_items() == expected.multi_items()
    assert made.get_list("x-dup") == ["1", "2"]
    made["x-added"] = "yes"  # the result is an ordinary, mutable Headers
    assert made.raw[-1] == (b"x-added", b"yes")
    assert build([]) == lib.Headers([], encoding="ascii")


@pytest.mark.parametrize("lib_name", LIBS)
def test_ascii_headers_fail_as_the_library_does(lib_name: str) -> None:
    lib: Any = importlib.import_module(lib_name)
    build = _ascii_headers_builder(lib)
    with pytest.raises(UnicodeEncodeError):
        build([("x-llmroute-model", "modèle")])
    with pytest.raises(UnicodeEncodeError):
        build([("x-modèle", "a")])
    with pytest.raises(TypeError) as ours:
        build([("x-count", 3)])  # type: ignore[list-item]
    with pytest.raises(TypeError) as theirs:
        lib.Headers([("x-count", 3)], encoding="ascii")
    assert str(ours.value) == str(theirs.value)


class _OtherHeaders:
    """Headers of a library that keeps a different state than httpx's."""

    def __init__(self, items: Any, encoding: str | None = None) -> None:
        self.pairs = list(items)
        self.encoding = encoding


def test_a_library_whose_headers_differ_gets_its_own_constructor() -> None:
    lib = types.SimpleNamespace(Headers=_OtherHeaders)
    made = _ascii_headers_builder(lib)([("a", "b")])
    assert type(made) is _OtherHeaders
    assert made.pairs == [("a", "b")]
    assert made.encoding == "ascii"


@pytest.mark.parametrize("lib_name", LIBS)
def test_a_relayed_answer_carries_library_headers(lib_name: str) -> None:
    lib: Any = importlib.import_module(lib_name)
    kit = kit_for(lib.Request("POST", URL))
    headers = {"content-type": "application/json", "x-llmroute-cost-usd": "0.0000252"}
    response = kit.relay_response(RelayResponse(200, headers, b"{}"))
    assert type(response.headers) is lib.Headers
    assert response.headers.multi_items() == [*headers.items(), ("content-length", "2")]
    assert response.headers["Content-Length"] == "2"


@pytest.mark.parametrize("lib_name", LIBS)
@pytest.mark.parametrize(("status", "phrase"), [(200, "OK"), (429, "Too Many Requests"), (599, "")])
def test_a_relayed_answer_has_a_status_line_as_one_read_off_a_socket(
    lib_name: str, status: int, phrase: str
) -> None:
    lib: Any = importlib.import_module(lib_name)
    kit = kit_for(lib.Request("POST", URL))
    response = kit.relay_response(RelayResponse(status, {}, b"{}"))
    # what the library would fall back to, but read off the response (the client
    # logs both on every call; a fallback costs it a KeyError each)
    assert response.extensions["http_version"] == b"HTTP/1.1"
    assert response.extensions["reason_phrase"] == phrase.encode()
    assert response.http_version == "HTTP/1.1"
    assert response.reason_phrase == lib.codes.get_reason_phrase(status) == phrase
    # each response has its own extensions, as the library makes them
    response.extensions["network_stream"] = object()
    again = kit.relay_response(RelayResponse(status, {}, b"{}"))
    assert "network_stream" not in again.extensions


@pytest.mark.parametrize("lib_name", LIBS)
@pytest.mark.parametrize(
    ("headers", "keyed"),
    [
        ({"Authorization": "Bearer sk-x"}, True),
        ({"X-Api-Key": "sk-ant"}, True),
        ({"api-key": "azure"}, True),
        ({"x-goog-api-key": "g"}, True),
        ({"authorization": ""}, False),
        ({"content-type": "application/json", "x-other-key": "k"}, False),
        ({}, False),
    ],
)
def test_caller_keyed_reads_credential_headers(
    lib_name: str, headers: dict[str, str], keyed: bool
) -> None:
    lib: Any = importlib.import_module(lib_name)
    assert _caller_keyed(lib.Request("POST", URL, headers=headers)) is keyed
