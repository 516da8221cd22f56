"""Every page says whether the LLM calls go to real providers or to the offline fakes."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def llm_mode(request: HttpRequest) -> dict[str, Any]:
    """``llm_mode``: ``offline``, ``mixed`` or ``live``, with the providers of each kind."""
    from django_llmroute.runtime import get_engine

    engine = get_engine()
    offline = sorted(engine.offline_providers)
    live = sorted(set(engine.providers) - engine.offline_providers)
    kind = "offline" if engine.is_offline else "live" if not offline else "mixed"
    return {"llm_mode": {"kind": kind, "offline": offline, "live": live}}
