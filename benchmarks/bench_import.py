"""Import cost, catalog load and cost_of speed, each in fresh interpreters.

Every figure is a median over ``--runs`` fresh subprocesses and is shown next to a
baseline measured in the same run (a bare interpreter doing nothing), so machine
speed cancels out. Targets: ``import routing_middleware`` <= 0.2 s and <= 30 MB RSS
over the baseline; bundled catalog load <= 50 ms.

Usage: ``python benchmarks/bench_import.py [--runs N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each probe prints one JSON object. RSS is read from /proc (Linux) so nothing extra
# is imported; ru_maxrss is the fallback elsewhere.
PRELUDE = """
import json, time, resource, sys
def rss_mb():
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

PROBES = {
    "baseline": """
r0 = rss_mb(); t0 = time.perf_counter()
t1 = time.perf_counter(); r1 = rss_mb()
print(json.dumps({"s": t1 - t0, "rss": r1, "d_rss": r1 - r0}))
""",
    "import": """
r0 = rss_mb(); t0 = time.perf_counter()
import routing_middleware
t1 = time.perf_counter(); r1 = rss_mb()
print(json.dumps({"s": t1 - t0, "rss": r1, "d_rss": r1 - r0}))
""",
    "catalog_module": """
r0 = rss_mb(); t0 = time.perf_counter()
import routing_middleware.catalog
t1 = time.perf_counter(); r1 = rss_mb()
print(json.dumps({"s": t1 - t0, "rss": r1, "d_rss": r1 - r0}))
""",
    "catalog_load": """
import routing_middleware.catalog as c
r0 = rss_mb(); t0 = time.perf_counter()
cat = c.default_catalog(); cat.get('gpt-4o-mini')
t1 = time.perf_counter(); r1 = rss_mb()
print(json.dumps({"s": t1 - t0, "rss": r1, "d_rss": r1 - r0, "models": len(cat)}))
""",
    "cost_of": """
from datetime import datetime, timezone
from routing_middleware.catalog import default_catalog
from routing_middleware.pricing import cost_of, estimate_cost
from routing_middleware.schema import Usage
cat = default_catalog()
usage = Usage(input_tokens=12000, output_tokens=800, cached_input_tokens=4000,
              cache_write_tokens=2000, reasoning_tokens=300)
info = cat.get('anthropic/claude-sonnet-4-6')
at = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
n = 20000
def per_call(fn):
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6
print(json.dumps({
    "by_info_us": per_call(lambda: cost_of(usage, info)),
    "by_name_us": per_call(lambda: cost_of(usage, 'claude-sonnet-4.6', catalog=cat)),
    "off_peak_us": per_call(lambda: cost_of(usage, 'deepseek/deepseek-v4-flash', at, cat)),
    "estimate_us": per_call(lambda: estimate_cost(info, 12000, 800)),
    "usage_build_us": per_call(lambda: Usage(input_tokens=12000, output_tokens=800)),
}))
""",
}


def probe(name: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + PROBES[name]],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    runs = {name: [probe(name) for _ in range(args.runs)] for name in PROBES}
    base_rss = median(runs["baseline"], "rss")
    results = {
        "baseline_s": median(runs["baseline"], "s"),
        "baseline_rss_mb": base_rss,
        "import_s": median(runs["import"], "s"),
        "import_rss_delta_mb": median(runs["import"], "rss") - base_rss,
        "catalog_module_import_s": median(runs["catalog_module"], "s"),
        "catalog_module_rss_delta_mb": median(runs["catalog_module"], "rss") - base_rss,
        "catalog_load_s": median(runs["catalog_load"], "s"),
        "catalog_load_rss_delta_mb": median(runs["catalog_load"], "d_rss"),
        "catalog_models": median(runs["catalog_load"], "models"),
        **{k: median(runs["cost_of"], k) for k in runs["cost_of"][0]},
    }
    if args.json:
        print(json.dumps(results, indent=1))
        return 0

    def row(what: str, value: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("ok" if ok else "OVER")
        print(f"{what:<44}{value:>14}  {target:<12}{verdict}")

    print(f"median of {args.runs} fresh interpreters (python {sys.version.split()[0]})")
    row("bare interpreter RSS (baseline)", f"{base_rss:.1f} MB")
    row(
        "import routing_middleware",
        f"{results['import_s'] * 1000:.2f} ms",
        "<= 200 ms",
        results["import_s"] <= 0.2,
    )
    row(
        "  RSS over baseline",
        f"{results['import_rss_delta_mb']:.1f} MB",
        "<= 30 MB",
        results["import_rss_delta_mb"] <= 30,
    )
    row(
        "import routing_middleware.catalog",
        f"{results['catalog_module_import_s'] * 1000:.1f} ms",
    )
    row(
        "  RSS over baseline",
        f"{results['catalog_module_rss_delta_mb']:.1f} MB",
        "<= 30 MB",
        results["catalog_module_rss_delta_mb"] <= 30,
    )
    row(
        f"first catalog use ({int(results['catalog_models'])} models)",
        f"{results['catalog_load_s'] * 1000:.1f} ms",
        "<= 50 ms",
        results["catalog_load_s"] <= 0.05,
    )
    row("  RSS added by the load", f"{results['catalog_load_rss_delta_mb']:.1f} MB")
    row("cost_of(usage, ModelInfo)", f"{results['by_info_us']:.2f} us")
    row("cost_of(usage, alias, catalog)", f"{results['by_name_us']:.2f} us")
    row("cost_of with off-peak check", f"{results['off_peak_us']:.2f} us")
    row("estimate_cost(ModelInfo, in, out)", f"{results['estimate_us']:.2f} us")
    row("for scale: Usage(...) construction", f"{results['usage_build_us']:.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
