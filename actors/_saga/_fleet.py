"""The saga coordinator in a fleet: what it does with a journal that several instances share.

Theory of operation
-------------------
With a fleet journal (the :class:`~actors._saga._journals._fleet.FleetJournal` protocol:
:class:`~actors.PostgresJournal`) every saga has an owner instance and a fencing epoch, and
the coordinator keeps the journal's contract:

* **Outages pause.**  Its writes go through wrappers: a write the journal refuses at once
  because its server is unreachable (``JournalUnavailable``, not in doubt: nothing was
  written) waits until the server is back (``wait_available``) and is made again.  The saga
  pauses where it is and nothing is sent meanwhile: a step is sent only after the write that
  announces it has committed (write-ahead).  A caller who gives up meanwhile still cancels
  the saga's forward part.
* **Stop, send nothing more.**  A write that raises ``OwnershipLost`` (another instance owns
  the saga now: this one's lease expired) or ``JournalUnavailable`` *in doubt* (the write may
  still land) ends this coordinator's drive of the saga at once, before anything else is sent
  for it.  In doubt, the journal hands the saga back through ``claim_orphans`` once the write
  has settled, and it resumes from what was stored.  Either way its callers stay: they are
  answered from the journal when the saga ends, wherever it runs (``wait_finished``, through
  LISTEN/NOTIFY), or when their own deadlines pass.
* **Take over.**  A background task claims, every quarter of the journal's lease, the sagas
  nobody drives (those of instances whose lease expired, of the definitions this coordinator
  knows) and resumes them as after a restart: the step in flight is re-sent with its
  idempotency key.  A takeover therefore comes within about 1.25 leases of a death.
* **Start.**  While the journal knows its server is down, ``StartSaga`` is refused at once
  with ``JournalUnavailable`` (a dependency error).  The create's wait is bounded by the
  caller's deadline, so a hung server is reported before the ask times out (in doubt: the
  saga may still be created; it then runs, handed back by the journal).  A ``StartSaga`` for
  an id another instance runs waits for that saga to end and answers its outcome.
* **Health.**  The journal's state goes to the monitor as a
  :class:`~actors.DependencyReport` named ``"saga journal"`` whenever it changes:
  ``unavailable`` makes the application *degraded*, ``failed`` *unhealthy*.

Exactly once, fleet-wide.  A saga resumed by a new owner re-sends its step in flight with the
same key, and the step may have taken effect before the old owner died.  The journal makes
the *saga* move on exactly once; the *effect* is applied once only if the step's target
applies each key once across the fleet: a provider actor with the shared idempotency store
(Redis) in front of a service, or a service that honours the key itself.  A target that
dedupes in its own process only does not suffice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

import trio

from actors._core._reply import Reply
from actors._errors import (
    ActorError,
    IdempotencyConflict,
    JournalUnavailable,
    MailboxFull,
    OwnershipLost,
)
from actors._protocol import DependencyReport
from actors._saga._definition import SagaDefinition
from actors._saga._ending import _Ending
from actors._saga._journals._records import JournalError, SagaEvent, SagaHeader
from actors._saga._journals._state import SagaState, saga_state
from actors._saga._run import _log, _Run, _shown

#: What stops this coordinator's drive of a saga (see the module docstring).
STOPS: Final = (OwnershipLost, JournalUnavailable)
#: The monitor's name for the journal.
DEPENDENCY: Final = "saga journal"
#: Sagas claimed per round; a full round is followed by another at once.
CLAIM_BATCH: Final = 100
#: Seconds between two looks at the journal's state (for the monitor).
WATCH_EVERY: Final = 0.25


class _Fleet(_Ending):
    """The fleet side of :class:`~actors.SagaCoordinator` (see the module docstring)."""

    _journal_reported: tuple[str, str] | None

    # ------------------------------------------------------------------ writes

    async def _fleet_append(self, event: SagaEvent) -> SagaState:
        fleet = self._fleet
        assert fleet is not None
        while True:
            try:
                return await fleet.append(event)
            except JournalUnavailable as exc:
                if exc.in_doubt:
                    raise
                await self._wait_journal()

    async def _fleet_append_many(self, events: Sequence[SagaEvent]) -> dict[str, SagaState]:
        fleet = self._fleet
        assert fleet is not None
        while True:
            try:
                return await fleet.append_many(events)
            except JournalUnavailable as exc:
                if exc.in_doubt:
                    raise
                await self._wait_journal()

    async def _wait_journal(self) -> None:
        """Pause until the journal's server is reachable again (cancellable)."""
        fleet = self._fleet
        assert fleet is not None
        self.counters.journal_waits += 1
        self._note_journal()
        await fleet.wait_available()

    async def _read_back(self, saga_id: str) -> tuple[SagaHeader, list[SagaEvent]] | None:
        """The saga as journaled; with a fleet journal, waits out an outage."""
        while True:
            try:
                return await self._journal.get(saga_id)
            except JournalUnavailable:
                if self._fleet is None:
                    raise
                await self._wait_journal()

    # ------------------------------------------------------------------ stopping

    def _halt(self, run: _Run, exc: BaseException) -> None:
        """Stop driving ``run`` (nothing more is sent for it); its callers are answered when
        it ends, wherever it runs."""
        saga_id = run.header.saga_id
        if isinstance(exc, OwnershipLost):
            self.counters.ownership_lost += 1
            _log.warning(
                "saga %s: another instance owns it now (%s); this one stops driving it",
                saga_id,
                _shown(exc),
            )
        else:
            self.counters.writes_in_doubt += 1
            _log.warning(
                "saga %s: a journal write is in doubt (%s); the saga waits until the journal "
                "hands it back",
                saga_id,
                _shown(exc),
            )
        waiters = [reply for reply in run.waiters if not reply.done]
        run.waiters = []
        if waiters:
            self.spawn(
                self._await_end,
                saga_id,
                run.definition,
                waiters,
                name=f"{self.path}:awaiting {saga_id}",
            )

    async def _await_end(
        self, saga_id: str, definition: SagaDefinition, waiters: list[Reply[Any]]
    ) -> None:
        """Answer ``waiters`` when the saga ``saga_id`` ends, wherever it runs; give up on
        each at its own deadline."""
        fleet = self._fleet
        assert fleet is not None
        while True:
            waiters = [reply for reply in waiters if not reply.done]
            if not waiters:
                return
            with trio.move_on_at(max(reply.deadline for reply in waiters)):
                try:
                    await fleet.wait_finished(saga_id)  # waits through outages
                    found = await self._read_back(saga_id)
                except JournalError as exc:
                    for reply in waiters:
                        reply.fail(_fresh(exc))
                    return
                if found is None:  # pruned meanwhile: its outcome is gone
                    for reply in waiters:
                        reply.fail(
                            JournalError(
                                f"Saga {saga_id!r} ended, but it is no longer in the journal "
                                "(pruned): its outcome is not known."
                            )
                        )
                    return
                self._answer_stored(found, definition, waiters)
                return

    def _answer_stored(
        self,
        found: tuple[SagaHeader, list[SagaEvent]],
        definition: SagaDefinition,
        waiters: list[Reply[Any]],
    ) -> None:
        """Answer ``waiters`` with the outcome of a finished saga read from the journal."""
        header, events = found
        old = _Run(header, definition, None, self._plans.get(definition.name))
        old.state = saga_state(header, events)
        for reply in waiters:
            self._answer(old, reply)

    # ------------------------------------------------------------------ taking over

    def _resume(self, header: SagaHeader, events: list[SagaEvent], *, taken: bool) -> bool:
        """Drive a journaled saga from its state; ``False`` if it cannot be resumed."""
        raise NotImplementedError  # pragma: no cover - SagaCoordinator defines it

    async def _fleet_keeper(self, load_first: bool) -> None:
        """Claim the sagas nobody drives, every quarter of a lease, and resume them
        (``load_first``: load this instance's own sagas first, the start could not)."""
        fleet = self._fleet
        assert fleet is not None
        every = fleet.lease_duration / 4
        names = sorted(self._definitions)
        while load_first:
            try:
                loaded = await fleet.load_unfinished()
            except JournalUnavailable:
                await fleet.wait_available()
                continue
            for header, events in loaded:
                if header.saga_id not in self._runs:
                    self._resume(header, events, taken=False)
            load_first = False
        while True:
            try:
                claimed = await fleet.claim_orphans(CLAIM_BATCH, definitions=names)
            except JournalUnavailable:
                await fleet.wait_available()
                continue
            for header, events in claimed:
                if header.saga_id in self._runs:  # driven here: the journal's contract says
                    _log.error(  # this cannot happen; never drive a saga twice
                        "saga %s was handed out while this coordinator drives it; ignored",
                        header.saga_id,
                    )
                    continue
                self._resume(header, events, taken=True)
            if len(claimed) < CLAIM_BATCH:
                await trio.sleep(every)

    # ------------------------------------------------------------------ health

    async def _watch_journal(self) -> None:
        """Tell the monitor the journal's state whenever it changes."""
        while True:
            self._note_journal()
            await trio.sleep(WATCH_EVERY)

    def _note_journal(self) -> None:
        fleet = self._fleet
        if fleet is None or self._monitor_spec is None:
            return
        stats = fleet.fleet_statistics()
        if stats.failed:
            state = ("failed", stats.unavailable_reason)
        elif stats.available:
            state = ("ok", "")
        else:
            state = ("unavailable", stats.unavailable_reason or "reconnecting")
        if state == self._journal_reported:
            return
        report = DependencyReport(DEPENDENCY, state[0], state[1], fleet.where, time.time())
        monitor = self._monitor
        try:
            if monitor is None:
                monitor = self._monitor = self.lookup(self._monitor_spec)  # type: ignore[arg-type]
            monitor.tell_nowait(report)
        except (MailboxFull, ActorError, LookupError):
            return  # told at the next look
        self._journal_reported = state


def _fresh(exc: BaseException) -> BaseException:
    """A new exception like ``exc`` for one more caller (one object is never raised in two
    tasks: each would append to the other's traceback)."""
    if isinstance(exc, JournalError):
        copy = JournalError(str(exc), path=exc.path, category=exc.category)
        copy.__cause__ = exc
        return copy
    if isinstance(exc, JournalUnavailable):
        return JournalUnavailable(str(exc), journal=exc.journal, in_doubt=exc.in_doubt)
    if isinstance(exc, IdempotencyConflict):
        return IdempotencyConflict(key=exc.key)
    return exc
