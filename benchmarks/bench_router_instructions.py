"""Instructions per routing decision on texts never seen before, one by one.

Wall-clock figures on a shared VM move with whatever else runs; instruction counts do
not. This runs the setup and warm-up of ``bench_router.py``'s (d) traffic under
valgrind's callgrind, each measured decision inside ``operator.call``, which callgrind
is told to collect and dump after (``--collect-atstart=no
--toggle-collect=_operator_call --dump-after=_operator_call``): one count per
decision. It prints their quantiles, and the same for the built-in classifier alone on
the same texts, which is the baseline measured in the same run.

Needs valgrind (``apt-get install valgrind``). Takes a few minutes.

Usage: ``python benchmarks/bench_router_instructions.py [--decisions N]``
"""

from __future__ import annotations

import argparse
import gc
import glob
import operator
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(kind: str, n: int) -> None:
    """The measured part, run under callgrind: setup and warm-up as in (d), then ``n``
    never-seen requests, each decided (or classified) inside ``operator.call``."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_router as bench

    from routing_middleware.schema import BudgetExceeded, NoRouteAvailable

    catalog, _ = bench.load_catalog()
    pool = bench.make_traffic(4096, random.Random(42))
    router = bench.build_router(catalog, rules=True)
    bench.warm_for_unique(router, pool, 20_000)
    unique = bench.make_unique(pool, n, random.Random(11))
    gc.collect()
    gc.freeze()
    call = operator.call
    if kind == "classify":
        scorer = router.classifier
        for request, _ctx in unique:
            call(scorer, request)
        return
    decide = router.decide
    for request, ctx in unique:
        try:
            call(decide, request, ctx)
        except (NoRouteAvailable, BudgetExceeded):
            pass


def counted(kind: str, n: int) -> list[int]:
    """Instructions of each of ``n`` calls of ``kind``, from callgrind's dumps."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "calls.out")
        command = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=_operator_call",
            "--dump-after=_operator_call",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--inner",
            kind,
            "--decisions",
            str(n),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(command, check=True, env=env, capture_output=True)
        counts = []
        for path in glob.glob(out + ".*"):
            with open(path) as f:
                found = re.search(r"^totals: (\d+)", f.read(), re.MULTILINE)
            if found and int(found.group(1)):
                counts.append(int(found.group(1)))
    return sorted(counts)


def quantiles(counts: list[int]) -> str:
    def at(q: float) -> int:
        return counts[min(len(counts) - 1, int(q * len(counts)))]

    mean = sum(counts) // len(counts)
    return f"p50 {at(0.5):>9,}  p90 {at(0.9):>9,}  p99 {at(0.99):>9,}  mean {mean:>9,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=3000)
    parser.add_argument("--inner", choices=["decide", "classify"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        sys.path.insert(0, str(ROOT))
        measure(args.inner, args.decisions)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    decisions = counted("decide", args.decisions)
    classified = counted("classify", args.decisions)
    print(f"instructions per call, {len(decisions):,} never-seen texts (callgrind)")
    print(f"baseline: classifier alone   {quantiles(classified)}")
    print(f"(d) Router.decide            {quantiles(decisions)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
