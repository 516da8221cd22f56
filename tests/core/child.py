"""Running a snippet in a child interpreter, for what a test process cannot undo
(an import made under another environment) or survive (a crash in C)."""

from __future__ import annotations

import subprocess
import sys


def assert_runs(code: str, *, pure_python: bool = False) -> None:
    """Run ``code`` in a new interpreter (with ``LLMROUTE_PURE_PYTHON=1`` when
    ``pure_python``) and fail with its stderr unless it exits cleanly."""
    env = {"LLMROUTE_PURE_PYTHON": "1", "PATH": ""} if pure_python else None
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
