"""A streaming response's body, each step of it run inside a context manager.

A streaming body runs after the view (and the middleware's ``with`` block) returned:
the routing context it needs is made current again around each step instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

__all__ = ["astream_within", "stream_within"]

Within = Callable[[], AbstractContextManager[Any]]


def stream_within(content: Iterable[bytes], within: Within) -> Iterator[bytes]:
    """``content``, each step (and its close) inside ``within()``."""
    iterator = iter(content)
    try:
        while True:
            with within():
                try:
                    chunk = next(iterator)
                except StopIteration:
                    return
            yield chunk
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            with within():
                close()


async def astream_within(content: AsyncIterator[bytes], within: Within) -> AsyncIterator[bytes]:
    """Async twin of :func:`stream_within`."""
    iterator = aiter(content)
    try:
        while True:
            with within():
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    return
            yield chunk
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with within():
                await aclose()
