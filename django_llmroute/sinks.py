"""The ORM sink: usage records into the host's database, off the request path, none lost.

:class:`DjangoSink` takes records from the core (``emit`` never blocks nor raises),
buffers them in memory and writes them from one background thread per process,
on that thread's own database connection (so a request's ``ATOMIC_REQUESTS``
rollback cannot take a record with it). When the buffer is full or the database
is down, records go to the spool (:mod:`django_llmroute.spool`) and come back when
the database answers again.

:func:`store_records` is what the flusher, the spool replay and the tests use. It
is idempotent: a record already stored (same record id, or same call id and
attempt) is skipped, and the rollup is only incremented for rows inserted in
the same transaction, so replaying a batch twice never counts it twice.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, connections, models, transaction
from django.db.models import Q
from django.utils import timezone

from routing_middleware.metering import UsageRecord

from .budgets import _in_event_loop
from .models import NO_TIER, DailySummary, DailyUsage, LLMCall, RollupSums
from .signals import llm_call_recorded
from .spool import ReplayResult, Spool, default_spool_path

__all__ = [
    "DjangoSink",
    "SinkOptions",
    "StoreResult",
    "call_values",
    "record_to_call",
    "replay_spool",
    "rollup_key_date",
    "routed_cost",
    "store_records",
]

logger = logging.getLogger("django_llmroute.sink")

_MAX_BIGINT = 2**63 - 1


@dataclass(slots=True)
class StoreResult:
    """The records inserted, how many were already there, and how many were set aside."""

    inserted: list[UsageRecord] = field(default_factory=list)
    skipped: int = 0
    set_aside: int = 0


@functools.cache
def _char_limits() -> dict[str, int]:
    return {
        f.attname: f.max_length
        for f in LLMCall._meta.concrete_fields
        if isinstance(f, models.CharField) and f.max_length
    }


def _clip(value: str | None, limit: int) -> str | None:
    if value is None or len(value) <= limit:
        return value
    return value[: limit - 1] + "…"


_MONEY_QUANTUM = Decimal("1e-10")
_MONEY_LIMIT = Decimal(10) ** 10  # the money columns hold 20 digits, 10 after the point


def routed_cost(record: UsageRecord) -> Decimal | None:
    """What observe mode says ``record``'s usage would have cost on the routed model.

    Read from ``extra["routed_cost"]`` and rounded to the money columns' places;
    ``None`` when the record carries none or one that is not a storable amount.
    """
    raw = record.extra.get("routed_cost") if record.extra else None
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return None
    if not value.is_finite() or not -_MONEY_LIMIT < value < _MONEY_LIMIT:
        return None
    return value.quantize(_MONEY_QUANTUM)


def _no_nul(value: Any) -> Any:
    """``value`` with U+0000 replaced by U+FFFD in every string, keys included.

    PostgreSQL's text and jsonb cannot hold it, and a user's prompt may carry it.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, list | tuple):
        return [_no_nul(v) for v in value]
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    return value


def _routed_model(record: UsageRecord) -> str | None:
    found = record.extra.get("routed_model") if record.extra else None
    return found if isinstance(found, str) and found else None


def call_values(record: UsageRecord, user_pk: Any = None) -> dict[str, Any]:
    """The column values (by attribute name) of the :class:`LLMCall` row for ``record``.

    Text is clipped to the column sizes, so one odd record cannot fail its batch.
    """
    limits = _char_limits()
    usage = record.usage
    created = record.created_at
    if timezone.is_naive(created):
        created = created.replace(tzinfo=UTC)
    if not settings.USE_TZ:
        # Without time zone support Django stores naive local times (TIME_ZONE), and
        # SQLite refuses an aware one outright.
        created = timezone.make_naive(created, timezone.get_default_timezone())
    values: dict[str, Any] = {
        "record_id": record.id,
        "call_id": record.call_id,
        "attempt": record.attempt,
        "attempts": record.attempts,
        "created_at": created,
        "request_id": record.request_id,
        "user_id": user_pk,
        "user_ref": record.user_id,
        "api_key_ref": record.api_key_id,
        "feature": record.feature,
        "route": record.route,
        "tags": list(record.tags),
        "tier": record.tier,
        "mode": record.mode,
        "endpoint": record.endpoint,
        "requested_model": record.requested_model,
        "chosen_model": record.chosen_model,
        "provider": record.provider,
        "deployment": record.deployment,
        "status": record.status,
        "error_kind": record.error_kind,
        "fallback_from": record.fallback_from,
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "usage_estimated": usage.estimated,
        "cost": record.cost,
        "requested_cost": record.requested_cost,
        "cache_saved_cost": record.cache_saved_cost,
        "routed_model": _routed_model(record),
        "routed_cost": routed_cost(record),
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "streamed": record.streamed,
        "stitched": record.stitched,
        "reasons": [list(pair) for pair in record.reasons],
        "extra": dict(record.extra),
        "prompt": record.prompt,
        "completion": record.completion,
    }
    values = {name: _no_nul(value) for name, value in values.items()}
    for name, limit in limits.items():
        value = values.get(name)
        if isinstance(value, str) and len(value) > limit:
            values[name] = _clip(value, limit)
    return values


def record_to_call(record: UsageRecord, user_pk: Any = None) -> LLMCall:
    """An unsaved :class:`LLMCall` for ``record``."""
    return LLMCall(**call_values(record, user_pk))


def _copy_calls(rows: list[dict[str, Any]], using: str) -> bool:
    """Insert rows with PostgreSQL ``COPY`` (psycopg 3); ``False`` when not available.

    ``bulk_create`` spends most of its time preparing values in Python; ``COPY``
    streams the same rows several times faster.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return False
    fields = [f for f in LLMCall._meta.concrete_fields if not f.primary_key]
    json_columns = {f.attname for f in fields if isinstance(f, models.JSONField)}
    qn = connection.ops.quote_name
    sql = (
        f"COPY {qn(LLMCall._meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) FROM STDIN"
    )
    with connection.cursor() as cursor:
        raw = cursor.cursor
        if not hasattr(raw, "copy"):
            return False
        from psycopg.types.json import Jsonb

        names = [f.attname for f in fields]
        with connection.wrap_database_errors, raw.copy(sql) as copy:
            for row in rows:
                copy.write_row([Jsonb(row[n]) if n in json_columns else row[n] for n in names])
    return True


def _resolve_users(refs: set[str], using: str) -> dict[str, Any]:
    """Map user ids as recorded to primary keys of users that exist."""
    if not refs:
        return {}
    user_model = get_user_model()
    pk_field = user_model._meta.pk
    assert pk_field is not None
    wanted: dict[str, Any] = {}
    for ref in refs:
        try:
            pk = pk_field.to_python(ref)
        except (ValidationError, ValueError, TypeError):
            continue
        if isinstance(pk, int) and not -_MAX_BIGINT <= pk <= _MAX_BIGINT:
            continue
        wanted[ref] = pk
    if not wanted:
        return {}
    found = set(
        user_model._default_manager.using(using)
        .filter(pk__in=set(wanted.values()))
        .values_list("pk", flat=True)
    )
    return {ref: pk for ref, pk in wanted.items() if pk in found}


def rollup_key_date(record_time: Any) -> date:
    """The rollup's date of a call: its local date in ``TIME_ZONE``."""
    if timezone.is_naive(record_time):
        record_time = record_time.replace(tzinfo=UTC)
    return timezone.localdate(record_time, timezone.get_default_timezone())


_ROLLUP_SUMS = (
    "calls",
    "errors",
    "cache_hits",
    "fallbacks",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost",
    "requested_cost",
    "saved_cost",
    "latency_ms_sum",
    "latency_count",
    "observed_calls",
    "observed_cost",
    "observed_requested_cost",
    "observed_routed_cost",
    "observed_unpriced",
)
_USAGE_KEY = ("date", "user_ref", "feature", "provider", "model", "tier")
_SUMMARY_KEY = ("date", "feature", "provider", "model", "tier")
_SUM_TYPES = (
    *["bigint"] * 8,
    *["numeric"] * 3,
    "float8",
    "bigint",
    "bigint",
    *["numeric"] * 3,
    "bigint",
)


def _rollup_rows(records: Sequence[UsageRecord], *, with_user: bool) -> list[list[Any]]:
    """One row per rollup key: the key's values, then the sums in ``_ROLLUP_SUMS`` order."""
    totals: dict[tuple[Any, ...], list[Any]] = {}
    for r in records:
        # Cut as call_values cuts them: the rollup's keys must be the calls' own.
        user = (_clip(_no_nul(r.user_id or ""), 150),) if with_user else ()
        key = (
            rollup_key_date(r.created_at),
            *user,
            _clip(_no_nul(r.feature or ""), 128),
            _clip(_no_nul(r.provider or ""), 64),
            _clip(_no_nul(r.chosen_model or ""), 128),
            NO_TIER if r.tier is None else r.tier,
        )
        requested = r.requested_cost if r.requested_cost is not None else r.cost
        row = totals.setdefault(
            key,
            [0] * 8 + [Decimal(0)] * 3 + [0.0, 0, 0] + [Decimal(0)] * 3 + [0],
        )
        row[0] += 1
        row[1] += r.status == "error"
        row[2] += r.status == "cache_hit"
        row[3] += r.fallback_from is not None
        row[4] += r.usage.input_tokens
        row[5] += r.usage.cached_input_tokens
        row[6] += r.usage.output_tokens
        row[7] += r.usage.reasoning_tokens
        row[8] += r.cost
        row[9] += requested
        row[10] += requested - r.cost
        if r.latency_ms is not None:
            row[11] += float(r.latency_ms)
            row[12] += 1
        if r.mode == "observe":
            routed = routed_cost(r)
            row[13] += 1
            row[14] += r.cost
            row[15] += requested
            row[16] += r.cost if routed is None else routed
            row[17] += routed is None
    return [[*key, *values] for key, values in totals.items()]


def _upsert_rollup(
    records: Sequence[UsageRecord], using: str, model: type[RollupSums], key: tuple[str, ...]
) -> None:
    """Add ``records`` to a rollup with ``INSERT … ON CONFLICT DO UPDATE``.

    Both SQLite (3.24+) and PostgreSQL take this statement; increments happen in
    the database so concurrent writers never overwrite each other's totals.
    """
    rows = _rollup_rows(records, with_user="user_ref" in key)
    if not rows:
        return
    connection = connections[using]
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    columns = [*key, *_ROLLUP_SUMS]
    column_sql = ", ".join(qn(c) for c in columns)
    row_sql = "(" + ", ".join(["%s"] * len(columns)) + ")"
    updates = ", ".join(f"{qn(c)} = {table}.{qn(c)} + EXCLUDED.{qn(c)}" for c in _ROLLUP_SUMS)
    conflict = f"ON CONFLICT ({', '.join(qn(c) for c in key)}) DO UPDATE SET {updates}"
    ops = connection.ops
    width = len(key)
    params = [
        [
            ops.adapt_datefield_value(row[0]),
            *row[1:width],
            *(
                ops.adapt_decimalfield_value(v, 20, 10) if kind == "numeric" else v
                for v, kind in zip(row[width:], _SUM_TYPES, strict=True)
            ),
        ]
        for row in rows
    ]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One statement, one parameter per column: rows arrive as arrays.
            key_types = [
                "date" if c == "date" else "smallint" if c == "tier" else "text" for c in key
            ]
            arrays = ", ".join(f"%s::{t}[]" for t in (*key_types, *_SUM_TYPES))
            cursor.execute(
                f"INSERT INTO {table} ({column_sql}) SELECT * FROM UNNEST({arrays}) {conflict}",
                [list(column) for column in zip(*params, strict=True)],
            )
            return
        # Elsewhere, many rows per statement within the backend's parameter limit
        # (keys are unique within a batch, as ON CONFLICT DO UPDATE requires).
        limit = connection.features.max_query_params or 10**6
        per_statement = max(1, min(500, limit // len(columns)))
        for start in range(0, len(params), per_statement):
            chunk = params[start : start + per_statement]
            values_sql = ", ".join([row_sql] * len(chunk))
            cursor.execute(
                f"INSERT INTO {table} ({column_sql}) VALUES {values_sql} {conflict}",
                [value for row in chunk for value in row],
            )


def _dedupe(records: Sequence[UsageRecord]) -> list[UsageRecord]:
    seen_ids: set[str] = set()
    seen_pairs: set[tuple[str, int]] = set()
    unique: list[UsageRecord] = []
    for r in records:
        pair = (r.call_id, r.attempt)
        if r.id in seen_ids or pair in seen_pairs:
            continue
        seen_ids.add(r.id)
        seen_pairs.add(pair)
        unique.append(r)
    return unique


def _already_stored(records: list[UsageRecord], using: str) -> list[tuple[str, str, int]]:
    """(record id, call id, attempt) of rows matching ``records`` by id or by call."""
    connection = connections[using]
    ids = [r.id for r in records]
    call_ids = list({r.call_id for r in records})
    if connection.vendor == "postgresql":
        qn = connection.ops.quote_name
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT record_id, call_id, attempt FROM {qn(LLMCall._meta.db_table)} "
                "WHERE record_id = ANY(%s::text[]) OR call_id = ANY(%s::text[])",
                [ids, call_ids],
            )
            return list(cursor.fetchall())
    manager = LLMCall._default_manager.db_manager(using)
    return list(
        manager.filter(Q(record_id__in=ids) | Q(call_id__in=call_ids)).values_list(
            "record_id", "call_id", "attempt"
        )
    )


def _store_once(records: list[UsageRecord], using: str) -> StoreResult:
    manager = LLMCall._default_manager.db_manager(using)
    with transaction.atomic(using=using):
        taken_ids: set[str] = set()
        taken_pairs: set[tuple[str, int]] = set()
        for record_id, call_id, attempt in _already_stored(records, using):
            taken_ids.add(record_id)
            taken_pairs.add((call_id, attempt))
        fresh = [
            r
            for r in records
            if r.id not in taken_ids and (r.call_id, r.attempt) not in taken_pairs
        ]
        if fresh:
            users = _resolve_users({r.user_id for r in fresh if r.user_id}, using)
            rows = [call_values(r, users.get(r.user_id or "")) for r in fresh]
            if not _copy_calls(rows, using):
                manager.bulk_create([LLMCall(**row) for row in rows])
            _upsert_rollup(fresh, using, DailyUsage, _USAGE_KEY)
            _upsert_rollup(fresh, using, DailySummary, _SUMMARY_KEY)
    return StoreResult(fresh, len(records) - len(fresh))


def store_records(
    records: Sequence[UsageRecord], *, using: str = "default", send_signals: bool = True
) -> StoreResult:
    """Insert ``records`` not stored yet and add them to the rollup, in one transaction.

    Run this outside any transaction of the caller's (the sink runs it on its own
    thread and connection). A concurrent writer inserting the same record makes
    the transaction fail on the unique constraints; it is then retried and the
    record is skipped. ``llm_call_recorded`` is sent after commit for each new row.
    """
    unique = _dedupe(records)
    duplicates = len(records) - len(unique)
    for attempt in range(3):
        try:
            result = _store_once(unique, using)
            break
        except IntegrityError:
            if attempt == 2:
                raise
    result.skipped += duplicates
    if send_signals and result.inserted and llm_call_recorded.has_listeners(LLMCall):
        stored = LLMCall._default_manager.db_manager(using).in_bulk(
            [r.id for r in result.inserted], field_name="record_id"
        )
        for record in result.inserted:
            call = stored.get(record.id)
            if call is not None:
                llm_call_recorded.send(sender=LLMCall, instance=call, record=record)
    return result


#: What a database raises for a value it cannot store (out of range, a NUL in text, NaN
#: in a NOT NULL sum, …): the record's fault, not the database's, unlike an outage's
#: ``OperationalError`` / ``InterfaceError``.
_UNSTORABLE = (DataError, IntegrityError, OverflowError, InvalidOperation, ValueError, TypeError)


def _store_isolating(records: Sequence[UsageRecord], using: str, spool: Spool) -> StoreResult:
    """:func:`store_records`, setting aside the records the database refuses on their own.

    One unstorable record fails its whole transaction; retried or replayed as is, the
    batch would fail forever, and with it every spooled record behind it. Halving the
    batch finds the culprits in a few writes; they go to the spool's ``.rejected``
    file (:meth:`Spool.set_aside`) and the rest is stored. An outage still raises.
    """
    try:
        return store_records(records, using=using)
    except _UNSTORABLE:
        if len(records) > 1:
            middle = len(records) // 2
            first = _store_isolating(records[:middle], using, spool)
            second = _store_isolating(records[middle:], using, spool)
            return StoreResult(
                first.inserted + second.inserted,
                first.skipped + second.skipped,
                first.set_aside + second.set_aside,
            )
        logger.exception(
            "llmroute: the database refused usage record %s; set aside in %s.rejected",
            records[0].id,
            spool.path.name,
        )
        spool.set_aside(records)
        return StoreResult(set_aside=1)


# --------------------------------------------------------------------------- the sink


@functools.cache
def _warn_sync_in_event_loop() -> None:
    logger.warning(
        "llmroute: SINK DURABILITY 'sync' is not waited for inside an event loop (async "
        "views, ASGI): records are queued and written by the flusher as with 'async'"
    )


@dataclass(frozen=True, slots=True)
class SinkOptions:
    """How :class:`DjangoSink` buffers and writes.

    - ``buffer_size``: records held in memory; beyond it, ``emit`` spills to the spool.
    - ``flush_interval_ms`` / ``batch_size``: the flusher writes every interval, or as
      soon as a batch is full.
    - ``spool_path``: the JSONL spool (default :func:`~django_llmroute.spool.default_spool_path`).
    - ``durability``: ``"async"`` (``emit`` returns at once) or ``"sync"`` (``emit``
      returns once the record is in the database or the spool, or after ``sync_timeout_s``).
      On a thread running an event loop ``emit`` never waits, whatever the durability:
      blocking there would stall every request the loop serves (logged once).
    - ``retries`` / ``retry_backoff_ms``: write attempts after the first, with doubling
      backoff, before a batch goes to the spool.
    - ``database``: the connection alias to write through.
    - ``shutdown_timeout_s``: how long the exit hook waits for the last writes.
    """

    buffer_size: int = 10_000
    flush_interval_ms: int = 200
    batch_size: int = 500
    spool_path: str | os.PathLike[str] | None = None
    durability: Literal["async", "sync"] = "async"
    retries: int = 3
    retry_backoff_ms: int = 50
    database: str = "default"
    sync_timeout_s: float = 10.0
    shutdown_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.buffer_size < 1 or self.batch_size < 1:
            raise ValueError("buffer_size and batch_size must be at least 1")
        if self.flush_interval_ms < 1:
            raise ValueError("flush_interval_ms must be at least 1")
        if self.durability not in ("async", "sync"):
            raise ValueError("durability is 'async' or 'sync'")
        if self.retries < 0 or self.retry_backoff_ms < 0:
            raise ValueError("retries and retry_backoff_ms cannot be negative")


class _Ticket:
    """A record waiting in the buffer; ``done`` is set once it is stored or spooled."""

    __slots__ = ("done", "record")

    def __init__(self, record: UsageRecord, *, wait: bool) -> None:
        self.record = record
        self.done = threading.Event() if wait else None

    def finish(self) -> None:
        if self.done is not None:
            self.done.set()


class DjangoSink:
    """A :class:`~routing_middleware.metering.RecordSink` that stores records via the ORM.

    Nothing starts until the first ``emit``: then one daemon flusher thread per
    process (a forked child starts its own). ``flush()`` waits for the buffer to
    drain; ``close()`` flushes and stops the thread (also run at interpreter exit).
    """

    def __init__(self, options: SinkOptions | None = None) -> None:
        self.options = options or SinkOptions()
        self._pid = -1
        self._exit_hook = False
        self._start_lock = threading.Lock()
        self._reset_state()

    # -- state ------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._cond = threading.Condition()
        self._buffer: deque[_Ticket] = deque()
        self._inflight: list[_Ticket] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake = False
        self._replay_wanted = True  # look at the spool once when the flusher starts
        self._spool_obj: Spool | None = None
        self.last_replay: ReplayResult | None = None

    @property
    def spool(self) -> Spool:
        """The spool this sink spills to."""
        if self._spool_obj is None:
            path = self.options.spool_path or default_spool_path(self.options.database)
            self._spool_obj = Spool(Path(path))
        return self._spool_obj

    def _ensure_started(self) -> None:
        if self._pid == os.getpid() and self._thread is not None and not self._stopping:
            return
        with self._start_lock:
            if self._pid != os.getpid():
                # A fresh process (first use, or a fork): the parent's buffer is the
                # parent's to write; start clean with our own lock and thread.
                self._reset_state()
                self._pid = os.getpid()
            if not self._exit_hook:
                atexit.register(self._at_exit)
                self._exit_hook = True
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name="llmroute-sink-flusher", daemon=True
                )
                self._thread.start()

    # -- the caller's side ------------------------------------------------------------

    def emit(self, record: UsageRecord) -> None:
        """Queue ``record`` for writing; never blocks on the database and never raises."""
        try:
            self._ensure_started()
            sync = self.options.durability == "sync"
            ticket = _Ticket(record, wait=sync)
            with self._cond:
                full = len(self._buffer) >= self.options.buffer_size
                if not full:
                    self._buffer.append(ticket)
                    if sync or len(self._buffer) >= self.options.batch_size:
                        self._wake = True
                        self._cond.notify_all()
            if full:
                # On the caller's thread: hand the line to the OS, no fsync wait.
                self.spool.append([record], fsync=False)
                self._replay_wanted = True
            elif ticket.done is not None and threading.current_thread() is not self._thread:
                # (The flusher itself, e.g. a signal receiver emitting, must not wait on itself.)
                if _in_event_loop():
                    _warn_sync_in_event_loop()  # queued; waiting would stall every request
                else:
                    ticket.done.wait(self.options.sync_timeout_s)
        except Exception:
            logger.exception("llmroute: could not queue a usage record; spooling it")
            try:
                self.spool.append([record])
            except Exception:
                logger.exception("llmroute: could not spool a usage record (id %s)", record.id)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every record emitted so far is stored or spooled.

        Returns ``False`` when ``timeout`` (seconds) ran out first.
        """
        if self._thread is None or self._pid != os.getpid():
            return not self._buffer
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._wake = True
            self._cond.notify_all()
            while self._buffer or self._inflight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush, then stop the flusher thread. The sink starts again on the next emit."""
        done = self.flush(timeout)
        thread = self._thread
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        if self._exit_hook:
            atexit.unregister(self._at_exit)
            self._exit_hook = False
        return done

    def _at_exit(self) -> None:
        if self._pid != os.getpid():
            return
        if not self.close(self.options.shutdown_timeout_s):
            with self._cond:
                left = [t.record for t in self._inflight] + [t.record for t in self._buffer]
            try:
                # Writing is stuck: spool what is left. Replay skips whatever the
                # stuck write manages to commit after all.
                self.spool.append(left)
            except Exception:
                logger.exception("llmroute: %d usage records could not be saved", len(left))

    # -- the flusher's side -----------------------------------------------------------

    def _run(self) -> None:
        interval = self.options.flush_interval_ms / 1000
        batch_size = self.options.batch_size
        try:
            while True:
                with self._cond:
                    if len(self._buffer) < batch_size and not self._wake and not self._stopping:
                        self._cond.wait(interval)
                    self._wake = False
                    batch = [
                        self._buffer.popleft() for _ in range(min(batch_size, len(self._buffer)))
                    ]
                    self._inflight = batch
                    stopping = self._stopping
                    drained = not self._buffer
                if batch:
                    stored = self._write(batch)
                    if stored and self._replay_wanted:
                        self._replay()
                elif self._replay_wanted:
                    self._replay()
                with self._cond:
                    self._inflight = []
                    self._cond.notify_all()
                if drained:
                    self._close_connection()
                if stopping and drained:
                    return
        finally:
            self._close_connection()

    def _close_connection(self) -> None:
        try:
            connections[self.options.database].close()
        except Exception:
            logger.debug("llmroute: closing the sink's connection failed", exc_info=True)

    def _write(self, batch: list[_Ticket]) -> bool:
        records = [t.record for t in batch]
        delay = self.options.retry_backoff_ms / 1000
        for attempt in range(self.options.retries + 1):
            try:
                _store_isolating(records, self.options.database, self.spool)
            except Exception:
                logger.warning(
                    "llmroute: writing %d usage records failed (attempt %d)",
                    len(records),
                    attempt + 1,
                    exc_info=True,
                )
                self._close_connection()
                if attempt < self.options.retries:
                    time.sleep(delay * 2**attempt)
            else:
                for ticket in batch:
                    ticket.finish()
                return True
        if self._spool_or_requeue(batch):
            for ticket in batch:
                ticket.finish()
        return False

    def _spool_or_requeue(self, batch: list[_Ticket]) -> bool:
        """Spool ``batch``; when even that fails, put it back in the buffer (``False``)."""
        try:
            self.spool.append([t.record for t in batch])
            self._replay_wanted = True
            return True
        except Exception:
            logger.exception("llmroute: spooling failed too; keeping %d records", len(batch))
            with self._cond:
                self._buffer.extendleft(reversed(batch))
            time.sleep(self.options.flush_interval_ms / 1000)
            return False

    def _replay(self) -> None:
        self._replay_wanted = False
        try:
            if not self.spool.pending():
                return
            self.last_replay = self.spool.replay(self._store_for_replay)
            logger.info("llmroute: replayed the spool: %s", self.last_replay)
        except Exception:
            self._replay_wanted = True
            self._close_connection()
            logger.warning("llmroute: spool replay failed; will try again", exc_info=True)

    def _store_for_replay(self, records: Sequence[UsageRecord]) -> tuple[int, int, int]:
        result = _store_isolating(records, self.options.database, self.spool)
        return len(result.inserted), result.skipped, result.set_aside


def replay_spool(
    path: str | os.PathLike[str] | None = None, *, using: str = "default", batch_size: int = 500
) -> ReplayResult:
    """Replay a spool file into the database now (what ``llmroute_replay`` runs)."""
    spool = Spool(Path(path) if path else default_spool_path(using))

    def write(records: Sequence[UsageRecord]) -> tuple[int, int, int]:
        result = _store_isolating(records, using, spool)
        return len(result.inserted), result.skipped, result.set_aside

    return spool.replay(write, batch_size=batch_size)
