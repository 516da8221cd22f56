"""Work left off the request path, done on one worker thread: what a garbage-collected
call leaves behind, and probes and catch-up of stores that were down.

A streamed call its consumer dropped without closing is cleaned up by the garbage
collector, and the collector runs inside whatever allocation triggers it, on any
thread: one holding a store's lock or a connection pool's, or an event loop's.
Recording the call, settling its budget hold and ending its in-flight count there
could deadlock on that lock or stall the loop on a network round trip. So the
cleanup only queues the work (``SimpleQueue.put`` is safe to call from a finalizer)
and a daemon thread does it.

The thread is started from ordinary code (:func:`prepare`, when a stream starts),
never from a finalizer, and again in a forked child.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable

__all__ = ["defer", "drain", "prepare"]

logger = logging.getLogger("llmroute")

_jobs: queue.SimpleQueue[Callable[[], object] | threading.Event] = queue.SimpleQueue()
_worker: threading.Thread | None = None
_starting = threading.Lock()


def prepare() -> None:
    """Start the worker if it is not running (call from ordinary code only)."""
    if _worker is None:
        _start()


def _start() -> None:
    global _worker
    with _starting:
        if _worker is None:
            worker = threading.Thread(target=_work, name="llmroute-cleanup", daemon=True)
            worker.start()
            _worker = worker


def _work() -> None:
    while True:
        job = _jobs.get()
        if isinstance(job, threading.Event):
            job.set()
            continue
        try:
            job()
        except BaseException:  # (the job's own errors: nothing waits to report them)
            logger.exception("llmroute: a cleanup job failed")


def defer(job: Callable[[], object]) -> None:
    """Run ``job`` on the worker; safe inside a finalizer. Without a worker (none was
    ever prepared in this process) ``job`` runs here, as nothing else would run it."""
    if _worker is None:
        job()
    else:
        _jobs.put(job)


def drain(timeout: float = 5.0) -> bool:
    """Wait until every job deferred so far has run; ``False`` if ``timeout`` passed
    first. For tests and orderly shutdowns."""
    if _worker is None:
        return True
    done = threading.Event()
    _jobs.put(done)
    return done.wait(timeout)


def _forget_worker() -> None:
    # A forked child has the parent's queue object but not its thread: anything the
    # parent had queued is the parent's to do.
    global _worker, _jobs, _starting
    _worker = None
    _jobs = queue.SimpleQueue()
    _starting = threading.Lock()


# Jobs still queued at exit (a dropped stream's record) get a moment to run.
atexit.register(drain, 2.0)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker)
