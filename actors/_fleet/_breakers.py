"""The trio shell of the fleet breaker: heartbeats, refreshes, pub/sub, reports, probes.

Theory of operation
-------------------
:class:`FleetBreakers` keeps one :class:`~actors._fleet._breaker_view.FleetBreakerView` per
registered provider up to date, and carries this instance's changes to the store.  Its
:meth:`~FleetBreakers.run` task (started in a nursery the owner controls) runs four loops:

* **heartbeat**: every ``heartbeat_interval`` this instance renews its place in the live set
  (its entry expires after ``instance_ttl``, so a dead instance drops out by itself);
* **refresh**: every ``refresh_interval`` one round trip reads every registered provider's
  shared breaker; a read that fails marks every view stale at once (gate ignored);
* **listen**: published changes update the views within one message; every (re)subscription
  asks for a refresh, which catches whatever was missed while the subscription was down;
* **changes**: trip votes and probe outcomes queued by the hot path without waiting
  (:meth:`~FleetBreakers.report_trip_nowait`, :meth:`~FleetBreakers.settle_probe_nowait`) are
  sent one at a time; one that cannot be sent is counted and dropped (the local breaker still
  protects this instance, and the next trip votes again).

The hot path reads a view and never waits for the store.  The one exception is the half-open
probe: when a view says ``PROBE`` the caller awaits :meth:`~FleetBreakers.acquire_probe` (one
round trip per break at most, shared by the instance's concurrent callers: the first takes it,
the others are told no at once), makes the call, and reports it with
:meth:`~FleetBreakers.settle_probe_nowait` (or releases it unused with
:meth:`~FleetBreakers.release_probe`).  Only the lease holder at the lease's epoch can settle,
so a prober that was presumed dead cannot close a breaker another probe reopened.

Operators' :meth:`~FleetBreakers.isolate` and :meth:`~FleetBreakers.reset` act fleet-wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Literal

import attrs
import trio

from actors._errors import ErrorCategory, FleetStoreUnavailable
from actors._fleet._breaker_store import (
    BreakerReply,
    BreakerSnapshot,
    BreakerStore,
    BreakPolicy,
    QuorumPolicy,
    TripScope,
)
from actors._fleet._breaker_view import FleetBreakerView, trip_scope
from actors._policies._breaker import BreakerSettings
from actors._policies._config._fleet import FleetSettings
from actors._policies._logs import library_logger

__all__ = ["FleetBreakers", "FleetBreakersStatistics", "FleetHealth"]

_log = library_logger("actors.fleet.breaker")

_QUEUE: Final = 1024


@attrs.frozen
class FleetHealth:
    """The fleet layer's health.

    Attributes:
        status: ``"healthy"``, or ``"degraded"`` while the store is unreachable or a view is
            stale (the local policies decide alone meanwhile).
        reasons: why it is degraded, one line each (empty when healthy).
        live: live instances at the last heartbeat (0 before the first).
    """

    status: Literal["healthy", "degraded"]
    reasons: tuple[str, ...]
    live: int


@attrs.frozen
class FleetBreakersStatistics:
    """Counters of a :class:`FleetBreakers`.

    Attributes:
        instance: this instance's id.
        live: live instances at the last heartbeat.
        refreshes: successful reads; ``failures`` store calls that failed.
        messages: published changes received; ``stale_messages`` of them older than the view.
        reports: trip votes sent; ``dropped`` changes not sent (queue full or store down).
        probes_granted: probe leases this instance took; ``probes_denied`` refused.
        stale_replies: changes the store answered ``stale`` (the view was behind).
    """

    instance: str
    live: int
    refreshes: int
    failures: int
    messages: int
    stale_messages: int
    reports: int
    dropped: int
    probes_granted: int
    probes_denied: int
    stale_replies: int


@attrs.define
class _Provider:
    view: FleetBreakerView
    breaks: BreakPolicy
    registered: float = -math.inf  # when it was registered (a new view is not stale yet)
    probing: bool = False  # a local caller holds or is taking the probe
    probe_epoch: int = -1  # the epoch at which this instance was granted the probe


class FleetBreakers:
    """This instance's member of the fleet breaker (see the module docstring).

    Args:
        store: the shared store (:class:`~actors._fleet._breaker_store.RedisBreakerStore`, or
            the in-memory one in tests).
        settings: the fleet settings.
    """

    def __init__(self, store: BreakerStore, settings: FleetSettings) -> None:
        self.store = store
        self.settings = settings
        self.instance = settings.instance
        self._quorum = QuorumPolicy(settings.quorum_ratio, settings.min_quorum)
        self._providers: dict[str, _Provider] = {}
        self._send, self._receive = trio.open_memory_channel[tuple[str, str, float, bool]](_QUEUE)
        self._refresh_wanted = trio.Event()
        self._read_started = -math.inf
        self._last_message = -math.inf
        self.live = 0
        self.store_error: str | None = None
        self.down_since: float | None = None
        self._refreshes = self._failures = self._messages = self._stale_messages = 0
        self._reports = self._dropped = self._granted = self._denied = self._stale = 0

    # ------------------------------------------------------------------------ providers

    def register(self, name: str, breaker: BreakerSettings | None = None) -> FleetBreakerView:
        """Share provider ``name``'s breaker; return its view (the same object for the
        member's lifetime, updated in place).  ``breaker`` gives the break lengths (default
        :class:`~actors.BreakerSettings`).  Registering again updates them."""
        settings = BreakerSettings() if breaker is None else breaker
        breaks = BreakPolicy.from_seconds(
            settings.break_duration, settings.break_duration_factor, settings.max_break_duration
        )
        known = self._providers.get(name)
        if known is not None:
            known.breaks = breaks
            return known.view
        view = FleetBreakerView(name, self.instance, self.settings.stale_after)
        try:
            registered = trio.current_time()
        except RuntimeError:  # registered outside trio (a provider built before the run)
            registered = -math.inf
        self._providers[name] = _Provider(view, breaks, registered)
        self._refresh_wanted.set()
        return view

    def view(self, name: str) -> FleetBreakerView:
        """The view of registered provider ``name`` (KeyError if not registered)."""
        return self._providers[name].view

    @property
    def names(self) -> list[str]:
        """The registered providers."""
        return list(self._providers)

    # ------------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the member until cancelled (see the module docstring).

        Signals ``task_status.started()`` after a first heartbeat and read (whether or not
        the store answered: a member starts while the store is down).  On the way out it
        leaves the live set (shielded, within the command timeout).
        """
        try:
            async with trio.open_nursery() as nursery:
                await self._heartbeat_once()
                await self.refresh()
                await nursery.start(self._listen)
                nursery.start_soon(self._heartbeat_loop)
                nursery.start_soon(self._refresh_loop)
                nursery.start_soon(self._change_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.store.leave(self.instance)
                except FleetStoreUnavailable:
                    pass

    async def _heartbeat_once(self) -> None:
        try:
            self.live = await self.store.heartbeat(self.instance, self.settings.instance_ttl)
        except FleetStoreUnavailable as exc:
            self._unreachable(exc)
        else:
            for provider in self._providers.values():
                provider.view.live = self.live

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.heartbeat_interval)
            await self._heartbeat_once()

    async def _refresh_loop(self) -> None:
        while True:
            with trio.move_on_after(self.settings.refresh_interval):
                await self._refresh_wanted.wait()
            self._refresh_wanted = trio.Event()
            await self.refresh()

    async def refresh(self) -> bool:
        """Read every registered provider's shared breaker now (one round trip).

        Returns whether the store answered; when it did not, every view is stale at once.
        """
        names = list(self._providers)
        started = trio.current_time()
        self._read_started = started
        try:
            live, snapshots = await self.store.read(names)
        except FleetStoreUnavailable as exc:
            self._unreachable(exc)
            return False
        now = trio.current_time()
        self._reachable()
        self._refreshes += 1
        self.live = live
        raced = self._last_message >= started  # a change arrived while the read was in flight
        for snapshot in snapshots:
            provider = self._providers.get(snapshot.name)
            if provider is None:
                continue
            view = provider.view
            view.live = live
            if raced:
                view.apply(snapshot, now, authoritative=True)
            else:
                view.replace(snapshot, now)
        return True

    async def _listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self.store.listen(
            self._on_change, on_subscribed=self._refresh_wanted.set, task_status=task_status
        )

    def _on_change(self, snapshot: BreakerSnapshot) -> None:
        provider = self._providers.get(snapshot.name)
        if provider is None:
            return
        self._messages += 1
        now = trio.current_time()
        self._last_message = now
        if not provider.view.apply(snapshot, now, authoritative=False):
            self._stale_messages += 1

    def _unreachable(self, exc: FleetStoreUnavailable) -> None:
        self._failures += 1
        if self.down_since is None:
            self.down_since = trio.current_time()
        self.store_error = exc.reason
        for provider in self._providers.values():
            provider.view.expire()

    def _reachable(self) -> None:
        self.down_since = None
        self.store_error = None

    def _take(self, name: str, reply: BreakerReply) -> BreakerReply:
        """Apply a change's reply to the view (authoritative: it is the store's state now)."""
        self._reachable()
        if reply.outcome == "stale":
            self._stale += 1
            self._refresh_wanted.set()
        provider = self._providers.get(name)
        if provider is not None:
            if reply.live >= 0:
                self.live = provider.view.live = reply.live
            provider.view.apply(reply.snapshot, trio.current_time(), authoritative=True)
        return reply

    # ------------------------------------------------------------------------ changes

    def report_trip_nowait(
        self, name: str, category: ErrorCategory | TripScope, retry_after: float | None = None
    ) -> bool:
        """Queue this instance's trip vote for ``name`` (its local breaker opened) without
        waiting.  ``category`` (or an explicit scope) selects the trip policy
        (:func:`~actors._fleet._breaker_view.trip_scope`); ``retry_after`` is the provider's
        Retry-After, the least the fleet breaker stays open.  Returns False when the vote was
        dropped (queue full)."""
        scope = category if isinstance(category, str) else trip_scope(category)
        return self._queue(name, scope, retry_after or 0.0, False)

    async def report_trip(
        self, name: str, category: ErrorCategory | TripScope, retry_after: float | None = None
    ) -> BreakerReply:
        """Send this instance's trip vote for ``name`` now (see :meth:`report_trip_nowait`).

        Raises FleetStoreUnavailable, KeyError when ``name`` is not registered.
        """
        scope: TripScope = category if isinstance(category, str) else trip_scope(category)
        return await self._trip(name, scope, retry_after or 0.0)

    async def _trip(self, name: str, scope: TripScope, retry_after: float) -> BreakerReply:
        provider = self._providers[name]
        s = self.settings
        self._reports += 1
        reply = await self.store.trip(
            name, self.instance, provider.view.epoch, scope, retry_after, provider.breaks,
            self._quorum, s.vote_ttl, s.instance_ttl,
        )  # fmt: skip
        if reply.outcome == "opened":
            _log.warning(
                "fleet breaker %s opened by %s (%s failures, %d live instance(s))",
                name, self.instance, scope, reply.live,
            )  # fmt: skip
        return self._take(name, reply)

    async def acquire_probe(self, name: str) -> bool:
        """Try to become the fleet's one half-open probe for ``name``.

        True: make the call, then :meth:`settle_probe_nowait` with its outcome (or
        :meth:`release_probe` if it was not made).  False: reject the call (another caller
        or instance probes, or the store did not answer).  One round trip, unless this
        instance already holds the lease.  Raises KeyError when ``name`` is not registered.
        """
        provider = self._providers[name]
        if provider.probing:
            return False
        view = provider.view
        now = trio.current_time()
        if view.probe_owner == self.instance and now < view.probe_until:
            provider.probing = True
            provider.probe_epoch = view.epoch
            return True
        provider.probing = True
        try:
            reply = await self.store.acquire_probe(
                name, self.instance, view.epoch, self.settings.probe_lease
            )
        except FleetStoreUnavailable as exc:
            provider.probing = False
            self._unreachable(exc)
            return False
        except BaseException:
            provider.probing = False
            raise
        self._take(name, reply)
        if reply.outcome != "granted":
            provider.probing = False
            self._denied += 1
            return False
        self._granted += 1
        provider.probe_epoch = reply.snapshot.epoch
        return True

    def release_probe(self, name: str) -> None:
        """Give back a probe taken with :meth:`acquire_probe` without an outcome (the caller
        gave up): another local caller may probe under the same lease."""
        self._providers[name].probing = False

    def settle_probe_nowait(self, name: str, ok: bool, retry_after: float | None = None) -> bool:
        """Queue the outcome of this instance's probe for ``name``: ``ok`` closes the fleet
        breaker, a failure reopens it with the grown break (at least ``retry_after``).
        Returns False when it was dropped (queue full); the lease then lapses."""
        self._providers[name].probing = False
        return self._queue(name, "settle", retry_after or 0.0, ok)

    async def settle_probe(
        self, name: str, ok: bool, retry_after: float | None = None
    ) -> BreakerReply:
        """Send the probe's outcome now (see :meth:`settle_probe_nowait`).

        Raises FleetStoreUnavailable.
        """
        provider = self._providers[name]
        provider.probing = False
        reply = await self.store.settle_probe(
            name, self.instance, provider.probe_epoch, ok, retry_after or 0.0, provider.breaks
        )
        if reply.outcome != "stale":
            _log.warning("fleet breaker %s %s by %s's probe", name, reply.outcome, self.instance)
        return self._take(name, reply)

    async def isolate(self, name: str) -> BreakerReply:
        """Hold ``name``'s breaker open on every instance until :meth:`reset`.

        Raises FleetStoreUnavailable, KeyError when ``name`` is not registered.
        """
        reply = await self.store.operate(name, "isolate", self._providers[name].breaks)
        _log.warning("fleet breaker %s isolated by %s", name, self.instance)
        return self._take(name, reply)

    async def reset(self, name: str) -> BreakerReply:
        """Close ``name``'s breaker on every instance (clears votes and the grown break).

        Raises FleetStoreUnavailable, KeyError when ``name`` is not registered.
        """
        reply = await self.store.operate(name, "reset", self._providers[name].breaks)
        _log.warning("fleet breaker %s reset by %s", name, self.instance)
        return self._take(name, reply)

    def _queue(self, name: str, kind: str, retry_after: float, ok: bool) -> bool:
        if name not in self._providers:
            raise KeyError(name)
        try:
            self._send.send_nowait((name, kind, retry_after, ok))
        except trio.WouldBlock:
            self._dropped += 1
            return False
        return True

    async def _change_loop(self) -> None:
        async for name, kind, retry_after, ok in self._receive:
            try:
                if kind == "settle":
                    await self.settle_probe(name, ok, retry_after)
                else:
                    scope: TripScope = "wide" if kind == "wide" else "local"
                    await self._trip(name, scope, retry_after)
            except FleetStoreUnavailable as exc:
                self._dropped += 1
                self._unreachable(exc)

    # ------------------------------------------------------------------------ reading

    def health(self, now: float | None = None) -> FleetHealth:
        """``degraded`` (with reasons) while the store is unreachable or a view is stale."""
        now = trio.current_time() if now is None else now
        reasons: list[str] = []
        if self.down_since is not None:
            reasons.append(
                f"fleet store {self.settings.store} unreachable for "
                f"{now - self.down_since:.1f} s: {self.store_error}"
            )
        # A view registered a moment ago has not been read yet: not stale before it could be.
        stale = [
            p.view
            for p in self._providers.values()
            if p.view.is_stale(now)
            and not (p.view.refreshed_at == -math.inf and now - p.registered < p.view.stale_after)
        ]
        if stale and self.down_since is None:
            reasons.append(_stale_reason(stale, now))
        return FleetHealth("degraded" if reasons else "healthy", tuple(reasons), self.live)

    def statistics(self) -> FleetBreakersStatistics:
        """Counters of this member."""
        return FleetBreakersStatistics(
            instance=self.instance,
            live=self.live,
            refreshes=self._refreshes,
            failures=self._failures,
            messages=self._messages,
            stale_messages=self._stale_messages,
            reports=self._reports,
            dropped=self._dropped,
            probes_granted=self._granted,
            probes_denied=self._denied,
            stale_replies=self._stale,
        )


def _stale_reason(views: Sequence[FleetBreakerView], now: float) -> str:
    names = ", ".join(sorted(view.name for view in views))
    oldest = min(view.refreshed_at for view in views)
    age = "never refreshed" if oldest == -math.inf else f"last refreshed {now - oldest:.1f} s ago"
    return f"fleet view stale ({age}) for: {names}"
