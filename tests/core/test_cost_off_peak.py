"""A model with off-peak prices (DeepSeek) is charged by when its call ran."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from routing_middleware.catalog import Catalog, ModelInfo, OffPeakPrice, Price
from routing_middleware.dispatch import Dispatcher
from routing_middleware.metering import MemorySink
from routing_middleware.providers.registry import provider_config
from routing_middleware.router import Decision, Deployment
from routing_middleware.schema import ChatRequest, Message
from routing_middleware.testing import FakeModel, FakeProvider

KEY = "sk-test-aaaa-0001"
D = Deployment("deepseek/deepseek-v4-flash", "deepseek", "deepseek-v4-flash")
PEAK = Price(Decimal("0.3"), Decimal("1.2"))
ALWAYS = ((0, 24),)  # every hour is off-peak
NEVER = ()


def dispatcher(windows: tuple[tuple[int, int], ...]) -> tuple[Dispatcher, MemorySink]:
    off_peak = OffPeakPrice(windows=windows, input=Decimal("0.15"), output=Decimal("0.6"))
    price = Price(PEAK.input, PEAK.output, off_peak=off_peak)
    catalog = Catalog([ModelInfo(D.model, "deepseek", "deepseek-v4-flash", price, 1_000_000)])
    fake = FakeProvider(
        [FakeModel("deepseek-v4-flash", content="An answer.", price=PEAK)], require_key=KEY
    )
    sink = MemorySink()
    d = Dispatcher(
        {"deepseek": provider_config("deepseek", api_key=KEY, base_url="https://d.fake/v1")},
        catalog=catalog,
        sink=sink,
        client=httpx.Client(transport=fake.transport()),
    )
    return d, sink


def decision() -> Decision:
    return Decision(
        primary=D,
        fallbacks=(),
        tier=1,
        estimated_cost=None,
        requested_model=D.model,
        requested_cost=None,
        mode="enforce",
        reasons=(),
    )


@pytest.mark.parametrize(("windows", "rates"), [(ALWAYS, ("0.15", "0.6")), (NEVER, ("0.3", "1.2"))])
def test_a_call_in_the_off_peak_window_is_charged_off_peak(
    windows: tuple[tuple[int, int], ...], rates: tuple[str, str]
) -> None:
    d, sink = dispatcher(windows)
    request = ChatRequest(model=D.model, messages=[Message(role="user", content="Hi?")])
    d.dispatch(request, decision())
    [record] = sink.records
    usage = record.usage
    # tokens times the rate per million, at the window's rates or the list ones
    expected = (
        usage.input_tokens * Decimal(rates[0]) + usage.output_tokens * Decimal(rates[1])
    ) / Decimal(1_000_000)
    assert usage.output_tokens > 0
    assert record.cost == expected.quantize(record.cost)


@pytest.mark.parametrize(("windows", "rates"), [(ALWAYS, ("0.15", "0.6")), (NEVER, ("0.3", "1.2"))])
def test_a_call_sent_on_unchanged_is_charged_off_peak_too(
    windows: tuple[tuple[int, int], ...], rates: tuple[str, str]
) -> None:
    import time

    from routing_middleware._intercept_meter import CallInfo, _costs
    from routing_middleware.context import RouteContext
    from routing_middleware.engine import LLMRoute
    from routing_middleware.schema import Usage

    off_peak = OffPeakPrice(windows=windows, input=Decimal("0.15"), output=Decimal("0.6"))
    price = Price(PEAK.input, PEAK.output, off_peak=off_peak)
    catalog = Catalog([ModelInfo(D.model, "deepseek", "deepseek-v4-flash", price, 1_000_000)])
    engine = LLMRoute({"offline": "always"}, catalog=catalog, sink=MemorySink(), environ={})
    info = CallInfo(engine, RouteContext(), "chat", D.model, "deepseek", False, time.perf_counter())
    cost, requested = _costs(info, Usage(input_tokens=1_000_000, output_tokens=1_000_000))
    assert cost == requested == Decimal(rates[0]) + Decimal(rates[1])  # a million of each
