"""Spend limits per scope and period, with reservations so concurrent calls can't overspend.

Before a call, :meth:`Budgets.reserve` holds the call's worst-case cost against
every budget the request falls under, all or nothing; after the call
:meth:`Budgets.settle` replaces the hold with the actual cost, and
:meth:`Budgets.release` drops it when the call failed. Because holds count
against the limit, settled spend can exceed a limit only by what calls cost
beyond their own worst case.

Amounts are ``Decimal`` USD at the API and integer micro-dollars in the stores.
Holds and limits are rounded *up* to the micro-dollar (a hold must never undercount);
settled spend is rounded *half-even* to the nearest micro-dollar
(:func:`settle_micros`): each call is off by at most 0.5 µ$ either way instead of
being charged up to 1 µ$ extra (rounding up, 20 calls of $0.00000324 were charged
80 µ$ for 64.8 µ$ of spend; to the nearest they are charged 60 µ$). The usage
records keep the exact costs (1e-10 USD). Micro-dollars stay the unit so counters already in a
Redis or Django cache store keep their meaning across an upgrade.
Two stores ship: :class:`MemoryBudgetStore` (one process, thread-safe) and
:class:`RedisBudgetStore` (many workers, atomic Lua scripts). Counter keys expire
after their period.

Every hold has an id (:attr:`Reservation.hold`), so the store can tell a retry from
a new call: reserving an id again holds nothing more, and settling an id again
changes nothing. That makes a reserve or settle whose answer was lost (a timeout
after the store applied it) safe to send again, which :meth:`Budgets.settle_later`
does once the store answers. A hold that is never settled (its worker died, or its
settle never got through) stops counting after the store's ``hold_ttl_s``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._outage import MissingClient, StoreOutage, outage_of
from ._redis import BLOCKING_POOL, RedisClients
from .context import RouteContext, current_context
from .pricing import rates_for
from .schema import BudgetExceeded, ChatRequest
from .tokens import estimate_request_tokens

logger = logging.getLogger("llmroute")

if TYPE_CHECKING:
    from .catalog import ModelInfo

__all__ = [
    "HOLD_TTL_S",
    "MAX_SETTLED_IN_MEMORY",
    "SETTLED_TTL_S",
    "Budget",
    "BudgetAction",
    "BudgetLine",
    "BudgetStatus",
    "BudgetStore",
    "Budgets",
    "MemoryBudgetStore",
    "RedisBudgetStore",
    "Reservation",
    "from_micros",
    "new_hold_id",
    "settle_micros",
    "to_micros",
    "worst_case_cost",
]

BudgetAction = Literal["downgrade", "cheapest", "block"]
_MICROS = Decimal(1_000_000)
_DAY = 86_400
#: How long a store keeps a hold that is not settled (and the Django cache-lock stores
#: remember a settled one), in seconds. Longer than any call, long streams included,
#: so a live call's hold never lapses; short enough that a hold whose worker died (or
#: whose settle never got through) does not make a budget look spent for the rest of
#: its period.
HOLD_TTL_S = 3600.0
#: How long a :class:`RedisBudgetStore` remembers a settled hold id, in seconds: a
#: settle sent again within it (one kept while the store did not answer) is known
#: for a retry. Redis keeps one sorted-set entry (~100 B) per call per budget counter
#: for this long, ~6 MB on a global budget at 100 calls/s. A kept settle sent again
#: later, whose first try the store did apply, is counted twice: budgets then err on
#: the side of blocking.
SETTLED_TTL_S = 600.0
#: Settled hold ids a :class:`MemoryBudgetStore` remembers (~100 B each).
MAX_SETTLED_IN_MEMORY = 10_000


def to_micros(amount: Decimal) -> int:
    """USD to integer micro-dollars, rounded up (holds must never undercount)."""
    return int((amount * _MICROS).to_integral_value(rounding=ROUND_CEILING))


def settle_micros(amount: Decimal) -> int:
    """USD spent to integer micro-dollars, rounded half-even (unbiased for settled spend)."""
    return int((amount * _MICROS).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_micros(micros: int) -> Decimal:
    """Integer micro-dollars to USD."""
    return Decimal(micros) / _MICROS


class Budget(BaseModel):
    """A spend limit.

    ``scope`` says whose spend counts: ``global`` (everything), or the context's
    ``user`` id, ``feature``, ``tag`` or ``api_key`` id. With a ``value`` the budget
    covers that one subject; without, every subject gets its own counter (a
    per-user budget). ``period`` is a UTC ``day``, ISO ``week``, calendar ``month``
    or a ``rolling`` window of ``rolling_hours`` (hourly buckets).

    ``thresholds`` are soft actions by spend ratio: ``downgrade`` routes one tier
    lower, ``cheapest`` to the cheapest model that can serve the request. At the
    limit ``on_limit`` either blocks (:class:`BudgetExceeded`) or keeps serving
    with the cheapest model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str = Field(min_length=1, pattern=r"^[^|{}\s]+$")
    scope: Literal["global", "user", "feature", "tag", "api_key"] = "global"
    value: str | None = None
    period: Literal["day", "week", "month", "rolling"] = "day"
    rolling_hours: int | None = Field(default=None, ge=1, le=24 * 31)
    limit_usd: Decimal = Field(gt=0)
    thresholds: tuple[tuple[float, Literal["downgrade", "cheapest"]], ...] = (
        (0.8, "downgrade"),
        (0.95, "cheapest"),
    )
    on_limit: Literal["block", "cheapest"] = "block"

    @model_validator(mode="after")
    def _check(self) -> Budget:
        if (self.period == "rolling") != (self.rolling_hours is not None):
            raise ValueError(f"budget {self.name!r}: rolling_hours is set exactly for 'rolling'")
        if self.scope == "global" and self.value is not None:
            raise ValueError(f"budget {self.name!r}: a global budget takes no 'value'")
        ratios = [r for r, _ in self.thresholds]
        if ratios != sorted(ratios) or any(not 0 < r <= 1 for r in ratios):
            raise ValueError(f"budget {self.name!r}: thresholds must be ascending ratios in (0, 1]")
        return self

    @cached_property
    def limit_micros(self) -> int:
        return to_micros(self.limit_usd)

    def action_at(self, ratio: float) -> BudgetAction | None:
        """The action this budget asks for at spend ``ratio`` (1.0 = at the limit)."""
        if ratio >= 1.0:
            return self.on_limit
        action: BudgetAction | None = None
        for threshold, name in self.thresholds:
            if ratio >= threshold:
                action = name
        return action


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget counter as the stores see it.

    ``window`` are the keys whose sum is the spend in the current period (one key,
    or one per hour of a rolling window; the last is the one charged now).
    ``limit`` is ``None`` when the budget never blocks.
    """

    budget: Budget
    subject: str
    window: tuple[str, ...]
    limit: int | None
    ttl_s: int

    @property
    def charge_key(self) -> str:
        return self.window[-1]


# Hold ids need to be unique, not secret: a generator of this module's own (an app
# seeding ``random`` the same in every worker must not make their ids collide), seeded
# by the OS and again in each forked child; four times cheaper than ``os.urandom``
# on the path of every call.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_hold_id() -> str:
    """A new random hold id (96 bits: unique across workers and hosts)."""
    return _ids.getrandbits(96).to_bytes(12).hex()


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold of ``amount`` micro-dollars on each of ``lines``, known to the store as
    ``hold`` (a new random id unless given)."""

    lines: tuple[BudgetLine, ...]
    amount: int
    hold: str = field(default_factory=new_hold_id)

    @property
    def amount_usd(self) -> Decimal:
        return from_micros(self.amount)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """Where one budget stands for a context: spend (settled plus held) and ratio."""

    budget: Budget
    subject: str
    spent_micros: int
    ratio: float
    action: BudgetAction | None

    @property
    def spent(self) -> Decimal:
        """Settled plus held spend in USD."""
        return from_micros(self.spent_micros)


#: Settles kept while the budget store is down (see :meth:`Budgets.settle_later`).
MAX_UNSETTLED = 100_000


def _weak(method: Callable[[], object]) -> Callable[[], object]:
    """``method``, held without keeping its instance alive (a listener of a shared
    outage must not keep replaced ``Budgets`` around)."""
    ref = weakref.WeakMethod(method)

    def call() -> object:
        bound = ref()
        return None if bound is None else bound()

    return call


class BudgetStore(Protocol):
    """Counters behind budgets, in integer micro-dollars, and the holds on them by id.

    ``reserve`` checks and holds atomically across all lines: it returns ``None``
    when held everywhere, or the index of the first line that would exceed its
    limit (and then holds nothing). ``settle`` drops the hold ``hold`` and records
    ``actual`` spent on each line's charge key (``actual=0`` releases). ``reserved``
    is what the caller believes is held (``0`` when it does not know, for a reserve
    whose answer was lost): a store releases what it holds for ``hold``.
    ``totals`` returns settled plus held spend per line.

    Both are idempotent by ``hold``: reserving an id that is held or settled holds
    nothing more (and answers ``None``); settling an id already settled changes
    nothing; settling an id never held records ``actual`` once. A hold not settled
    within the store's hold TTL (:data:`HOLD_TTL_S` unless set) stops counting, and
    settled ids are remembered for a while (each store says how long).
    """

    def reserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None: ...

    def settle(
        self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str
    ) -> None: ...

    def totals(self, lines: Sequence[BudgetLine]) -> list[int]: ...

    async def areserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None: ...

    async def asettle(
        self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str
    ) -> None: ...

    async def atotals(self, lines: Sequence[BudgetLine]) -> list[int]: ...


class MemoryBudgetStore:
    """In-process counters guarded by one lock; expired keys are dropped lazily.

    ``hold_ttl_s`` is how long a hold that is not settled counts, on ``clock``; the
    last :data:`MAX_SETTLED_IN_MEMORY` settled ids are remembered.
    """

    def __init__(
        self, clock: Callable[[], float] = time.time, *, hold_ttl_s: float = HOLD_TTL_S
    ) -> None:
        self._lock = threading.Lock()
        # key -> [spent, held, expires_at]
        self._counters: dict[str, list[float]] = {}
        self._clock = clock
        self.hold_ttl_s = hold_ttl_s
        # Live holds by id as (expires at, amount, lines); ``_lapse`` has (expires at,
        # id) in the order they come, an entry whose id is no longer held skipped (and
        # dropped once such entries outnumber the live ones, see ``_compact``).
        self._holds: dict[str, tuple[float, int, Sequence[BudgetLine]]] = {}
        self._lapse: deque[tuple[float, str]] = deque()
        # The ids settled last, oldest first. In process no answer is ever lost, so
        # these guard only against settling twice; kept by number, not for the hold
        # TTL, so that memory does not grow with the call rate.
        self._settled: dict[str, None] = {}
        self._ops = 0
        #: Bumped by every change to a counter (reserve, settle, a hold expiring).
        #: Totals read at one version hold until the next, or until one of the
        #: counters read (or a hold) expires.
        self.version = 0

    def _value(self, key: str, now: float) -> int:
        entry = self._counters.get(key)
        if entry is None:
            return 0
        if entry[2] <= now:
            del self._counters[key]
            return 0
        return int(entry[0] + entry[1])

    def _sweep(self, now: float) -> None:
        self._ops += 1
        if not self._ops & 4095:
            for key in [k for k, e in self._counters.items() if e[2] <= now]:
                del self._counters[key]
        lapse = self._lapse
        if lapse and lapse[0][0] <= now:
            self._lapsed(now)

    def _lapsed(self, now: float) -> None:
        """Stop counting the holds not settled in time (under the lock)."""
        lapse, holds = self._lapse, self._holds
        while lapse and lapse[0][0] <= now:
            at, hold = lapse.popleft()
            found = holds.get(hold)
            if found is not None and found[0] == at:
                del holds[hold]
                _, amount, lines = found
                for line in lines:
                    self._unhold(line.charge_key, amount, now)
                self.version += 1

    def _compact(self) -> None:
        """Drop the entries of settled holds from ``_lapse`` (under the lock), which
        otherwise keeps one per reserve for the hold TTL. It runs once they are more
        than twice the live holds, so its cost spread over the settles since is O(1)."""
        holds = self._holds
        self._lapse = deque(
            (at, hold)
            for at, hold in self._lapse
            if (found := holds.get(hold)) is not None and found[0] == at
        )

    def _unhold(self, key: str, amount: int, now: float) -> None:
        entry = self._counters.get(key)
        if entry is not None and entry[2] > now:
            entry[1] = max(0, int(entry[1]) - amount)

    def reserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        now = self._clock()
        with self._lock:
            self._sweep(now)
            if hold in self._holds or hold in self._settled:
                return None  # a retry: held (or settled) already
            for index, line in enumerate(lines):
                if line.limit is not None:
                    spent = sum(self._value(k, now) for k in line.window)
                    if spent + amount > line.limit:
                        return index
            for line in lines:
                self._add(line, now, held=amount, spent=0)
            expires = now + self.hold_ttl_s
            self._holds[hold] = (expires, amount, lines)
            self._lapse.append((expires, hold))
            self.version += 1
        return None

    def _add(self, line: BudgetLine, now: float, *, held: int, spent: int) -> None:
        entry = self._counters.get(line.charge_key)
        if entry is None or entry[2] <= now:
            entry = self._counters[line.charge_key] = [0, 0, 0]
        entry[0] += spent
        entry[1] = max(0, int(entry[1]) + held)
        entry[2] = now + line.ttl_s

    def settle(self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str) -> None:
        now = self._clock()
        with self._lock:
            lapse = self._lapse
            if lapse and lapse[0][0] <= now:
                self._lapsed(now)
            settled = self._settled
            if hold in settled:
                return
            found = self._holds.pop(hold, None)
            amount = 0 if found is None else found[1]
            for line in lines:
                self._add(line, now, held=-amount, spent=actual)
            if len(self._lapse) > 2 * len(self._holds) + 1024:
                self._compact()
            settled[hold] = None
            if len(settled) > MAX_SETTLED_IN_MEMORY:
                del settled[next(iter(settled))]
            self.version += 1

    def totals(self, lines: Sequence[BudgetLine]) -> list[int]:
        return self.totals_until(lines)[0]

    def totals_until(self, lines: Sequence[BudgetLine]) -> tuple[list[int], float]:
        """:meth:`totals`, and the store time until which they hold unless
        :attr:`version` changes (when the first counter read, or a hold, expires)."""
        now = self._clock()
        counters = self._counters
        out = []
        with self._lock:
            lapse = self._lapse
            if lapse and lapse[0][0] <= now:
                self._lapsed(now)
            until = lapse[0][0] if lapse else math.inf
            for line in lines:
                total = 0.0
                for key in line.window:
                    entry = counters.get(key)
                    if entry is not None and entry[2] > now:
                        total += entry[0] + entry[1]
                        if entry[2] < until:
                            until = entry[2]
                out.append(int(total))
        return out, until

    def now(self) -> float:
        """The store's clock (the one counter expiry is measured on)."""
        return self._clock()

    async def areserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        return self.reserve(lines, amount, hold)

    async def asettle(
        self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str
    ) -> None:
        self.settle(lines, reserved, actual, hold)

    async def atotals(self, lines: Sequence[BudgetLine]) -> list[int]:
        return self.totals(lines)


#: Expired holds one script call sweeps per key at most (bounded work per call; every
#: reserve sweeps, so a backlog goes within a few calls).
SWEEP_BATCH = 100

# Shared by the scripts. A counter key K is a hash: ``s`` settled, ``h`` held (the sum
# of its live holds' amounts, plus any held by a version without hold ids) and
# ``h:<id>`` each live hold's amount. K's hold set ``K|holds`` is a sorted set of ids
# scored by when they lapse: a live hold (its ``h:<id>`` field is there) when its TTL
# runs out, a settled one when it is forgotten. Both keys expire with the counter.
# ``now`` is the server's clock (one clock for every worker).
_HOLDS_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function sweep(key, ids)
  local old = redis.call('ZRANGEBYSCORE', ids, '-inf', now, 'LIMIT', 0, SWEEP_BATCH)
  if #old == 0 then return end
  local fields = {}
  for i, id in ipairs(old) do fields[i] = 'h:' .. id end
  local freed = 0
  for _, amount in ipairs(redis.call('HMGET', key, unpack(fields))) do
    if amount then freed = freed + tonumber(amount) end
  end
  if freed > 0 then
    local held = redis.call('HINCRBY', key, 'h', 0 - freed)
    if held < 0 then redis.call('HSET', key, 'h', 0) end
  end
  redis.call('HDEL', key, unpack(fields))
  redis.call('ZREMRANGEBYRANK', ids, 0, #old - 1)
end
local function total(key)
  local v = redis.call('HMGET', key, 's', 'h')
  return (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
end
""".replace("SWEEP_BATCH", str(SWEEP_BATCH))

# KEYS: per line, its window keys in order, then their hold sets. ARGV: amount, hold
# id, hold TTL, line count, then per line (key count, limit or -1, ttl). Checks all
# lines first, then holds on each charge key; an id held or settled already is a retry.
_RESERVE_LUA = (
    _HOLDS_LUA
    + """
local amount, id, hold_ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local pos, k = 5, 1
local charge = {}
for i = 1, n do
  local nk, limit, ttl = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  pos = pos + 3
  for j = k, k + nk - 1 do sweep(KEYS[j], KEYS[j + nk]) end
  if i == 1 and redis.call('ZSCORE', KEYS[k + 2 * nk - 1], id) then return 0 end
  if limit >= 0 then
    local spent = 0
    for j = k, k + nk - 1 do spent = spent + total(KEYS[j]) end
    if spent + amount > limit then return i end
  end
  charge[i] = {KEYS[k + nk - 1], KEYS[k + 2 * nk - 1], ttl}
  k = k + 2 * nk
end
for i = 1, n do
  local key, ids, ttl = charge[i][1], charge[i][2], charge[i][3]
  redis.call('HINCRBY', key, 'h', amount)
  redis.call('HSET', key, 'h:' .. id, amount)
  redis.call('ZADD', ids, now + hold_ttl, id)
  redis.call('EXPIRE', key, ttl)
  redis.call('EXPIRE', ids, ttl)
end
return 0
"""
)

# KEYS: per line, its charge key and its hold set. ARGV: actual, hold id, how long a
# settled id is remembered, then one ttl per line. Per key: an id settled already
# changes nothing; a live hold is dropped (its own amount); ``actual`` is recorded once.
_SETTLE_LUA = (
    _HOLDS_LUA
    + """
local actual, id, settled_ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
for i = 1, #KEYS / 2 do
  local key, ids = KEYS[2 * i - 1], KEYS[2 * i]
  sweep(key, ids)
  local field = 'h:' .. id
  local amount = redis.call('HGET', key, field)
  if amount or not redis.call('ZSCORE', ids, id) then
    if amount then
      local held = redis.call('HINCRBY', key, 'h', 0 - tonumber(amount))
      if held < 0 then redis.call('HSET', key, 'h', 0) end
      redis.call('HDEL', key, field)
    end
    if actual ~= 0 then redis.call('HINCRBY', key, 's', actual) end
    redis.call('ZADD', ids, now + settled_ttl, id)
    local ttl = tonumber(ARGV[3 + i])
    redis.call('EXPIRE', key, ttl)
    redis.call('EXPIRE', ids, ttl)
  end
end
return 0
"""
)

# KEYS: per line, its window keys, then their hold sets. ARGV: key count per line.
# Returns one total per line (expired holds swept first).
_TOTALS_LUA = (
    _HOLDS_LUA
    + """
local out, k = {}, 1
for i, nk in ipairs(ARGV) do
  nk = tonumber(nk)
  local spent = 0
  for j = k, k + nk - 1 do
    sweep(KEYS[j], KEYS[j + nk])
    spent = spent + total(KEYS[j])
  end
  out[i] = spent
  k = k + 2 * nk
end
return out
"""
)


class RedisBudgetStore:
    """Counters in Redis shared by every worker; each operation is one atomic script.

    Pass a ``url`` or ready clients (``client`` sync, ``async_client`` from
    ``redis.asyncio``). Keys are ``{prefix}{budget}|{subject}|{period}`` hashes
    with ``s`` (settled) and ``h`` (held) fields, and a ``h:<id>`` field per live
    hold; beside each, a sorted set ``...|holds`` of its hold ids. Both expire after
    their period; a hold not settled within ``hold_ttl_s`` stops
    counting, and a settled id is remembered for ``settled_ttl_s`` (see
    :data:`SETTLED_TTL_S`). On Redis Cluster, give a ``prefix`` with a hash tag
    (``"llmroute:{b}:"``) so a reservation's keys (every budget's counters and their
    hold sets) stay in one slot.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        async_client: Any = None,
        prefix: str = "llmroute:budget:",
        hold_ttl_s: float = HOLD_TTL_S,
        settled_ttl_s: float = SETTLED_TTL_S,
    ) -> None:
        if url is None and client is None and async_client is None:
            raise ValueError("RedisBudgetStore needs a url or a client")
        if not (hold_ttl_s > 0 and settled_ttl_s > 0):
            raise ValueError("hold_ttl_s and settled_ttl_s must be positive numbers of seconds")
        self._clients = RedisClients(
            "RedisBudgetStore", url, client, async_client, pool=BLOCKING_POOL
        )
        self.prefix = prefix
        self.hold_ttl_s = hold_ttl_s
        self.settled_ttl_s = settled_ttl_s
        #: The outage state of this store's Redis (see :class:`~._outage.StoreOutage`).
        self.outage: StoreOutage = self._clients.outage
        # Scripts registered on the current clients; dropped when those are closed.
        self._scripts: dict[str, Any] = {}
        self._ascripts: dict[str, Any] = {}

    def close(self) -> None:
        """Close the sync client this store opened (not one passed in)."""
        self._clients.close()
        self._scripts.clear()

    async def aclose(self) -> None:
        """Close the async client this store opened (not one passed in)."""
        await self._clients.aclose()
        self._ascripts.clear()

    def _sync(self) -> Any:
        return self._clients.sync_client()

    def _async(self) -> Any:
        return self._clients.async_client()

    def _script(self, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts.setdefault(name, self._sync().register_script(source))
        return script

    def _ascript(self, name: str, source: str) -> Any:
        if name not in self._ascripts:
            self._ascripts[name] = self._async().register_script(source)
        return self._ascripts[name]

    def _keys(self, lines: Sequence[BudgetLine], window: bool) -> list[str]:
        """Per line its keys (every window key, or the charge key), then their hold sets."""
        prefix = self.prefix
        keys: list[str] = []
        for line in lines:
            own = [prefix + k for k in (line.window if window else (line.charge_key,))]
            keys += own
            keys += [k + "|holds" for k in own]
        return keys

    def _reserve_args(
        self, lines: Sequence[BudgetLine], amount: int, hold: str
    ) -> tuple[list[str], list[Any]]:
        args: list[Any] = [amount, hold, self.hold_ttl_s, len(lines)]
        for line in lines:
            args += [len(line.window), -1 if line.limit is None else line.limit, line.ttl_s]
        return self._keys(lines, True), args

    def _settle_args(
        self, lines: Sequence[BudgetLine], actual: int, hold: str
    ) -> tuple[list[str], list[Any]]:
        args = [actual, hold, self.settled_ttl_s, *(line.ttl_s for line in lines)]
        return self._keys(lines, False), args

    def _totals_args(self, lines: Sequence[BudgetLine]) -> tuple[list[str], list[int]]:
        return self._keys(lines, True), [len(line.window) for line in lines]

    def reserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        if not lines:
            return None
        keys, args = self._reserve_args(lines, amount, hold)
        failed = int(self._script("reserve", _RESERVE_LUA)(keys=keys, args=args))
        return failed - 1 if failed else None

    def settle(self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str) -> None:
        if lines:
            keys, args = self._settle_args(lines, actual, hold)
            self._script("settle", _SETTLE_LUA)(keys=keys, args=args)

    def totals(self, lines: Sequence[BudgetLine]) -> list[int]:
        if not lines:
            return []
        keys, args = self._totals_args(lines)
        return [int(v) for v in self._script("totals", _TOTALS_LUA)(keys=keys, args=args)]

    async def areserve(self, lines: Sequence[BudgetLine], amount: int, hold: str) -> int | None:
        if not lines:
            return None
        keys, args = self._reserve_args(lines, amount, hold)
        failed = int(await self._ascript("reserve", _RESERVE_LUA)(keys=keys, args=args))
        return failed - 1 if failed else None

    async def asettle(
        self, lines: Sequence[BudgetLine], reserved: int, actual: int, hold: str
    ) -> None:
        if lines:
            keys, args = self._settle_args(lines, actual, hold)
            await self._ascript("settle", _SETTLE_LUA)(keys=keys, args=args)

    async def atotals(self, lines: Sequence[BudgetLine]) -> list[int]:
        if not lines:
            return []
        keys, args = self._totals_args(lines)
        result = await self._ascript("totals", _TOTALS_LUA)(keys=keys, args=args)
        return [int(v) for v in result]


def _subjects(budget: Budget, context: RouteContext) -> tuple[str, ...]:
    scope = budget.scope
    if scope == "global":
        return ("*",)
    if scope == "tag":
        tags = context.tags or frozenset()
        if budget.value is not None:
            return (budget.value,) if budget.value in tags else ()
        return tuple(sorted(tags))
    found = {"user": context.user_id, "feature": context.feature, "api_key": context.api_key_id}[
        scope
    ]
    if found is None or (budget.value is not None and found != budget.value):
        return ()
    return (found,)


def _month_token(day: int) -> tuple[str, int]:
    moment = datetime.fromtimestamp(day * _DAY, UTC)
    if moment.month == 12:
        nxt = datetime(moment.year + 1, 1, 1, tzinfo=UTC)
    else:
        nxt = datetime(moment.year, moment.month + 1, 1, tzinfo=UTC)
    return f"m{moment.year:04d}{moment.month:02d}", int(nxt.timestamp())


def _window(budget: Budget, now: float) -> tuple[tuple[str, ...], int]:
    """Period keys (suffixes) and their TTL for ``budget`` at ``now``."""
    day = int(now // _DAY)
    if budget.period == "day":
        return (f"d{day}",), _DAY * 2
    if budget.period == "week":
        week = (day + 3) // 7  # 1970-01-01 was a Thursday; weeks start on Monday
        return (f"w{week}",), _DAY * 8
    if budget.period == "month":
        token, _ = _month_token(day)
        return (token,), _DAY * 32
    hours = budget.rolling_hours or 1
    hour = int(now // 3600)
    return tuple(f"h{h}" for h in range(hour - hours + 1, hour + 1)), (hours + 1) * 3600


def worst_case_cost(
    request: ChatRequest,
    model: ModelInfo,
    *,
    input_tokens: int | None = None,
    default_max_output: int = 4096,
) -> Decimal:
    """The most ``request`` can cost on ``model``: estimated input plus the output cap.

    Input is priced at the dearest of the input and cache-write rates, output at the
    dearer of the output and reasoning rates, both from the long-context band that
    the estimated input falls in (:func:`~routing_middleware.pricing.rates_for`).
    The cap is ``max_tokens`` when the request sets it, else the model's own output
    limit when the catalog knows it, else ``default_max_output``.
    """
    tokens_in = estimate_request_tokens(request) if input_tokens is None else input_tokens
    cap = request.max_tokens
    if cap is None:
        cap = model.max_output_tokens or default_max_output
    rates = rates_for(model.price, tokens_in)
    rate_in = max(rates.input, rates.cache_write, rates.cache_write_long)
    rate_out = max(rates.output, rates.reasoning)
    return (tokens_in * rate_in + cap * rate_out) / _MICROS


class Budgets:
    """The configured budgets over a store: matching, reservations and status.

    ``status_ttl_s`` caches :meth:`status` reads per counter for that many seconds,
    which keeps the router off the network on every decision with a Redis store
    (reservations are always exact). This instance's own reserves and settles are
    applied to the cached totals at once, so only other workers' spend can lag.

    A store that fails (down, or not answering within its timeout) does not take
    calls down: :meth:`pressing` answers "nothing pressing" and the dispatcher skips
    the hold, for :data:`~._outage.STORE_RETRY_S` at a time, with one warning per
    outage.
    :meth:`status` and :meth:`reserve` still raise its error to their callers.
    """

    def __init__(
        self,
        budgets: Iterable[Budget],
        store: BudgetStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
        status_ttl_s: float = 0.0,
    ) -> None:
        self.budgets = tuple(budgets)
        self.store: BudgetStore = store if store is not None else MemoryBudgetStore(clock)
        self._clock = clock
        self._status_ttl = status_ttl_s
        self._line_cache: dict[tuple[int, str, int], BudgetLine] = {}
        self._lines_by_context: dict[tuple[Any, ...], tuple[BudgetLine, ...]] = {}
        self._status_cache: dict[str, tuple[float, int]] = {}
        #: Bumped whenever ``_status_cache`` changes.
        self._epoch = 0
        #: The store's outage state (see the class): read and marked by the
        #: dispatcher around holds and settles too.
        self.outage = outage_of(self.store, "budget store", "calls go on without budgets")
        # Settles the store could not take, replayed when it answers again (bounded).
        self._unsettled: list[tuple[Reservation, Decimal]] = []
        self._unsettled_lock = threading.Lock()
        # A store given only an async client cannot take kept settles from the
        # cleanup thread: then the next async operation here sends them, on its loop.
        self._replay_async = False
        self._replaying: asyncio.Task[None] | None = None
        self.outage.when_answering(_weak(self._settle_unsettled))
        #: ``pressing`` answers by the context key of :meth:`lines`:
        #: (lines, version or epoch, valid from, valid until, statuses).
        self._pressing: dict[
            tuple[Any, ...],
            tuple[tuple[BudgetLine, ...], int, float, float, tuple[BudgetStatus, ...]],
        ] = {}

    def __bool__(self) -> bool:
        return bool(self.budgets)

    def settle_later(self, reservation: Reservation, actual: Decimal) -> None:
        """Keep a settle the store cannot take now (it is down, or did not answer: it
        may or may not have applied it), to be sent again when it answers. Settles
        are idempotent by hold id, so one that did apply is not counted twice. At
        most :data:`MAX_UNSETTLED` wait; past that the hold stays counted until the
        store's hold TTL runs out, with a warning."""
        with self._unsettled_lock:
            if len(self._unsettled) < MAX_UNSETTLED:
                self._unsettled.append((reservation, actual))
                return
        logger.warning(
            "%d budget settles already wait for the store: a hold of $%s stays counted "
            "until it expires",
            MAX_UNSETTLED,
            reservation.amount_usd,
        )

    def _settle_unsettled(self) -> None:
        """Send the settles kept by :meth:`settle_later` (on the cleanup thread). One
        that fails, however (even a timeout: it is idempotent), waits again with the
        rest for the next time the store answers."""
        with self._unsettled_lock:
            waiting, self._unsettled = self._unsettled, []
        for index, (reservation, actual) in enumerate(waiting):
            try:
                self.settle(reservation, actual)
            except MissingClient:
                self.settle_on_loop(waiting[index:])
                return
            except Exception as exc:
                with self._unsettled_lock:
                    self._unsettled[:0] = waiting[index:]
                self.outage.failed(exc)
                return

    def settle_on_loop(self, waiting: list[tuple[Reservation, Decimal]]) -> None:
        """Keep settles for a store that has only an async client (a sync settle
        raised :class:`MissingClient`): the next async operation on these budgets
        sends them, on its own event loop (see :meth:`_replay_on_loop`)."""
        with self._unsettled_lock:
            room = MAX_UNSETTLED - len(self._unsettled)
            self._unsettled[:0] = waiting[: max(0, room)]
            self._replay_async = True
        if len(waiting) > room:
            logger.warning(
                "%d budget settles already wait for the store: %d holds stay counted "
                "until they expire",
                MAX_UNSETTLED,
                len(waiting) - max(0, room),
            )

    def _replay_on_loop(self) -> None:
        """Start sending the kept settles of a store with only an async client, in a
        task of the running loop (one at a time; the operation that starts it does
        not wait for it)."""
        if self._replaying is not None or not self._unsettled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): they wait, and lapse with their holds
            return
        self._replay_async = False
        self._replaying = loop.create_task(self._asettle_unsettled())

    async def _asettle_unsettled(self) -> None:
        """Async twin of :meth:`_settle_unsettled`: one that fails (or a cancellation,
        the loop shutting down) leaves it waiting with the rest, for the next async
        operation after the store answers."""
        with self._unsettled_lock:
            waiting, self._unsettled = self._unsettled, []
        sent = 0
        try:
            for reservation, actual in waiting:
                await self.asettle(reservation, actual)
                sent += 1
        except BaseException as exc:
            with self._unsettled_lock:
                self._unsettled[:0] = waiting[sent:]
                self._replay_async = True
            if isinstance(exc, Exception):
                self.outage.failed(exc)
            else:
                raise
        finally:
            self._replaying = None

    def lines(self, context: RouteContext | None = None) -> tuple[BudgetLine, ...]:
        """The counters a call under ``context`` is charged to, now."""
        ctx = current_context() if context is None else context
        return self._lines(ctx, self._clock())

    def _lines(self, ctx: RouteContext, now: float) -> tuple[BudgetLine, ...]:
        slot = int(now // 3600)
        whole = (slot, ctx.user_id, ctx.feature, ctx.api_key_id, ctx.tags)
        found = self._lines_by_context.get(whole)
        if found is not None:
            return found
        out: list[BudgetLine] = []
        cache = self._line_cache
        for index, budget in enumerate(self.budgets):
            for subject in _subjects(budget, ctx):
                key = (index, subject, slot)
                line = cache.get(key)
                if line is None:
                    if len(cache) > 4096:
                        cache.clear()
                    suffixes, ttl = _window(budget, now)
                    base = f"{budget.name}|{subject}|"
                    limit = budget.limit_micros if budget.on_limit == "block" else None
                    line = BudgetLine(
                        budget, subject, tuple(base + s for s in suffixes), limit, ttl
                    )
                    cache[key] = line
                out.append(line)
        if len(self._lines_by_context) > 4096:
            self._lines_by_context.clear()
        self._lines_by_context[whole] = result = tuple(out)
        return result

    def _blocked(self, lines: tuple[BudgetLine, ...], index: int, amount: int) -> BudgetExceeded:
        budget = lines[index].budget
        return BudgetExceeded(
            f"budget {budget.name!r} ({budget.scope}"
            f"{'' if budget.scope == 'global' else ' ' + lines[index].subject}) "
            f"cannot cover ${from_micros(amount)}: limit ${budget.limit_usd} per {budget.period}",
            budget=budget.name,
        )

    def reserve(self, amount: Decimal, context: RouteContext | None = None) -> Reservation:
        """Hold ``amount`` on every matching budget, or raise :class:`BudgetExceeded`.

        When the store fails, its error is raised; the hold, in case the store took
        it all the same, is released once the store answers again."""
        lines = self.lines(context)
        micros = to_micros(amount)
        reservation = Reservation(lines, micros, new_hold_id())
        try:
            failed = self.store.reserve(lines, micros, reservation.hold)
        except Exception as exc:
            self._unsure(reservation, exc)
            raise
        if failed is not None:
            raise self._blocked(lines, failed, micros)
        self._bump(lines, micros)
        return reservation

    async def areserve(self, amount: Decimal, context: RouteContext | None = None) -> Reservation:
        """Async twin of :meth:`reserve`."""
        lines = self.lines(context)
        micros = to_micros(amount)
        reservation = Reservation(lines, micros, new_hold_id())
        try:
            failed = await self.store.areserve(lines, micros, reservation.hold)
        except Exception as exc:
            self._unsure(reservation, exc)
            raise
        if self._replay_async:
            self._replay_on_loop()
        if failed is not None:
            raise self._blocked(lines, failed, micros)
        self._bump(lines, micros)
        return reservation

    def _unsure(self, reservation: Reservation, error: Exception) -> None:
        """A reserve that failed with ``error`` may still have landed (a timeout, or a
        connection lost after the command went out), and its caller goes on without
        it: keep the release of its hold for when the store answers again. The
        release records no spend: the call is not charged, as no call is while the
        store fails (the caller has no reservation to settle with its cost), and a
        release of a hold that never landed changes nothing."""
        if isinstance(error, MissingClient):
            return
        # (held: 0 as far as this instance knows; the store releases what it holds)
        self.settle_later(Reservation(reservation.lines, 0, reservation.hold), Decimal(0))
        self.outage.failed(error)

    def reserve_for(
        self,
        request: ChatRequest,
        model: ModelInfo,
        context: RouteContext | None = None,
        *,
        default_max_output: int = 4096,
    ) -> Reservation:
        """Reserve the worst-case cost of ``request`` on ``model``."""
        cost = worst_case_cost(request, model, default_max_output=default_max_output)
        return self.reserve(cost, context)

    def settle(self, reservation: Reservation, actual: Decimal) -> None:
        """Replace the hold with the call's ``actual`` cost (once: settling the same
        reservation again changes nothing)."""
        micros = settle_micros(actual)
        self.store.settle(reservation.lines, reservation.amount, micros, reservation.hold)
        self._bump(reservation.lines, micros - reservation.amount)

    async def asettle(self, reservation: Reservation, actual: Decimal) -> None:
        """Async twin of :meth:`settle`."""
        micros = settle_micros(actual)
        await self.store.asettle(reservation.lines, reservation.amount, micros, reservation.hold)
        self._bump(reservation.lines, micros - reservation.amount)
        if self._replay_async:
            self._replay_on_loop()

    def release(self, reservation: Reservation) -> None:
        """Drop the hold of a call that did not happen or failed without cost."""
        self.store.settle(reservation.lines, reservation.amount, 0, reservation.hold)
        self._bump(reservation.lines, -reservation.amount)

    async def arelease(self, reservation: Reservation) -> None:
        """Async twin of :meth:`release`."""
        await self.store.asettle(reservation.lines, reservation.amount, 0, reservation.hold)
        self._bump(reservation.lines, -reservation.amount)
        if self._replay_async:
            self._replay_on_loop()

    def _bump(self, lines: Sequence[BudgetLine], delta: int) -> None:
        """Apply this instance's own change to the cached totals (see ``status_ttl_s``)."""
        if self._status_ttl <= 0 or not delta:
            return
        cache = self._status_cache
        for line in lines:
            hit = cache.get(line.charge_key)
            if hit is not None:
                cache[line.charge_key] = (hit[0], max(0, hit[1] + delta))
        self._epoch += 1

    def _statuses(
        self, lines: tuple[BudgetLine, ...], totals: Sequence[int], pressing: bool = False
    ) -> list[BudgetStatus]:
        out = []
        for line, total in zip(lines, totals, strict=True):
            budget = line.budget
            ratio = total / budget.limit_micros
            action = budget.action_at(ratio)
            if action is not None or not pressing:
                out.append(BudgetStatus(budget, line.subject, total, ratio, action))
        return out

    def _cached_totals(self, lines: tuple[BudgetLine, ...]) -> tuple[list[int | None], float]:
        now = time.monotonic()
        cached: list[int | None] = []
        for line in lines:
            hit = self._status_cache.get(line.charge_key)
            cached.append(hit[1] if hit is not None and hit[0] > now else None)
        return cached, now

    def _remember(self, lines: Sequence[BudgetLine], totals: Sequence[int], now: float) -> None:
        if len(self._status_cache) > 4096:
            self._status_cache.clear()
        for line, total in zip(lines, totals, strict=True):
            self._status_cache[line.charge_key] = (now + self._status_ttl, total)
        self._epoch += 1

    def status(
        self, context: RouteContext | None = None, *, pressing: bool = False
    ) -> list[BudgetStatus]:
        """Spend and ratio of every budget matching ``context`` (cheap; maybe cached).

        With ``pressing=True`` only budgets past a threshold are returned (what the
        router reads on every decision).
        """
        return self._status_of(self.lines(context), pressing)

    def _status_of(self, lines: tuple[BudgetLine, ...], pressing: bool) -> list[BudgetStatus]:
        if not lines:
            return []
        if self._status_ttl <= 0:
            return self._statuses(lines, self.store.totals(lines), pressing)
        cached, now = self._cached_totals(lines)
        missing = [line for line, total in zip(lines, cached, strict=True) if total is None]
        if missing:
            fresh = self.store.totals(missing)
            self._remember(missing, fresh, now)
            it = iter(fresh)
            cached = [next(it) if total is None else total for total in cached]
        return self._statuses(lines, [int(t or 0) for t in cached], pressing)

    def pressing(self, context: RouteContext | None = None) -> tuple[BudgetStatus, ...]:
        """``status(context, pressing=True)`` as a tuple, remembered while it cannot change.

        The router reads this on every decision. With ``status_ttl_s`` the answer
        holds until this instance's cached totals change or the first of them
        expires; on a :class:`MemoryBudgetStore` without it, until the store's
        ``version`` changes or a counter read expires. Other stores are read each time.
        """
        ctx = current_context() if context is None else context
        outage = self.outage
        if outage.until is None:  # (the store answers: what the memo holds is the answer)
            found = self._remembered(ctx, self._clock())
            if found is not None:
                return found
        # (a partial, not a lambda: a closure would make a cell of ``ctx`` on every
        # call, the memo's answers included)
        return outage.run(partial(self._pressing_now, ctx), ())

    def _remembered(self, ctx: RouteContext, now: float) -> tuple[BudgetStatus, ...] | None:
        """What :meth:`pressing` answered for ``ctx`` at ``now`` while it still holds,
        else ``None``. Reads no store."""
        ttl = self._status_ttl > 0
        store = self.store
        if not ttl and type(store) is not MemoryBudgetStore:
            return None
        # The key ``lines`` files its answer under: the same key, the same lines.
        found = self._pressing.get(
            (int(now // 3600), ctx.user_id, ctx.feature, ctx.api_key_id, ctx.tags)
        )
        if found is None:
            return None
        if ttl:
            if found[1] == self._epoch and found[2] <= time.monotonic() < found[3]:
                return found[4]
        elif found[1] == store.version and found[2] <= store._clock() < found[3]:  # type: ignore[attr-defined]
            return found[4]
        return None

    def _pressing_now(self, ctx: RouteContext) -> tuple[BudgetStatus, ...]:
        """:meth:`pressing`, reading the store where its memo cannot answer."""
        store = self.store
        ttl = self._status_ttl > 0
        if not ttl and type(store) is not MemoryBudgetStore:
            return tuple(self._status_of(self.lines(ctx), True))
        now = self._clock()
        found = self._remembered(ctx, now)
        if found is not None:
            return found
        whole = (int(now // 3600), ctx.user_id, ctx.feature, ctx.api_key_id, ctx.tags)
        clock = time.monotonic if ttl else store._clock  # type: ignore[attr-defined]
        lines = self._lines(ctx, now)
        if not lines:
            return ()
        # The version is read before the totals: a change while reading leaves the
        # answer remembered under an older version than the store's, so it is not reused.
        since = clock()
        if ttl:
            epoch = self._epoch
            statuses = tuple(self._status_of(lines, True))
            cache = self._status_cache
            until = math.inf
            for line in lines:
                hit = cache.get(line.charge_key)
                until = min(until, hit[0]) if hit is not None else -math.inf
        else:
            memory: MemoryBudgetStore = store  # type: ignore[assignment]
            epoch = memory.version
            totals, until = memory.totals_until(lines)
            statuses = tuple(self._statuses(lines, totals, True))
        if len(self._pressing) > 4096:
            self._pressing.clear()
        self._pressing[whole] = (lines, epoch, since, until, statuses)
        return statuses

    async def astatus(self, context: RouteContext | None = None) -> list[BudgetStatus]:
        """Async twin of :meth:`status`."""
        lines = self.lines(context)
        if not lines:
            return []
        if self._status_ttl <= 0:
            return self._statuses(lines, await self.store.atotals(lines))
        cached, now = self._cached_totals(lines)
        missing = [line for line, total in zip(lines, cached, strict=True) if total is None]
        if missing:
            fresh = await self.store.atotals(missing)
            self._remember(missing, fresh, now)
            it = iter(fresh)
            cached = [next(it) if total is None else total for total in cached]
        return self._statuses(lines, [int(t or 0) for t in cached])
