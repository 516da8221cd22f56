"""Routing configuration: tiers, rules, classifier, strategy, mode and budgets.

Plain data validated by pydantic: frozen, unknown keys rejected, and errors inside
a rule name the rule. Load it from a dict (a Django setting, TOML, YAML)::

    RoutingConfig.model_validate({
        "rules": [
            {"name": "short-summaries",
             "when": {"feature": "summaries", "max_input_tokens": 2000},
             "then": {"tier": "cheap"}},
        ],
        "budgets": [{"name": "support", "scope": "feature", "value": "support",
                     "limit_usd": "50"}],
    })
"""

from __future__ import annotations

import fnmatch
import re
from decimal import Decimal
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from .budgets import Budget

__all__ = [
    "DEFAULT_TIER_NAMES",
    "BalancedWeights",
    "ClassifierConfig",
    "DeploymentSpec",
    "RoutingConfig",
    "Rule",
    "RuleAction",
    "RuleMatch",
    "TierSpec",
]

#: Tier names understood when the config names none.
DEFAULT_TIER_NAMES: dict[str, int] = {"cheap": 1, "balanced": 2, "premium": 3}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class TierSpec(_Frozen):
    """Which models form a tier.

    Either an explicit ordered list of model ids (``models``; earlier ones win
    ties), or a quality band (``min_quality``/``max_quality``) optionally limited by
    price per 1M tokens. With neither, the tier is the catalog models whose own
    ``tier`` field equals this tier's level.
    """

    name: str | None = None
    models: tuple[str, ...] | None = None
    min_quality: int | None = Field(default=None, ge=0, le=100)
    max_quality: int | None = Field(default=None, ge=0, le=100)
    max_input_price: Decimal | None = Field(default=None, ge=0)
    max_output_price: Decimal | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_kind(self) -> TierSpec:
        band = any(
            v is not None
            for v in (
                self.min_quality,
                self.max_quality,
                self.max_input_price,
                self.max_output_price,
            )
        )
        if self.models is not None and band:
            raise ValueError(
                "a tier is either a list of 'models' or a quality/price band, not both"
            )
        if self.models is not None and not self.models:
            raise ValueError("'models' must list at least one model id")
        return self


class RuleMatch(_Frozen):
    """Conditions of a rule; all given ones must hold (unset ones match anything).

    ``feature``/``route``/``model`` accept glob patterns; ``user_groups`` and
    ``tags`` match when the context has any of them; ``keywords`` match when the
    last user message contains any of them (case-insensitive, whole words);
    ``regex`` is searched in the last user message.
    """

    feature: tuple[str, ...] | None = None
    route: tuple[str, ...] | None = None
    user_groups: frozenset[str] | None = None
    tags: frozenset[str] | None = None
    min_input_tokens: int | None = Field(default=None, ge=0)
    max_input_tokens: int | None = Field(default=None, ge=0)
    has_tools: bool | None = None
    has_images: bool | None = None
    json_schema: bool | None = None
    regex: str | None = None
    keywords: tuple[str, ...] | None = None
    model: tuple[str, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _strings_to_lists(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("feature", "route", "user_groups", "tags", "keywords", "model"):
                if isinstance(data.get(key), str):
                    data[key] = (data[key],)
        return data

    @model_validator(mode="after")
    def _check(self) -> RuleMatch:
        lo, hi = self.min_input_tokens, self.max_input_tokens
        if lo is not None and hi is not None and lo > hi:
            raise ValueError("min_input_tokens is above max_input_tokens")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"invalid regex {self.regex!r}: {exc}") from None
        return self


class RuleAction(_Frozen):
    """What a matching rule sets. At least one field must be given."""

    tier: int | str | None = None
    model: str | None = None
    min_quality: int | None = Field(default=None, ge=0, le=100)
    max_latency_ms: float | None = Field(default=None, gt=0)
    mode: Literal["enforce", "observe"] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> RuleAction:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(
                "a rule's 'then' must set at least one of " + ", ".join(type(self).model_fields)
            )
        if isinstance(self.tier, int) and self.tier < 1:
            raise ValueError("tier must be 1 or more")
        return self


class Rule(_Frozen):
    """One routing rule: when ``when`` matches, apply ``then``.

    Rules are tried in order; the first match wins unless it says
    ``continue: true``, in which case later rules may still add fields it did not
    set (the earlier rule's fields stay).
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, hide_input_in_errors=True
    )

    name: str = Field(min_length=1)
    when: RuleMatch = Field(default_factory=RuleMatch)
    then: RuleAction
    continue_: bool = Field(default=False, alias="continue")

    _pattern: re.Pattern[str] | None = PrivateAttr(default=None)
    _keywords: re.Pattern[str] | None = PrivateAttr(default=None)
    _globs: dict[str, tuple[re.Pattern[str], ...]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _name_the_rule(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            name = data.get("name") if isinstance(data, dict) else getattr(data, "name", None)
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'rule'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ValueError(f"rule {name!r}: {problems}") from None

    def model_post_init(self, context: Any, /) -> None:
        match = self.when
        if match.regex is not None:
            self._pattern = re.compile(match.regex)
        if match.keywords:
            words = "|".join(re.escape(w) for w in match.keywords)
            self._keywords = re.compile(rf"\b(?:{words})\b", re.IGNORECASE)
        for key in ("feature", "route", "model"):
            patterns = getattr(match, key)
            if patterns is not None:
                self._globs[key] = tuple(
                    re.compile(fnmatch.translate(p), re.IGNORECASE) for p in patterns
                )

    @property
    def pattern(self) -> re.Pattern[str] | None:
        """The compiled ``when.regex`` (compiled once, at validation)."""
        return self._pattern

    @property
    def keyword_pattern(self) -> re.Pattern[str] | None:
        """``when.keywords`` compiled into one case-insensitive pattern."""
        return self._keywords

    def globs(self, key: str) -> tuple[re.Pattern[str], ...] | None:
        """Compiled glob patterns for ``feature``, ``route`` or ``model``."""
        return self._globs.get(key)


class ClassifierConfig(_Frozen):
    """The built-in complexity scorer: score below ``thresholds[0]`` is tier 1,
    below ``thresholds[1]`` tier 2, else tier 3."""

    enabled: bool = True
    thresholds: tuple[float, float] = (0.1, 0.3)

    @model_validator(mode="after")
    def _ordered(self) -> ClassifierConfig:
        lo, hi = self.thresholds
        if not 0 <= lo <= hi <= 1:
            raise ValueError("thresholds must satisfy 0 <= low <= high <= 1")
        return self


class BalancedWeights(_Frozen):
    """Weights of the ``balanced`` strategy over normalised cost, latency and quality."""

    cost: float = Field(default=0.6, ge=0)
    latency: float = Field(default=0.3, ge=0)
    quality: float = Field(default=0.1, ge=0)


class DeploymentSpec(_Frozen):
    """One deployment of a catalog model (e.g. the same model at two Azure regions)."""

    model: str
    provider: str
    name: str
    weight: float = Field(default=1.0, gt=0)


class RoutingConfig(_Frozen):
    """Everything the router needs besides the catalog.

    ``tiers`` maps a tier level (1, 2, 3, ...) to its :class:`TierSpec`; when empty
    the catalog's own ``tier`` field decides. ``tier_names`` maps names used in
    hints and rules to levels. ``default_output_tokens`` is the expected output when
    stats know nothing about a feature; ``sla_min_samples`` is how many latency
    samples a deployment needs before an SLA can exclude it.
    """

    tiers: dict[int, TierSpec] = Field(default_factory=dict)
    tier_names: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_TIER_NAMES))
    rules: tuple[Rule, ...] = ()
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    strategy: Literal["cheapest", "fastest", "balanced"] = "cheapest"
    balanced: BalancedWeights = Field(default_factory=BalancedWeights)
    load_balancing: Literal["weighted", "least_busy"] = "weighted"
    mode: Literal["enforce", "observe"] = "enforce"
    budgets: tuple[Budget, ...] = ()
    deployments: tuple[DeploymentSpec, ...] = ()
    default_output_tokens: int = Field(default=256, ge=1)
    sla_min_samples: int = Field(default=20, ge=1)
    max_fallbacks: int = Field(default=3, ge=0)
    stats_refresh_s: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> RoutingConfig:
        for level in self.tiers:
            if level < 1:
                raise ValueError(f"tiers: level {level} must be 1 or more")
        for name, level in self.tier_names.items():
            if level < 1:
                raise ValueError(f"tier_names: {name!r} is level {level}; levels are 1 or more")
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rules: duplicate rule name(s) {', '.join(map(repr, duplicates))}")
        for rule in self.rules:
            tier = rule.then.tier
            if isinstance(tier, str) and tier not in self.all_tier_names:
                raise ValueError(
                    f"rule {rule.name!r}: then.tier: unknown tier name {tier!r} "
                    f"(known: {', '.join(sorted(self.all_tier_names))})"
                )
        budget_names = [b.name for b in self.budgets]
        if len(set(budget_names)) != len(budget_names):
            raise ValueError("budgets: budget names must be unique")
        return self

    @property
    def all_tier_names(self) -> dict[str, int]:
        """Tier names from ``tier_names`` plus the ``name`` of each configured tier."""
        names = dict(self.tier_names)
        for level, spec in self.tiers.items():
            if spec.name:
                names[spec.name] = level
        return names

    def tier_level(self, tier: int | str) -> int:
        """The level of ``tier`` (a level or a name); ``ValueError`` if unknown."""
        if isinstance(tier, int):
            return tier
        if tier.isdigit():
            return int(tier)
        try:
            return self.all_tier_names[tier]
        except KeyError:
            raise ValueError(f"unknown tier {tier!r}") from None
