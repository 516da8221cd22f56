"""Cost of one routing decision, and whether memory stays flat over a million of them.

Setup: the bundled catalog when the package has one (else ~240 synthesized models),
50 rules, 3 budgets (global, per feature, per user) on the in-memory store, latency
stats populated for every deployment, and a pool of realistic requests and contexts
(the labelled prompts from the test data, mixed features, users, hints, tools).

Measured in the same run:

- baselines, to read the other figures against this machine's speed and load: a
  dict lookup, building a small ``ChatRequest`` with pydantic,
  ``estimate_request_tokens`` (which every decision runs) and the built-in
  classifier alone, on the pool's texts (it remembers tiers of texts it has seen)
  and on texts it has never seen;
- ``Router.decide`` on (a) calls with a tier hint (the classifier never runs; rules
  and budgets still do), (b) calls the classifier decides (no hints, no rules
  matching), (c) mixed traffic: hints, rules and the classifier where neither gives
  a tier, as in production. (c) is the long run. (a)-(c) draw from a pool of 4,096
  requests, so the router's memos (selections by their inputs, classifier tiers,
  budget answers) mostly hit; (d) is (c) with every text sent once and lengths
  spread (``--unique`` requests, to a router warmed on the pool and on as many other
  texts sent once, as a running app is): what traffic that never repeats costs;
- the classifier's confusion matrix on the labelled prompts.

Per-call wall-clock and thread CPU times go into fixed histograms (0.1 µs buckets),
so timing allocates nothing; CPU time leaves out time spent descheduled, which on a
shared machine is most of the wall-clock tail. Memory: RSS before and after the long
run, and tracemalloc's traced size over a further stretch of decisions. Targets
(wall clock, mixed traffic): p50 <= 20 µs, p99 <= 100 µs, flat memory.

Usage: ``python benchmarks/bench_router.py [--decisions N] [--unique N] [--json] [--gc-freeze]``
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from routing_middleware.budgets import Budget, Budgets  # noqa: E402
from routing_middleware.catalog import Catalog, ModelInfo, Price  # noqa: E402
from routing_middleware.classify import ComplexityScorer  # noqa: E402
from routing_middleware.config import RoutingConfig  # noqa: E402
from routing_middleware.context import RouteContext  # noqa: E402
from routing_middleware.router import Router  # noqa: E402
from routing_middleware.schema import (  # noqa: E402
    BudgetExceeded,
    ChatRequest,
    Message,
    NoRouteAvailable,
    Tool,
)
from routing_middleware.stats import MemoryStatsStore  # noqa: E402
from routing_middleware.tokens import estimate_request_tokens  # noqa: E402

PROMPTS = ROOT / "tests" / "core" / "data" / "labelled_prompts.jsonl"
TARGET_P50_US = 20.0
TARGET_P99_US = 100.0
BUCKET_NS = 100
BUCKETS = 200_000  # up to 20 ms


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def synth_catalog(n: int = 240) -> Catalog:
    rng = random.Random(1)
    providers = ["openai", "anthropic", "google", "mistral", "deepseek", "groq", "together"]
    models = []
    for i in range(n):
        tier = rng.choice([1, 1, 2, 2, 3])
        base = {1: 0.2, 2: 2.0, 3: 8.0}[tier] * rng.uniform(0.3, 2.0)
        caps = {"streaming"} | {c for c in ("tools", "vision", "json_schema") if rng.random() < 0.7}
        provider = providers[i % len(providers)]
        models.append(
            ModelInfo(
                id=f"{provider}/model-{i}",
                provider=provider,
                name=f"model-{i}",
                price=Price(Decimal(f"{base:.4f}"), Decimal(f"{base * 4:.4f}")),
                context_window=rng.choice([32_000, 128_000, 200_000, 1_000_000]),
                capabilities=frozenset(caps),
                quality=int({1: 55, 2: 70, 3: 85}[tier] + rng.uniform(-8, 8)),
                tier=tier,
            )
        )
    return Catalog(models)


def load_catalog() -> tuple[Catalog, str]:
    bundled = getattr(Catalog, "bundled", None)
    if bundled is not None:
        catalog: Catalog = bundled()
        if len(catalog) >= 200:
            return catalog, "bundled"
    return synth_catalog(), "synthesized"


FEATURES = ["support", "search", "summaries", "code-review", "chat", "labels", "legal"]


def make_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for i in range(40):
        feature = f"feature-{i}"
        rules.append(
            {
                "name": f"feature-{i}",
                "when": {"feature": feature, "max_input_tokens": 4000 + i},
                "then": {"tier": 1 + i % 3},
            }
        )
    rules += [
        {"name": "labels-cheap", "when": {"feature": "labels"}, "then": {"tier": "cheap"}},
        {"name": "legal-floor", "when": {"feature": "legal"}, "then": {"min_quality": 70}},
        {"name": "sql", "when": {"regex": r"\bSELECT\b|\bSQL\b"}, "then": {"tier": 2}},
        {"name": "refunds", "when": {"keywords": ["refund", "chargeback"]}, "then": {"tier": 2}},
        {"name": "staff", "when": {"user_groups": ["staff"]}, "then": {"mode": "observe"}},
        {"name": "batch", "when": {"tags": ["batch"]}, "then": {"tier": 1}},
        {"name": "tools-mid", "when": {"has_tools": True, "route": "api:*"}, "then": {"tier": 2}},
        {"name": "huge", "when": {"min_input_tokens": 50_000}, "then": {"tier": 3}},
        {"name": "search-sla", "when": {"route": "search:*"}, "then": {"max_latency_ms": 1500}},
        {"name": "gpt-glob", "when": {"model": "*nonexistent*"}, "then": {"tier": 3}},
    ]
    assert len(rules) == 50
    return rules


def make_traffic(n: int, rng: random.Random) -> list[tuple[ChatRequest, RouteContext]]:
    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines() if line]
    requested = ["openai/gpt-4o", "anthropic/claude-sonnet-4-6", "gpt-4o-mini", "gpt-4.1"]
    traffic = []
    for i in range(n):
        prompt = rng.choice(prompts)
        messages = [Message(role="system", content="You are a helpful assistant.")]
        if rng.random() < 0.3:
            messages += [
                Message(role="user", content=rng.choice(prompts)),
                Message(role="assistant", content="Sure, here is what I found."),
            ]
        messages.append(Message(role="user", content=prompt))
        tools = [Tool(name="lookup_order")] if rng.random() < 0.2 else None
        request = ChatRequest(
            model=rng.choice(requested),
            messages=messages,
            tools=tools,
            max_tokens=rng.choice([None, 256, 1024]),
            stream=rng.random() < 0.5,
        )
        roll = rng.random()
        ctx = RouteContext(
            user_id=f"user-{i % 500}",
            feature=rng.choice(FEATURES),
            route=rng.choice(["api:chat", "search:query", "web:home"]),
            tags=frozenset({"batch"}) if roll < 0.05 else None,
            tier=rng.choice([1, 2, 3]) if 0.05 <= roll < 0.35 else None,
            max_latency_ms=2000.0 if roll > 0.9 else None,
        )
        traffic.append((request, ctx))
    return traffic


FILLER = [
    "please",
    "order",
    "account",
    "the",
    "a",
    "of",
    "to",
    "in",
    "and",
    "for",
    "with",
    "on",
    "this",
    "that",
    "it",
    "customer",
    "report",
    "team",
    "week",
    "data",
    "page",
    "update",
    "issue",
    "question",
    "note",
    "client",
    "project",
    "service",
    "today",
    "thanks",
]


def make_unique(
    traffic: list[tuple[ChatRequest, RouteContext]], n: int, rng: random.Random
) -> list[tuple[ChatRequest, RouteContext]]:
    """``n`` requests like ``traffic``, each with a last user message no other has: a
    reference number and 0-80 filler words appended. Texts never repeat (no cache
    keyed by text can help) and lengths, hence token counts, spread as in production."""
    out = []
    for i in range(n):
        request, ctx = traffic[rng.randrange(len(traffic))]
        last = request.messages[-1]
        words = " ".join(rng.choice(FILLER) for _ in range(rng.randrange(81)))
        text = f"{last.content} (ref {i:06d}{rng.randrange(10**6):06d}) {words}"
        messages = [*request.messages[:-1], Message(role="user", content=text)]
        out.append((request.model_copy(update={"messages": messages}), ctx))
    return out


def warm_for_unique(
    router: Router, pool: list[tuple[ChatRequest, RouteContext]], unique: int
) -> None:
    """Warm ``router`` for (d): what does not depend on content (plans, rule
    prefilters, budget lines) on the shared ``pool``, and what a running app has
    learnt from earlier traffic (selections by bucket of output share, see
    ``Router._span_of``) on ``unique`` other texts sent once."""
    for i in range(20_000):
        request, ctx = pool[i % len(pool)]
        try:
            router.decide(request, ctx)
        except (NoRouteAvailable, BudgetExceeded):
            pass
    for request, ctx in make_unique(pool, unique, random.Random(17)):
        try:
            router.decide(request, ctx)
        except (NoRouteAvailable, BudgetExceeded):
            pass


def build_router(catalog: Catalog, *, rules: bool) -> Router:
    config = RoutingConfig.model_validate(
        {
            "rules": make_rules() if rules else [],
            "budgets": [
                {"name": "global", "limit_usd": "10000"},
                {"name": "per-feature", "scope": "feature", "limit_usd": "500"},
                {"name": "per-user", "scope": "user", "limit_usd": "5", "period": "week"},
            ],
            "stats_refresh_s": 1.0,
        }
    )
    stats = MemoryStatsStore(window=256)
    rng = random.Random(3)
    for model in catalog:
        key = f"{model.provider}/{model.name}"
        typical = rng.uniform(300, 2500)  # each deployment has its own speed
        for _ in range(256):
            total = typical * rng.uniform(0.6, 1.4)
            stats.record(key, latency_ms=total, ttft_ms=total * rng.uniform(0.1, 0.4))
    for feature in FEATURES:
        stats.record("x/y", latency_ms=1.0, feature=feature, output_tokens=rng.randint(50, 900))
    budgets = Budgets([Budget.model_validate(b.model_dump()) for b in config.budgets])
    spend = Budgets(budgets.budgets, budgets.store)
    for i in range(100):
        ctx = RouteContext(user_id=f"user-{i}", feature=FEATURES[i % len(FEATURES)])
        spend.settle(spend.reserve(Decimal("0.01"), ctx), Decimal(f"{0.5 + i / 25:.2f}"))
    return Router(catalog, config, stats=stats, budgets=budgets)


class Histogram:
    """Fixed buckets of ``BUCKET_NS``: recording allocates nothing."""

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.n = 0

    def add(self, ns: int) -> None:
        index = ns // BUCKET_NS
        self.counts[index if index < BUCKETS else BUCKETS - 1] += 1
        self.n += 1

    def quantile_us(self, q: float) -> float:
        target = q * self.n
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= target:
                return (index + 0.5) * BUCKET_NS / 1000
        return BUCKETS * BUCKET_NS / 1000


def timed(fn: Callable[[int], object], n: int) -> tuple[Histogram, Histogram]:
    """Wall-clock and thread-CPU time per call. CPU time leaves out the time the
    thread spent descheduled, which on a shared machine dominates the tail."""
    wall, cpu = Histogram(), Histogram()
    clock = time.perf_counter_ns
    cpu_clock = time.thread_time_ns
    for i in range(n):
        c0 = cpu_clock()
        t0 = clock()
        fn(i)
        t1 = clock()
        c1 = cpu_clock()
        wall.add(t1 - t0)
        cpu.add(c1 - c0)
    return wall, cpu


def summary(hists: tuple[Histogram, Histogram]) -> dict[str, float]:
    wall, cpu = hists
    return {
        "p50_us": wall.quantile_us(0.5),
        "p90_us": wall.quantile_us(0.9),
        "p99_us": wall.quantile_us(0.99),
        "p999_us": wall.quantile_us(0.999),
        "cpu_p50_us": cpu.quantile_us(0.5),
        "cpu_p90_us": cpu.quantile_us(0.9),
        "cpu_p99_us": cpu.quantile_us(0.99),
    }


def confusion_matrix() -> tuple[list[list[int]], float]:
    scorer = ComplexityScorer()
    matrix = [[0, 0, 0] for _ in range(3)]
    for line in PROMPTS.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            request = ChatRequest(model="m", messages=[Message(role="user", content=row["prompt"])])
            matrix[row["tier"] - 1][scorer(request) - 1] += 1
    total = sum(map(sum, matrix))
    return matrix, sum(matrix[i][i] for i in range(3)) / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--traced", type=int, default=50_000)
    parser.add_argument(
        "--unique", type=int, default=50_000, help="requests with texts sent once, for (d)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="move setup objects out of the GC's reach first (gc.freeze(), as servers do "
        "after start-up), to see how much of the tail is collector pauses",
    )
    args = parser.parse_args(argv)

    catalog, source = load_catalog()
    router = build_router(catalog, rules=True)
    plain = build_router(catalog, rules=False)
    rng = random.Random(42)
    pool = make_traffic(4096, rng)
    mask = len(pool) - 1
    # Requests whose tier nobody sets: the classifier decides every one.
    unhinted = [(r, RouteContext(user_id=c.user_id)) for r, c in pool]
    # The same requests and contexts, each with a tier hint: the classifier never runs.
    tiers = random.Random(7)
    hinted = [(r, dataclasses.replace(c, tier=tiers.choice([1, 2, 3]))) for r, c in pool]

    # Every request once, for the runs that no cache keyed by content can help.
    unique = make_unique(pool, args.unique, random.Random(11))
    unique_scored = make_unique(pool, 30_000, random.Random(13))
    cold = build_router(catalog, rules=True)
    cold_refused = [0]

    lookup = {f"k{i}": i for i in range(1000)}
    small = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}
    scorer = ComplexityScorer()

    refused = [0]

    def decide(i: int) -> object:
        request, ctx = pool[i & mask]
        try:
            return router.decide(request, ctx)
        except (NoRouteAvailable, BudgetExceeded):
            refused[0] += 1
            return None

    def decide_classified(i: int) -> object:
        request, ctx = unhinted[i & mask]
        return plain.decide(request, ctx)

    def decide_unique(i: int) -> object:
        request, ctx = unique[i]
        try:
            return cold.decide(request, ctx)
        except (NoRouteAvailable, BudgetExceeded):
            cold_refused[0] += 1
            return None

    def decide_hinted(i: int) -> object:
        request, ctx = hinted[i & mask]
        try:
            return router.decide(request, ctx)
        except (NoRouteAvailable, BudgetExceeded):
            return None

    baselines = {
        "dict_lookup": summary(timed(lambda i: lookup.get("k500"), 200_000)),
        "chat_request_build": summary(timed(lambda i: ChatRequest.model_validate(small), 50_000)),
        "estimate_tokens": summary(
            timed(lambda i: estimate_request_tokens(pool[i & mask][0]), 100_000)
        ),
        "classifier_only": summary(timed(lambda i: scorer(pool[i & mask][0]), 100_000)),
        "classifier_only_unique": summary(
            timed(lambda i: scorer(unique_scored[i][0]), len(unique_scored))
        ),
    }
    unique_scored.clear()

    timed(decide, 20_000)  # warm caches (plans, rule prefilters, budget lines)
    timed(decide_classified, 20_000)
    timed(decide_hinted, 20_000)
    gc.collect()
    if args.gc_freeze:
        gc.freeze()
    short = min(args.decisions, 200_000)
    hinted_calls = summary(timed(decide_hinted, short))
    classified = summary(timed(decide_classified, short))
    # Warm as a running app is warm, then run each unique request once.
    warm_for_unique(cold, pool, args.unique)
    gc.collect()
    unique_calls = summary(timed(decide_unique, len(unique)))
    refused[0] = 0
    gc.collect()
    rss_before = rss_mb()
    mixed = timed(decide, args.decisions)
    load = os.getloadavg()[0]
    refused_share = refused[0] / args.decisions
    gc.collect()
    rss_after = rss_mb()

    tracemalloc.start()
    timed(decide, 5_000)
    gc.collect()
    traced_before = tracemalloc.get_traced_memory()[0]
    timed(decide, args.traced)
    gc.collect()
    traced_after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()

    matrix, accuracy = confusion_matrix()
    result = {
        "catalog": source,
        "models": len(catalog),
        "rules": len(router.config.rules),
        "budgets": len(router.config.budgets),
        "decisions": args.decisions,
        "gc_freeze": args.gc_freeze,
        "baselines": baselines,
        "decide_hinted": hinted_calls,
        "decide_classifier_every_call": classified,
        "decide_mixed": summary(mixed),
        "decide_mixed_unique": unique_calls,
        "unique_requests": len(unique),
        "unique_refused_share": round(cold_refused[0] / max(1, len(unique)), 4),
        "refused_share": round(refused_share, 4),
        "load_average": round(load, 2),
        "cpus": os.cpu_count(),
        "rss_mb_before": round(rss_before, 2),
        "rss_mb_after": round(rss_after, 2),
        "traced_kb_growth": round((traced_after - traced_before) / 1024, 1),
        "traced_decisions": args.traced,
        "classifier_accuracy": round(accuracy, 3),
        "classifier_confusion": matrix,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"catalog: {source} ({len(catalog)} models), {result['rules']} rules, "
        f"{result['budgets']} budgets, stats for every deployment"
        + (", gc.freeze() after setup" if args.gc_freeze else "")
    )
    heads = ("p50", "p90", "p99", "p99.9")
    print(f"{'wall / cpu µs per call':<34}" + "".join(f"{h:>8}" for h in heads), end="")
    print("   cpu:" + "".join(f"{h:>7}" for h in heads[:3]))
    rows = [(f"baseline: {name}", s) for name, s in baselines.items()]
    rows += [
        (f"(a) decide, tier hint [{short:,}]", result["decide_hinted"]),
        (f"(b) decide, classifier [{short:,}]", result["decide_classifier_every_call"]),
        (f"(c) decide, mixed [{args.decisions:,}]", result["decide_mixed"]),
        (f"(d) mixed, unique texts [{len(unique):,}]", result["decide_mixed_unique"]),
    ]
    for name, s in rows:
        print(
            f"{name:<34}{s['p50_us']:8.2f}{s['p90_us']:8.2f}{s['p99_us']:8.2f}{s['p999_us']:8.2f}"
            f"       {s['cpu_p50_us']:7.2f}{s['cpu_p90_us']:7.2f}{s['cpu_p99_us']:7.2f}"
        )
    print(f"  (refused with NoRouteAvailable/BudgetExceeded: {refused_share:.1%} of mixed calls)")
    print(
        "  (a)-(c) draw from a pool of 4,096 requests over ~150 prompts, so texts and token\n"
        "  counts repeat and the router's memos (selections by their inputs, classifier\n"
        "  tiers and budget answers) mostly hit; (d) sends every text once, with spread\n"
        "  lengths: the classifier always scores and selections repeat only where token\n"
        "  counts and the other inputs do, as with production traffic."
    )
    s = result["decide_mixed"]
    print(f"load average while running: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(
        f"targets (wall clock): p50 <= {TARGET_P50_US} µs: "
        f"{'met' if s['p50_us'] <= TARGET_P50_US else 'MISSED'}"
        f"; p99 <= {TARGET_P99_US} µs: {'met' if s['p99_us'] <= TARGET_P99_US else 'MISSED'}"
    )
    u = result["decide_mixed_unique"]
    print(
        f"  same targets on unique texts (d): p50 "
        f"{'met' if u['p50_us'] <= TARGET_P50_US else 'MISSED'} ({u['p50_us']:.1f} µs), p99 "
        f"{'met' if u['p99_us'] <= TARGET_P99_US else 'MISSED'} ({u['p99_us']:.1f} µs)"
    )
    print(
        f"memory: RSS {rss_before:.1f} MB before, {rss_after:.1f} MB after "
        f"{args.decisions:,} decisions; traced growth over {args.traced:,} more: "
        f"{result['traced_kb_growth']} KiB"
    )
    print(f"classifier accuracy on labelled prompts: {accuracy:.3f}")
    print("confusion (rows: labelled tier 1-3, columns: predicted tier 1-3):")
    for tier, row in enumerate(matrix, 1):
        print(f"  {tier}: {row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
