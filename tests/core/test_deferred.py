"""The cleanup thread that garbage-collected calls hand their work to."""

from __future__ import annotations

import logging
import os
import select
import signal
import threading

import pytest

from routing_middleware import _deferred


def test_jobs_run_in_order_on_one_other_thread() -> None:
    _deferred.prepare()
    ran: list[tuple[int, int]] = []
    for i in range(20):
        _deferred.defer(lambda i=i: ran.append((i, threading.get_ident())))
    assert _deferred.drain()
    assert [i for i, _ in ran] == list(range(20))
    threads = {ident for _, ident in ran}
    assert len(threads) == 1
    assert threading.get_ident() not in threads


def test_a_failing_job_is_logged_and_the_next_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    _deferred.prepare()
    ran: list[str] = []

    class Stop(BaseException):
        pass

    def broken() -> None:
        raise RuntimeError("boom")

    def stopped() -> None:
        raise Stop  # (not even this ends the worker)

    with caplog.at_level(logging.ERROR, logger="llmroute"):
        _deferred.defer(broken)
        _deferred.defer(stopped)
        _deferred.defer(lambda: ran.append("after"))
        assert _deferred.drain()
    assert ran == ["after"]
    assert caplog.text.count("a cleanup job failed") == 2


def test_without_a_worker_a_job_runs_where_it_is_deferred(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_deferred, "_worker", None)
    ran: list[int] = []
    _deferred.defer(lambda: ran.append(threading.get_ident()))
    assert ran == [threading.get_ident()]
    assert _deferred.drain()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # (3.12+: threads exist)
def test_a_forked_child_starts_its_own_worker() -> None:
    _deferred.prepare()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread is not here
        code = 1
        try:
            if _deferred._worker is None:
                _deferred.prepare()
                done: list[bool] = []
                _deferred.defer(lambda: done.append(True))
                if _deferred.drain(5) and done:
                    code = 0
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 30)
    status = os.read(read, 1) if ready else b""
    os.close(read)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert status == b"\x00"
