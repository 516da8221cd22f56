"""Extension points, as signals.

``llm_call_recorded`` is sent after a usage record is stored, from the thread that
stored it (usually the sink's flusher, never the request's): ``sender`` is
:class:`~django_llmroute.models.LLMCall`, with ``instance`` (the saved row) and
``record`` (the core :class:`~routing_middleware.metering.UsageRecord`).

``budget_exceeded`` is sent by the budget code when a limit is reached, with
``budget`` (the budget), ``spent`` and ``limit`` (``Decimal``) and ``scope_value``.
Receivers must be quick and must not raise.
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["budget_exceeded", "llm_call_recorded"]

llm_call_recorded = Signal()
budget_exceeded = Signal()
