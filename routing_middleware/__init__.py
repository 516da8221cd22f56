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
    "BreakerPolicy": "breaker",
    "Budget": "budgets",
    "Budgets": "budgets",
    "Catalog": "catalog",
    "ChatRequest": "schema",
    "ChatResponse": "schema",
    "CircuitBreaker": "breaker",
    "Completion": "engine",
    "Decision": "router",
    "Deployment": "router",
    "Dispatcher": "dispatch",
    "FakeProvider": "testing",
    "FeedError": "feeds",
    "LLMError": "schema",
    "LLMRoute": "engine",
    "LLMRouteConfig": "settings",
    "MemorySink": "metering",
    "Message": "schema",
    "ModelInfo": "catalog",
    "Price": "catalog",
    "Reason": "router",
    "RecordSink": "metering",
    "Relay": "relay",
    "ResponseCache": "cache",
    "RetryPolicy": "retry",
    "RouteContext": "context",
    "Router": "router",
    "RoutingConfig": "config",
    "StreamChunk": "schema",
    "UnknownModel": "schema",
    "Usage": "schema",
    "UsageRecord": "metering",
    "cost_of": "pricing",
    "current_context": "context",
    "default_catalog": "catalog",
    "route_hint": "context",
    "use_context": "context",
}

__all__ = [
    "BreakerPolicy",
    "Budget",
    "Budgets",
    "Catalog",
    "ChatRequest",
    "ChatResponse",
    "CircuitBreaker",
    "Completion",
    "Decision",
    "Deployment",
    "Dispatcher",
    "FakeProvider",
    "FeedError",
    "LLMError",
    "LLMRoute",
    "LLMRouteConfig",
    "MemorySink",
    "Message",
    "ModelInfo",
    "Price",
    "Reason",
    "RecordSink",
    "Relay",
    "ResponseCache",
    "RetryPolicy",
    "RouteContext",
    "Router",
    "RoutingConfig",
    "StreamChunk",
    "UnknownModel",
    "Usage",
    "UsageRecord",
    "__version__",
    "cost_of",
    "current_context",
    "default_catalog",
    "route_hint",
    "use_context",
]

if TYPE_CHECKING:
    from .breaker import BreakerPolicy, CircuitBreaker
    from .budgets import Budget, Budgets
    from .cache import ResponseCache
    from .catalog import Catalog, ModelInfo, Price, default_catalog
    from .config import RoutingConfig
    from .context import RouteContext, current_context, route_hint, use_context
    from .dispatch import Dispatcher
    from .engine import Completion, LLMRoute
    from .feeds import FeedError
    from .metering import MemorySink, RecordSink, UsageRecord
    from .pricing import cost_of
    from .relay import Relay
    from .retry import RetryPolicy
    from .router import Decision, Deployment, Reason, Router
    from .schema import (
        ChatRequest,
        ChatResponse,
        LLMError,
        Message,
        StreamChunk,
        UnknownModel,
        Usage,
    )
    from .settings import LLMRouteConfig
    from .testing import FakeProvider


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'routing_middleware' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
