"""The functions every routing decision runs make no closure cells per call.

A lambda or generator expression inside a function makes cells of the locals it
reads when the function starts, on every call, whether it runs or not (and each
read of such a local is slower). On ``Router.decide``'s path that cost was about
3% of a decision; these stay free of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from routing_middleware import classify, router, tokens
from routing_middleware.budgets import Budgets

HOT: list[Callable[..., Any]] = [
    router.Router.decide,
    router.Router._apply_rules,
    router.Router._deployment,
    router.Router._stats_now,
    router._priced,
    router._from_span,
    router._py_cost_of_units,
    Budgets.pressing,
    Budgets._remembered,
    classify.ComplexityScorer.tier_of_texts,
    classify.ComplexityScorer._tier,
    classify.request_texts,
    classify.python_texts,
    tokens.request_tokens_and_images,
    tokens.python_tokens_and_images,
    tokens.scanned_tokens,
]


@pytest.mark.parametrize("function", HOT, ids=lambda f: f.__qualname__)
def test_a_hot_function_makes_no_cells(function: Callable[..., Any]) -> None:
    assert function.__code__.co_cellvars == ()
