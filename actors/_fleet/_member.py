"""This instance's member of a fleet: what provider actors are given, and how it runs.

Theory of operation
-------------------
:func:`open_fleet` opens one :class:`Fleet` for the duration of an ``async with``: the store
client (a coredis pool), and in a nursery of its own the background work of the member, so
nothing outlives the block:

* the fleet breaker member (:class:`~actors._fleet._breakers.FleetBreakers`: heartbeats,
  refreshes, pub/sub, trip votes and probe outcomes);
* the quota refiller (:class:`~actors._fleet._quota.FleetQuotas`);
* per provider sharing its keyed calls, its shared idempotency tier
  (:class:`~actors._fleet._idempotency_shared.SharedIdempotency`: joiners' wake-ups and the
  renewal of the claims this instance holds);
* a few *finishers*, which carry finished keys to the store: a provider queues a claimed call's
  outcome (:meth:`ProviderLink.finish`) and answers its callers at once; the outcome reaches
  the store one round trip later, and until then the claim is renewed like any other, so a
  joiner on another instance waits for it rather than running the key again;
* a health watch: every heartbeat it looks at the member's health and, when it changed,
  tells the providers' monitors (a :class:`~actors.DependencyReport` named ``"fleet store"``:
  ``unavailable`` while the store cannot be reached or the views are stale, which makes the
  application's health ``degraded`` with the reason, and ``ok`` again once it recovered).

Provider actors are given the fleet (``ProviderActor(..., fleet=fleet)``) and take their
:class:`ProviderLink` with :meth:`Fleet.attach` when they are built (every incarnation gets
the same one).  A link reads the member's cached state for the hot path and queues what must
reach the store; the only calls that wait for the store are a claim, a probe lease, and an
operator's isolate or reset.

On the way out the member stops taking finishes and gives the queued ones a short time to
reach the store (twice the command timeout), then leaves the live set.  Claims still held
lapse after their lease.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final, Literal

import trio

from actors._errors import ErrorCategory, FleetStoreUnavailable
from actors._fleet._breaker_store import (
    BreakerStore,
    MemoryBreakerStore,
    RedisBreakerStore,
)
from actors._fleet._breaker_view import FleetBreakerView
from actors._fleet._breakers import FleetBreakers, FleetHealth
from actors._fleet._client import StoreClient, open_store_client
from actors._fleet._idempotency_codec import OutcomeCodec
from actors._fleet._idempotency_shared import SharedClaim, SharedIdempotency
from actors._fleet._idempotency_store import (
    IdempotencyRecordStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)
from actors._fleet._memory import MemoryServer
from actors._fleet._quota import (
    FleetQuotas,
    MemoryQuotaStore,
    QuotaLease,
    QuotaStore,
    RedisQuotaStore,
)
from actors._policies._breaker import BreakerSettings, BreakerState
from actors._policies._config._fleet import FleetProviderSettings, FleetSettings
from actors._policies._logs import library_logger
from actors._protocol import DependencyReport, FleetBreakerStatus, FleetStatus, GateVerdict

__all__ = ["Fleet", "ProviderLink", "open_fleet"]

_log = library_logger("actors.fleet")

#: Finished keys queued for the store at most; beyond it a finish is dropped (counted) and its
#: claim left to lapse.
_FINISH_QUEUE: Final = 10_000
#: Tasks carrying finished keys to the store (each waits one round trip per key).
_FINISHERS: Final = 4
_ISOLATED: Final = BreakerState.ISOLATED

_Finish = tuple[SharedIdempotency, SharedClaim, Literal["finish", "abandon"], object, bool, bool]


class ProviderLink:
    """What one provider actor uses of a :class:`Fleet` (see ``actors._protocol.FleetLink``).

    Made by :meth:`Fleet.attach`; the attributes are read by the provider's hot path.
    """

    __slots__ = (
        "_fleet",
        "_lease",
        "_shared",
        "_view",
        "check",
        "has_quota",
        "on_store_down",
        "service",
        "shares_idempotency",
    )

    def __init__(self, fleet: Fleet, service: str) -> None:
        self._fleet = fleet
        self.service = service
        self.on_store_down = "local"
        self.check: Callable[[float], GateVerdict] | None = None
        self.shares_idempotency = False
        self.has_quota = False
        self._view: FleetBreakerView | None = None
        self._shared: SharedIdempotency | None = None
        self._lease: QuotaLease | None = None

    def _configure(self, breaker: BreakerSettings, settings: FleetProviderSettings) -> None:
        fleet = self._fleet
        self.on_store_down = settings.on_store_down
        if settings.breaker:
            self._view = fleet.breakers.register(self.service, breaker)
            self.check = self._view.check
        else:
            self._view = self.check = None
        self._shared = fleet._shared_for(self.service) if settings.idempotency else None
        self.shares_idempotency = self._shared is not None
        if settings.quota_rate is not None:
            self._lease = fleet.quotas.register(
                self.service, settings.quota_rate, settings.quota_burst
            )
        else:
            self._lease = None
        self.has_quota = self._lease is not None

    # ------------------------------------------------------------------ breaker

    def retry_after(self, now: float) -> float | None:
        """Seconds a call the gate rejected should wait (``None``: isolated)."""
        view = self._view
        return 0.0 if view is None else view.retry_after(now)

    def isolated(self) -> bool:
        """Whether the fleet breaker is isolated by an operator."""
        view = self._view
        return view is not None and view.state is _ISOLATED

    async def acquire_probe(self) -> bool:
        """Try to become the fleet's one probe (see ``FleetBreakers.acquire_probe``)."""
        return await self._fleet.breakers.acquire_probe(self.service)

    def release_probe(self) -> None:
        """Give back an unused probe."""
        self._fleet.breakers.release_probe(self.service)

    def settle_probe(self, ok: bool, retry_after: float | None) -> None:
        """Queue the probe's outcome."""
        self._fleet.breakers.settle_probe_nowait(self.service, ok, retry_after)

    def report_trip(self, category: ErrorCategory | None, retry_after: float | None) -> None:
        """Queue this instance's trip vote (``None``: a path-local failure)."""
        if self._view is not None:
            self._fleet.breakers.report_trip_nowait(
                self.service, "local" if category is None else category, retry_after
            )

    async def isolate(self) -> None:
        """Hold the fleet breaker open everywhere (raises FleetStoreUnavailable)."""
        if self._view is not None:
            await self._fleet.breakers.isolate(self.service)

    async def reset(self) -> None:
        """Close the fleet breaker everywhere (raises FleetStoreUnavailable)."""
        if self._view is not None:
            await self._fleet.breakers.reset(self.service)

    def status(self, now: float) -> FleetBreakerStatus | None:
        """The fleet breaker as this instance sees it (``None`` when not shared)."""
        view = self._view
        if view is None:
            return None
        return FleetBreakerStatus(
            service=self.service,
            state=view.state.value,
            fresh=not view.is_stale(now),
            epoch=view.epoch,
            retry_after=view.retry_after(now),
            votes=view.votes,
            probe_owner=view.probe_owner,
            break_length=view.break_length,
        )

    # ------------------------------------------------------------------ idempotency

    async def claim(self, key: str, payload: object) -> object:
        """Claim ``key`` fleet-wide, or get its outcome (see ``FleetLink.claim``)."""
        shared = self._shared
        assert shared is not None, "this provider does not share its keyed calls"
        return await shared.begin(key, payload)

    def finish(self, claim: object, outcome: object, *, failed: bool, transient: bool) -> None:
        """Queue the claimed call's outcome for the store."""
        assert self._shared is not None
        assert isinstance(claim, SharedClaim)
        self._fleet._queue((self._shared, claim, "finish", outcome, failed, transient))

    def abandon(self, claim: object) -> None:
        """Queue the release of a claim whose call ended without an outcome."""
        assert self._shared is not None
        assert isinstance(claim, SharedClaim)
        self._fleet._queue((self._shared, claim, "abandon", None, False, False))

    def abandon_all(self) -> None:
        """Queue the release of every claim held for this service."""
        shared = self._shared
        if shared is not None:
            for claim in shared.owned():
                self.abandon(claim)

    # ------------------------------------------------------------------ quota

    def take_quota(self, now: float) -> float | None:
        """One token of the fleet's quota (see ``QuotaLease.try_take``)."""
        lease = self._lease
        return 0.0 if lease is None else lease.try_take(now)

    def give_back_quota(self) -> None:
        """Return an unused token."""
        if self._lease is not None:
            self._lease.give_back()

    def store_down(self, operation: str) -> FleetStoreUnavailable:
        """The error of a call the ``"reject"`` policy refuses."""
        fleet = self._fleet
        reason = fleet.breakers.store_error or "the store does not answer"
        return FleetStoreUnavailable(operation=operation, store=fleet.settings.store, reason=reason)

    # ------------------------------------------------------------------ health

    def watch_health(self, callback: Callable[[DependencyReport], None]) -> DependencyReport:
        """Have ``callback`` told of the member's health changes (see ``FleetLink``)."""
        fleet = self._fleet
        report = fleet.dependency_report()
        fleet._watchers[self.service] = (callback, report.status)
        return report

    def __repr__(self) -> str:
        return f"<ProviderLink {self.service!r} of {self._fleet.instance!r}>"


class Fleet:
    """This instance's member of a fleet (see the module docstring).

    Made by :func:`open_fleet`, which runs it; valid inside its ``async with`` only.

    Attributes:
        settings: the :class:`~actors.FleetSettings`.
        instance: this instance's id.
        breakers: the fleet breaker member.
        quotas: the quota refiller.
    """

    def __init__(
        self,
        settings: FleetSettings,
        *,
        breakers: BreakerStore,
        records: Callable[[str], IdempotencyRecordStore],
        quotas: QuotaStore,
        client: StoreClient | None = None,
        server: MemoryServer | None = None,
        reply_types: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.instance = settings.instance
        self.breakers = FleetBreakers(breakers, settings)
        self.quotas = FleetQuotas(quotas, settings)
        self._records = records
        self._client = client
        self._server = server
        self._reply_types = dict(reply_types or {})
        self._links: dict[str, ProviderLink] = {}
        self._shared: dict[str, SharedIdempotency] = {}
        self._nursery: trio.Nursery | None = None
        self._send, self._receive = trio.open_memory_channel[_Finish](_FINISH_QUEUE)
        self._finishers_done = trio.Event()
        self._finishers = 0
        self.finish_dropped = 0
        # Per service: who to tell of health changes, and the state it was last told.
        self._watchers: dict[str, tuple[Callable[[DependencyReport], None], str]] = {}

    # ------------------------------------------------------------------ providers

    def attach(
        self,
        service: str,
        breaker: BreakerSettings | None = None,
        settings: FleetProviderSettings | None = None,
    ) -> ProviderLink:
        """The link of provider ``service``: the same object for every call (a restarted
        provider gets it again, with its settings as they are now).

        ``breaker`` gives the fleet breaker's break lengths (default
        :class:`~actors.BreakerSettings`); ``settings`` what the provider shares (default
        :class:`~actors.FleetProviderSettings`: breaker and keyed calls, no quota).
        """
        link = self._links.get(service)
        if link is None:
            link = self._links[service] = ProviderLink(self, service)
        link._configure(
            BreakerSettings() if breaker is None else breaker,
            FleetProviderSettings() if settings is None else settings,
        )
        return link

    def _shared_for(self, service: str) -> SharedIdempotency:
        shared = self._shared.get(service)
        if shared is None:
            codec = OutcomeCodec(self._reply_types.get(service, Any))
            shared = SharedIdempotency(self._records(service), self.settings, service, codec)
            self._shared[service] = shared
            if self._nursery is not None:
                self._nursery.start_soon(shared.run)
        return shared

    def _queue(self, item: _Finish) -> None:
        try:
            self._send.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError):
            # The queue is full (the store is far behind) or the member is closing: the claim
            # is no longer renewed and lapses, so another instance may run the key again.
            self.finish_dropped += 1
            item[0].forget(item[1])

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the member until cancelled; ``started`` once it has tried the store once."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.breakers.run)
            await nursery.start(self.quotas.run)
            self._finishers = _FINISHERS
            for _ in range(_FINISHERS):
                nursery.start_soon(self._finisher, self._receive.clone())
            self._receive.close()
            self._nursery = nursery
            for shared in self._shared.values():
                nursery.start_soon(shared.run)
            nursery.start_soon(self._watch_health)
            task_status.started()

    async def _watch_health(self) -> None:
        while True:
            await trio.sleep(self.settings.heartbeat_interval)
            report = self.dependency_report()
            for service, (callback, told) in list(self._watchers.items()):
                if told != report.status:
                    self._watchers[service] = (callback, report.status)
                    callback(report)

    def dependency_report(self) -> DependencyReport:
        """The member's health as the monitor takes it (name ``"fleet store"``)."""
        health = self.breakers.health()
        return DependencyReport(
            name="fleet store",
            status="ok" if health.status == "healthy" else "unavailable",
            reason="; ".join(health.reasons),
            where=self.settings.store if self._server is None else "memory",
            at=time.time(),
        )

    async def _finisher(self, receive: trio.MemoryReceiveChannel[_Finish]) -> None:
        try:
            async with receive:
                async for shared, claim, kind, outcome, failed, transient in receive:
                    try:
                        if kind == "abandon":
                            await shared.abandon(claim)
                        else:
                            await shared.finish(claim, outcome, failed=failed, transient=transient)
                    except FleetStoreUnavailable:
                        pass  # counted by the shared tier; the claim lapses by itself
        finally:
            self._finishers -= 1
            if self._finishers == 0:
                self._finishers_done.set()

    async def _drain(self) -> None:
        """Stop taking finishes; wait (a bounded time) for the queued ones to reach the store."""
        await self._send.aclose()
        with trio.move_on_after(2 * self.settings.command_timeout):
            await self._finishers_done.wait()

    # ------------------------------------------------------------------ operators

    async def isolate(self, service: str) -> None:
        """Hold ``service``'s fleet breaker open on every instance until :meth:`reset`.

        Raises FleetStoreUnavailable, KeyError when no provider shares that breaker here.
        """
        await self.breakers.isolate(service)

    async def reset(self, service: str) -> None:
        """Close ``service``'s fleet breaker on every instance.

        Raises FleetStoreUnavailable, KeyError when no provider shares that breaker here.
        """
        await self.breakers.reset(service)

    def health(self) -> FleetHealth:
        """``degraded`` (with reasons) while the store is unreachable or a view is stale."""
        return self.breakers.health()

    def status(self) -> FleetStatus:
        """The member's state now (what the admin API, metrics and ``aura`` show)."""
        now = trio.current_time()
        health = self.breakers.health(now)
        breakers = [
            status
            for link in sorted(self._links.values(), key=lambda link: link.service)
            if (status := link.status(now)) is not None
        ]
        if self._client is not None:
            statistics = self._client.statistics()
            round_trips, errors, available = (
                statistics.round_trips,
                statistics.failures,
                statistics.available,
            )
        else:
            server = self._server
            round_trips = 0 if server is None else server.round_trips
            errors = self.breakers.statistics().failures
            available = server is None or server.running
        idempotency = {}
        for service, shared in sorted(self._shared.items()):
            s = shared.statistics()
            idempotency[service] = {
                "claims": s.claims,
                "replays": s.replays,
                "joins": s.joins,
                "takeovers": s.takeovers,
                "conflicts": s.conflicts,
                "finished": s.finished,
                "fenced": s.fenced,
                "failures": s.failures,
            }
        return FleetStatus(
            instance=self.instance,
            store=self.settings.store if self._server is None else "memory",
            status=health.status,
            reasons=list(health.reasons),
            available=available,
            live=health.live,
            round_trips=round_trips,
            errors=errors,
            dropped=self.breakers.statistics().dropped + self.finish_dropped,
            breakers=breakers,
            idempotency=idempotency,
        )

    def __repr__(self) -> str:
        return f"<Fleet {self.instance!r} at {self.settings.store}>"


@contextlib.asynccontextmanager
async def open_fleet(
    settings: FleetSettings,
    *,
    reply_types: Mapping[str, Any] | None = None,
    server: MemoryServer | None = None,
) -> AsyncIterator[Fleet]:
    """Open this instance's member of the fleet ``settings`` describes, for the block.

    Give the yielded :class:`Fleet` to the provider actors (``ProviderActor(..., fleet=fleet)``)
    of a tree opened inside the block.  The store need not be up: the member starts anyway
    (its views stale, so the local policies decide) and reaches the store once it is.

    Args:
        settings: the fleet's settings (``config.fleet``).
        reply_types: per provider, the type its replies decode to on an instance that gets
            them from the shared store (a msgspec Struct, a dataclass, ...); plain builtins
            otherwise.
        server: test support: an in-memory store server (``MemoryServer``) instead of Redis,
            so a fleet runs under ``MockClock``.
    """
    async with contextlib.AsyncExitStack() as stack:
        if server is None:
            client: StoreClient | None = await stack.enter_async_context(
                open_store_client(settings)
            )
            assert client is not None
            prefix = settings.key_prefix
            fleet = Fleet(
                settings,
                breakers=RedisBreakerStore(client, prefix),
                records=lambda service: RedisIdempotencyStore(client, prefix, service),
                quotas=RedisQuotaStore(client, prefix),
                client=client,
                reply_types=reply_types,
            )
        else:
            prefix = settings.key_prefix
            fleet = Fleet(
                settings,
                breakers=MemoryBreakerStore(server, prefix),
                records=lambda service: MemoryIdempotencyStore(server, prefix, service),
                quotas=MemoryQuotaStore(server, prefix),
                server=server,
                reply_types=reply_types,
            )
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            _log.info(
                "fleet member %s joined at %s (%d live)",
                fleet.instance, fleet.settings.store, fleet.breakers.live,
            )  # fmt: skip
            try:
                yield fleet
            finally:
                with trio.CancelScope(shield=True):
                    await fleet._drain()
                nursery.cancel_scope.cancel()
