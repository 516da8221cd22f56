"""The spool: an append-only JSON-lines file holding records the database did not take.

Records land here when the sink's buffer is full or the database is down, and go
back to the database through :func:`replay` (the flusher on recovery, or
``manage.py llmroute_replay``). Replay is exactly once: the spool is first renamed
aside (new records keep going to a fresh file), then read, and every write is
idempotent on the record id and on (call id, attempt), so a crash mid-replay only
means the renamed file is read again later, with nothing counted twice.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from routing_middleware.metering import UsageRecord
from routing_middleware.schema import Usage

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ReplayResult",
    "Spool",
    "default_spool_path",
    "record_from_dict",
    "record_to_dict",
]

_REPLAYING = ".replaying-"
_REJECTED = ".rejected"

# Spool files are opened without following a symlink at their own name (where the
# system has the flag): a link planted there is refused, not written through.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

#: The default spool's name in the temp dir itself before it had a private directory.
_LEGACY_NAME = "llmroute-spool.jsonl"


def _default_dir() -> Path:
    """The directory of default spools: one per user in the temp dir, made private.

    The temp dir is shared: a spool file there under a name anyone can work out could
    be pre-created or replaced by a symlink by another local user, so the file lives
    in a directory only this user can enter (see :func:`_private_dir`).
    """
    return Path(tempfile.gettempdir()) / f"llmroute-{os.geteuid()}"


def _private_dir(path: Path, *, create: bool) -> bool:
    """Check (making it first with ``create``) that ``path`` is a real directory owned
    by this user and closed to everyone else; whether it exists. Anything else (a
    symlink, someone else's directory, one open to others) is refused, never used:
    records written there could be read or replaced, and a replay from there would
    store whatever someone else put in it.
    """
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.geteuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        raise PermissionError(
            f"llmroute: the spool directory {path} is not a private directory of this "
            "user (a symlink, another user's, or open to others); remove it or set "
            "LLMROUTE['SPOOL_PATH']"
        )
    return True


def default_spool_path(database: str | None = None) -> Path:
    """The configured spool file (``LLMROUTE["SINK"]["SPOOL_PATH"]``, else
    ``LLMROUTE["SPOOL_PATH"]``), else ``llmroute-spool-<id>.jsonl`` in a private
    directory of this user in the temp dir (``llmroute-<uid>``, mode 0700).

    ``<id>`` names the database the records go to (alias ``database``, by default
    ``SINK["DATABASE"]``): every project on a host shares the temp dir, and one
    file for all would replay one project's records into another's database.
    """
    from .conf import get_settings

    settings = get_settings()
    if settings.spool_path:
        return Path(settings.spool_path)
    import hashlib

    from django.conf import settings as django_settings

    alias = database or settings.django.SINK.DATABASE
    where = django_settings.DATABASES.get(alias, {})
    identity = json.dumps(
        [str(where.get(k) or "") for k in ("ENGINE", "NAME", "HOST", "PORT")]
    ).encode("utf-8")
    digest = hashlib.sha256(identity).hexdigest()[:16]
    return _default_dir() / f"llmroute-spool-{digest}.jsonl"


def record_to_dict(record: UsageRecord) -> dict[str, Any]:
    """A JSON-ready dict of ``record`` (money as strings, times in ISO 8601)."""
    return {
        "id": record.id,
        "call_id": record.call_id,
        "created_at": record.created_at.isoformat(),
        "requested_model": record.requested_model,
        "chosen_model": record.chosen_model,
        "provider": record.provider,
        "usage": record.usage.model_dump(mode="json"),
        "cost": str(record.cost),
        "requested_cost": None if record.requested_cost is None else str(record.requested_cost),
        "cache_saved_cost": (
            None if record.cache_saved_cost is None else str(record.cache_saved_cost)
        ),
        "request_id": record.request_id,
        "user_id": record.user_id,
        "api_key_id": record.api_key_id,
        "feature": record.feature,
        "route": record.route,
        "tags": list(record.tags),
        "tier": record.tier,
        "mode": record.mode,
        "endpoint": record.endpoint,
        "deployment": record.deployment,
        "status": record.status,
        "error_kind": record.error_kind,
        "attempt": record.attempt,
        "attempts": record.attempts,
        "fallback_from": record.fallback_from,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "streamed": record.streamed,
        "stitched": record.stitched,
        "reasons": [list(pair) for pair in record.reasons],
        "prompt": record.prompt,
        "completion": record.completion,
        "extra": dict(record.extra),
    }


def _money(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def record_from_dict(data: dict[str, Any]) -> UsageRecord:
    """The record :func:`record_to_dict` wrote."""
    return UsageRecord(
        id=data["id"],
        call_id=data["call_id"],
        created_at=datetime.fromisoformat(data["created_at"]),
        requested_model=data["requested_model"],
        chosen_model=data["chosen_model"],
        provider=data["provider"],
        usage=Usage.model_validate(data["usage"]),
        cost=Decimal(data["cost"]),
        requested_cost=_money(data.get("requested_cost")),
        cache_saved_cost=_money(data.get("cache_saved_cost")),
        request_id=data.get("request_id"),
        user_id=data.get("user_id"),
        api_key_id=data.get("api_key_id"),
        feature=data.get("feature"),
        route=data.get("route"),
        tags=tuple(data.get("tags") or ()),
        tier=data.get("tier"),
        mode=data.get("mode", "enforce"),
        endpoint=data.get("endpoint", "chat"),
        deployment=data.get("deployment"),
        status=data.get("status", "ok"),
        error_kind=data.get("error_kind"),
        attempt=data.get("attempt", 1),
        attempts=data.get("attempts", 1),
        fallback_from=data.get("fallback_from"),
        latency_ms=data.get("latency_ms"),
        ttft_ms=data.get("ttft_ms"),
        streamed=data.get("streamed", False),
        stitched=data.get("stitched", False),
        reasons=tuple((str(c), str(s)) for c, s in data.get("reasons") or ()),
        prompt=data.get("prompt"),
        completion=data.get("completion"),
        extra=data.get("extra") or {},
    )


def _lines_of(records: Sequence[UsageRecord]) -> bytes:
    """``records`` as the spool's lines: one compact JSON object each."""
    return "".join(
        json.dumps(record_to_dict(r), separators=(",", ":"), default=str) + "\n" for r in records
    ).encode("utf-8")


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did: lines read, rows inserted, duplicates skipped, bad lines and
    records the database refused set aside."""

    read: int = 0
    inserted: int = 0
    skipped: int = 0
    rejected: int = 0
    files: int = 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # replayed and removed meanwhile
        return 0


class Spool:
    """An append-only JSONL file of records, safe across threads and processes.

    Writers hold an exclusive ``flock`` while appending and re-open the path when it
    was renamed under them, so a replay that renamed the file never misses a line.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # A default spool: its directory is checked to be private before each use.
        self._private = self.path.parent == _default_dir()

    def _make_dir(self) -> None:
        if self._private:
            _private_dir(self.path.parent, create=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _adopt_old_default(self) -> None:
        """Move a default spool left in the temp dir itself (where it was kept before
        it had a private directory) into this one, to be replayed: only regular files
        of this user (never a symlink, never someone else's file). That is
        ``llmroute-spool.jsonl``, one file for every database then, replayed into
        this spool's database as it was then, and this spool's own name."""
        if not self._private:
            return
        shared = self.path.parent.parent
        found = [
            path
            for name in dict.fromkeys((_LEGACY_NAME, self.path.name))
            for path in (shared / name, *shared.glob(name + _REPLAYING + "*"))
        ]
        for old in found:
            try:
                info = os.lstat(old)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                continue
            _private_dir(self.path.parent, create=True)
            aside = self.path.with_name(
                f"{self.path.name}{_REPLAYING}{time.time_ns()}-{os.getpid()}-old"
            )
            try:
                os.rename(old, aside)
            except FileNotFoundError:
                pass

    def append(self, records: Sequence[UsageRecord], *, fsync: bool = True) -> None:
        """Append ``records``; with ``fsync`` they are on disk before this returns.

        Without it they are in the operating system's hands (safe from a crash of
        this process, not of the machine) — what a request thread can afford.
        """
        if not records:
            return
        payload = _lines_of(records)
        with self._lock:
            self._make_dir()
            while True:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
                try:
                    if fcntl is not None:
                        fcntl.flock(fd, fcntl.LOCK_EX)
                    if not self._still_current(fd):
                        continue  # renamed by a replay while we waited: use the new file
                    os.write(fd, payload)
                    if fsync:
                        os.fsync(fd)
                    return
                finally:
                    os.close(fd)

    def _still_current(self, fd: int) -> bool:
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        there = os.fstat(fd)
        return (here.st_ino, here.st_dev) == (there.st_ino, there.st_dev)

    def pending(self) -> bool:
        """Whether there is anything to replay."""
        self._adopt_old_default()
        return any(_size(p) > 0 for p in self._replay_files(include_current=True))

    def _replay_files(self, *, include_current: bool) -> list[Path]:
        if self._private and not _private_dir(self.path.parent, create=False):
            return []
        found = sorted(self.path.parent.glob(self.path.name + _REPLAYING + "*"))
        if include_current and self.path.exists():
            found.append(self.path)
        return found

    def _claim(self) -> list[Path]:
        """Rename the live spool aside; return every file waiting for replay."""
        self._adopt_old_default()
        if self.path.exists() and self.path.stat().st_size > 0:
            aside = self.path.with_name(
                f"{self.path.name}{_REPLAYING}{time.time_ns()}-{os.getpid()}"
            )
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                pass
        return self._replay_files(include_current=False)

    def _read(self, path: Path) -> Iterator[tuple[UsageRecord | None, bytes]]:
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except FileNotFoundError:
            return  # replayed and removed by another replay meanwhile
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # wait for a writer that opened it pre-rename
            with os.fdopen(os.dup(fd), "rb") as handle:
                for raw in handle:
                    if not raw.strip():
                        continue
                    try:
                        yield record_from_dict(json.loads(raw)), raw
                    except (ValueError, KeyError, TypeError, ArithmeticError):
                        # (ArithmeticError: decimal's InvalidOperation, money that is
                        # not a number.)
                        yield None, raw
        finally:
            os.close(fd)

    def set_aside(self, records: Sequence[UsageRecord]) -> None:
        """Append ``records`` to ``<spool>.rejected``: kept for people, never replayed."""
        if not records:
            return
        payload = _lines_of(records)
        with self._lock:
            self._make_dir()
            with self._open_rejected() as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())

    def _open_rejected(self) -> Any:
        fd = os.open(
            self.path.with_name(self.path.name + _REJECTED),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW,
            0o600,
        )
        return os.fdopen(fd, "ab")

    def replay(
        self,
        write: Callable[[Sequence[UsageRecord]], tuple[int, ...]],
        *,
        batch_size: int = 500,
    ) -> ReplayResult:
        """Send every spooled record to ``write`` and remove what was written.

        ``write(records)`` stores a batch idempotently and returns ``(inserted,
        skipped)``, or ``(inserted, skipped, set aside)`` when it set records the
        database refused aside (:meth:`set_aside`); when it raises, the file stays for
        the next replay. Lines that are not records (a torn last line after a crash)
        go to ``<spool>.rejected``.
        """
        read = inserted = skipped = rejected = files = 0
        for path in self._claim():
            batch: list[UsageRecord] = []
            bad: list[bytes] = []
            for record, raw in self._read(path):
                read += 1
                if record is None:
                    bad.append(raw if raw.endswith(b"\n") else raw + b"\n")
                    continue
                batch.append(record)
                if len(batch) >= batch_size:
                    i, s, *aside = write(batch)
                    inserted, skipped, batch = inserted + i, skipped + s, []
                    rejected += sum(aside)
            if batch:
                i, s, *aside = write(batch)
                inserted, skipped = inserted + i, skipped + s
                rejected += sum(aside)
            if bad:
                rejected += len(bad)
                with self._open_rejected() as out:
                    out.writelines(bad)
            # (Another replay of this spool, reading the same file, may have removed it.)
            path.unlink(missing_ok=True)
            files += 1
        return ReplayResult(read, inserted, skipped, rejected, files)
