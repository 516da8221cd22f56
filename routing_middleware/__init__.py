"""llmroute's framework-agnostic core: routing, normalization and cost control for LLM calls.

Public names are imported lazily, so ``import routing_middleware`` stays cheap: it
does no I/O, starts no threads and loads neither the catalog nor Django.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> submodule that defines it.
_EXPORTS: dict[str, str] = {
    "Catalog": "catalog",
    "ChatRequest": "schema",
    "ChatResponse": "schema",
    "FeedError": "feeds",
    "LLMError": "schema",
    "Message": "schema",
    "ModelInfo": "catalog",
    "Price": "catalog",
    "StreamChunk": "schema",
    "UnknownModel": "schema",
    "Usage": "schema",
    "cost_of": "pricing",
    "default_catalog": "catalog",
}

__all__ = [
    "Catalog",
    "ChatRequest",
    "ChatResponse",
    "FeedError",
    "LLMError",
    "Message",
    "ModelInfo",
    "Price",
    "StreamChunk",
    "UnknownModel",
    "Usage",
    "__version__",
    "cost_of",
    "default_catalog",
]

if TYPE_CHECKING:
    from .catalog import Catalog, ModelInfo, Price, default_catalog
    from .feeds import FeedError
    from .pricing import cost_of
    from .schema import (
        ChatRequest,
        ChatResponse,
        LLMError,
        Message,
        StreamChunk,
        UnknownModel,
        Usage,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'routing_middleware' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
