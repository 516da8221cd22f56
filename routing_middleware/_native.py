"""The package's optional C parts (see ``setup.py``), each with a Python path.

Every caller asks :func:`native` for what it would use and keeps its Python path for
``None``: the extension was not built (no compiler), or ``LLMROUTE_PURE_PYTHON`` is
set to run the Python paths, which give the same answers.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__all__ = ["native"]


def native(module: str, name: str) -> Any:
    """``name`` from the extension ``routing_middleware.<module>``, or ``None``."""
    if os.environ.get("LLMROUTE_PURE_PYTHON"):
        return None
    try:
        return getattr(importlib.import_module(f"routing_middleware.{module}"), name)
    except (ImportError, AttributeError):  # not built, or an older build without it
        return None
