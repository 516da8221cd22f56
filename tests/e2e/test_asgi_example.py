"""The FastAPI example app, served by uvicorn: hinted endpoints, streaming and the gateway."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from example_project.server import demo_env, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def asgi_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The app on a free port, offline; yields its URL and the gateway key it printed."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("asgi") / "uvicorn.log"
    env = demo_env(log_path.with_name("unused.sqlite3"), fast=True)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "example_project.asgi_app:app", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            key = None
            deadline = time.monotonic() + 30
            while key is None and time.monotonic() < deadline:
                assert process.poll() is None, log_path.read_text()
                found = re.search(r"Gateway API key for this run: (\S+)", log_path.read_text())
                key = found.group(1) if found else None
                time.sleep(0.2)
            assert key, log_path.read_text()
            yield f"http://127.0.0.1:{port}", key
        finally:
            process.terminate()
            process.wait(timeout=10)


def _post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return response.status, dict(response.headers), response.read().decode()


def test_hinted_endpoint_is_routed_to_the_cheap_tier(asgi_app: tuple[str, str]) -> None:
    url, _ = asgi_app
    status, headers, body = _post(url + "/faq", {"question": "How do I reset my password?"})
    data = json.loads(body)
    assert status == 200
    assert data["answer"]
    assert data["model"] in ("gemini/gemini-2.5-flash-lite", "openai/gpt-5-mini")
    assert 0 < float(data["cost_usd"]) < float(data["requested_cost_usd"])
    assert data["decision"].startswith("hint_tier")
    assert headers.get("server-timing", "").startswith("llm;dur=")


def test_streamed_endpoint_streams_text(asgi_app: tuple[str, str]) -> None:
    url, _ = asgi_app
    status, _, body = _post(url + "/faq/stream", {"question": "Where is my invoice?"})
    assert status == 200
    assert len(body) > 40


def test_gateway_needs_its_key_and_answers_with_it(asgi_app: tuple[str, str]) -> None:
    url, key = asgi_app
    request = {"model": "gpt-5.4", "messages": [{"role": "user", "content": "Hello"}]}
    with pytest.raises(urllib.error.HTTPError) as refused:
        _post(url + "/v1/chat/completions", request)
    assert refused.value.code == 401
    refused.value.close()
    status, headers, body = _post(
        url + "/v1/chat/completions", request, {"Authorization": f"Bearer {key}"}
    )
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"]
    assert headers["x-llmroute-model"]
