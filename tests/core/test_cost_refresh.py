"""The price refresher: restarting it never leaves two refresh threads running."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from routing_middleware.catalog import Catalog
from routing_middleware.refresh import CatalogRefresher

from .feed_server import serve

OPENROUTER = Path(__file__).parent / "data" / "openrouter_small.json"


def _refresh_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "llmroute-catalog-refresh"]


def test_restart_after_a_stop_that_timed_out_runs_one_thread() -> None:
    body = json.dumps(json.loads(OPENROUTER.read_text())).encode()
    started = threading.Event()
    with serve({"/models": body}, delay_s=0.5, started=started) as base:
        url = f"{base}/models"
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
