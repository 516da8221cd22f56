"""Budgets on Django's cache framework, and budgets edited in the admin.

:class:`CacheBudgetStore` is a core :class:`~routing_middleware.budgets.BudgetStore`
kept in a Django cache (``LLMROUTE["BUDGET_CACHE"]``, the ``default`` cache unless
set). How atomic a reservation across several budget lines is depends on the backend:

- ``django.core.cache.backends.redis.RedisCache``: each reserve, settle and read is
  one Lua script on the cache's (first, writable) Redis server, through the core's
  :class:`~routing_middleware.budgets.RedisBudgetStore`. Exact across every worker
  and host sharing that Redis.
- Any other backend (``LocMemCache``, memcached, database, file): every operation
  takes a lock per budget line (``cache.add`` of a lock key, in a fixed order, held
  at most ``BUDGET_LOCK_TIMEOUT_S``) and reads and writes the counters under it.
  Exact among processes sharing the cache while no lock holder stalls past the lock
  timeout. ``LocMemCache`` is per process: each worker then has its own counters,
  so a limit holds per worker, not in total. Use Redis for many workers.
- ``DummyCache`` stores nothing and cannot hold a budget (system check ``E004``).

Holds have ids, as in the core stores: a reserve or settle sent again holds or counts
nothing more, and a hold not settled within ``hold_ttl_s`` stops counting. On the
cache-lock backends each charge key's entry keeps, with its counters, a record of its
live holds and the ids settled within ``hold_ttl_s`` (the newest :data:`MAX_SETTLED_IDS`):
one entry, so that a cache evicting it drops the holds and what they hold together.

Counters live in the cache, which may evict or lose them. Every
``BUDGET_RECONCILE_S`` seconds a line's settled spend is compared with the stored
calls (:class:`~django_llmroute.models.LLMCall`) for its period and raised to it
when the cache has less, so a restart or eviction cannot reopen a spent budget.

:func:`database_budgets` is the bridge from the admin's :class:`~django_llmroute.models.Budget`
rows to the core: the active rows as core budgets, kept in the cache (for
``BUDGETS_CACHE_TIMEOUT_S`` at most) and dropped when a row is saved or deleted
(after commit, for every worker: a version number in the cache moves and each
process looks at it at most every ``BUDGETS_REFRESH_S``). A failed load is never
cached. Called from an event loop it never waits for the database: it answers with
the last budgets the process saw and loads them on a background thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from itertools import islice
from typing import Any

from django.core.cache import BaseCache, caches
from django.db import connections, transaction

from routing_middleware.budgets import (
    HOLD_TTL_S,
    BudgetLine,
    RedisBudgetStore,
    from_micros,
    new_hold_id,
    to_micros,
)
from routing_middleware.budgets import Budget as CoreBudget

__all__ = [
    "BUDGETS_CACHE_TIMEOUT_S",
    "BUDGETS_KEY",
    "BUDGETS_VERSION_KEY",
    "MAX_SETTLED_IDS",
    "CacheBudgetStore",
    "budgets_version",
    "database_budgets",
    "invalidate_database_budgets",
    "line_spent_in_db",
]

logger = logging.getLogger("django_llmroute.budgets")

#: Cache key of the active admin budgets (as core budget fields).
BUDGETS_KEY = "llmroute:db-budgets"
#: Cache key of a number that moves whenever an admin budget is saved or deleted.
BUDGETS_VERSION_KEY = "llmroute:db-budgets-version"
#: How long the admin budgets stay in the cache. Changes travel by the version number,
#: not by expiry; this only bounds how long an entry that went wrong can last.
BUDGETS_CACHE_TIMEOUT_S = 600

_PREFIX = "llmroute:budget:"
#: Settled hold ids a charge key's record keeps at most on the cache-lock backends (the
#: newest), besides forgetting them after ``hold_ttl_s``: the record is read and
#: written whole by every reserve and settle on that key.
MAX_SETTLED_IDS = 1024

# A charge key's hold record on the cache-lock backends:
# (live holds: id -> (expires at, amount), settled ids: id -> forgotten at).
_Record = tuple[dict[str, tuple[float, int]], dict[str, float]]
# A counter's cache entry there is (settled, held, live holds, settled ids); one written
# by a version without hold ids is (settled, held).


def _is_redis(cache: BaseCache) -> bool:
    from django.core.cache.backends.redis import RedisCache

    return isinstance(cache, RedisCache)


class CacheBudgetStore:
    """Budget counters in a Django cache; see the module notes for atomicity per backend.

    ``alias`` names the cache. ``lock_timeout_s`` bounds how long a lock may be
    held (non-Redis backends). ``reconcile_s`` is how often a line is reconciled
    with the stored calls (``0`` never). ``hold_ttl_s`` is how long a hold that is
    not settled counts (on ``clock``, a wall clock shared by the processes, on the
    cache-lock backends; on Redis, the server's). Async twins run the blocking
    operation in a worker thread, as Django's own cache API does.
    """

    def __init__(
        self,
        alias: str = "default",
        *,
        lock_timeout_s: float = 5.0,
        reconcile_s: float = 300.0,
        database: str = "default",
        hold_ttl_s: float = HOLD_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.alias = alias
        self.lock_timeout_s = lock_timeout_s
        self.reconcile_s = reconcile_s
        self.database = database
        self.hold_ttl_s = hold_ttl_s
        self._clock = clock
        self._redis: RedisBudgetStore | None = None
        self._redis_client: Any = None
        self._init_lock = threading.Lock()
        self._next_reconcile: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"CacheBudgetStore(alias={self.alias!r}, atomic={self.atomicity})"

    @property
    def cache(self) -> BaseCache:
        return caches[self.alias]

    @property
    def atomicity(self) -> str:
        """``"redis-script"`` or ``"cache-lock"``: how reservations are made atomic."""
        return "redis-script" if _is_redis(self.cache) else "cache-lock"

    def close(self) -> None:
        """Drop the Redis connections this store opened (Redis backend only)."""
        if self._redis_client is not None:
            self._redis_client.connection_pool.disconnect()
            self._redis_client = None
            self._redis = None

    # ------------------------------------------------------------------ backends

    def _redis_store(self) -> RedisBudgetStore | None:
        cache = self.cache
        if not _is_redis(cache):
            return None
        if self._redis is None:
            with self._init_lock:
                if self._redis is None:
                    # The writable server of the cache; keys carry the cache's prefix
                    # and version like the cache's own keys.
                    client = cache._cache.get_client(write=True)  # type: ignore[attr-defined]
                    self._redis_client = client
                    self._redis = RedisBudgetStore(
                        client=client, prefix=cache.make_key(_PREFIX), hold_ttl_s=self.hold_ttl_s
                    )
        return self._redis

    def _key(self, name: str) -> str:
        return _PREFIX + name

    def _lock_names(self, lines: Sequence[BudgetLine]) -> list[str]:
        return sorted({f"{_PREFIX}lock:{line.budget.name}|{line.subject}" for line in lines})

    def _acquire(self, names: list[str]) -> list[tuple[str, str]]:
        cache = self.cache
        held: list[tuple[str, str]] = []
        timeout = max(1, int(self.lock_timeout_s + 0.999))
        deadline = time.monotonic() + self.lock_timeout_s * 2
        try:
            for name in names:
                token = uuid.uuid4().hex
                delay = 0.0005
                while not cache.add(name, token, timeout=timeout):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"llmroute: budget lock {name} is stuck")
                    time.sleep(delay)
                    delay = min(delay * 2, 0.01)
                held.append((name, token))
        except BaseException:
            self._release(held)
            raise
        return held

    def _release(self, held: list[tuple[str, str]]) -> None:
        cache = self.cache
        for name, token in reversed(held):
            if cache.get(name) == token:
                cache.delete(name)

    def _read(self, keys: list[str]) -> dict[str, list[int]]:
        return self._read_records(keys)[0]

    def _write(self, line: BudgetLine, settled: int, held: int, record: _Record) -> None:
        self.cache.set(
            self._key(line.charge_key),
            (settled, max(0, held), record[0], record[1]),
            timeout=line.ttl_s,
        )

    def _read_records(self, keys: list[str]) -> tuple[dict[str, list[int]], dict[str, _Record]]:
        """The counters (settled, held) and hold records of ``keys``."""
        found = self.cache.get_many([self._key(k) for k in keys])
        values: dict[str, list[int]] = {}
        records: dict[str, _Record] = {}
        for k in keys:
            entry: Any = found.get(self._key(k)) or (0, 0)
            values[k] = [entry[0], entry[1]]
            records[k] = (entry[2], entry[3]) if len(entry) >= 4 else ({}, {})
        return values, records

    @staticmethod
    def _lapsed(record: _Record, now: float) -> int:
        """What the holds in ``record`` that ran out of time held."""
        return sum(amount for expires, amount in record[0].values() if expires <= now)

    def _spent(self, value: list[int], record: _Record, now: float) -> int:
        """Settled plus held, the holds that ran out of time left out."""
        return value[0] + max(0, value[1] - self._lapsed(record, now))

    def _prune(self, value: list[int], record: _Record, now: float) -> None:
        """Drop the holds that ran out of time (and what they held) and the settled
        ids to forget from a charge key's counter and record, in place."""
        held, settled = record
        for hold in [h for h, (expires, _) in held.items() if expires <= now]:
            value[1] = max(0, value[1] - held.pop(hold)[1])
        for hold in [h for h, forget in settled.items() if forget <= now]:
            del settled[hold]

    def _settled(self, record: _Record, hold: str, now: float) -> None:
        """Remember ``hold`` as settled in ``record``, forgetting the oldest past
        :data:`MAX_SETTLED_IDS`."""
        settled = record[1]
        settled[hold] = now + self.hold_ttl_s
        for old in list(islice(settled, max(0, len(settled) - MAX_SETTLED_IDS))):
            del settled[old]

    # ------------------------------------------------------------------ the protocol

    def reserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        """Hold ``amount`` on every line as ``hold``, or nothing; the index of a line
        that refused. An id held or settled already holds nothing more."""
        if not lines:
            return None
        self._maybe_reconcile(lines)
        redis = self._redis_store()
        if redis is not None:
            failed = redis.reserve(lines, amount, hold)
        else:
            held = self._acquire(self._lock_names(lines))
            try:
                failed = self._reserve_locked(lines, amount, hold)
            finally:
                self._release(held)
        if failed is not None:
            self._announce(lines[failed], amount)
        return failed

    def _reserve_locked(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        now = self._clock()
        values, records = self._read_records([k for line in lines for k in line.window])
        first = records[lines[0].charge_key]
        if max(first[0].get(hold, (0.0,))[0], first[1].get(hold, 0.0)) > now:
            return None  # a retry: held (or settled) already
        for index, line in enumerate(lines):
            if line.limit is not None:
                spent = sum(self._spent(values[k], records[k], now) for k in line.window)
                if spent + amount > line.limit:
                    return index
        for line in lines:
            value, record = values[line.charge_key], records[line.charge_key]
            self._prune(value, record, now)
            value[1] += amount
            record[0][hold] = (now + self.hold_ttl_s, amount)
            self._write(line, value[0], value[1], record)
        return None

    def settle(self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str) -> None:
        """Drop the hold ``hold`` and record ``actual`` spend on every line, once."""
        if not lines:
            return
        redis = self._redis_store()
        if redis is not None:
            redis.settle(lines, reserved, actual, hold)
            return
        held_locks = self._acquire(self._lock_names(lines))
        try:
            now = self._clock()
            values, records = self._read_records([line.charge_key for line in lines])
            for line in lines:
                value, record = values[line.charge_key], records[line.charge_key]
                self._prune(value, record, now)
                if hold in record[1]:
                    continue  # settled already
                found = record[0].pop(hold, None)
                if found is not None:
                    value[1] = max(0, value[1] - found[1])
                value[0] += actual
                self._settled(record, hold, now)
                self._write(line, value[0], value[1], record)
        finally:
            self._release(held_locks)

    def totals(self, lines: Sequence[BudgetLine]) -> list[int]:
        """Settled plus held spend per line."""
        if not lines:
            return []
        self._maybe_reconcile(lines)
        redis = self._redis_store()
        if redis is not None:
            return redis.totals(lines)
        return self._totals_unlocked(lines)

    def _totals_unlocked(self, lines: Sequence[BudgetLine]) -> list[int]:
        now = self._clock()
        values, records = self._read_records([k for line in lines for k in line.window])
        return [sum(self._spent(values[k], records[k], now) for k in line.window) for line in lines]

    def settled(self, lines: Sequence[BudgetLine]) -> list[int]:
        """Settled spend only (no holds) per line."""
        if not lines:
            return []
        redis = self._redis_store()
        if redis is not None:
            client = self._redis_client
            out = []
            for line in lines:
                fields = [client.hget(redis.prefix + k, "s") for k in line.window]
                out.append(sum(int(v or 0) for v in fields))
            return out
        values = self._read([k for line in lines for k in line.window])
        return [sum(values[k][0] for k in line.window) for line in lines]

    async def areserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        """Async twin of :meth:`reserve`."""
        return await asyncio.to_thread(self.reserve, lines, amount, hold)

    async def asettle(
        self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str
    ) -> None:
        """Async twin of :meth:`settle`."""
        await asyncio.to_thread(self.settle, lines, reserved, actual, hold)

    async def atotals(self, lines: Sequence[BudgetLine]) -> list[int]:
        """Async twin of :meth:`totals`."""
        return await asyncio.to_thread(self.totals, lines)

    # ------------------------------------------------------------------ reconciliation

    def reconcile(self, lines: Sequence[BudgetLine]) -> list[int]:
        """Raise each line's settled spend to what the stored calls say; the amounts added.

        Blocking, and it reads the database: call it from a thread that may.
        """
        added: list[int] = []
        for line in lines:
            stored = to_micros(line_spent_in_db(line, using=self.database))
            current = self.settled([line])[0]
            missing = stored - current
            if missing > 0:
                self.settle([line], 0, missing, new_hold_id())
                logger.info(
                    "llmroute: budget %s|%s was %s below the stored calls; corrected",
                    line.budget.name,
                    line.subject,
                    from_micros(missing),
                )
            added.append(max(0, missing))
        return added

    def _maybe_reconcile(self, lines: Sequence[BudgetLine]) -> None:
        if self.reconcile_s <= 0:
            return
        # A process-local note keeps the cache out of it between reconciliations;
        # the cache key makes one worker (not every worker) do each one.
        now = time.monotonic()
        local = self._next_reconcile
        pending = [line for line in lines if local.get(line.charge_key, 0.0) <= now]
        if not pending:
            return
        if len(local) > 4096:
            local.clear()
        cache = self.cache
        due = []
        for line in pending:
            local[line.charge_key] = now + self.reconcile_s
            if cache.add(
                f"{_PREFIX}reconciled:{line.charge_key}", 1, timeout=max(1, int(self.reconcile_s))
            ):
                due.append(line)
        if not due:
            return
        # On a thread of its own: its own database connection, outside whatever
        # transaction the request holds. Waits a little, never long.
        worker = threading.Thread(
            target=self._reconcile_in_thread, args=(due,), name="llmroute-budget-reconcile"
        )
        worker.daemon = True
        worker.start()
        worker.join(2.0)

    def _reconcile_in_thread(self, lines: Sequence[BudgetLine]) -> None:
        try:
            self.reconcile(lines)
        except Exception:
            logger.warning("llmroute: budget reconciliation failed", exc_info=True)
        finally:
            connections.close_all()

    # ------------------------------------------------------------------ signals

    def _announce(self, line: BudgetLine, amount: int) -> None:
        from .models import Budget
        from .signals import budget_exceeded

        if not budget_exceeded.has_listeners(Budget):
            return
        try:
            spent = self._total_now(line)
            budget_exceeded.send(
                sender=Budget,
                budget=line.budget,
                spent=from_micros(spent),
                limit=line.budget.limit_usd,
                scope_value=None if line.subject == "*" else line.subject,
                requested=from_micros(amount),
            )
        except Exception:
            logger.exception("llmroute: a budget_exceeded receiver failed")

    def _total_now(self, line: BudgetLine) -> int:
        redis = self._redis_store()
        if redis is not None:
            return redis.totals([line])[0]
        return self._totals_unlocked([line])[0]


# ---------------------------------------------------------------------- stored spend


def line_spent_in_db(line: BudgetLine, *, using: str = "default") -> Decimal:
    """What the stored calls say ``line``'s subject spent in its current period."""
    from .models import Budget
    from .reports import budget_spent

    core = line.budget
    probe = Budget(
        name=core.name,
        scope=core.scope,
        scope_value="" if core.scope == "global" else line.subject,
        period=core.period,
        hours=core.rolling_hours,
        limit_usd=core.limit_usd,
    )
    probe._state.db = using
    return budget_spent(probe)


# ---------------------------------------------------------------------- admin budgets


def _cache_for_budgets() -> BaseCache:
    from .conf import get_settings

    return caches[get_settings().django.BUDGET_CACHE]


def budgets_version() -> int:
    """The shared version number of the admin budgets (moves on every save/delete)."""
    return int(_cache_for_budgets().get(BUDGETS_VERSION_KEY) or 0)


def _load_rows(using: str) -> list[dict[str, Any]]:
    from .models import ApiKey, Budget

    out = []
    valid: dict[int, dict[str, Any]] = {}
    for row in Budget.objects.using(using).filter(active=True).order_by("name"):
        try:
            row.to_core()
        except (ValueError, TypeError):
            logger.warning("llmroute: budget %r is invalid and ignored", row.name)
            continue
        fields = row.core_fields()
        fields["limit_usd"] = str(fields["limit_usd"])
        out.append(fields)
        valid[row.pk] = fields
    # A key given a budget is held to it on its own: the budget's limit, period,
    # thresholds and action, over the calls made with that key (an API-key budget
    # for that key's id, whatever the budget's own scope covers besides).
    keys = ApiKey.objects.using(using).filter(revoked=False, budget__isnull=False)
    for key_pk, budget_pk in keys.order_by("pk").values_list("pk", "budget_id"):
        fields = valid.get(budget_pk)
        if fields is not None:
            out.append(_key_budget_fields(fields, key_pk))
    return out


def _key_budget_fields(fields: dict[str, Any], key_pk: Any) -> dict[str, Any]:
    """The core budget fields holding the API key ``key_pk`` to the budget ``fields``."""
    return {
        **fields,
        "name": f"{fields['name']}@key-{key_pk}",
        "scope": "api_key",
        "value": str(key_pk),
    }


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


#: Seconds between the attempts of a background load that keeps failing (the last repeats).
_RETRY_DELAYS_S: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class _Loads:
    """This process's last good admin budgets (per database) and its background loads.

    ``stop`` is set, and replaced, when the settings change: loads started under the
    old ones give up, and what they knew is forgotten.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_good: dict[str, list[dict[str, Any]]] = {}
        self.workers: dict[str, threading.Thread] = {}
        self.stop = threading.Event()

    def forget(self) -> None:
        with self.lock:
            self.stop.set()
            self.stop = threading.Event()
            self.workers.clear()
            self.last_good.clear()


_loads = _Loads()


def _load_and_cache(using: str, stop: threading.Event | None = None) -> list[dict[str, Any]]:
    """Read the rows and cache them; raises, caching nothing, when the read fails."""
    rows = _load_rows(using)
    if stop is not None and stop.is_set():
        return rows  # the settings changed meanwhile: keep it out of the new ones' cache
    _cache_for_budgets().set(BUDGETS_KEY, rows, timeout=BUDGETS_CACHE_TIMEOUT_S)
    _loads.last_good[using] = rows
    return rows


def _load_in_background(using: str, served: list[dict[str, Any]]) -> None:
    with _loads.lock:
        running = _loads.workers.get(using)
        if running is not None and running.is_alive():
            return
        worker = threading.Thread(
            target=_load_until_done,
            args=(using, served, _loads.stop),
            name="llmroute-budget-load",
            daemon=True,
        )
        _loads.workers[using] = worker
        worker.start()


def _load_until_done(using: str, served: list[dict[str, Any]], stop: threading.Event) -> None:
    delays = iter(_RETRY_DELAYS_S)
    delay = 0.0
    while True:
        try:
            rows = _load_and_cache(using, stop)
            break
        except Exception:
            delay = next(delays, delay)
            logger.warning(
                "llmroute: loading the admin budgets failed; retrying in %ss", delay, exc_info=True
            )
        finally:
            connections.close_all()  # this thread's own, broken or not
        if stop.wait(delay):
            return
    if rows != served and not stop.is_set():
        # Whatever was built with what the event loop got (maybe nothing) is rebuilt.
        from . import runtime

        runtime.budgets_changed()


def database_budgets(using: str = "default") -> tuple[CoreBudget, ...]:
    """The active admin budgets as core budgets (from the cache; the database on a miss).

    Outside an event loop a miss reads the database here; a failed read raises and
    caches nothing. In an event loop (the engine built from async code) the database
    is never waited for: a miss answers with the last budgets this process read (none
    before its first read) and loads them on a background thread, retrying while that
    fails; once they are in, the engine is rebuilt if they differ. Async code that
    must have them first calls this through ``sync_to_async``.
    """
    cache = _cache_for_budgets()
    rows = cache.get(BUDGETS_KEY)
    if rows is not None:
        _loads.last_good[using] = rows
    elif _in_event_loop():
        rows = _loads.last_good.get(using, [])
        _load_in_background(using, rows)
    else:
        rows = _load_and_cache(using)
    return tuple(CoreBudget(**fields) for fields in rows)


def invalidate_database_budgets() -> None:
    """Forget the cached admin budgets everywhere (moves the shared version)."""
    cache = _cache_for_budgets()
    cache.delete(BUDGETS_KEY)
    cache.add(BUDGETS_VERSION_KEY, 0, timeout=None)
    try:
        cache.incr(BUDGETS_VERSION_KEY)
    except ValueError:  # evicted between add and incr
        cache.set(BUDGETS_VERSION_KEY, 1, timeout=None)
    from . import runtime

    runtime.budgets_changed()


def _on_budget_change(sender: Any, instance: Any, using: str = "default", **kwargs: Any) -> None:
    transaction.on_commit(invalidate_database_budgets, using=using)


def _on_setting_changed(setting: str, **kwargs: Any) -> None:
    if setting in ("LLMROUTE", "CACHES", "DATABASES"):
        _loads.forget()


def connect_budget_signals() -> None:
    """Invalidate the cached admin budgets whenever a ``Budget`` row is saved or deleted.

    And forget this process's last good budgets when the settings they came from change.
    """
    from django.core.signals import setting_changed
    from django.db.models.signals import post_delete, post_save

    from .models import ApiKey, Budget

    post_save.connect(_on_budget_change, sender=Budget, dispatch_uid="llmroute-budget-save")
    post_delete.connect(_on_budget_change, sender=Budget, dispatch_uid="llmroute-budget-delete")
    # (a key given a budget, or revoked, changes the budgets too)
    post_save.connect(_on_budget_change, sender=ApiKey, dispatch_uid="llmroute-key-save")
    post_delete.connect(_on_budget_change, sender=ApiKey, dispatch_uid="llmroute-key-delete")
    setting_changed.connect(_on_setting_changed, dispatch_uid="llmroute-budget-settings")
