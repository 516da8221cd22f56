"""A local HTTP server of price feeds, for the tests of feeds, refresh and the CLI."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def serve(
    routes: dict[str, bytes], *, delay_s: float = 0.0, started: threading.Event | None = None
) -> Iterator[str]:
    """Serve ``routes`` (path -> body, mutable while running) on 127.0.0.1; yields the
    base URL. Each request sets ``started`` (when given), then waits ``delay_s``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if started is not None:
                started.set()
            if delay_s:
                time.sleep(delay_s)
            body = routes.get(self.path)
            if body is None:
                self.send_response(404)
                self.end_headers()
                return
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
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
