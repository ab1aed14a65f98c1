"""What a saga journal shared by a fleet of instances offers beyond the Journal protocol.

A *fleet journal* (``PostgresJournal`` is one) is shared by several coordinator instances:
each saga has an owner instance and a fencing epoch, instances hold leases, and survivors
take over the sagas of instances whose lease expired.  :class:`FleetJournal` is the protocol a
coordinator drives; the records here are what it and the operator surface read.

What a coordinator must do with the fleet errors:

* ``OwnershipLost`` from a write: another instance owns the saga now.  Stop driving it and
  send nothing more for it (its new owner resumes it, re-sending the step in flight with the
  same idempotency key).
* ``JournalUnavailable`` with ``in_doubt=False``: nothing was written.  Wait
  (``wait_available``) and retry the same write.
* ``JournalUnavailable`` with ``in_doubt=True``: the write may still land.  Stop driving the
  saga: ``claim_orphans`` hands it back, as stored, once the write is settled.
* Call ``claim_orphans`` periodically (every quarter of ``lease_duration`` keeps a takeover
  within about 1.25 leases) and resume what it returns.
* To start a saga whose id is running elsewhere, ``wait_finished`` waits for its end.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

import attrs

from actors._saga._journals._records import Journal, SagaEvent, SagaHeader, SagaPhase
from actors._saga._journals._state import SagaState

__all__ = ["FleetJournal", "FleetStatistics", "InstanceInfo", "SagaOwnership"]


@attrs.frozen
class InstanceInfo:
    """One journal instance of the fleet (``PostgresJournal.instances()``).

    Attributes:
        instance_id: its fresh random id.
        host, pid: where it runs.
        started_at: wall-clock time (``time.time()`` scale) it first registered.
        lease_remaining: seconds until its lease expires, by the server's clock (negative:
            expired).
        closed: whether it closed gracefully.
        sagas_owned: unfinished sagas it owns.
    """

    instance_id: str
    host: str
    pid: int
    started_at: float
    lease_remaining: float
    closed: bool
    sagas_owned: int

    @property
    def alive(self) -> bool:
        """Whether its lease is current (it has not closed and its lease has not expired)."""
        return not self.closed and self.lease_remaining >= 0


@attrs.frozen
class SagaOwnership:
    """Who owns a saga (``PostgresJournal.ownership()``).

    Attributes:
        saga_id: the saga.
        owner: the instance id of its owner (its creator, or the last instance to claim it).
        epoch: its fencing epoch (0 at creation, one more at each claim).
        phase: its phase as last written.
        finished: whether it has ended.
        owner_alive: whether the owner's lease is current.
    """

    saga_id: str
    owner: str
    epoch: int
    phase: SagaPhase
    finished: bool
    owner_alive: bool


@attrs.frozen
class FleetStatistics:
    """A snapshot of a fleet journal's connection and ownership counters.

    Attributes:
        instance_id: this instance.
        available: whether the server is reachable.
        unavailable_reason: the last connection error (redacted), ``""`` when available.
        reconnects: connections made again after an outage.
        ownership_lost: writes refused because another instance owns the saga.
        sagas_claimed: sagas taken over by :meth:`PostgresJournal.claim_orphans`.
        writes_in_doubt: writes whose caller was told ``JournalUnavailable(in_doubt=True)``.
        failed: whether the journal failed for good (an error no retry can fix: every call
            raises ``JournalError`` until it is closed); ``unavailable_reason`` says why.
    """

    instance_id: str
    available: bool
    unavailable_reason: str
    reconnects: int
    ownership_lost: int
    sagas_claimed: int
    writes_in_doubt: int
    failed: bool = False


class FleetJournal(Journal, Protocol):
    """A :class:`~actors.Journal` shared by several instances (see the module
    docstring for what a coordinator must do with its errors)."""

    @property
    def instance_id(self) -> str:
        """This instance's id (fresh per journal object)."""
        ...

    @property
    def where(self) -> str:
        """The journal for messages (its server without password)."""
        ...

    async def create(
        self,
        header: SagaHeader,
        first_event: SagaEvent,
        *,
        then: Sequence[SagaEvent] = (),
        answer_within: float | None = None,
    ) -> SagaState:
        """As :meth:`Journal.create`; ``answer_within`` (seconds) bounds the wait for a server that
        does not answer (then ``JournalUnavailable`` with ``in_doubt=True``; the write stays
        queued: cancelling instead would leave the caller without word of it)."""
        ...

    def fleet_statistics(self) -> FleetStatistics:
        """The connection and ownership counters (for health and metrics)."""
        ...

    @property
    def lease_duration(self) -> float:
        """Seconds a lease lasts; call :meth:`claim_orphans` several times per lease."""
        ...

    @property
    def available(self) -> bool:
        """Whether the journal's server is reachable (writes are accepted)."""
        ...

    async def wait_available(self) -> None:
        """Return once the server is reachable again."""
        ...

    async def claim_orphans(
        self, limit: int = 100, *, definitions: Collection[str] | None = None
    ) -> list[tuple[SagaHeader, list[SagaEvent]]]:
        """Take over sagas nobody drives (of the ``definitions`` named, if given); return
        them, oldest first, to be resumed."""
        ...

    async def wait_finished(self, saga_id: str) -> SagaPhase | None:
        """Wait until the saga has ended; its final phase (``None`` if unknown)."""
        ...

    async def ownership(self, saga_id: str) -> SagaOwnership | None:
        """Who owns the saga, or ``None`` if unknown."""
        ...

    async def instances(self) -> list[InstanceInfo]:
        """Every instance with a lease row, oldest first."""
        ...
