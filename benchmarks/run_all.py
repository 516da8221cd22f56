"""Run every benchmark in this folder, one subprocess each, and print their output.

Benchmarks that need PostgreSQL run only when ``LLMROUTE_TEST_DATABASE_URL`` is set,
and those that count instructions only where valgrind is installed.
Pass names to run a subset: ``python benchmarks/run_all.py router import``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEEDS_POSTGRES = {"sink", "report"}
NEEDS_VALGRIND = {"router_instructions"}


def main(argv: list[str]) -> int:
    wanted = set(argv)
    failed: list[str] = []
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if wanted and name not in wanted:
            continue
        print(f"\n=== {name} ===", flush=True)
        if name in NEEDS_POSTGRES and not os.environ.get("LLMROUTE_TEST_DATABASE_URL"):
            print("skipped: set LLMROUTE_TEST_DATABASE_URL (PostgreSQL) to run it")
            continue
        if name in NEEDS_VALGRIND and shutil.which("valgrind") is None:
            print("skipped: install valgrind to run it")
            continue
        result = subprocess.run([sys.executable, str(script)], cwd=HERE.parent, check=False)
        if result.returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
