"""The router: picks the cheapest model that is good enough for a request.

:meth:`Router.decide` takes a :class:`~routing_middleware.schema.ChatRequest` and a
:class:`~routing_middleware.context.RouteContext` and returns a :class:`Decision`:
the deployment to call, ordered fallbacks, the tier, the estimated cost against
the requested model's, and the reasons, each a machine code and one sentence.

How a decision is made:

1. **Tier.** A ``tier`` hint wins; then the first matching rule; then the
   classifier; then the requested model's own tier.
2. **Budgets.** A budget past a soft threshold downgrades one tier or forces the
   cheapest model; at its limit it blocks (:class:`BudgetExceeded`) or forces the
   cheapest model. In ``observe`` mode nothing blocks; the reason is recorded.
3. **Candidates.** Models of the tier that have the capabilities the request needs
   (tools, vision, JSON schema, reasoning), a context window for the estimated
   input plus the requested output, the quality floor, the allow/deny lists, a
   configured provider, an available deployment within the latency SLA (once it
   has enough samples) and, unless ``allow_upgrade``, an expected cost no higher
   than the requested model's (the requested model is a **ceiling**).
4. **Ranking.** ``cheapest`` (expected cost of this request, then p95 latency,
   then quality), ``fastest`` or ``balanced``; one deployment of the winner by
   weight or least in-flight calls.

Models without a quality score count as 0 against a quality floor. Only ``chat``
models are candidates.

A requested model the catalog does not know is routed only when hints or rules
give a tier, model or quality floor (no ceiling applies then, since its cost is
unknown); otherwise the request passes through untouched with an ``observe``
decision whose reason says so.

Per catalog ``generation`` the router precomputes candidates per tier and their
prices, and orders them lazily by a cost lower bound, so a decision looks at a
handful of models, not the whole catalog. When prices change, the next decision
sees them.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import math
import operator
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ._literals import prefilter
from ._native import native
from ._record_maker import record_maker
from .budgets import Budgets
from .catalog import Catalog, ModelInfo
from .classify import Classifier, ComplexityScorer, python_texts
from .config import RoutingConfig, Rule, TierSpec
from .context import Mode, RouteContext, current_context
from .pricing import COST_QUANTUM, estimate_cost, list_price_units
from .schema import BudgetExceeded, ChatRequest, NoRouteAvailable
from .stats import AlwaysAvailable, DeploymentStats, HealthCheck, StatsSnapshot, StatsStore
from .tokens import python_tokens_and_images, scan_messages, scanned_tokens

__all__ = ["Decision", "Deployment", "Reason", "Router"]

_log = logging.getLogger("llmroute.router")

_PER_M = Decimal("0.000001")
_BUCKETS = 64
_EMPTY_SNAPSHOT = StatsSnapshot()


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where a model is served: ``provider`` and the provider's deployment ``name``.

    ``weight`` shares traffic between deployments of one model. ``key`` names the
    deployment in stats and health checks.
    """

    model: str
    provider: str
    name: str
    weight: float = 1.0

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.name}"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a decision went the way it did: a stable ``code`` and one human sentence."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :meth:`Router.decide`.

    ``primary`` is what to call; in ``observe`` mode it is the requested model and
    ``routed`` is what enforcing would have picked (in ``enforce`` mode both are the
    same). ``estimated_cost`` is the expected cost on ``routed`` and
    ``requested_cost`` on the requested model (``None`` when unknown), for savings.
    """

    primary: Deployment
    fallbacks: tuple[Deployment, ...]
    tier: int | None
    estimated_cost: Decimal | None
    requested_model: str
    requested_cost: Decimal | None
    mode: Mode
    reasons: tuple[Reason, ...]
    routed: Deployment | None = None
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def model(self) -> str:
        """The model id of :attr:`primary`."""
        return self.primary.model

    @property
    def savings(self) -> Decimal | None:
        """Expected saving of :attr:`routed` over the requested model, when both are known."""
        if self.estimated_cost is None or self.requested_cost is None:
            return None
        return self.requested_cost - self.estimated_cost

    @property
    def reason_codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.reasons)


# ``Decision(...)`` and ``Reason(...)`` as their generated ``__init__`` make them, in
# one call instead of an ``object.__setattr__`` call per field (see ``_record_maker``).
_make_decision = record_maker(Decision)
_make_reason = record_maker(Reason)


def _expected_cost(model: ModelInfo, input_tokens: int, output_tokens: int) -> Decimal:
    price = model.price
    if price.bands:
        return estimate_cost(model, input_tokens, output_tokens)
    # estimate_cost's own arithmetic, minus its lookups: this runs twice per decision.
    cost = (input_tokens * price.input + output_tokens * price.output) * _PER_M
    return cost.quantize(COST_QUANTUM)


def _usd(amount: Decimal) -> str:
    return f"${amount:.6f}".rstrip("0").rstrip(".") if amount else "$0"


def _list_units(model: ModelInfo) -> tuple[int, int] | None:
    """``model``'s input and output prices in 1e-10 USD per token, when pricing keeps
    its rates in such whole units (see :func:`~.pricing.list_price_units`)."""
    units = list_price_units(model.price)
    return None if units is None else (units[0], units[4])


def _py_cost_of_units(total: int) -> tuple[Decimal, str]:
    """A cost of ``total`` 1e-10 USD as :func:`_expected_cost` gives it (it is exact
    at that quantum) and as :func:`_usd` writes it (rounded half to even). The Python
    path of ``_cost_of_units``."""
    if not total:
        return _ZERO_COST, "$0"
    micros = (total + 5_000) // 10_000
    if total % 20_000 == 5_000:  # half a micro-dollar over an even count: rounds down
        micros -= 1
    if micros < 1_000_000:  # (under a dollar: the usual case, in one format)
        text = f"$0.{micros:06d}".rstrip("0") if micros else "$0"
    else:
        dollars, fraction = divmod(micros, 1_000_000)
        text = f"${dollars}.{fraction:06d}".rstrip("0").rstrip(".")
    # (a product exact at the quantum: what ``scaleb(-10)`` gives, in a third of the time)
    return Decimal(total) * _QUANTUM, text


_ZERO_COST = Decimal(0).scaleb(-10)
_QUANTUM = Decimal("1E-10")
_CostWriter = native("_costs", "CostWriter")
#: :func:`_py_cost_of_units` in one C call (``_costs.c``) where the extension is built:
#: a decision on a new text prices its pick, and the requested model, with it.
_cost_of_units: Callable[[int], tuple[Decimal, str]] = (
    _py_cost_of_units
    if _CostWriter is None
    else _CostWriter(Decimal, _QUANTUM, _ZERO_COST, _py_cost_of_units)
)
#: What ``_Plan.resolved`` gives for a name not resolved yet (``None``: resolved to no
#: model).
_UNRESOLVED: Any = object()
#: The ``chosen`` reason of a selection made only to be compared, never to decide.
_UNPRICED = Reason("chosen", "")


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


@dataclass(slots=True, eq=False)
class _Cand:
    info: ModelInfo
    id: str
    provider: str
    names: frozenset[str]
    pin: float
    pout: float
    quality: int
    context_window: int
    caps: frozenset[str]
    deployments: tuple[Deployment, ...]
    cumulative: tuple[float, ...]
    order: int = 0
    #: Long-context bands as (above_tokens, input, output), ascending.
    bands: tuple[tuple[int, float, float], ...] = ()
    #: ``Deployment.key`` of each deployment (a property that formats on every read).
    keys: tuple[str, ...] = ()
    #: Input and output list prices in 1e-10 USD per token when both are whole
    #: numbers of those and no band applies, for exact costs in integers.
    units: tuple[int, int] | None = None

    def unit(self, w: float, input_tokens: int) -> float:
        """Price per 1M tokens at output share ``w``, long-context bands applied."""
        pin, pout = self.pin, self.pout
        for above, band_in, band_out in self.bands:
            if input_tokens > above:
                pin, pout = band_in, band_out
        return (1 - w) * pin + w * pout


@dataclass(slots=True)
class _Plan:
    generation: int
    by_id: dict[str, _Cand]
    tiers: dict[int, tuple[_Cand, ...]]
    ordered: frozenset[int]
    everything: tuple[_Cand, ...]
    sorted_cache: dict[tuple[int, int, frozenset[str], int], tuple[list[float], list[_Cand]]] = (
        field(default_factory=dict)
    )
    #: Requested model name as sent -> its candidate (``None``: not a known chat model).
    resolved: dict[str, _Cand | None] = field(default_factory=dict)
    #: Distinct context windows, ascending: requests whose window needs fall between
    #: the same two of them pass the same candidates.
    windows: list[int] = field(default_factory=list)
    #: Distinct long-context band starts, ascending: requests whose input tokens fall
    #: between the same two of them are priced by the same bands.
    band_starts: list[int] = field(default_factory=list)
    #: Selections that hold across a bucket of output shares (``None``: this one does
    #: not), by the selection key with token counts replaced by what they decide (see
    #: ``Router._span_of``), each with the stats view it read (``None``: it read no
    #: latency figure, so it holds whatever the stats say). Bounded.
    spans: dict[tuple[Any, ...], tuple[_Selection | None, _StatsView | None]] = field(
        default_factory=dict
    )
    #: What the searches at a bucket's ends found (``None``: nothing eligible), for the
    #: span checks of both buckets that end shares: keyed as ``spans`` but by the end's
    #: index instead of the bucket, with the stats view read as there. Bounded.
    ends: dict[tuple[Any, ...], tuple[_Selection | None, _StatsView | None]] = field(
        default_factory=dict
    )
    #: Selections that read no latency figure, by their key (see ``_StatsView``):
    #: they outlive stats snapshots. Bounded.
    selections: dict[tuple[Any, ...], _Selection] = field(default_factory=dict)
    #: Hashes of the keys of selections and spans that read no latency figure met once
    #: so far (each is kept the second time it comes). Bounded.
    once: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.windows = sorted({c.context_window for c in self.everything})
        self.band_starts = sorted({b[0] for c in self.everything for b in c.bands})

    def resolve(self, model: str, catalog: Catalog) -> _Cand | None:
        """The candidate for the requested ``model`` (id or alias), kept in
        ``resolved`` per name (``decide`` looks there first): the plan lives for one
        catalog generation, and so does the answer."""
        resolved = self.resolved
        found = self.by_id.get(model.lower())
        if found is None:
            info = catalog.find(model)
            if info is not None:
                found = self.by_id.get(info.id.lower())
        if len(resolved) >= 4096:
            resolved.clear()
        resolved[model] = found
        return found

    def by_bound(
        self, level: int, bucket: int, needs: frozenset[str], min_quality: int
    ) -> tuple[list[float], list[_Cand]]:
        """Candidates of ``level`` with the capabilities ``needs`` and at least
        ``min_quality``, sorted by their per-token cost lower bound in ``bucket``.

        Leaving out here what fails those two request-independent checks keeps a
        search from walking, say, a whole tier below a quality floor.
        """
        key = (level, bucket, needs, min_quality)
        found = self.sorted_cache.get(key)
        if found is None:
            lo, hi = bucket / _BUCKETS, (bucket + 1) / _BUCKETS
            members = self.everything if level == 0 else self.tiers.get(level, ())
            members = tuple(c for c in members if c.quality >= min_quality and needs <= c.caps)
            pairs = []
            for i, c in enumerate(members):
                # The cheapest prices the model can have, bands included, so the bound holds.
                pin = min([c.pin, *(b[1] for b in c.bands)])
                pout = min([c.pout, *(b[2] for b in c.bands)])
                bound = min((1 - lo) * pin + lo * pout, (1 - hi) * pin + hi * pout)
                pairs.append((bound, c.order, i))
            pairs.sort()
            found = ([p[0] for p in pairs], [members[p[2]] for p in pairs])
            if len(self.sorted_cache) >= 4096:  # many distinct quality floors: start over
                self.sorted_cache.clear()
            self.sorted_cache[key] = found
        return found


class _Latency:
    """One candidate's latency in one stats snapshot, for plain or for streamed calls.

    ``best`` is the lowest p95 over its deployments, whatever their sample count
    (``inf`` when none is known): cost ties break on it. ``p95s`` holds, per
    deployment, the p95 an SLA is checked against (``None`` below
    ``sla_min_samples``) and ``worst`` the highest of those (``-inf`` for none), so
    an SLA at or above ``worst`` is met by every deployment without a loop.
    """

    __slots__ = ("best", "excluded", "p95s", "within", "worst")

    def __init__(self, best: float, p95s: tuple[float | None, ...], worst: float) -> None:
        self.best = best
        self.p95s = p95s
        self.worst = worst
        #: The ``excluded_sla`` reason per (deployment index, SLA), made when first needed.
        self.excluded: dict[tuple[int, float], Reason] = {}
        #: Per SLA: the deployments that meet it and the reasons for those that do not.
        self.within: dict[float, tuple[tuple[Deployment, ...], tuple[Reason, ...]]] = {}


_UNKNOWN_LATENCY = _Latency(math.inf, (), -math.inf)


class _StatsView:
    """A stats snapshot plus the per-candidate figures decisions read from it.

    Built when the router takes a snapshot and dropped with it (or when the plan
    changes), so each candidate's latency is looked up once per snapshot instead
    of once per decision.
    """

    __slots__ = (
        "_by_stream",
        "_min_samples",
        "config",
        "once",
        "selections",
        "snapshot",
    )

    def __init__(self, snapshot: StatsSnapshot, config: RoutingConfig) -> None:
        self.snapshot = snapshot
        #: The router config the selections below were made under.
        self.config = config
        self._min_samples = config.sla_min_samples
        # Indexed by ``stream`` (False, True); keyed by candidate identity.
        self._by_stream: tuple[dict[_Cand, _Latency], dict[_Cand, _Latency]] = ({}, {})
        #: Selections made under this view and plan, by everything that decides them
        #: (see ``Router._selection_key``). Dropped with the view. Bounded.
        self.selections: dict[tuple[Any, ...], _Selection] = {}
        #: Hashes of the keys met once so far under this view (see ``_seen_twice``).
        self.once: set[int] = set()

    def same_figures(self, snapshot: StatsSnapshot) -> bool:
        """Whether ``snapshot`` holds what this view's snapshot holds, for the router:
        the same deployment figures and output sizes (in-flight counts are read live)."""
        old = self.snapshot
        return snapshot.deployments == old.deployments and (
            snapshot.output_tokens == old.output_tokens
        )

    def of(self, cand: _Cand, stream: bool) -> _Latency:
        known = self._by_stream[stream]
        found = known.get(cand)
        if found is None:
            found = known[cand] = self._compute(cand, stream)
        return found

    def _compute(self, cand: _Cand, stream: bool) -> _Latency:
        deployments = self.snapshot.deployments
        if not deployments:
            return _UNKNOWN_LATENCY
        best, worst = math.inf, -math.inf
        p95s: list[float | None] = []
        for key in cand.keys:
            st = deployments.get(key)
            p95 = _p95(st, stream, self._min_samples)
            p95s.append(p95)
            if p95 is not None and p95 > worst:  # (NaN compares false: never the worst)
                worst = p95
            if st is not None:
                value = st.ttft_p95_ms if stream else st.p95_ms
                if value == value and value < best:  # skip NaN (no samples)
                    best = value
        return _Latency(best, tuple(p95s), worst)


@dataclass(slots=True)
class _Constraints:
    needs: frozenset[str]
    window: int
    min_quality: int
    ceiling: float  # per-token cost ceiling at this request's mix; inf for none
    max_cost: float  # per-call cost cap (USD); inf for none
    allow: frozenset[str] | None
    deny: frozenset[str] | None
    providers: frozenset[str] | None
    sla_ms: float | None
    stream: bool
    input_tokens: int
    w: float  # output share of this request's tokens
    limit: float  # min(ceiling, max_cost): no candidate's unit may exceed it
    lists: bool  # whether allow, deny or providers is set
    #: Every health answer the selection was made on, in order, while it is made
    #: (``None`` when health is not checked or the selection is done).
    seen: list[tuple[Deployment, bool]] | None = None
    #: Whether the search read a latency figure (an SLA, a cost tie, a strategy that
    #: ranks on latency): then what it found holds only for this stats snapshot.
    stats_read: bool = False


@dataclass(slots=True)
class _Pick:
    cand: _Cand
    unit: float  # USD per 1M tokens at this request's input/output mix
    latency: float
    deployments: tuple[Deployment, ...]


@dataclass(slots=True, eq=False)
class _Selection:
    """What a decision's constraints select: the ranked picks, the level they came
    from, the reasons the search gave, the costs and the ``chosen`` reason.

    Remembered per stats view (hence per plan) under a key of every input the
    selection reads, so a decision whose inputs recur skips the search. With a
    health check, ``seen`` holds the answers it was made on: it is reused only while
    each deployment still answers the same, since then the search would retrace
    the same steps.
    """

    best: _Pick
    rest: list[_Pick]
    level: int
    reasons: tuple[Reason, ...]
    cons: _Constraints
    estimated: Decimal
    requested_cost: Decimal | None
    chosen: Reason
    #: Fallbacks when the best pick has one deployment (the primary is then fixed).
    fallbacks: tuple[Deployment, ...] | None = None
    seen: tuple[tuple[Deployment, bool], ...] | None = None


#: ``_Selection(...)`` with every field given, in one call (see ``_record_maker``):
#: a span's selection is made on nearly every decision on a new text.
_make_selection = record_maker(_Selection)


#: Selections remembered per stats view before the memo starts over.
_MAX_SELECTIONS = 4096
#: Spans are keyed more coarsely than selections but over more inputs (every level,
#: bucket and requested model meet): room for all of a busy app's, a few MB.
_MAX_SPANS = 16384
_UNIT_AND_ORDER = operator.itemgetter(0, 1)
#: Far above the rounding error of a per-token cost, far below any real price gap.
_SLACK = 1 + 1e-9


@dataclass(slots=True)
class _RuleOutcome:
    tier: int | None = None
    model: str | None = None
    min_quality: int | None = None
    max_latency_ms: float | None = None
    mode: Mode | None = None
    reasons: list[Reason] = field(default_factory=list)

    def copy(self) -> _RuleOutcome:
        return _RuleOutcome(
            self.tier,
            self.model,
            self.min_quality,
            self.max_latency_ms,
            self.mode,
            list(self.reasons),
        )


#: The outcome when no rule matches. Shared: outcomes returned to ``decide`` are read only.
_NO_RULES = _RuleOutcome()


class _CompiledRule:
    """A rule flattened into plain attributes, read on every decision."""

    __slots__ = (
        "alone",
        "conditional",
        "continue_",
        "features",
        "groups",
        "has_images",
        "has_tools",
        "json_schema",
        "keyword_hints",
        "keywords",
        "max_latency_ms",
        "max_tokens",
        "min_quality",
        "min_tokens",
        "mode",
        "model",
        "models",
        "name",
        "pattern",
        "pattern_hint",
        "routes",
        "tags",
        "text_bit",
        "tier",
    )

    def __init__(self, rule: Rule, level: Any) -> None:
        when, then = rule.when, rule.then
        self.name = rule.name
        self.continue_ = rule.continue_
        self.features = rule.globs("feature")
        self.routes = rule.globs("route")
        self.models = rule.globs("model")
        self.groups = when.user_groups
        self.tags = when.tags
        self.min_tokens = when.min_input_tokens
        self.max_tokens = when.max_input_tokens
        self.has_tools = when.has_tools
        self.has_images = when.has_images
        self.json_schema = when.json_schema
        self.pattern = rule.pattern
        #: Literals every match of ``pattern`` contains, tested first (see ``_literals``).
        self.pattern_hint = prefilter(self.pattern) if self.pattern is not None else None
        self.keywords = rule.keyword_pattern
        # ``keywords`` compile to one case-insensitive whole-word pattern, slow to search.
        # In ASCII text, ASCII keywords can only match where the lowered text contains
        # one of them lowered (case folding pairs no ASCII letter with another ASCII
        # character but its other case), so that substring test rules most texts out
        # first. ``None`` when a keyword is not ASCII: then the pattern always runs.
        self.keyword_hints: tuple[str, ...] | None = None
        if self.keywords is not None and when.keywords and all(k.isascii() for k in when.keywords):
            self.keyword_hints = tuple(k.lower() for k in when.keywords)
        self.tier: int | None = level(then.tier) if then.tier is not None else None
        #: This rule's bit in the router's per-text memo (``0``: reads no text).
        self.text_bit = 0
        self.model = then.model
        self.min_quality = then.min_quality
        self.max_latency_ms = then.max_latency_ms
        self.mode: Mode | None = then.mode
        #: Whether anything beyond feature/route/model (prefiltered per decision) is checked.
        self.conditional = any(
            v is not None
            for v in (
                self.groups,
                self.tags,
                self.min_tokens,
                self.max_tokens,
                self.has_tools,
                self.has_images,
                self.json_schema,
                self.pattern,
                self.keywords,
            )
        )
        #: What this rule yields when it is the first to match: the usual case, made once.
        self.alone = _RuleOutcome()
        self.apply(self.alone)

    def holds(self, ctx: RouteContext, input_tokens: int, needs: int) -> bool:
        """Whether every condition but the feature/route/model globs (prefiltered) and
        the regex and keywords (tested per text) holds."""
        if not self.conditional:
            return True
        if self.groups is not None and self.groups.isdisjoint(ctx.user_groups or ()):
            return False
        if self.tags is not None and self.tags.isdisjoint(ctx.tags or ()):
            return False
        if self.min_tokens is not None and input_tokens < self.min_tokens:
            return False
        if self.max_tokens is not None and input_tokens > self.max_tokens:
            return False
        if self.has_tools is not None and bool(needs & _TOOLS) != self.has_tools:
            return False
        if self.has_images is not None and bool(needs & _VISION) != self.has_images:
            return False
        return not (self.json_schema is not None and bool(needs & _SCHEMA) != self.json_schema)

    def apply(self, outcome: _RuleOutcome) -> None:
        """Set the fields of ``outcome`` this rule sets and no earlier rule did."""
        applied = []
        if self.tier is not None and outcome.tier is None and outcome.model is None:
            outcome.tier = self.tier
            applied.append(f"tier {self.tier}")
        if self.model is not None and outcome.model is None and outcome.tier is None:
            outcome.model = self.model
            applied.append(f"model {self.model}")
        if self.min_quality is not None and outcome.min_quality is None:
            outcome.min_quality = self.min_quality
            applied.append(f"quality ≥ {self.min_quality}")
        if self.max_latency_ms is not None and outcome.max_latency_ms is None:
            outcome.max_latency_ms = self.max_latency_ms
            applied.append(f"SLA {_seconds(self.max_latency_ms)}")
        if self.mode is not None and outcome.mode is None:
            outcome.mode = self.mode
            applied.append(f"mode {self.mode}")
        if applied:
            outcome.reasons.append(Reason("rule", f"rule '{self.name}' → {', '.join(applied)}"))


class _RuleSet:
    """The rules whose feature, route and model globs match one (feature, route, model).

    ``thresholds`` cut input token counts into bands within which every token
    condition of these rules holds alike: ``min_input_tokens`` m starts a band at m,
    ``max_input_tokens`` M at M + 1. ``by_request`` remembers which rules the other
    non-text conditions let through, per groups, tags, needs and band.
    """

    __slots__ = ("by_request", "rules", "thresholds")

    def __init__(self, rules: tuple[_CompiledRule, ...]) -> None:
        self.rules = rules
        cuts = {r.min_tokens for r in rules if r.min_tokens is not None}
        cuts |= {r.max_tokens + 1 for r in rules if r.max_tokens is not None}
        self.thresholds = tuple(sorted(cuts))
        self.by_request: dict[tuple[Any, ...], tuple[_CompiledRule, ...]] = {}


#: How long a router's stats thread waits for the next due refresh before it ends.
_REFRESH_IDLE_S = 30.0


class _Refresher:
    """Takes one router's stats snapshots off the request path, one at a time.

    ``busy`` is set (under ``lock``) from when a refresh is asked for until it is
    done, so no second one starts meanwhile. The daemon thread is started by the
    first refresh asked for and ends after ``_REFRESH_IDLE_S`` without one (or
    when its router is gone: it holds the router weakly). ``epoch`` counts the
    snapshots taken on a request thread: a background snapshot started before one
    of those is older than the view and is dropped.
    """

    __slots__ = ("busy", "closed", "epoch", "failing", "lock", "thread", "wanted")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wanted = threading.Event()
        self.thread: threading.Thread | None = None
        self.busy = False
        self.failing = False
        self.closed = False
        self.epoch = 0


def _refresh_loop(ref: weakref.ReferenceType[Router], refresher: _Refresher) -> None:
    while True:
        if not refresher.wanted.wait(_REFRESH_IDLE_S):
            with refresher.lock:
                if not refresher.wanted.is_set():
                    refresher.thread = None
                    return
        refresher.wanted.clear()
        router = ref()
        if router is None or refresher.closed:
            return
        router._refresh_stats()
        del router


_DEFAULT_CONFIG: RoutingConfig | None = None


_SCORER_CALL = ComplexityScorer.__call__


def _default_config() -> RoutingConfig:
    global _DEFAULT_CONFIG
    if _DEFAULT_CONFIG is None:
        _DEFAULT_CONFIG = RoutingConfig()
    return _DEFAULT_CONFIG


class Router:
    """Picks a deployment for each request; see the module docstring for how.

    ``providers`` limits candidates to models of those providers (default: all);
    ``health`` says which deployments may take calls (default: all); ``classifier``
    replaces the built-in complexity scorer (``None`` with the scorer disabled in
    config means no classification). ``rng`` drives weighted load balancing.
    """

    def __init__(
        self,
        catalog: Catalog,
        config: RoutingConfig | None = None,
        stats: StatsStore | None = None,
        budgets: Budgets | None = None,
        health: HealthCheck | None = None,
        providers: Iterable[str] | None = None,
        *,
        classifier: Classifier | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.catalog = catalog
        self.config = config if config is not None else _default_config()
        self.stats = stats
        if budgets is None and self.config.budgets:
            budgets = Budgets(self.config.budgets)
        self.budgets = budgets
        self.health: HealthCheck = health if health is not None else AlwaysAvailable()
        self._check_health = not isinstance(self.health, AlwaysAvailable)
        self.providers = frozenset(p.lower() for p in providers) if providers is not None else None
        if classifier is None and self.config.classifier.enabled:
            classifier = ComplexityScorer(self.config.classifier.thresholds)
        self.classifier = classifier
        self._rng = rng or random.Random()
        self._plan: _Plan | None = None
        self._view = _StatsView(_EMPTY_SNAPSHOT, self.config)
        #: When the last snapshot was asked for (``-inf``: the next decision takes one).
        self._snapshot_at = -math.inf
        self._refresher = _Refresher()
        self._tier_names = {k.lower(): v for k, v in self.config.all_tier_names.items()}
        self._rules = tuple(_CompiledRule(rule, self._level) for rule in self.config.rules)
        bit = 1
        for compiled in self._rules:
            if compiled.pattern is not None or compiled.keywords is not None:
                compiled.text_bit = bit
                bit <<= 1
        #: Whether a rule reads the last user text (see ``decide``).
        self._text_rules = bit > 1
        #: Per last user text: (rules whose text test ran, those that matched), as bits.
        self._text_memo: dict[str, tuple[int, int]] = {}
        self._rule_cache: dict[tuple[str | None, str | None, str], _RuleSet] = {}
        self._levels: tuple[int, ...] = ()
        self._level_orders: dict[int, list[int]] = {}

    # ------------------------------------------------------------------ planning

    def _new_plan(self) -> _Plan:
        """A plan for the catalog as it is now, swapped in (``decide`` asks for one
        when it finds none, or one of another catalog generation)."""
        plan = self._build_plan(self.catalog.generation)
        self._plan = plan
        # The view caches figures per candidate object: start it over for the new ones.
        self._view = _StatsView(self._view.snapshot, self.config)
        return plan

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking stats snapshots in the background, waiting up to ``timeout``
        seconds for one in flight, so none reaches the stats store after its owner
        closes it. Decisions made afterwards keep the last figures."""
        refresher = self._refresher
        with refresher.lock:
            refresher.closed = True
            thread = refresher.thread
        refresher.wanted.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def refresh(self) -> None:
        """Drop precomputed state; the next decision recomputes it (and takes a stats
        snapshot itself)."""
        self._plan = None
        self._snapshot_at = -math.inf

    def _build_plan(self, generation: int) -> _Plan:
        extra: dict[str, list[Deployment]] = {}
        for dep in self.config.deployments:
            extra.setdefault(dep.model.lower(), []).append(
                Deployment(dep.model, dep.provider, dep.name, dep.weight)
            )
        by_id: dict[str, _Cand] = {}
        for info in self.catalog.models:
            if info.mode != "chat":
                continue
            deployments = tuple(
                Deployment(info.id, d.provider, d.name, d.weight)
                for d in extra.get(info.id.lower(), ())
                if self.providers is None or d.provider.lower() in self.providers
            )
            if not deployments:
                if self.providers is not None and info.provider.lower() not in self.providers:
                    continue
                deployments = (Deployment(info.id, info.provider, info.name),)
            total, cumulative = 0.0, []
            for d in deployments:
                total += d.weight
                cumulative.append(total)
            by_id[info.id.lower()] = _Cand(
                info=info,
                id=info.id,
                provider=info.provider.lower(),
                names=frozenset(n.lower() for n in (info.id, info.name, *info.aliases)),
                pin=float(info.price.input),
                pout=float(info.price.output),
                quality=info.quality if info.quality is not None else 0,
                context_window=info.context_window,
                caps=info.capabilities,
                deployments=deployments,
                cumulative=tuple(cumulative),
                bands=tuple(
                    (b.above_tokens, float(b.input), float(b.output))
                    for b in sorted(info.price.bands, key=lambda b: b.above_tokens)
                ),
                keys=tuple(d.key for d in deployments),
                units=_list_units(info),
            )
        everything = tuple(by_id.values())
        tiers: dict[int, tuple[_Cand, ...]] = {}
        levels = set(self.config.tiers) | {c.info.tier for c in everything}
        ordered = set()
        for level in sorted(levels):
            spec = self.config.tiers.get(level)
            if spec is None:
                tiers[level] = tuple(c for c in everything if c.info.tier == level)
            else:
                tiers[level] = self._tier_members(spec, everything, by_id)
                if spec.models is not None:
                    ordered.add(level)
        self._levels = tuple(sorted(level for level, members in tiers.items() if members))
        self._level_orders = {}
        return _Plan(generation, by_id, tiers, frozenset(ordered), everything)

    @staticmethod
    def _tier_members(
        spec: TierSpec, everything: tuple[_Cand, ...], by_id: dict[str, _Cand]
    ) -> tuple[_Cand, ...]:
        if spec.models is not None:
            found = []
            for position, name in enumerate(spec.models):
                cand = by_id.get(name.lower()) or next(
                    (c for c in everything if name.lower() in c.names), None
                )
                if cand is not None:
                    # Copy so the list position can break ties inside this tier only.
                    found.append(_copy(cand, position))
            return tuple(found)
        out = []
        for c in everything:
            q = c.info.quality
            if spec.min_quality is not None and (q is None or q < spec.min_quality):
                continue
            if spec.max_quality is not None and (q is None or q > spec.max_quality):
                continue
            if spec.max_input_price is not None and c.info.price.input > spec.max_input_price:
                continue
            if spec.max_output_price is not None and c.info.price.output > spec.max_output_price:
                continue
            out.append(c)
        return tuple(out)

    def _stats_now(self) -> _StatsView:
        """The stats view for a decision.

        With ``stats_refresh_s`` 0 every decision takes a snapshot. Otherwise the
        first decision (and the first after :meth:`refresh`) takes one; later, once
        the view is ``stats_refresh_s`` old, decisions keep using it while one
        snapshot is taken on a background thread and swapped in when done.
        """
        if self._view.config is not self.config:  # a config swapped in: start over
            self._view = _StatsView(self._view.snapshot, self.config)
            if self._plan is not None:
                self._plan.spans.clear()
                self._plan.ends.clear()
                self._plan.selections.clear()
        stats = self.stats
        if stats is None:
            return self._view
        now = time.monotonic()
        period = self.config.stats_refresh_s
        if now - self._snapshot_at >= period:
            if period <= 0:
                try:
                    snapshot = stats.snapshot()
                except Exception as exc:  # (a store outage keeps the figures there are)
                    with self._refresher.lock:
                        self._snapshot_failed(stats, exc)
                else:
                    if self._refresher.failing:
                        with self._refresher.lock:
                            self._refresher.failing = False
                    self._swap_in(snapshot)
                self._snapshot_at = now
            elif self._snapshot_at == -math.inf:
                self._first_snapshot(stats, now)
            else:
                self._ask_refresh(now, period)
        return self._view

    def _swap_in(self, snapshot: StatsSnapshot) -> None:
        # Unchanged figures keep the view, and with it what was derived from them.
        view = self._view
        if not view.same_figures(snapshot):
            # Made under the view's config, not the router's: a config swapped in
            # meanwhile is still seen (and acted on) by ``_stats_now``.
            self._view = _StatsView(snapshot, view.config)

    def _first_snapshot(self, stats: StatsStore, now: float) -> None:
        refresher = self._refresher
        with refresher.lock:  # threads arriving meanwhile wait for this one
            if self._snapshot_at != -math.inf:
                return
            refresher.epoch += 1
            try:
                snapshot = stats.snapshot()
            except Exception as exc:
                self._snapshot_failed(stats, exc)
            else:
                refresher.failing = False
                self._swap_in(snapshot)
            self._snapshot_at = now

    @property
    def awaits_first_snapshot(self) -> bool:
        """Whether the next decision would take the first stats snapshot itself (see
        :meth:`aprepare`)."""
        return self._snapshot_at == -math.inf and self.stats is not None

    async def aprepare(self) -> None:
        """Take the first stats snapshot through the store's async client, when the
        store has one (``asnapshot``) and the next decision would take it itself.

        Async callers await this before :meth:`decide` so that first snapshot does not
        block the event loop; later ones are taken on the refresh thread anyway.
        """
        stats = self.stats
        if stats is None or self._snapshot_at != -math.inf or self.config.stats_refresh_s <= 0:
            return
        asnapshot = getattr(stats, "asnapshot", None)
        if asnapshot is None:
            return
        refresher = self._refresher
        with refresher.lock:
            epoch = refresher.epoch
        try:
            snapshot = await asnapshot()
        except Exception as exc:
            with refresher.lock:
                self._snapshot_failed(stats, exc)
            return
        with refresher.lock:
            if self._snapshot_at != -math.inf or refresher.epoch != epoch:
                return  # a decision took one meanwhile
            refresher.epoch += 1
            refresher.failing = False
            self._swap_in(snapshot)
            self._snapshot_at = time.monotonic()

    def _ask_refresh(self, now: float, period: float) -> None:
        refresher = self._refresher
        with refresher.lock:
            if refresher.busy or refresher.closed or now - self._snapshot_at < period:
                return
            self._snapshot_at = now
            refresher.busy = True
            refresher.wanted.set()
            if refresher.thread is None:
                refresher.thread = threading.Thread(
                    target=_refresh_loop,
                    args=(weakref.ref(self), refresher),
                    name="llmroute-stats-refresh",
                    daemon=True,
                )
                refresher.thread.start()

    def _refresh_stats(self) -> None:
        """Take a snapshot and swap it in (on the refresh thread)."""
        refresher = self._refresher
        stats = self.stats
        with refresher.lock:
            epoch = refresher.epoch
        try:
            snapshot = stats.snapshot() if stats is not None else None
        except Exception as exc:
            with refresher.lock:
                refresher.busy = False
                self._snapshot_failed(stats, exc)
            return
        view = self._view
        fresh = None
        if snapshot is not None and not view.same_figures(snapshot):
            fresh = _StatsView(snapshot, view.config)  # (see ``_swap_in``)
        with refresher.lock:
            refresher.busy = False
            refresher.failing = False
            if fresh is not None and refresher.epoch == epoch:
                self._view = fresh

    def _snapshot_failed(self, stats: object, exc: Exception) -> None:
        # Called under the refresher's lock. Warn once per outage, naming only the
        # types: an error's text may hold a store's url, password included.
        if not self._refresher.failing:
            self._refresher.failing = True
            _log.warning(
                "stats snapshot from %s failed (%s); decisions keep the figures they have",
                type(stats).__name__,
                type(exc).__name__,
            )

    # ------------------------------------------------------------------ rules

    def _new_rule_set(self, ctx: RouteContext, model: str) -> _RuleSet:
        """The rules whose globs match this feature, route and model, kept for them
        (``_apply_rules`` looks in ``_rule_cache`` first)."""
        found = _RuleSet(
            tuple(
                r
                for r in self._rules
                if _glob_ok(r.features, ctx.feature)
                and _glob_ok(r.routes, ctx.route)
                and _glob_ok(r.models, model)
            )
        )
        if len(self._rule_cache) > 4096:
            self._rule_cache.clear()
        self._rule_cache[(ctx.feature, ctx.route, model)] = found
        return found

    def _apply_rules(
        self,
        request: ChatRequest,
        ctx: RouteContext,
        input_tokens: int,
        needs: int,
        texts: tuple[str, str, int] | None = None,
    ) -> _RuleOutcome:
        """The outcome of the rules for this request, whose :func:`request_texts` are
        ``texts`` when read already; read only (it may be shared)."""
        rule_set = self._rule_cache.get((ctx.feature, ctx.route, request.model))
        if rule_set is None:
            rule_set = self._new_rule_set(ctx, request.model)
        cuts = rule_set.thresholds
        band = bisect.bisect_right(cuts, input_tokens) if cuts else 0
        # The rules whose every condition but the text ones holds, per everything
        # those conditions read (token counts by band: see ``_RuleSet``).
        key = (ctx.user_groups, ctx.tags, needs, band)
        remember = True
        try:
            candidates = rule_set.by_request.get(key)
        except TypeError:  # unhashable groups or tags: worked out, not remembered
            remember = False
            candidates = None
        if candidates is None:
            candidates = _holding(rule_set.rules, ctx, input_tokens, needs)
            if remember:
                if len(rule_set.by_request) >= 1024:
                    rule_set.by_request.clear()
                rule_set.by_request[key] = candidates
        outcome: _RuleOutcome | None = None
        text: str | None = None
        tested = matched = known = 0
        for rule in candidates:
            bit = rule.text_bit
            if bit:
                if text is None:
                    text = request.last_user_text if texts is None else texts[0]
                    known, matched = self._text_memo.get(text, (0, 0))
                    tested = known
                if not tested & bit:
                    tested |= bit
                    if _text_matches(rule, text):
                        matched |= bit
                if not matched & bit:
                    continue
            if outcome is None:
                if not rule.continue_:
                    outcome = rule.alone
                    break
                outcome = rule.alone.copy()
            else:
                rule.apply(outcome)
            if not rule.continue_:
                break
        if tested != known and text is not None and len(text) <= _MAX_MEMO_TEXT:
            memo = self._text_memo
            if len(memo) >= _MAX_MEMO_TEXTS:
                memo.clear()
            # One tuple, replaced whole: a reader never sees half of it.
            memo[text] = (tested, matched)
        return _NO_RULES if outcome is None else outcome

    def _level(self, tier: int | str) -> int:
        if isinstance(tier, int):
            return tier
        found = self._tier_names.get(tier.lower())
        if found is None:
            if tier.isdigit():
                return int(tier)
            raise ValueError(f"unknown tier {tier!r}")
        return found

    # ------------------------------------------------------------------ decide

    def decide(self, request: ChatRequest, context: RouteContext | None = None) -> Decision:
        """Pick a deployment for ``request`` under ``context`` (default: the current one).

        Raises :class:`BudgetExceeded` when a blocking budget is spent (``enforce``
        mode only) and :class:`NoRouteAvailable` when no model satisfies the hard
        constraints.
        """
        ctx = current_context() if context is None else context
        plan = self._plan
        if plan is None or plan.generation != self.catalog.generation:
            plan = self._new_plan()
        config = self.config
        reasons: list[Reason] = []
        requested = plan.resolved.get(request.model, _UNRESOLVED)
        if requested is _UNRESOLVED:  # (a name not met before under this plan)
            requested = plan.resolve(request.model, self.catalog)
        messages = request.messages
        scanned = scan_messages(messages) if scan_messages is not None else None
        texts: tuple[str, str, int] | None
        if scanned is not None:  # (plain-text messages, read in one native pass)
            input_tokens = scanned_tokens(scanned[0], len(messages), request.tools)
            images = False
            texts = (scanned[1], scanned[2], scanned[3])
        else:
            input_tokens, images = python_tokens_and_images(request)
            # Read once for the text rules and the built-in scorer when both may read
            # them (a tier hint leaves the scorer out).
            texts = python_texts(request) if self._text_rules and ctx.tier is None else None
        needs = _needs(request, images)
        rules = (
            self._apply_rules(request, ctx, input_tokens, needs, texts)
            if self._rules
            else _NO_RULES
        )
        reasons.extend(rules.reasons)
        mode: Mode = ctx.mode or rules.mode or config.mode

        # Tier
        tier: int | None = None
        if ctx.tier is not None:
            tier = self._level(ctx.tier)
            reasons.append(_shared_reason("hint_tier", "hint → tier {}", tier))
        elif rules.tier is not None:
            tier = rules.tier
        min_quality = ctx.min_quality or 0
        if rules.min_quality is not None and rules.min_quality > min_quality:
            min_quality = rules.min_quality  # (``max()`` itself: argument parsing per call)
        routable = requested is not None or tier is not None or rules.model is not None
        routable = routable or min_quality > 0
        if not routable:
            return self._passthrough(request, input_tokens, reasons)
        classifier = self.classifier
        if tier is None and rules.model is None and classifier is not None:
            # The built-in scorer (its ``__call__`` not overridden) reads the texts read.
            if (
                isinstance(classifier, ComplexityScorer)
                and type(classifier).__call__ is _SCORER_CALL
            ):
                if texts is None:
                    texts = python_texts(request)  # (the native scan gave none)
                tools = request.tools
                text, system, turns = texts  # (positional: a starred call takes a slower path)
                tier = classifier.tier_of_texts(text, system, turns, len(tools) if tools else 0)
            else:
                tier = classifier(request)
            if tier is not None:
                reasons.append(_shared_reason("classifier", "classifier → tier {}", tier))
        if tier is None:
            if requested is not None:
                tier = requested.info.tier
                reasons.append(Reason("requested_tier", f"{requested.id} is tier {tier}"))
            else:
                tier = 2
                reasons.append(Reason("default_tier", "no tier given → tier 2"))

        # Budgets
        cheapest = downgraded = False
        budgets = self.budgets
        if budgets is not None and budgets.budgets:  # (what ``bool(budgets)`` says)
            for status in budgets.pressing(ctx):
                action = status.action
                if action is None:
                    continue
                pct = f"{status.ratio:.0%}"
                name = status.budget.name
                if action == "block":
                    if mode == "enforce":
                        raise BudgetExceeded(
                            f"budget '{name}' is spent ({pct} of ${status.budget.limit_usd})",
                            budget=name,
                        )
                    reasons.append(
                        Reason("budget_block", f"budget '{name}' at {pct} → would block")
                    )
                elif action == "cheapest":
                    cheapest = True
                    reasons.append(
                        Reason("budget_cheapest", f"budget '{name}' at {pct} → cheapest")
                    )
                elif tier > 1 and not cheapest and not downgraded:
                    # One tier down however many budgets ask: each is past a soft limit,
                    # and stacking them would silently turn "downgrade" into "cheapest".
                    reasons.append(
                        Reason(
                            "budget_downgrade",
                            f"budget '{name}' at {pct} → downgraded from tier {tier}",
                        )
                    )
                    tier -= 1
                    downgraded = True

        # Constraints
        view = self._stats_now()
        expected_out = view.snapshot.output_tokens.get(ctx.feature or "")
        output_tokens = int(expected_out) if expected_out else config.default_output_tokens
        max_tokens = request.max_tokens
        if max_tokens is not None and max_tokens < output_tokens:
            output_tokens = max_tokens
        lists = (
            ctx.allow_models is not None
            or ctx.deny_models is not None
            or ctx.allow_providers is not None
        )
        sla = ctx.max_latency_ms  # (the lower of the hint's and the rules' SLAs)
        if rules.max_latency_ms is not None and (sla is None or rules.max_latency_ms < sla):
            sla = rules.max_latency_ms

        # Selection: remembered under every input it reads (the plan and the stats
        # figures through the view that holds the memo). Only an int tier is a key:
        # ``True == 1``, yet the reasons would spell them differently.
        key: tuple[Any, ...] | None = None
        digest = 0
        selection: _Selection | None = None
        if type(tier) is int:
            key = (
                tier,
                cheapest,
                rules.model,
                requested,
                needs,
                min_quality,
                input_tokens,
                output_tokens,
                max_tokens,
                ctx.allow_upgrade,
                ctx.max_cost_per_call,
                (ctx.allow_models, ctx.deny_models, ctx.allow_providers) if lists else None,
                sla,
                request.stream,
            )
            try:
                digest = hash(key)
            except TypeError:  # an unhashable value in the context: not remembered
                key = None
            else:
                # A selection is kept only once its key's hash is noted (``_seen_twice``),
                # so a key never noted has none to find: new inputs skip both lookups.
                # (When ``once`` starts over, a kept selection is missed once more.)
                if digest in plan.once or digest in view.once:
                    selection = view.selections.get(key) or plan.selections.get(key)
            if selection is not None and selection.seen is not None:
                health = self.health
                for deployment, available in selection.seen:
                    if bool(health.is_available(deployment)) is not available:
                        selection = None
                        break
        fresh = selection is None  # (not remembered under its exact key)
        if fresh:
            window = input_tokens + (max_tokens or output_tokens)
            total = input_tokens + output_tokens
            w = output_tokens / total if total else 0.0
            # Selections also hold across a bucket of output shares when no costs
            # cross inside it (see ``_span_of``): what the exact key misses, such as
            # requests of never-repeating lengths, this finds, but for its costs.
            span_key: tuple[Any, ...] | None = None
            entry: tuple[_Selection | None, _StatsView | None] | None = None
            if (
                key is not None
                and not self._check_health
                and ctx.max_cost_per_call is None
                and config.strategy != "balanced"  # (its scores are not linear in the share)
            ):
                bucket = int(w * _BUCKETS)  # (``_bucket_of``, inline: every decision)
                if bucket == _BUCKETS:
                    bucket -= 1
                # The key's parts but its token counts and ``max_tokens`` (6 to 8), for
                # which the context window's bucket, the price band and the output
                # share's bucket stand (by index: slicing and unpacking cost double).
                span_key = (
                    key[0],
                    key[1],
                    key[2],
                    key[3],
                    key[4],
                    key[5],
                    bisect.bisect_left(plan.windows, window),
                    bisect.bisect_left(plan.band_starts, input_tokens) if plan.band_starts else 0,
                    bucket,
                    key[9],
                    key[10],
                    key[11],
                    key[12],
                    key[13],
                )
                entry = plan.spans.get(span_key)
                if entry is not None and entry[1] is not None and entry[1] is not view:
                    entry = None  # made on another stats snapshot, and read it
                span = entry[0] if entry is not None else None
                if span is not None:
                    selection = _from_span(span, requested, input_tokens, output_tokens)
        if selection is None:
            cons = _Constraints(  # (positional: keyword arguments cost a measurable share)
                _NEEDS[needs],  # needs
                window,
                min_quality,
                math.inf,  # ceiling, below
                math.inf,  # max_cost, below
                _lower(ctx.allow_models) if lists else None,  # allow
                _lower(ctx.deny_models) if lists else None,  # deny
                _lower(ctx.allow_providers) if lists else None,  # providers
                sla,  # sla_ms
                request.stream,
                input_tokens,
                w,
                math.inf,  # limit, below
                lists,
                [] if self._check_health else None,  # seen
            )
            if requested is not None and not ctx.allow_upgrade:
                cons.ceiling = requested.unit(w, input_tokens)
            if ctx.max_cost_per_call is not None and total:
                cons.max_cost = float(ctx.max_cost_per_call) * 1_000_000 / total
            cons.limit = cons.max_cost if cons.max_cost < cons.ceiling else cons.ceiling
            # The second time a bucket comes (or the first, when both its ends are
            # searched already), its span is checked; when it holds, it answers this
            # request too, and no search runs at this request's own share.
            if (
                span_key is not None
                and entry is None
                and (
                    _ends_kept(plan, view, span_key)
                    or _seen_twice(view.once if sla is not None else plan.once, hash(span_key))
                )
            ):
                spans = plan.spans
                if len(spans) >= _MAX_SPANS:
                    spans.clear()
                # (a partial, not a lambda: a closure would make cells of decide's
                # locals on every call, used or not)
                search = functools.partial(
                    self._end_search, plan, view, span_key, tier, cheapest, rules.model, requested
                )
                span, read = self._span_of(search, cons, requested)
                spans[span_key] = (span, view if read else None)
                if span is not None:
                    selection = _from_span(span, requested, input_tokens, output_tokens)
            if selection is None:
                selection, found = self._select(
                    plan, view, cons, tier, cheapest, rules.model, requested, output_tokens
                )
            if selection is None:
                reasons.extend(found)
                if mode == "observe":
                    reasons.append(
                        Reason("no_route", "no eligible model; observe keeps the request")
                    )
                    return self._passthrough(request, input_tokens, reasons, observed=True)
                raise NoRouteAvailable(
                    f"no model satisfies the constraints for {request.model!r}: "
                    + "; ".join(r.message for r in reasons[-5:]),
                    model=request.model,
                )
        # Kept the second time its key comes; one that read no latency figure holds
        # whatever the stats say next, so it is kept with the plan, not the view.
        if fresh and key is not None and selection.cons.seen is None:
            stats_free = not selection.cons.stats_read and selection.seen is None
            if _seen_twice(plan.once if stats_free else view.once, digest):
                selections = plan.selections if stats_free else view.selections
                if len(selections) >= _MAX_SELECTIONS:
                    selections.clear()
                selections[key] = selection

        best = selection.best
        primary = self._deployment(best)
        fallbacks = selection.fallbacks
        if fallbacks is None:
            fallbacks = self._fallbacks(
                plan, primary, best, selection.rest, selection.level, selection.cons, view
            )
        reasons.extend(selection.reasons)
        reasons.append(selection.chosen)
        routed = primary
        if mode == "observe":
            keep = requested.deployments[0] if requested else _unknown_deployment(request.model)
            reasons.append(Reason("observe", f"observe mode: keeping {request.model}"))
            primary, fallbacks = keep, ()
        return _make_decision(
            primary,
            fallbacks,
            selection.level,
            selection.estimated,
            request.model,
            selection.requested_cost,
            mode,
            tuple(reasons),
            routed,
            input_tokens,
            output_tokens,
        )

    def _select(
        self,
        plan: _Plan,
        view: _StatsView,
        cons: _Constraints,
        tier: int,
        cheapest: bool,
        pin: str | None,
        requested: _Cand | None,
        output_tokens: int,
        priced: bool = True,
    ) -> tuple[_Selection | None, list[Reason]]:
        """The ranked picks for ``cons`` at ``tier`` (or the ``cheapest`` of all, or the
        model a rule ``pin`` names), with the reasons the search gave; ``None`` and
        those reasons when nothing is eligible.

        Reads only its arguments, the plan, the view and the health check, so its
        result can be remembered (see ``decide``). Without ``priced`` the selection
        has no costs and no ``chosen`` reason: it is only compared (see ``_span_of``).
        """
        reasons: list[Reason] = []
        want = self.config.max_fallbacks + 1
        picks: list[_Pick] = []
        chosen_level = tier
        if pin is not None:
            pinned = plan.by_id.get(pin.lower()) or _by_name(plan, pin)
            pick = self._check(pinned, cons, view, reasons) if pinned else None
            if pick is not None:
                picks.append(pick)
                reasons.append(Reason("pinned", f"rule pins {pinned.id}"))  # type: ignore[union-attr]
                chosen_level = pinned.info.tier  # type: ignore[union-attr]
            else:
                reasons.append(Reason("pin_failed", f"pinned model {pin} not eligible"))
        if not picks:
            level_order = [0] if cheapest else self._level_order(tier)
            for level in level_order:
                picks = self._rank(plan, level, cons, view, want, reasons)
                if picks:
                    if level != tier and not cheapest:
                        widened = "no eligible model in tier {} → tier {}"
                        reasons.append(_shared_reason("tier_widened", widened, tier, level))
                    chosen_level = level if level else picks[0].cand.info.tier
                    break
        if not picks:
            return None, reasons
        best = picks[0]
        if priced:
            selection = _priced(
                best,
                picks[1:],
                chosen_level,
                tuple(reasons),
                cons,
                requested,
                cons.input_tokens,
                output_tokens,
            )
        else:
            selection = _Selection(
                best, picks[1:], chosen_level, tuple(reasons), cons, _ZERO_COST, None, _UNPRICED
            )
        if len(best.deployments) == 1:  # the primary is that one: so are the fallbacks
            selection.fallbacks = self._fallbacks(
                plan, best.deployments[0], best, selection.rest, chosen_level, cons, view
            )
        seen = cons.seen
        if seen is not None:
            answers: dict[Deployment, bool] = {}
            for deployment, available in seen:
                if answers.setdefault(deployment, available) is not available:
                    return selection, reasons  # health changed meanwhile: not remembered
            selection.seen = tuple(answers.items())
            cons.seen = None
        return selection, reasons

    def _end_search(
        self,
        plan: _Plan,
        view: _StatsView,
        span_key: tuple[Any, ...],
        tier: int,
        cheapest: bool,
        pin: str | None,
        requested: _Cand | None,
        end: _Constraints,
    ) -> _Selection | None:
        """What a search finds at a bucket's end (``end.w``), unpriced: the same for the
        span checks of the buckets on either side, so it is kept for the other one."""
        ends = plan.ends
        key = (*span_key[:8], round(end.w * _BUCKETS), *span_key[9:])
        kept = ends.get(key)
        if kept is not None and (kept[1] is None or kept[1] is view):
            end.stats_read = kept[1] is not None
            return kept[0]
        # (``output_tokens`` only prices, and this selection is compared, not priced)
        found = self._select(plan, view, end, tier, cheapest, pin, requested, 0, False)[0]
        if len(ends) >= _MAX_SPANS:
            ends.clear()
        ends[key] = (found, view if end.stats_read else None)
        return found

    def _span_of(
        self,
        search: Callable[[_Constraints], _Selection | None],
        cons: _Constraints,
        requested: _Cand | None,
    ) -> tuple[_Selection | None, bool]:
        """What the search finds (unpriced) for every output share in the bucket of
        ``cons.w`` (the rest of ``cons`` unchanged) when that is one and the same, else
        ``None``; and whether that answer read a latency figure (then it holds for
        this stats snapshot only).

        Every cost a search compares (a candidate's, the requested model's ceiling) is
        linear in the output share, and every other check ignores it. So when the
        searches at both ends of the bucket give the same picks, order, level,
        reasons and fallbacks, no candidate's cost crosses another's inside it, and
        the search gives them for any share in between too.
        """
        bucket = _bucket_of(cons.w)
        found: _Selection | None = None
        read = False
        for w in (bucket / _BUCKETS, (bucket + 1) / _BUCKETS):
            ceiling = cons.ceiling
            if requested is not None and ceiling != math.inf:
                ceiling = requested.unit(w, cons.input_tokens)
            end = _at_share(cons, w, ceiling)
            other = search(end)
            read = read or end.stats_read
            if other is None or other.fallbacks is None or not _clear_order(other):
                return None, read
            if found is None:
                found = other
            elif not _same_outcome(found, other):
                return None, read
        return found, read

    def _passthrough(
        self,
        request: ChatRequest,
        input_tokens: int,
        reasons: list[Reason],
        *,
        observed: bool = False,
    ) -> Decision:
        if not observed:
            reasons.append(
                Reason(
                    "unknown_model",
                    f"{request.model} is not in the catalog and no hint or rule routes it;"
                    " passed through",
                )
            )
        return Decision(
            primary=_unknown_deployment(request.model),
            fallbacks=(),
            tier=None,
            estimated_cost=None,
            requested_model=request.model,
            requested_cost=None,
            mode="observe",
            reasons=tuple(reasons),
            routed=None,
            input_tokens=input_tokens,
        )

    def _level_order(self, tier: int) -> list[int]:
        found = self._level_orders.get(tier)
        if found is None:
            found = self._level_orders[tier] = self._compute_level_order(tier)
        return found

    def _compute_level_order(self, tier: int) -> list[int]:
        levels = self._levels
        if tier in levels:
            start = tier
        else:
            # Snap to the nearest configured level, preferring the higher one.
            above = [lv for lv in levels if lv > tier]
            start = above[0] if above else levels[-1] if levels else tier
        up = [lv for lv in levels if lv > start]
        down = [lv for lv in reversed(levels) if lv < start]
        return [start, *up, *down]

    # ------------------------------------------------------------------ candidates

    def _deployments_ok(
        self, cand: _Cand, cons: _Constraints, view: _StatsView, reasons: list[Reason] | None
    ) -> tuple[Deployment, ...]:
        sla = cons.sla_ms
        latency = None
        if sla is not None:
            cons.stats_read = True
            latency = view.of(cand, cons.stream)
            if latency.worst <= sla:
                latency = None  # every deployment meets the SLA (or none is known yet)
        if not self._check_health and latency is None:
            return cand.deployments
        out = []
        seen = cons.seen
        for i, d in enumerate(cand.deployments):
            if self._check_health:
                available = bool(self.health.is_available(d))
                if seen is not None:
                    seen.append((d, available))
                if not available:
                    if reasons is not None:
                        reasons.append(
                            Reason("excluded_unavailable", f"{d.key} excluded: unavailable")
                        )
                    continue
            if latency is not None:
                p95 = latency.p95s[i]
                if p95 is not None and p95 > sla:  # type: ignore[operator]
                    if reasons is not None:
                        reasons.append(_sla_reason(cand, cons, latency, i))
                    continue
            out.append(d)
        return tuple(out)

    def _check(
        self,
        cand: _Cand,
        cons: _Constraints,
        view: _StatsView,
        reasons: list[Reason] | None,
        latency: bool = True,
    ) -> _Pick | None:
        """``cand`` as a pick if it meets every hard constraint, else ``None``.

        With ``latency=False`` the pick's latency is left unknown (``inf``) for the
        caller to look up only where it matters.
        """
        if cand.context_window < cons.window or cand.quality < cons.min_quality:
            return None
        if cons.needs and not cons.needs <= cand.caps:
            return None
        if cons.lists and not _listed(cand, cons):
            return None
        w = cons.w
        unit = cand.unit(w, cons.input_tokens) if cand.bands else (1 - w) * cand.pin + w * cand.pout
        if unit > cons.limit:
            return None
        if cons.sla_ms is None and not self._check_health:
            deployments = cand.deployments
        else:
            deployments = self._deployments_ok(cand, cons, view, reasons)
            if not deployments:
                return None
        pick = _Pick(cand, unit, math.inf, deployments)
        if latency:
            cons.stats_read = True
            pick.latency = _latency_of(pick, view, cons.stream)
        return pick

    def _rank(
        self,
        plan: _Plan,
        level: int,
        cons: _Constraints,
        view: _StatsView,
        want: int,
        reasons: list[Reason],
    ) -> list[_Pick]:
        strategy = self.config.strategy
        if level in plan.ordered:
            picks = []
            for cand in plan.tiers.get(level, ()):
                pick = self._check(cand, cons, view, reasons)
                if pick is not None:
                    picks.append(pick)
                    if len(picks) >= want:
                        break
            return picks
        if strategy == "cheapest":
            return self._cheapest(plan, level, cons, view, want, reasons)
        members = plan.everything if level == 0 else plan.tiers.get(level, ())
        picks = [p for c in members if (p := self._check(c, cons, view, reasons)) is not None]
        if not picks:
            return picks
        if strategy == "fastest":
            picks.sort(key=lambda p: (p.latency, p.unit, -p.cand.quality, p.cand.order))
        else:
            weights = self.config.balanced
            top_cost = max(p.unit for p in picks) or 1.0
            known = [p.latency for p in picks if p.latency != math.inf]
            top_latency = max(known) if known else 1.0
            picks.sort(
                key=lambda p: (
                    weights.cost * p.unit / top_cost
                    + weights.latency * (min(p.latency, top_latency) / top_latency)
                    + weights.quality * (1 - p.cand.quality / 100),
                    p.cand.order,
                )
            )
        return picks[:want]

    def _cheapest(
        self,
        plan: _Plan,
        level: int,
        cons: _Constraints,
        view: _StatsView,
        want: int,
        reasons: list[Reason],
    ) -> list[_Pick]:
        bucket = _bucket_of(cons.w)
        bounds, cands = plan.by_bound(level, bucket, cons.needs, cons.min_quality)
        limit = cons.limit
        # (Bounds and costs are rounded floats: a candidate costing exactly the limit
        # or the last pick may have a bound an ulp above it. The slack keeps the walk
        # going over such ties, so what it finds does not depend on the rounding.)
        stop = bisect.bisect_right(bounds, limit * _SLACK) if limit != math.inf else len(bounds)
        # The usual request sets no lists, SLA or health check: then a candidate is
        # checked right here (what ``_check`` would do, minus the calls). This loop is
        # the largest part of a decision.
        inline = not (cons.lists or self._check_health)
        window = cons.window
        w = cons.w
        share_in = 1 - w
        input_tokens = cons.input_tokens
        sla, stream = cons.sla_ms, cons.stream
        if sla is not None:
            cons.stats_read = True  # (an SLA is checked against latency figures)
        picks: list[_Pick] = []
        units: list[float] = []
        worst = math.inf
        # Exclusions met on the way, by the candidate's cost: only those costing no
        # more than the last pick kept are reported, so the reasons do not depend on
        # how far the walk happened to go (see ``_span_of``).
        excluded: list[tuple[float, int, list[Reason] | tuple[Reason, ...]]] = []
        for i in range(stop):
            # Everything from here on costs at least bounds[i] per token: once the
            # ``want`` cheapest so far all beat that, nothing later can enter.
            if bounds[i] > worst * _SLACK:
                break
            cand = cands[i]
            if inline:
                if cand.context_window < window:  # (capabilities and quality: see by_bound)
                    continue
                if cand.bands:
                    unit = cand.unit(w, input_tokens)
                else:
                    unit = share_in * cand.pin + w * cand.pout
                if unit > limit:
                    continue
                deployments = cand.deployments
                if sla is not None:
                    latency = view.of(cand, stream)
                    if latency.worst > sla:
                        deployments, out = _within_sla(cand, cons, latency)
                        if out:
                            excluded.append((unit, cand.order, out))
                        if not deployments:
                            continue
                pick: _Pick | None = _Pick(cand, unit, math.inf, deployments)
            else:
                found: list[Reason] = []
                pick = self._check(cand, cons, view, found, False)
                if found:
                    unit = (
                        cand.unit(w, input_tokens)
                        if cand.bands
                        else share_in * cand.pin + w * cand.pout
                    )
                    excluded.append((unit, cand.order, found))
                if pick is None:
                    continue
            picks.append(pick)  # type: ignore[arg-type]
            unit = pick.unit  # type: ignore[union-attr]
            if len(units) < want or unit < worst:
                bisect.insort(units, unit)
                if len(units) >= want:
                    del units[want:]
                    worst = units[-1]
        if excluded:
            excluded.sort(key=_UNIT_AND_ORDER)
            for unit, _, met in excluded:
                if unit > worst:
                    break
                reasons += met
        if len(picks) > 1:
            if view.snapshot.deployments:
                # Ties on cost break on latency: it is looked up only when two picks
                # cost the same (then for every pick, which orders exactly as taking
                # it for the tied ones only would).
                picks.sort(key=_unit_only)
                units = [p.unit for p in picks]
                if any(map(float.__eq__, units, units[1:])):
                    stream = cons.stream
                    cons.stats_read = True
                    for pick in picks:
                        pick.latency = _latency_of(pick, view, stream)
                    picks.sort(key=_cheap_key)
            else:
                picks.sort(key=_unit_key)
        return picks[:want]

    def _deployment(self, pick: _Pick) -> Deployment:
        deployments = pick.deployments
        if len(deployments) == 1:
            return deployments[0]
        if self.config.load_balancing == "least_busy" and self.stats is not None:
            return _least_busy(deployments, self.stats)
        if deployments is pick.cand.deployments:
            cumulative: tuple[float, ...] | list[float] = pick.cand.cumulative
        else:
            cumulative = list(itertools.accumulate(d.weight for d in deployments))
        point = self._rng.random() * cumulative[-1]
        return deployments[min(bisect.bisect_right(cumulative, point), len(deployments) - 1)]

    def _fallbacks(
        self,
        plan: _Plan,
        primary: Deployment,
        best: _Pick,
        rest: list[_Pick],
        level: int,
        cons: _Constraints,
        view: _StatsView,
    ) -> tuple[Deployment, ...]:
        """Same tier at other providers, other deployments of the primary's model,
        same tier at the same provider, then the neighbouring tier."""
        limit = self.config.max_fallbacks
        if limit == 0:
            return ()
        out = [p.deployments[0] for p in rest if p.cand.provider != best.cand.provider]
        if len(best.deployments) > 1:
            out += [d for d in best.deployments if d != primary]
        out += [p.deployments[0] for p in rest if p.cand.provider == best.cand.provider]
        if len(out) < limit:
            neighbour = next((lv for lv in self._level_order(level) if lv != level), None)
            if neighbour is not None:
                seen = {p.cand.id for p in rest} | {best.cand.id}
                for p in self._rank(plan, neighbour, cons, view, limit, []):
                    if p.cand.id not in seen:
                        out.append(p.deployments[0])
        return tuple(out[:limit])


def _ends_kept(plan: _Plan, view: _StatsView, span_key: tuple[Any, ...]) -> bool:
    """Whether what the searches at both ends of the bucket of ``span_key`` find is
    kept (see ``Router._end_search``) and holds under ``view``."""
    ends = plan.ends
    bucket = span_key[8]
    for end in (bucket, bucket + 1):
        kept = ends.get((*span_key[:8], end, *span_key[9:]))
        if kept is None or (kept[1] is not None and kept[1] is not view):
            return False
    return True


def _from_span(
    span: _Selection, requested: _Cand | None, input_tokens: int, output_tokens: int
) -> _Selection:
    """The selection ``span`` makes for a request of these token counts: its picks,
    with this request's costs. (``span.cons`` is another request's; only a search
    would read it.)"""
    return _priced(
        span.best,
        span.rest,
        span.level,
        span.reasons,
        span.cons,
        requested,
        input_tokens,
        output_tokens,
        span.fallbacks,
    )


def _at_share(cons: _Constraints, w: float, ceiling: float) -> _Constraints:
    """``cons`` at output share ``w`` and cost ceiling ``ceiling`` (what that share
    makes of it), before any search has used it."""
    return _Constraints(
        cons.needs,
        cons.window,
        cons.min_quality,
        ceiling,
        cons.max_cost,
        cons.allow,
        cons.deny,
        cons.providers,
        cons.sla_ms,
        cons.stream,
        cons.input_tokens,
        w,
        min(ceiling, cons.max_cost),  # limit
        cons.lists,
        None,  # seen
    )


def _cheap_key(p: _Pick) -> tuple[float, float, int, int]:
    return (p.unit, p.latency, -p.cand.quality, p.cand.order)


def _unit_only(p: _Pick) -> float:
    return p.unit


def _unit_key(p: _Pick) -> tuple[float, int, int]:
    return (p.unit, -p.cand.quality, p.cand.order)


def _priced(
    best: _Pick,
    rest: list[_Pick],
    level: int,
    reasons: tuple[Reason, ...],
    cons: _Constraints,
    requested: _Cand | None,
    input_tokens: int,
    output_tokens: int,
    fallbacks: tuple[Deployment, ...] | None = None,
) -> _Selection:
    """A selection of these picks with this request's expected costs and ``chosen`` reason.

    Runs on nearly every decision on a new text (see ``_span_of``): hence the
    integer costs inline and the ``Reason`` made as ``decide`` makes its ``Decision``.
    """
    cand = best.cand
    units = cand.units
    if units is not None:
        estimated, text = _cost_of_units(input_tokens * units[0] + output_tokens * units[1])
    else:
        estimated, text = _cand_cost(cand, input_tokens, output_tokens)
    requested_cost: Decimal | None = None
    if requested is None or requested is cand:
        message = f"chose {cand.id} (tier {level}) at ~{text}"
        if requested is not None:
            requested_cost = estimated
    else:
        other = text
        if requested.info is cand.info:
            requested_cost = estimated
        elif (units := requested.units) is not None:
            total = input_tokens * units[0] + output_tokens * units[1]
            requested_cost, other = _cost_of_units(total)
        else:
            requested_cost, other = _cand_cost(requested, input_tokens, output_tokens)
        message = f"chose {cand.id} (tier {level}) at ~{text} vs {other} on {requested.id}"
    chosen = _make_reason("chosen", message)
    return _make_selection(
        best, rest, level, reasons, cons, estimated, requested_cost, chosen, fallbacks, None
    )


def _cand_cost(cand: _Cand, input_tokens: int, output_tokens: int) -> tuple[Decimal, str]:
    """The expected cost of ``cand`` for these token counts, and how ``_usd`` writes it."""
    units = cand.units
    if units is not None:
        return _cost_of_units(input_tokens * units[0] + output_tokens * units[1])
    cost = _expected_cost(cand.info, input_tokens, output_tokens)
    return cost, _usd(cost)


def _same_outcome(a: _Selection, b: _Selection) -> bool:
    """Whether two selections pick the same models in the same order, from the same
    level, with the same reasons and fallbacks (their costs may differ)."""
    return (
        a.level == b.level
        and a.fallbacks == b.fallbacks
        and a.reasons == b.reasons
        and len(a.rest) == len(b.rest)
        and a.best.cand is b.best.cand
        and a.best.deployments == b.best.deployments
        and all(
            p.cand is q.cand and p.deployments == q.deployments
            for p, q in zip(a.rest, b.rest, strict=True)
        )
    )


def _clear_order(selection: _Selection) -> bool:
    """Whether the picks' costs differ by far more than rounding, or not at all (same
    prices), so a share of output between two where the order holds cannot flip it."""
    picks = [selection.best, *selection.rest]
    for p, q in itertools.pairwise(picks):
        gap = abs(q.unit - p.unit)
        if gap and gap <= 1e-9 * max(abs(p.unit), abs(q.unit)):
            return False
        if not gap and (p.cand.pin, p.cand.pout, p.cand.bands) != (
            q.cand.pin,
            q.cand.pout,
            q.cand.bands,
        ):
            return False
    return True


def _copy(cand: _Cand, order: int) -> _Cand:
    return _Cand(
        info=cand.info,
        id=cand.id,
        provider=cand.provider,
        names=cand.names,
        pin=cand.pin,
        pout=cand.pout,
        quality=cand.quality,
        context_window=cand.context_window,
        caps=cand.caps,
        deployments=cand.deployments,
        cumulative=cand.cumulative,
        order=order,
        bands=cand.bands,
        keys=cand.keys,
    )


def _by_name(plan: _Plan, name: str) -> _Cand | None:
    lowered = name.lower()
    return next((c for c in plan.everything if lowered in c.names), None)


def _contains_any(text: str, parts: tuple[str, ...]) -> bool:
    # (a loop of ``in``: ``any(map(text.__contains__, ...))`` calls a slot wrapper
    # per part, several times slower)
    for part in parts:  # noqa: SIM110
        if part in text:
            return True
    return False


def _holding(
    rules: tuple[_CompiledRule, ...], ctx: RouteContext, input_tokens: int, needs: int
) -> tuple[_CompiledRule, ...]:
    """The ``rules`` whose conditions but the text ones hold (see ``_CompiledRule.holds``).

    Its own function: a generator expression in the caller would make cells of the
    caller's locals on every call, even when it never runs."""
    return tuple(r for r in rules if r.holds(ctx, input_tokens, needs))


#: The per-text rule memo keeps at most this many texts of at most this many
#: characters (at most ~4M characters held, whatever the traffic).
_MAX_MEMO_TEXTS = 2048
_MAX_MEMO_TEXT = 2048


def _text_matches(rule: _CompiledRule, text: str) -> bool:
    """Whether ``text`` passes ``rule``'s regex and keyword tests (those it has)."""
    pattern = rule.pattern
    if pattern is not None:
        hint = rule.pattern_hint
        if hint is not None and not hint.might_match(text):
            return False
        if pattern.search(text) is None:
            return False
    if rule.keywords is not None:
        hints = rule.keyword_hints
        if hints is not None and text.isascii() and not _contains_any(text.lower(), hints):
            return False
        if rule.keywords.search(text) is None:
            return False
    return True


def _glob_ok(patterns: Any, value: str | None) -> bool:
    if patterns is None:
        return True
    if value is None:
        return False
    return any(p.match(value) for p in patterns)


_TOOLS, _VISION, _SCHEMA, _REASONING = 1, 2, 4, 8
#: The capability set for each combination of the bits above.
_NEEDS = tuple(
    frozenset(
        name
        for bit, name in (
            (_TOOLS, "tools"),
            (_VISION, "vision"),
            (_SCHEMA, "json_schema"),
            (_REASONING, "reasoning"),
        )
        if mask & bit
    )
    for mask in range(16)
)


def _needs(request: ChatRequest, images: bool) -> int:
    """The capabilities ``request`` needs, as bits (see :data:`_NEEDS`); ``images``:
    whether a message holds one."""
    needs = 0
    if request.tools:
        needs |= _TOOLS
    if images:
        needs |= _VISION
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema":
        needs |= _SCHEMA
    if request.reasoning_effort:
        needs |= _REASONING
    return needs


#: Reasons that recur with only a tier or two changing, made once each: a ``Reason``
#: is immutable, so one object can sit in any number of decisions. Bounded.
_SHARED_REASONS: dict[tuple[str, int, int], Reason] = {}


def _shared_reason(code: str, template: str, a: int, b: int = 0) -> Reason:
    """``Reason(code, template.format(a, b))``, shared when ``a`` and ``b`` are ints."""
    if type(a) is not int or type(b) is not int:  # True == 1 must not find tier 1's
        return Reason(code, template.format(a, b))
    key = (code, a, b)
    found = _SHARED_REASONS.get(key)
    if found is None:
        found = Reason(code, template.format(a, b))
        if len(_SHARED_REASONS) >= 1024:
            _SHARED_REASONS.clear()
        _SHARED_REASONS[key] = found
    return found


def _lower(values: frozenset[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(v.lower() for v in values)


def _least_busy(deployments: tuple[Deployment, ...], stats: StatsStore) -> Deployment:
    # (its own function: a lambda in the caller would make a cell on every call)
    return min(deployments, key=lambda d: stats.in_flight(d.key))


def _bucket_of(w: float) -> int:
    """The bucket of output share ``w`` (0 to 1) among ``_BUCKETS``; 1 is in the last."""
    bucket = int(w * _BUCKETS)
    return bucket if bucket < _BUCKETS else _BUCKETS - 1


def _p95(stats: DeploymentStats | None, stream: bool, min_samples: int) -> float | None:
    if stats is None:
        return None
    if stream:
        return stats.ttft_p95_ms if stats.ttft_samples >= min_samples else None
    return stats.p95_ms if stats.samples >= min_samples else None


def _seen_twice(once: set[int], digest: int) -> bool:
    """Whether a key came before (its hash ``digest`` is in ``once``); notes it if not.
    What traffic never repeats then costs a hash in a set, not work kept for nobody."""
    if digest in once:
        return True
    if len(once) >= 4 * _MAX_SELECTIONS:
        once.clear()
    once.add(digest)
    return False


def _latency_of(pick: _Pick, view: _StatsView, stream: bool) -> float:
    """What :func:`_latency` says for ``pick``'s deployments, from the view when it can."""
    if pick.deployments is pick.cand.deployments:
        return view.of(pick.cand, stream).best
    return _latency(view.snapshot, pick.deployments, stream)


def _listed(cand: _Cand, cons: _Constraints) -> bool:
    """Whether ``cand`` passes the allow/deny lists and the provider list."""
    if cons.allow is not None and not (cand.names & cons.allow):
        return False
    if cons.deny is not None and cand.names & cons.deny:
        return False
    return cons.providers is None or cand.provider in cons.providers


def _sla_reason(cand: _Cand, cons: _Constraints, latency: _Latency, index: int) -> Reason:
    """Why deployment ``index`` of ``cand`` is out: the same few per snapshot, made once."""
    sla: float = cons.sla_ms  # type: ignore[assignment]
    key = (index, sla)
    found = latency.excluded.get(key)
    if found is None:
        what = "TTFT p95" if cons.stream else "p95"
        p95: float = latency.p95s[index]  # type: ignore[assignment]
        found = Reason(
            "excluded_sla", f"{cand.id} excluded: {what} {_seconds(p95)} > SLA {_seconds(sla)}"
        )
        if len(latency.excluded) >= 64:  # SLAs computed per request: keep it bounded
            latency.excluded.clear()
        latency.excluded[key] = found
    return found


def _within_sla(
    cand: _Cand, cons: _Constraints, latency: _Latency
) -> tuple[tuple[Deployment, ...], tuple[Reason, ...]]:
    """What ``_deployments_ok`` gives without a health check: ``cand``'s deployments
    that meet the SLA of ``cons`` and the reasons for those that do not; made once
    per SLA and snapshot (``latency`` is ``cand``'s in this snapshot)."""
    sla: float = cons.sla_ms  # type: ignore[assignment]
    found = latency.within.get(sla)
    if found is None:
        kept = []
        out = []
        for i, d in enumerate(cand.deployments):
            p95 = latency.p95s[i]
            if p95 is not None and p95 > sla:
                out.append(_sla_reason(cand, cons, latency, i))
            else:
                kept.append(d)
        found = (tuple(kept), tuple(out))
        if len(latency.within) >= 64:  # SLAs computed per request: keep it bounded
            latency.within.clear()
        latency.within[sla] = found
    return found


def _latency(snapshot: StatsSnapshot, deployments: tuple[Deployment, ...], stream: bool) -> float:
    if not snapshot.deployments:
        return math.inf
    best = math.inf
    for d in deployments:
        st = snapshot.deployments.get(d.key)
        if st is not None:
            value = st.ttft_p95_ms if stream else st.p95_ms
            if value == value and value < best:  # skip NaN (no samples)
                best = value
    return best


def _unknown_deployment(model: str) -> Deployment:
    provider, _, name = model.partition("/")
    if not name:
        provider, name = "unknown", model
    return Deployment(model, provider, name)
