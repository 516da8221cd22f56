"""Objects made without their library's constructor are laid out as the library's own.

Interception builds a relayed answer's ``Headers`` and the dispatcher's pool requests
without the library's per-item checks. An instance whose attributes arrive through an
assigned ``__dict__`` holds them in a plain dict instead of the class's shared compact
layout, and every later attribute read by the library (httpx reads a header set's
encoding once per header while handling cookies) takes the slower path. The size of
the materialised ``vars()`` tells the two layouts apart.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import httpx2
import pytest

from routing_middleware._core_send import CoreSender
from routing_middleware._intercept_kit import _ascii_headers_builder
from routing_middleware.providers.base import EncodedRequest


def _layout(obj: Any) -> tuple[dict[str, Any], int]:
    state = vars(obj)
    return dict(state), sys.getsizeof(state)


@pytest.mark.parametrize("lib_name", ["httpx", "httpx2"])
def test_relayed_headers_have_the_librarys_layout(lib_name: str) -> None:
    lib: Any = importlib.import_module(lib_name)
    items = [("content-type", "application/json"), ("x-llmroute-model", "openai/gpt-a")]
    made = _ascii_headers_builder(lib)(items)
    expected = lib.Headers(items, encoding="ascii")
    assert _layout(made) == _layout(expected)


@pytest.mark.parametrize("core_name", ["httpcore", "httpcore2"])
def test_pool_requests_have_the_librarys_layout(core_name: str) -> None:
    core: Any = importlib.import_module(core_name)
    sender = CoreSender(core_name, {})
    assert sender._build is not None
    encoded = EncodedRequest("POST", "http://127.0.0.1:9/v1/chat/completions", {}, {})
    made = sender.request(httpx2.URL(encoded.url), encoded, b"{}", {})
    expected = core.Request(
        "POST",
        made.url,
        headers=made.headers,
        content=b"{}",
        extensions=made.extensions,
    )
    state, size = _layout(made)
    wanted, wanted_size = _layout(expected)
    assert list(state) == list(wanted)
    assert size == wanted_size
