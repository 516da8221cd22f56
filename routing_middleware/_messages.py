"""The native pass over a request's messages (``_messagescan.c``), when it is built.

``scan(messages)`` gives ``(text_tokens, last_user_text, system_text, turns)`` for
messages of plain-ASCII text (or none) and no tool calls, else ``None``; ``scan`` is
``None`` itself without the extension or with ``LLMROUTE_PURE_PYTHON`` set. Its
readers (``tokens``, ``classify``, the router) fall back to their Python paths,
which give the same answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["scan"]

scan: Callable[[Any], tuple[int, str, str, int] | None] | None = None
if not os.environ.get("LLMROUTE_PURE_PYTHON"):
    try:
        from ._messagescan import scan
    except ImportError:  # built without a compiler: the Python paths
        pass
