"""Keep a catalog's prices fresh from a feed, in a background thread started on request.

Nothing runs at import or construction: :meth:`CatalogRefresher.start` starts a daemon
thread, :meth:`CatalogRefresher.stop` ends it. A refresh that fails (network, bad
JSON, validation) keeps the current catalog and logs why on ``llmroute.catalog``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from .catalog import Catalog
from .feeds import FeedError, FeedReport

__all__ = ["CatalogRefresher"]

logger = logging.getLogger("llmroute.catalog")


class CatalogRefresher:
    """Merge ``source`` into ``catalog`` now and then every ``interval_s`` seconds.

    ``last_report`` is the report of the last successful refresh, ``last_error`` the
    message of the last failed one (cleared by a success).
    """

    def __init__(
        self,
        catalog: Catalog,
        source: str | Path,
        interval_s: float,
        format: str | None = None,
        *,
        timeout: float = 10.0,
        add_new: bool = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.catalog = catalog
        self.source = source
        self.interval_s = interval_s
        self.format = format
        self.timeout = timeout
        self.add_new = add_new
        self.last_report: FeedReport | None = None
        self.last_error: str | None = None
        self.refreshes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def refresh(self) -> FeedReport | None:
        """One refresh, in the caller's thread; ``None`` (and a log line) if it failed."""
        try:
            report = self.catalog.update_from_feed(
                self.source, self.format, timeout=self.timeout, add_new=self.add_new
            )
        except FeedError as exc:
            self.failures += 1
            self.last_error = str(exc)
            logger.warning(
                "catalog refresh from %s failed, keeping current prices: %s", self.source, exc
            )
            return None
        except Exception as exc:  # never let the refresher thread die
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("catalog refresh from %s failed unexpectedly", self.source)
            return None
        self.refreshes += 1
        self.last_error = None
        self.last_report = report
        if report.changed_anything:
            logger.info("catalog refreshed from %s: %s", self.source, report.summary())
        return report

    def start(self) -> None:
        """Start the daemon thread (refreshes at once, then every ``interval_s``)."""
        with self._lock:
            if self.running:
                return
            # A fresh event per thread: a thread that outlived stop()'s join (a slow
            # fetch) keeps its own set event and ends, instead of looping on beside
            # the new one once a shared event is cleared here.
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="llmroute-catalog-refresh", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for it."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None:
            thread.join(timeout)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.refresh()
            stop.wait(self.interval_s)

    def __enter__(self) -> CatalogRefresher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
