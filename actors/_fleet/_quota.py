"""The shared provider quota: one GCRA bucket per provider in the store, leased in batches.

Theory of operation
-------------------
**In the store.**  A provider's quota (``rate`` calls per second, ``burst`` at most at once) is
one number, the bucket's theoretical arrival time ``tat`` (server ms, the time the bucket is
full again), exactly as the local :class:`~actors.RateLimiter` keeps it.  One Lua
script takes up to ``want`` tokens: with ``unit = 1000 / rate`` ms per token and ``tau = burst
* unit``, the bucket holds ``(tau - max(0, tat - now)) / unit`` tokens, it grants the whole
ones up to ``want`` and moves ``tat`` on by ``granted * unit``; when none is there it answers
how long until one is.  So over any interval of length ``d`` the fleet takes at most ``burst +
rate * d`` tokens, whatever the number of instances.  The key expires once the bucket would be
full again (a missing key is a full bucket).

**On each instance.**  A :class:`QuotaLease` (sans-I/O) holds tokens leased ahead of need:
the hot path takes one with :meth:`QuotaLease.try_take` and no round trip.  When the lease runs
low (less than half a batch) it asks its owner for a refill, which :class:`FleetQuotas` makes
in the background: one round trip for a batch of up to ``quota_batch`` tokens (so a lease holds
at most one and a half batches).  A refill the fleet's bucket could not fill whole (it is
empty) is not repeated before the rest of a batch is there, so a saturated quota costs a round
trip per batch and instance, however often callers try.  Leased tokens are
usable for ``quota_lease`` seconds: an idle instance does not hoard the fleet's quota for a
later burst.  A token leased and not used is lost to the quota (it was counted as taken): the
price of no round trip per call, bounded by the batch size per instance.

While the store cannot be reached ``try_take`` answers ``None`` ("no answer"): the provider's
store-down policy decides (``"local"``: its local limiter alone; ``"reject"``: refuse).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final, Protocol

import attrs
import trio

from actors._errors import FleetStoreUnavailable
from actors._fleet._client import LuaScript, StoreClient
from actors._fleet._memory import MemoryServer
from actors._policies._config._fleet import FleetSettings
from actors._policies._logs import library_logger

__all__ = [
    "FleetQuotas",
    "MemoryQuotaStore",
    "QuotaLease",
    "QuotaStore",
    "RedisQuotaStore",
]

_log = library_logger("actors.fleet.quota")


class QuotaStore(Protocol):
    """The shared buckets; :class:`~actors._errors.FleetStoreUnavailable` when unreachable."""

    async def take(self, name: str, rate: float, burst: float, want: int) -> tuple[int, float]:
        """Take up to ``want`` whole tokens from ``name``'s bucket now.

        Returns ``(granted, wait)``: ``wait`` is the seconds until a token is there when none
        was granted (else 0).
        """
        ...


#: KEYS: bucket.  ARGV: rate (tokens/s), burst, want.  Returns {granted, wait_ms}.
_TAKE: Final = LuaScript(
    "quota.take",
    """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local unit = 1000 / tonumber(ARGV[1])
local tau = tonumber(ARGV[2]) * unit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local granted = math.min(tonumber(ARGV[3]), math.floor((tau - (tat - now)) / unit + 1e-9))
if granted > 0 then
  tat = tat + granted * unit
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1)
  return {granted, 0}
end
return {0, math.ceil(tat - tau + unit - now)}
""",
)


class RedisQuotaStore:
    """:class:`QuotaStore` on a Redis-protocol server."""

    def __init__(self, client: StoreClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def take(self, name: str, rate: float, burst: float, want: int) -> tuple[int, float]:
        """See :meth:`QuotaStore.take`."""
        raw = await self.client.script(
            "quota.take", _TAKE, [f"{self.prefix}:quota:{name}"], [repr(rate), repr(burst), want]
        )
        return int(raw[0]), max(0, int(raw[1])) / 1000.0


class MemoryQuotaStore:
    """:class:`QuotaStore` on a :class:`~actors._fleet._memory.MemoryServer` (tests)."""

    def __init__(self, server: MemoryServer, prefix: str = "aura") -> None:
        self.server = server
        self.prefix = prefix

    async def take(self, name: str, rate: float, burst: float, want: int) -> tuple[int, float]:
        """See :meth:`QuotaStore.take`."""
        now = float(await self.server.begin("quota.take"))
        key = f"{self.prefix}:quota:{name}"
        unit = 1000.0 / rate
        tau = burst * unit
        tat = max(float(self.server.data.get(key, now)), now)
        granted = min(want, math.floor((tau - (tat - now)) / unit + 1e-9))
        if granted > 0:
            self.server.data[key] = round(tat + granted * unit, 3)
            return granted, 0.0
        return 0, max(0, math.ceil(tat - tau + unit - now)) / 1000.0


class QuotaLease:
    """Tokens of one provider's shared quota leased to this instance (sans-I/O).

    Args:
        name: the provider.
        batch: tokens asked for per refill (>= 1).
        lease: seconds leased tokens stay usable.
        on_low: called (at most once per refill) when the lease wants a refill.
    """

    __slots__ = (
        "_on_low",
        "available",
        "batch",
        "expires_at",
        "lease",
        "name",
        "not_before",
        "refill_wanted",
        "store_down",
        "taken",
        "wasted",
    )

    def __init__(
        self, name: str, batch: int, lease: float, on_low: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self.batch = batch
        self.lease = lease
        self._on_low = on_low
        self.available = 0
        self.expires_at = -math.inf
        self.not_before = -math.inf
        self.refill_wanted = False
        self.store_down = False
        self.taken = 0
        self.wasted = 0

    def try_take(self, now: float) -> float | None:
        """Take one token at ``now``: ``0.0`` when taken, else the seconds to wait (> 0);
        ``None`` while the store is unreachable (the store-down policy decides)."""
        if now >= self.expires_at and self.available:
            self.wasted += self.available
            self.available = 0
        if self.available:
            self.available -= 1
            self.taken += 1
            if self.available * 2 < self.batch:
                self._want_refill()
            return 0.0
        if self.store_down:
            return None
        self._want_refill()
        return max(self.not_before - now, 0.001)

    def give_back(self) -> None:
        """Return one token taken with :meth:`try_take` and not used (the call was refused by
        something else): it stays this instance's until the lease expires."""
        self.available += 1
        self.taken -= 1

    def _want_refill(self) -> None:
        if not self.refill_wanted:
            self.refill_wanted = True
            if self._on_low is not None:
                self._on_low()

    def granted(self, tokens: int, wait: float, now: float) -> None:
        """A refill answered at ``now``: ``tokens`` more (usable for ``lease`` seconds); the
        next refill is not due for ``wait`` seconds (0 when the whole batch was granted)."""
        self.refill_wanted = False
        self.store_down = False
        if now >= self.expires_at:
            self.wasted += self.available
            self.available = 0
        if tokens:
            self.available += tokens
            self.expires_at = now + self.lease
        self.not_before = now + wait

    def failed(self, now: float, retry_in: float) -> None:
        """A refill failed at ``now``: the store is unreachable until a refill succeeds; the
        next one is due in ``retry_in`` seconds."""
        self.refill_wanted = True
        self.store_down = True
        self.not_before = now + retry_in


@attrs.frozen
class _Quota:
    rate: float
    burst: float
    lease: QuotaLease


class FleetQuotas:
    """Keeps this instance's :class:`QuotaLease` objects filled (see the module docstring).

    Args:
        store: the shared buckets.
        settings: the fleet settings (``quota_batch``, ``quota_lease``, per-provider quotas).
    """

    def __init__(self, store: QuotaStore, settings: FleetSettings) -> None:
        self.store = store
        self.settings = settings
        self._quotas: dict[str, _Quota] = {}
        self._wanted = trio.Event()
        self.refills = 0
        self.failures = 0

    def register(self, name: str, rate: float, burst: float | None = None) -> QuotaLease:
        """Share provider ``name``'s quota of ``rate`` calls per second (at most ``burst`` at
        once; default ``max(1, rate)``); return its lease.

        Registering a name again returns the same lease with the new rate and burst (a
        restarted provider's settings).  ValueError when ``rate`` is not > 0.
        """
        if not rate > 0:
            raise ValueError(f"provider {name!r}: a fleet quota needs a rate > 0, not {rate!r}")
        burst = max(1.0, rate) if burst is None else burst
        known = self._quotas.get(name)
        if known is not None:
            self._quotas[name] = _Quota(rate, burst, known.lease)
            return known.lease
        batch = max(1, min(self.settings.quota_batch, math.floor(burst)))
        lease = QuotaLease(name, batch, self.settings.quota_lease, self._want)
        self._quotas[name] = _Quota(rate, burst, lease)
        lease.refill_wanted = True
        self._wanted.set()
        return lease

    def _want(self) -> None:
        self._wanted.set()  # the current event: run() replaces it after each wake-up

    def lease(self, name: str) -> QuotaLease:
        """The lease of registered provider ``name`` (KeyError if not registered)."""
        return self._quotas[name].lease

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refill the leases that ask for it, until cancelled.

        A lease is refilled no earlier than its ``not_before``: when the fleet's bucket was
        empty (the time a token will be there) or after a failed refill (``refresh_interval``
        later, with or without demand, so an unreachable store is noticed coming back).
        """
        task_status.started()
        wake_at = math.inf
        while True:
            with trio.move_on_at(wake_at):
                await self._wanted.wait()
            self._wanted = trio.Event()
            wake_at = math.inf
            for name, quota in list(self._quotas.items()):
                lease = quota.lease
                if not lease.refill_wanted:
                    continue
                if trio.current_time() < lease.not_before:
                    wake_at = min(wake_at, lease.not_before)
                    continue
                await self.refill(name)
                if lease.refill_wanted:  # failed: try again later
                    wake_at = min(wake_at, lease.not_before)

    async def refill(self, name: str) -> bool:
        """Lease a batch for ``name`` now (one round trip); False when the store failed."""
        quota = self._quotas[name]
        lease = quota.lease
        want = lease.batch  # on top of what is left: a whole batch per round trip
        try:
            granted, wait = await self.store.take(name, quota.rate, quota.burst, want)
        except FleetStoreUnavailable:
            self.failures += 1
            lease.failed(trio.current_time(), self.settings.refresh_interval)
            return False
        self.refills += 1
        # The fleet's bucket could not fill the whole request: it is empty now.  Come back
        # when the rest of a batch is there, so a saturated quota costs a round trip per
        # batch, not per token.
        if granted < want:
            wait += (want - granted - (0 if granted else 1)) / quota.rate
        lease.granted(granted, wait, trio.current_time())
        return True
