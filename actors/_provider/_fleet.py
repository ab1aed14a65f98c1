"""A provider's side of a fleet: the breaker gate's probe, trip votes, and keys claimed fleet-wide.

Theory of operation
-------------------
A provider actor given a fleet member (``ProviderActor(..., fleet=member)``) gets one
:class:`~actors._protocol.FleetLink` for its service and uses it in four places, none of which
costs the hot path a round trip:

* **The breaker gate** (``_gate``, the link's cached view).  Admission reads it after the local
  breaker, which stays authoritative: a local breaker that rejects rejects.  ``REJECT`` fails
  the call fast with a :class:`~actors.CircuitOpen` whose ``fleet`` is true; ``PASS`` and
  ``IGNORE`` (a stale view or an unreachable store) leave the decision to the local breaker;
  ``PROBE`` marks the job: its worker asks for the fleet's one probe lease (one round trip per
  break at most; the instance's other callers are refused at once) before the attempt, and the
  attempt's outcome settles it (a success closes the fleet breaker everywhere, a counted
  failure reopens it with the grown break).  A probe the call did not use is released.
* **Trip votes.**  When the local breaker opens, the link queues this instance's vote with the
  category of the failure that tripped it and the provider's Retry-After (rate limits and 5xx
  open the fleet breaker at once; timeouts, network and unknown failures need a quorum).
* **Keys claimed fleet-wide.**  The in-process idempotency table stays the first tier: a call
  it answers (a stored outcome, a join of a call running here) never reaches the store.  A key
  it *starts* is claimed in the shared store before the call runs, by a task of its own
  (:meth:`_Shared._run_claim`), since the claim may wait while another instance runs the key.
  The claim answers with the fleet's outcome (the key ran elsewhere), a claim (the call runs
  here and its outcome is queued for the store when it ends), or an error: a conflict (the
  key is the fleet's with another payload) fails the call without caching anything; an
  unreachable store lets the call go on locally or refuses it, as the provider's
  ``on_store_down`` says.  While the claim waits the job is cancellable like any other: its
  ``scope`` is the claim's.
* **The fleet quota** is read at admission like the local rate limiter, from tokens leased
  ahead of need (see ``_jobs``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from actors._errors import CircuitOpen, FleetStoreUnavailable, IdempotencyConflict
from actors._policies._idempotency import Completed
from actors._protocol import FleetLink, GateVerdict
from actors._provider._base import _PROBING, _Job
from actors._provider._reporting import _Reporting

__all__: list[str] = []

_PASS = GateVerdict.PASS
_REJECT = GateVerdict.REJECT
_PROBE = GateVerdict.PROBE


class _Shared(_Reporting):
    """The fleet parts of :class:`~actors.ProviderActor` (see the module docstring)."""

    if TYPE_CHECKING:
        # Defined by the job machinery (``_jobs``), which this class is a base of.
        def _admit(self, job: _Job, now: float, run_here: bool = False) -> _Job | None: ...
        def _give_up(self, job: _Job, error: BaseException) -> None: ...
        def _finish(
            self, job: _Job, result: object, now: float, *, failed: bool = False
        ) -> None: ...
        def _abandon(self, job: _Job) -> None: ...

    def _fleet_rejection(self, link: FleetLink, now: float) -> CircuitOpen:
        """The error of a call the fleet gate rejects."""
        return CircuitOpen(
            service=self.name,
            retry_after=link.retry_after(now),
            isolated=link.isolated(),
            fleet=True,
        )

    # ------------------------------------------------------------------ the probe

    async def _take_probe(self, job: _Job) -> bool:
        """Before the attempt of a job the gate marked ``PROBE``: look again, and take the
        fleet's probe lease if it is still needed.  False when the job was answered here
        (rejected, or abandoned while the lease was asked for): the caller frees its slot."""
        link = self._link
        assert link is not None
        assert self._gate is not None
        job.probe = 0
        now = trio.current_time()
        verdict = self._gate(now)
        if verdict is _PROBE:
            granted = await link.acquire_probe()
            if job.done:  # every caller left while the lease was asked for
                if granted:
                    link.release_probe()
                return False
            if granted:
                job.probe = _PROBING
                return True
            verdict = _REJECT
        if verdict is _REJECT:
            self.counters.rejected += 1
            rejected = self._fleet_rejection(link, trio.current_time())
            if job.last_error is not None:
                rejected.__cause__ = job.last_error
            self._give_up(job, rejected)
            return False
        return True  # closed meanwhile, or the view went stale: the local breaker decides

    def _end_probe(self, job: _Job, ok: bool | None, retry_after: float | None = None) -> None:
        """Settle the fleet probe ``job`` holds: ``ok`` (True / False) is its outcome, ``None``
        releases it unused (a cancellation, or a failure that does not count)."""
        job.probe = 0
        link = self._link
        assert link is not None
        if ok is None:
            link.release_probe()
        else:
            link.settle_probe(ok, retry_after)

    # ------------------------------------------------------------------ claims

    def _start_claim(self, job: _Job) -> None:
        """Claim ``job``'s key in the fleet's store in a task of its own, then admit it."""
        # The scope exists from now on, so a cancellation before the task first runs finds it
        # (see _cancel_job); its deadline is the job's.
        job.scope = trio.CancelScope(deadline=job.deadline)
        self._waiting += 1
        self.spawn(self._run_claim, job, name=f"{self.path}:claim")

    async def _run_claim(self, job: _Job) -> None:
        link = self._link
        entry = job.entry
        assert link is not None
        assert entry is not None
        claimed: object = None
        try:
            while True:
                scope = job.scope
                assert scope is not None
                with scope:
                    try:
                        claimed = await link.claim(entry.key, job.payload)
                    except IdempotencyConflict as exc:
                        self._unclaimed(job, exc)
                        return
                    except TypeError as exc:  # the payload has no stable fingerprint
                        self._unclaimed(job, exc)
                        return
                    except FleetStoreUnavailable as exc:
                        if link.on_store_down == "reject":
                            self._unclaimed(job, exc)
                            return
                        claimed = None  # "local": the in-process table alone
                    break
                # The scope was cancelled: every caller left (stopping), or the deadline passed.
                job.stopping = False
                if job.cancelled or trio.current_time() >= job.deadline:
                    self._abandon(job)
                    return
                job.scope = trio.CancelScope(deadline=job.deadline)  # a caller joined: again
        finally:
            job.scope = None
            self._waiting -= 1
        job.stopping = False  # a cancellation that came as the claim's answer did
        if job.done:  # settled meanwhile (cannot happen while the scope is set; be safe)
            if claimed is not None and type(claimed) is not Completed:
                link.abandon(claimed)
            return
        if type(claimed) is Completed:
            # The key ran elsewhere in the fleet: its outcome answers the callers here, and
            # the in-process table keeps it for the next ones.
            self._finish(job, claimed.value, trio.current_time(), failed=claimed.failed)
            return
        job.claim = claimed
        self._admit(job, trio.current_time())

    def _unclaimed(self, job: _Job, error: BaseException) -> None:
        """Answer ``job`` with ``error`` before it ran: nothing is stored under its key (the
        in-process entry is dropped, so a later call asks the fleet again)."""
        self.counters.rejected += 1
        entry = job.entry
        if entry is not None:
            job.entry = None
            self._table.abandon(entry)
        self._finish(job, error, trio.current_time(), failed=True)
