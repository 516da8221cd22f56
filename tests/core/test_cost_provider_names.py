"""A call to a host serving other makers' models (Groq, Together, DeepInfra) names them
with a "/" of their own: they are priced and routed at the provider addressed."""

from __future__ import annotations

import json
import time

from routing_middleware._intercept_meter import CallInfo, _costs
from routing_middleware.context import RouteContext
from routing_middleware.engine import LLMRoute
from routing_middleware.metering import MemorySink
from routing_middleware.pricing import cost_of
from routing_middleware.relay import Relay
from routing_middleware.schema import Usage


def _engine() -> LLMRoute:
    return LLMRoute({"offline": "always"}, sink=MemorySink(), environ={})


def test_a_slashed_name_is_the_addressed_providers_model() -> None:
    engine = _engine()
    assert "groq/openai/gpt-oss-120b" in engine.catalog
    assert engine.catalog.at_provider("openai/gpt-oss-120b", "groq") == "groq/openai/gpt-oss-120b"
    assert engine.catalog.at_provider("openai/gpt-oss-120b", "deepinfra") == (
        "deepinfra/openai/gpt-oss-120b"
    )
    # already qualified, bare, or unknown at that provider: as before
    at = engine.catalog.at_provider
    assert at("groq/openai/gpt-oss-120b", "groq") == "groq/openai/gpt-oss-120b"
    assert engine.catalog.at_provider("gpt-4o", "openai") == "openai/gpt-4o"
    assert engine.catalog.at_provider("someone/unknown", "groq") == "someone/unknown"


def test_a_sent_on_call_to_groq_is_priced_at_groqs_rates() -> None:
    engine = _engine()
    requested = engine.catalog.at_provider("openai/gpt-oss-120b", "groq")
    info = CallInfo(engine, RouteContext(), "chat", requested, "groq", False, time.perf_counter())
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    cost, _ = _costs(info, usage)
    assert cost == cost_of(usage, "groq/openai/gpt-oss-120b", catalog=engine.catalog)
    assert cost != cost_of(usage, "deepinfra/openai/gpt-oss-120b", catalog=engine.catalog)


def test_the_relay_reads_a_slashed_name_as_the_addressed_providers() -> None:
    engine = _engine()
    body = json.dumps(
        {"model": "openai/gpt-oss-120b", "messages": [{"role": "user", "content": "Hi"}]}
    ).encode()
    relay = Relay(engine)
    assert relay.parse("openai", body, provider="groq").model == "groq/openai/gpt-oss-120b"
    assert relay.parse("openai", body, provider=None).model == "openai/gpt-oss-120b"
