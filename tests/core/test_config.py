from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from routing_middleware.config import RoutingConfig, Rule, TierSpec


def _rule(**overrides: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": "r", "when": {}, "then": {"tier": 1}}
    rule.update(overrides)
    return rule


def test_defaults_are_usable() -> None:
    config = RoutingConfig()
    assert config.strategy == "cheapest"
    assert config.mode == "enforce"
    assert config.tier_level("cheap") == 1
    assert config.tier_level("premium") == 3
    assert config.tier_level(2) == 2
    assert config.tier_level("2") == 2


def test_config_is_frozen() -> None:
    config = RoutingConfig()
    with pytest.raises(ValidationError):
        config.strategy = "fastest"  # type: ignore[misc]


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError, match="stratgy"):
        RoutingConfig.model_validate({"stratgy": "cheapest"})


def test_rule_errors_name_the_rule_and_field() -> None:
    with pytest.raises(ValidationError) as info:
        RoutingConfig.model_validate(
            {"rules": [_rule(name="ok"), _rule(name="short-summaries", when={"fetaure": "x"})]}
        )
    message = str(info.value)
    assert "short-summaries" in message
    assert "fetaure" in message


def test_bad_regex_is_reported_with_rule_name() -> None:
    with pytest.raises(ValidationError, match=r"rule 'codey'.*invalid regex"):
        Rule.model_validate(_rule(name="codey", when={"regex": "(unclosed"}))


def test_rule_needs_an_action() -> None:
    with pytest.raises(ValidationError, match=r"rule 'empty'.*at least one"):
        Rule.model_validate({"name": "empty", "then": {}})


def test_unknown_tier_name_in_rule() -> None:
    with pytest.raises(ValidationError, match=r"rule 'r'.*unknown tier name 'gold'"):
        RoutingConfig.model_validate({"rules": [_rule(then={"tier": "gold"})]})


def test_custom_tier_names_are_accepted() -> None:
    config = RoutingConfig.model_validate(
        {
            "tiers": {"1": {"name": "bronze", "models": ["a/x"]}},
            "rules": [_rule(then={"tier": "bronze"})],
        }
    )
    assert config.tier_level("bronze") == 1


def test_duplicate_rule_names_rejected() -> None:
    with pytest.raises(ValidationError, match="duplicate rule name"):
        RoutingConfig.model_validate({"rules": [_rule(), _rule()]})


def test_token_range_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="min_input_tokens is above"):
        Rule.model_validate(_rule(when={"min_input_tokens": 10, "max_input_tokens": 5}))


def test_regex_and_globs_compile_once_at_validation() -> None:
    rule = Rule.model_validate(
        _rule(when={"regex": r"\bSQL\b", "keywords": ["invoice", "refund"], "model": "gpt-*"})
    )
    assert rule.pattern is not None
    assert rule.pattern is rule.pattern  # the same compiled object every time
    assert rule.pattern.search("write SQL please")
    assert rule.keyword_pattern is not None
    assert rule.keyword_pattern.search("A REFUND request")
    assert not rule.keyword_pattern.search("refunded")  # whole words only
    globs = rule.globs("model")
    assert globs is not None
    assert globs[0].match("gpt-4o")
    assert not globs[0].match("claude-3")


def test_single_strings_become_lists_and_continue_alias() -> None:
    rule = Rule.model_validate(_rule(when={"feature": "chat"}, **{"continue": True}))
    assert rule.when.feature == ("chat",)
    assert rule.continue_ is True


def test_tier_spec_is_models_or_band() -> None:
    with pytest.raises(ValidationError, match="either a list"):
        TierSpec(models=("a",), min_quality=50)
    band = TierSpec(min_quality=55, max_input_price=Decimal("1"))
    assert band.models is None


def test_classifier_thresholds_ordered() -> None:
    with pytest.raises(ValidationError, match="thresholds"):
        RoutingConfig.model_validate({"classifier": {"thresholds": [0.7, 0.2]}})


def test_budgets_validate_inside_config() -> None:
    config = RoutingConfig.model_validate(
        {"budgets": [{"name": "support", "scope": "feature", "value": "support", "limit_usd": "5"}]}
    )
    assert config.budgets[0].limit_usd == Decimal("5")
    with pytest.raises(ValidationError, match="rolling_hours"):
        RoutingConfig.model_validate(
            {"budgets": [{"name": "b", "period": "rolling", "limit_usd": "1"}]}
        )


def test_tier_names_must_name_levels_of_one_or_more() -> None:
    with pytest.raises(ValidationError, match="tier_names"):
        RoutingConfig.model_validate({"tier_names": {"cheap": 0}})
