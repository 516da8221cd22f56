"""The price refresher: restarting it never leaves two refresh threads running."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from routing_middleware.catalog import Catalog
from routing_middleware.refresh import CatalogRefresher

OPENROUTER = Path(__file__).parent / "data" / "openrouter_small.json"


@contextmanager
def slow_feed(body: bytes, delay_s: float, started: threading.Event) -> Iterator[str]:
    """Serve ``body`` at /models after ``delay_s`` seconds; ``started`` is set per request."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            started.set()
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/models"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _refresh_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "llmroute-catalog-refresh"]


def test_restart_after_a_stop_that_timed_out_runs_one_thread() -> None:
    body = json.dumps(json.loads(OPENROUTER.read_text())).encode()
    started = threading.Event()
    with slow_feed(body, 0.5, started) as url:
        refresher = CatalogRefresher(Catalog.bundled(), url, interval_s=0.01)
        refresher.start()
        try:
            assert started.wait(5)  # the first thread is inside a slow fetch
            first = _refresh_threads()
            assert len(first) == 1
            refresher.stop(timeout=0.01)  # gives up waiting: the fetch is still running
            refresher.start()
            # The first thread's fetch ends; it must then end too, not loop on
            # beside the new thread (two threads fetching and swapping prices).
            first[0].join(5)
            assert not first[0].is_alive()
            assert len(_refresh_threads()) == 1
        finally:
            refresher.stop()
    assert _refresh_threads() == []
