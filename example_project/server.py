"""Run the example site in a child process: for ``make demo-check``, screenshots and tests.

:func:`prepare` migrates and seeds a database; :func:`serve` starts Django's
development server on a free port, waits until it answers and stops it on exit.
Both run offline unless the caller's environment holds provider API keys and
``offline=False`` is passed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

__all__ = ["MANAGE", "demo_env", "free_port", "prepare", "serve"]

MANAGE = Path(__file__).resolve().parent / "manage.py"

#: Environment variables that would make the site call real providers.
_KEY_VARIABLES = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "MISTRAL_API_KEY",
    "DEEPSEEK_API_KEY",
    "XAI_API_KEY",
    "GROQ_API_KEY",
    "TOGETHER_API_KEY",
    "FIREWORKS_API_KEY",
    "OPENROUTER_API_KEY",
)


def demo_env(
    db_path: Path, *, fast: bool = False, offline: bool = True, extra: Mapping[str, str] = ()
) -> dict[str, str]:
    """The environment of a demo process using ``db_path``.

    ``offline`` drops provider keys (and SDK base-URL overrides) so every call is
    answered by FakeProvider; ``fast`` makes the fake answer without delays.
    """
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
    env["LLMROUTE_DEMO_DB"] = str(db_path)
    env["PYTHONUNBUFFERED"] = "1"
    if fast:
        env["LLMROUTE_DEMO_FAST"] = "1"
    else:
        env.pop("LLMROUTE_DEMO_FAST", None)
    if offline:
        for name in (*_KEY_VARIABLES, "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
            env.pop(name, None)
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(db_path: Path, *, env: Mapping[str, str] | None = None) -> str:
    """Migrate and seed ``db_path``; returns the seed command's output."""
    done = subprocess.run(
        [sys.executable, str(MANAGE), "seed_demo", "--migrate"],
        env=dict(env) if env is not None else demo_env(db_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"seeding failed:\n{done.stdout}{done.stderr}")
    return done.stdout


@contextmanager
def serve(
    db_path: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = 30.0,
    while_starting: Callable[[], object] | None = None,
) -> Iterator[str]:
    """Serve the site on 127.0.0.1 in a child process; yields its base URL.

    ``while_starting`` runs while the server boots (say, :func:`prepare`: the
    server answers once the database is ready, and both take seconds).
    """
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, str(MANAGE), "runserver", "--noreload", f"127.0.0.1:{port}"],
        env=dict(env) if env is not None else demo_env(db_path),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        if while_starting is not None:
            while_starting()
        _wait_until_up(base, process, timeout)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path and log is not subprocess.DEVNULL:
            log.close()


def _wait_until_up(base: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(base + "/", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer on {base} within {timeout:.0f} s")
