"""The saga coordinator actor: runs sagas step by step, journals every transition first,
compensates on failure or cancellation, and resumes every unfinished saga after a restart.

Theory of operation
-------------------
A :class:`SagaCoordinator` owns a journal (``actors._saga._journals._records``) and a set of
:class:`~actors.SagaDefinition`.  Its mailbox only *admits*: ``StartSaga``
validates the request, defers the reply and spawns one background task for the saga (in the
coordinator's scope, :meth:`Actor.spawn`); queries that need the journal are answered from a
spawned task too.  So the mailbox never waits for a step, and many sagas run at once.  The
coordinator's state (the table of running sagas, counters) is touched only by its own tasks.

A saga's task drives the saga state machine of ``actors._saga._journals._records`` (table
``TRANSITIONS``) and is write-ahead: every transition is durable in the journal *before* the message
it announces is sent.  Forward, step ``i``'s completion and step ``i + 1``'s start are journaled in
one ``append_many`` (one commit per step, not two; the SQLite journal stores them in one row), then
step ``i + 1``'s message is sent; a new saga is created with its first step's start::

    create(started, then=[step_started(0)]) -> send 0 -> [step_completed(0), step_started(1)]
    -> send 1 -> ... -> [step_completed(n-1), completed]

On the in-memory journal, whose writes never block, the per-step write is made without a
coroutine (``MemoryJournal._step_completed_nowait``, which builds both events from the state
it returned last for the saga); a subclass gets the awaited calls.

Each step and compensation carries the idempotency key ``{saga_id}:{step}`` or
``{saga_id}:{step}:compensate`` (see ``actors._saga._definition`` for how it reaches the
target); retries and re-sends after a restart reuse it, so a target that honours keys applies
each effect once.

Failure.  A step that fails (after its retries) is journaled ``step_failed`` with a
:class:`~actors.StepError`; if any completed compensatable step (or the failed
step itself, when its outcome is uncertain) needs undoing the saga journals ``compensating``
and compensates them in reverse order, else it ends ``failed``.  A failed step's outcome is
uncertain once any send of its key may have landed: an attempt failed with a timeout, a crash
or a cancellation, or the key was sent more than once (a retry, a re-send after a restart, a
provider's own retry), since a final refusal ("already charged") says nothing about the sends
before it.  Journaled errors are redacted and bounded (``actors._policies._redact``), and so is
every log line and monitor report.  A compensation that fails is
journaled ``compensation_failed_step`` and retried with backoff under the step's
``compensation_retry`` and the definition's ``compensation_deadline``; when it gives up the saga
ends ``compensation_failed``: it stays listed, a :class:`SagaReport` goes to the monitor (if
its mailbox is full, a background task waits for room: that report is never dropped) and
the caller gets :class:`~actors.CompensationFailed`.

Cancellation.  When the caller that started a saga stops waiting (its ask timed out or was
cancelled), the cancel scope its *forward* part runs in is cancelled (one scope per worker task,
shared by the forward parts of the sagas it runs one after another; none per step, and none per
saga: entering one costs about as much as a step): the step in flight is abandoned and journaled
failed (uncertain), and compensation runs outside that scope, so the caller's cancellation
cannot interrupt it.  The scope is cancelled only while that saga goes forward; a cancellation
that comes too late to cut anything short still spends the scope, so the worker leaves it
before doing anything else and enters a new one.  A journal write cut short
by that cancellation may still have landed (the SQLite journal finishes queued writes), so the
saga's state is read back from the journal before going on.  Stopping the coordinator cancels
every saga task wherever it is, compensations included: the journal has their state, and the
next coordinator resumes them.

Recovery.  ``on_start`` loads every unfinished saga from the journal and resumes it from its
phase (and reports again, in the background, every saga that waits for an operator, so an
alert lost with a killed process is raised again): ``running`` starts the next step;
``step_in_flight`` re-sends the step with its key (journaling another ``step_started``
first); ``step_failed`` decides again; ``compensating`` continues below the last compensated
step; a compensation in flight or waiting for a retry is re-sent with its key.  This holds
after a supervisor restarts the actor (same journal object) and after ``kill -9`` of the
process (a new :class:`~actors.SqliteJournal` over the same file).  With a journal a fleet
shares (:class:`~actors.PostgresJournal`) ``on_start`` loads the sagas this instance owns, and
the sagas of dead instances are taken over while it runs (``actors._saga._fleet``).  Sagas whose
callers are gone still finish; ``GetSaga`` shows their outcome and a ``StartSaga`` with the
same ``saga_id`` and input joins the running saga or returns the stored outcome.  A saga whose
definition is not registered is left untouched in the journal (and reported), never guessed
at.

Layout: this module is the actor's shell (construction, recovery in ``on_start``, admission of
``StartSaga``, the worker tasks, queries); driving a saga forward and compensating it is in
``_driver``, ending it (the caller's answer, the monitor's report) in ``_ending``, one saga's
records and the coordinator's fields in ``_run``.  Definitions are in ``_definition``, the
messages in ``_messages``, the journals in ``_journals``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from typing import Any, TypeGuard

import attrs
import msgspec
import outcome
import trio
from trio.lowlevel import Task, current_task, reschedule, wait_task_rescheduled

from actors._core._ref import ActorRef
from actors._core._reply import Failure, Reply
from actors._errors import (
    BulkheadFull,
    ConfigError,
    IdempotencyConflict,
    JournalUnavailable,
    path_hint,
)
from actors._policies._classify import Classifier
from actors._policies._redact import check_printable
from actors._policies._retry import RetryPolicy
from actors._protocol import SagaReport
from actors._saga._definition import (
    CompensationFailed,
    SagaDefinition,
    SagaFailed,
    SagaStep,
    SagaStepMessage,
    StepContext,
    StepError,
    UnknownSagaDefinition,
    decoder,
    step_key,
)
from actors._saga._driver import _Driver
from actors._saga._fleet import STOPS, _fresh
from actors._saga._journals._fleet import FleetJournal
from actors._saga._journals._index import normalize_header, storable
from actors._saga._journals._memory import MemoryJournal
from actors._saga._journals._records import Journal, JournalError, SagaEvent, SagaHeader
from actors._saga._journals._state import SagaState, saga_state
from actors._saga._messages import (
    DiscardSaga,
    GetJournalStatus,
    GetSaga,
    GetSagaStatistics,
    JournalStatus,
    ListSagas,
    SagaAuditEntry,
    SagaCoordinatorStatistics,
    SagaInfo,
    SagaMessage,
    SagaResult,
    SagaStarted,
    StartSaga,
    saga_info,
)
from actors._saga._run import (
    _COMPENSATION_PHASES,
    _DEFAULT_MAX_RUNNING,
    _MAX_IDLE_WORKERS,
    _P,
    _RUNNING,
    _STARTED,
    _STEP_IN_FLIGHT,
    _STEP_STARTED,
    _abort_idle,
    _bad_id,
    _Counters,
    _encode,
    _Job,
    _log,
    _not_a_str,
    _Plan,
    _Run,
    _shown,
)
from actors._saga._tracing import journaled_metadata, saga_left, saga_started
from actors._telemetry import Telemetry, telemetry

# The protocol lives in actors._saga._messages and the definitions in actors._saga._definition;
# their public names are re-exported here so the coordinator's users need one import.
__all__ = [
    "CompensationFailed",
    "DiscardSaga",
    "GetJournalStatus",
    "GetSaga",
    "GetSagaStatistics",
    "JournalStatus",
    "ListSagas",
    "SagaAuditEntry",
    "SagaCoordinator",
    "SagaCoordinatorStatistics",
    "SagaDefinition",
    "SagaFailed",
    "SagaInfo",
    "SagaReport",
    "SagaResult",
    "SagaStarted",
    "SagaStep",
    "SagaStepMessage",
    "StartSaga",
    "StepContext",
    "StepError",
    "UnknownSagaDefinition",
    "step_key",
]


# ------------------------------------------------------------------------------- the actor


class SagaCoordinator(_Driver):
    """Runs sagas over a journal; resumes unfinished ones when it starts (see the module
    docstring).

    Args:
        journal: an *open* journal (``MemoryJournal``, ``SqliteJournal`` for durability on
            one host, ``PostgresJournal`` for a fleet of instances: see ``actors._saga._fleet``
            for what the coordinator then does); it outlives restarts of the coordinator,
            which never closes it.
        definitions: the saga definitions it can run (unique names).
        monitor: where :class:`SagaReport` messages go: an ``ActorRef`` or the monitor's path
            in the tree (looked up when first needed); ``None`` for no reports.
        max_running: sagas driven at once before ``StartSaga`` is refused with
            ``BulkheadFull`` (default 10,000; resumed sagas are never refused).
        classifier: sorts step failures into categories for the retry decisions (default:
            the built-in rules).
        rng: the random source of the retry backoff jitter (seed it for replayable runs).

    Messages: :class:`StartSaga`, :class:`GetSaga`, :class:`ListSagas`,
    :class:`DiscardSaga`, :class:`GetSagaStatistics`, :class:`GetJournalStatus`.

    Raises:
        ConfigError: duplicate definition names, or a bad ``max_running``.

    Example::

        async with SqliteJournal("sagas.db") as journal:
            tree = [ChildSpec("providers", ...),
                    ChildSpec("sagas", lambda: SagaCoordinator(journal, [VIDEO]))]
            async with open_supervisor(tree) as root:
                result = await root.ref("sagas").ask(StartSaga("video", {"topic": "owls"}),
                                                     timeout=600)
    """

    def __init__(
        self,
        journal: Journal,
        definitions: Iterable[SagaDefinition],
        *,
        monitor: ActorRef[Any, Any] | str | None = None,
        max_running: int = _DEFAULT_MAX_RUNNING,
        classifier: Classifier | None = None,
        rng: Any = None,
    ) -> None:
        self._journal = journal
        # The in-memory journal's writes never block: the forward part makes its per-step
        # write without a coroutine, the journal building both events from the state it
        # returned (a subclass, which may override the awaited calls, gets those).
        # Cancellation is checked before it as the awaited call would.
        self._step_now = journal._step_completed_nowait if type(journal) is MemoryJournal else None
        # A journal shared by a fleet: its writes wait out outages (see actors._saga._fleet).
        self._fleet: FleetJournal | None = journal if _is_fleet(journal) else None
        if self._fleet is None:
            self._append = journal.append
            self._append_many = journal.append_many
        else:
            self._append = self._fleet_append
            self._append_many = self._fleet_append_many
        self._journal_reported: tuple[str, str] | None = None
        self._definitions: dict[str, SagaDefinition] = {}
        for definition in definitions:
            if not isinstance(definition, SagaDefinition):
                raise ConfigError(
                    f"expected SagaDefinition objects, got {definition!r}", path="definitions"
                )
            if definition.name in self._definitions:
                raise ConfigError(
                    f"two saga definitions are named {definition.name!r}", path="definitions"
                )
            self._definitions[definition.name] = definition
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
            raise ConfigError(f"must be an integer >= 1, got {max_running!r}", path="max_running")
        if monitor is not None and not isinstance(monitor, ActorRef | str):
            raise ConfigError(f"must be an ActorRef or a path, got {monitor!r}", path="monitor")
        self._monitor_spec = monitor
        self._monitor: ActorRef[Any, Any] | None = (
            monitor if isinstance(monitor, ActorRef) else None
        )
        self._max_running = max_running
        self._classifier = classifier or Classifier()
        self._rng = rng
        self._runs: dict[str, _Run] = {}
        self._idle: list[Task] = []
        self._plans = {name: _Plan(d) for name, d in self._definitions.items()}
        self._policies: dict[tuple[str, int, bool], RetryPolicy] = {}
        self._prefix = secrets.token_hex(6) + "-"
        self._next_id = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._pending_reports = 0
        self._tel: Telemetry | None = None  # resolved when an incarnation starts
        self.counters = _Counters()

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        """Check every step's target, then resume every unfinished saga of the journal."""
        # Only the slot's first start refuses a missing target (a typo, found before any saga
        # ran).  A restart goes on: a target may be down for a while (terminated by an
        # operator, its subtree restarting), and refusing would fail every restart until the
        # supervisor gives up.  A saga reaching that step fails through the step's own path.
        keep = self._inc.cell.keep
        self._check_targets(first="saga_targets_checked" not in keep)
        keep["saga_targets_checked"] = True  # set once a start passed the check
        self._token = trio.lowlevel.current_trio_token()
        self._tel = telemetry()
        # The counters belong to the slot: exported as counters, they never go down when the
        # coordinator restarts.
        self.counters = self._inc.cell.keep.setdefault("saga_counters", self.counters)
        loaded: list[tuple[SagaHeader, list[SagaEvent]]] | None
        try:
            loaded = await self._journal.load_unfinished()
        except JournalUnavailable:
            if self._fleet is None:
                raise
            loaded = None  # the fleet keeper loads them once the server is back
        recovered = sum(self._resume(h, events, taken=False) for h, events in loaded or ())
        if recovered:
            _log.info("%s resumed %d unfinished saga(s)", self.path, recovered)
        if self._monitor_spec is not None:
            self.spawn(self._report_waiting, name=f"{self.path}:waiting sagas")
        if self._fleet is not None:
            self.spawn(self._fleet_keeper, loaded is None, name=f"{self.path}:fleet keeper")
            self.spawn(self._watch_journal, name=f"{self.path}:journal watch")

    def _resume(self, header: SagaHeader, events: list[SagaEvent], *, taken: bool) -> bool:
        """Drive a journaled saga from its state (``taken``: handed over by a fleet journal
        after the start); ``False`` (reported) if it cannot be resumed."""
        state = saga_state(header, events)
        problem = self._unresumable(header, state)
        if problem is None:
            definition = self._definitions[header.definition]
            try:
                value = decoder(definition.input_type).decode(header.payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                problem = f"its input does not decode as the definition's input_type: {exc}"
        if problem is not None:
            self.counters.unresumable += 1
            _log.error(
                "saga %s (%s) cannot be resumed: %s",
                header.saga_id,
                header.definition,
                _shown(problem),
            )
            self._report(header.saga_id, header.definition, "unresumable", None, problem)
            return False
        run = _Run(header, definition, value, self._plans[definition.name])
        run.state = state
        self._runs[header.saga_id] = run
        if taken:
            self.counters.taken_over += 1
        else:
            self.counters.recovered += 1
        self._launch(run, None, fresh=False)
        return True

    def _check_targets(self, *, first: bool) -> None:
        """Refuse to start (``first``) while a step's target names no actor of the tree.

        Found here, before any saga runs, rather than when a saga reaches the step after its
        earlier steps took effect (and must be compensated).  Raises ConfigError naming the
        definition, the step and the closest path; on a restart (not ``first``) logs it as a
        WARNING instead.
        """
        registry = self._inc.cell.registry
        known = [path for path, cell in registry.items() if not cell.closed]
        for name, definition in self._definitions.items():
            for index, step in enumerate(definition.steps):
                target = step.target
                if isinstance(target, str) and target not in known:
                    problem = (
                        f"step {step.name!r} of saga {name!r} targets {target!r}, but no actor "
                        f"of the tree is there{path_hint(target, known)}; targets are paths "
                        "from the root"
                    )
                    if first:
                        raise ConfigError(problem, path=f"definitions.{name}.steps[{index}].target")
                    _log.warning(
                        "%s restarted while %s: sagas that reach the step fail there",
                        self.path,
                        problem,
                    )

    async def _report_waiting(self) -> None:
        """Report again every saga that waits for an operator (``compensation_failed`` and not
        discarded): a report lost with a killed process (or a monitor restart) is raised again.
        The monitor keeps one alert per saga."""
        while True:
            try:
                summaries = await self._journal.list_unfinished()
            except JournalUnavailable:
                if self._fleet is None:
                    raise
                await self._fleet.wait_available()
                continue
            break
        for summary in summaries:
            if summary.phase is not _P.COMPENSATION_FAILED:
                continue
            definition = self._definitions.get(summary.definition)
            found = await self._read_back(summary.saga_id) if definition is not None else None
            if definition is None or found is None:
                detail = "it needs an operator (its definition is not registered here)"
                step = summary.compensation_step
            else:
                run = _Run(found[0], definition, None, self._plans[definition.name])
                run.state = saga_state(*found)
                detail = str(self._error(run))
                step = run.state.compensation_step
            self._report(
                summary.saga_id, summary.definition, _P.COMPENSATION_FAILED.value, step, detail
            )

    def _unresumable(self, header: SagaHeader, state: SagaState) -> str | None:
        definition = self._definitions.get(header.definition)
        if definition is None:
            return f"no saga definition named {header.definition!r} is registered"
        n = len(definition.steps)
        for step in (
            state.next_step - 1,
            state.step_in_flight,
            state.failed_step,
            state.compensation_step,
        ):
            if step is not None and step >= n:
                return f"it reached step {step} but the definition has {n} step(s)"
        return None

    async def handle(self, message: SagaMessage) -> Any:
        if type(message) is StartSaga:
            if type(message.definition) is not str:
                return Failure(_not_a_str("StartSaga.definition", message.definition))
            if message.saga_id is not None:
                if type(message.saga_id) is not str:
                    return Failure(_not_a_str("StartSaga.saga_id", message.saga_id))
                try:  # ids reach terminals and log lines: printable text only (nor surrogates)
                    check_printable(message.saga_id, "StartSaga.saga_id")
                except ValueError as exc:
                    return Failure(exc)
            wait: object = message.wait  # typed bool, but messages come from anywhere
            if wait is not True and wait is not False:
                return Failure(
                    TypeError(f"StartSaga.wait must be a bool, not {type(wait).__name__}")
                )
            return self._start(message)
        if type(message) is GetSaga:
            if type(message.saga_id) is not str:
                return Failure(_not_a_str("GetSaga.saga_id", message.saga_id))
            if not storable(message.saga_id):
                return Failure(_bad_id("GetSaga", message.saga_id))
            self.spawn(self._get, self.defer(), message.saga_id)
            return None
        if type(message) is ListSagas:
            if self._fleet is None:
                return await self._journal.list_unfinished()
            self.spawn(self._list, self.defer())  # a round trip: not in the mailbox's path
            return None
        if type(message) is DiscardSaga:
            if type(message.saga_id) is not str:
                return Failure(_not_a_str("DiscardSaga.saga_id", message.saga_id))
            if not storable(message.saga_id):
                return Failure(_bad_id("DiscardSaga", message.saga_id))
            self.spawn(self._discard, self.defer(), message.saga_id)
            return None
        if type(message) is GetSagaStatistics:
            return self.statistics()
        if type(message) is GetJournalStatus:
            self.spawn(self._journal_status, self.defer())
            return None
        return Failure(
            TypeError(
                "the saga coordinator accepts StartSaga, GetSaga, ListSagas, DiscardSaga, "
                f"GetSagaStatistics and GetJournalStatus messages, not {type(message).__name__}"
            )
        )

    def statistics(self) -> SagaCoordinatorStatistics:
        """A snapshot of the counters (also the reply to :class:`GetSagaStatistics`)."""
        return SagaCoordinatorStatistics(running=len(self._runs), **attrs.asdict(self.counters))

    # ------------------------------------------------------------------ starting

    def _start(self, message: StartSaga) -> Any:
        definition = self._definitions.get(message.definition)
        if definition is None:
            return Failure(UnknownSagaDefinition(message.definition, self._definitions))
        saga_id = message.saga_id
        if saga_id is None:
            self._next_id += 1
            saga_id = f"{self._prefix}{self._next_id}"
        elif type(saga_id) is not str or not saga_id:
            return Failure(TypeError("StartSaga.saga_id must be a non-empty str"))
        try:
            payload = _encode(message.input)
            value = self._plans[definition.name].input.decode(payload)
        except (
            msgspec.EncodeError,
            msgspec.DecodeError,
            msgspec.ValidationError,
            TypeError,
            ValueError,  # text that cannot be encoded (a lone surrogate)
        ) as exc:
            return Failure(
                TypeError(
                    f"the input of saga {saga_id!r} does not encode/decode as the "
                    f"definition's input_type: {exc}"
                )
            )
        run = self._runs.get(saga_id)
        if run is not None:
            header = run.header
            if header.definition != definition.name or header.payload != payload:
                return Failure(IdempotencyConflict(key=saga_id))
            reply = self.defer()
            if message.wait:
                run.waiters.append(reply)
            else:
                reply.set(SagaStarted(saga_id))
            return None
        if len(self._runs) >= self._max_running:
            return Failure(
                BulkheadFull(service=self.path, max_concurrent=self._max_running, max_queued=0)
            )
        fleet = self._fleet
        if fleet is not None and not fleet.available:
            self._note_journal()
            reason = fleet.fleet_statistics().unavailable_reason or "reconnecting"
            return Failure(
                JournalUnavailable(
                    f"Saga {saga_id!r} was not started: the saga journal {fleet.where} is "
                    f"unreachable ({reason}); nothing was written.",
                    journal=fleet.where,
                )
            )
        # The caller's trace context is journaled with the saga: a resumed saga continues it.
        metadata = journaled_metadata(message.metadata, message.trace)
        header = SagaHeader(saga_id, definition.name, time.time(), payload, metadata)
        if metadata:  # checked here: a bad header must not crash the saga's task
            try:
                header, _ = normalize_header(header)
            except (TypeError, ValueError) as exc:
                return Failure(exc)
        reply = self.defer()
        run = _Run(header, definition, value, self._plans[definition.name])
        self._runs[saga_id] = run
        self.counters.started += 1
        if message.wait:
            run.waiters.append(reply)
            run.cancellable = True
            token = self._token
            assert token is not None
            reply.on_abandon(lambda _reply: token.run_sync_soon(self._abandoned, run))
            self._launch(run, None, fresh=True)
        else:
            self._launch(run, reply, fresh=True)
        return None

    def _launch(self, run: _Run, started: Reply[Any] | None, *, fresh: bool) -> None:
        """Run the saga on an idle worker task, or on a new one."""
        if self._tel is not None and run.obs is None:
            header = run.header
            run.obs = saga_started(
                self._tel,
                header.saga_id,
                header.definition,
                header.metadata,
                trio.current_time(),
                recovered=not fresh,
            )
        job = (run, started, fresh)
        if self._idle:
            reschedule(self._idle.pop(), outcome.Value(job))
        else:
            self.spawn(self._worker, job, name=f"{self.path}:saga worker")

    async def _worker(self, job: _Job) -> None:
        """Drive sagas to their end, one after another (see :meth:`_jobs`)."""
        # Long-lived: a task per saga would cost more than a step of it.  The forward parts of
        # its sagas run in ONE cancel scope per worker (entering and leaving a scope per saga
        # costs about as much as a step): a caller who gives up cancels it while its saga goes
        # forward; the worker then finishes that saga outside it and enters a new one.
        cut: list[tuple[_Run, SagaState | None]] = []
        try:
            next_job: _Job | None = job
            while next_job is not None:
                scope = trio.CancelScope()
                job, next_job = next_job, None  # never driven twice, whatever cuts it short
                with scope:
                    next_job = await self._jobs(job, scope, cut)
                if cut:  # the saga whose caller gave up: finish it outside the spent scope
                    run, state = cut[0]
                    try:
                        if state is None:  # its forward part was cut short
                            state = await self._after_cancel(run)
                        await self._conclude(run, state)
                    except STOPS as exc:  # a fleet journal: another instance drives it now
                        self._halt(run, exc)
                    cut.clear()
                    self._forget(run)
                    next_job = await self._next_job()
        finally:
            for run, _ in cut:  # the coordinator is stopping: the journal has the saga
                self._forget(run)

    async def _jobs(
        self, job: _Job, scope: trio.CancelScope, cut: list[tuple[_Run, SagaState | None]]
    ) -> _Job | None:
        """Drive sagas, one after another, in the worker's ``scope``: a new one (``fresh``:
        journal it first; ``started`` is the reply of a ``StartSaga(wait=False)``), or one
        resumed from its journaled state.

        Returns ``None`` when the worker retires, or when the caller of a saga gave up during
        its forward part (that saga is in ``cut`` with its state, or with ``None`` while the
        scope's cancellation unwinds from its forward part).
        """
        while True:
            run, started, fresh = job
            if not fresh or await self._begin(run, started):
                forgotten = True
                try:
                    try:
                        state = run.state
                        if state.phase is _RUNNING or state.phase is _STEP_IN_FLIGHT:
                            if run.cancellable:
                                run.scope = scope
                                run.forwarding = True
                                cut.append((run, None))
                                forgotten = False
                                if run.abandoned:  # gave up while the saga was being created
                                    scope.cancel()
                                state = await self._forward(run, fresh)
                                run.forwarding = False
                                if run.abandoned:  # too late to cut anything short, but the
                                    cut[0] = (run, state)  # scope is cancelled: leave it
                                    return None
                                cut.clear()
                                forgotten = True
                            else:  # nobody can cancel it
                                state = await self._forward(run, fresh)
                        await self._conclude(run, state)
                    except STOPS as exc:  # a fleet journal: stop driving it, send nothing
                        run.forwarding = False
                        cut.clear()
                        forgotten = True
                        self._halt(run, exc)
                        if run.cancellable:  # its caller may have spent the scope: leave it
                            return None
                finally:
                    if forgotten:
                        self._forget(run)
            next_job = await self._next_job()
            if next_job is None:
                return None
            job = next_job

    async def _conclude(self, run: _Run, state: SagaState) -> None:
        """After the forward part: compensate or end, and answer the saga's callers."""
        if state.phase is _P.STEP_FAILED:
            state = await self._decide(run, state, None)
        if state.phase in _COMPENSATION_PHASES:
            state = await self._compensate(run, state)
        self._finish(run, state)

    def _forget(self, run: _Run) -> None:
        if run.obs is not None:  # not ended: the coordinator is stopping
            saga_left(run.obs, trio.current_time())
            run.obs = None
        if self._runs.get(run.header.saga_id) is run:
            del self._runs[run.header.saga_id]

    async def _next_job(self) -> _Job | None:
        """Wait idle for the next saga; ``None`` when enough workers are idle already."""
        if len(self._idle) >= _MAX_IDLE_WORKERS:
            return None
        task = current_task()
        self._idle.append(task)
        try:
            job: _Job = await wait_task_rescheduled(_abort_idle)
        except BaseException:
            if task in self._idle:
                self._idle.remove(task)
            raise
        return job

    def _abandoned(self, run: _Run) -> None:
        # The caller that started the saga stopped waiting: cancel the forward part (or have
        # it cancelled as it starts).
        if not run.finished:
            run.abandoned = True
            if run.forwarding and run.scope is not None:
                run.scope.cancel()

    async def _begin(self, run: _Run, started: Reply[Any] | None) -> bool:
        """Journal a new saga with its first step's start (one write); whether to drive it
        (``False``: the id was in the journal already and its callers were answered)."""
        header = run.header
        saga_id = header.saga_id
        at = time.time()
        first = SagaEvent(saga_id, 0, _STARTED, None, at)
        then = (SagaEvent(saga_id, 1, _STEP_STARTED, 0, at),)
        try:
            if self._fleet is None:
                run.state = await self._journal.create(header, first, then=then)
            else:  # tell the callers of a hung server before their deadline
                run.state = await self._fleet.create(
                    header, first, then=then, answer_within=_answer_within(run, started)
                )
        except JournalUnavailable as exc:
            if self._runs.get(saga_id) is run:
                del self._runs[saga_id]
            # Nothing was written, or (in doubt) the saga may still be created: it then runs,
            # handed back by the journal, and a StartSaga with its id gets its outcome.
            for reply in (*run.waiters, *([started] if started is not None else [])):
                reply.fail(_fresh(exc))
            run.waiters = []
            return False
        except JournalError as exc:
            if self._runs.get(saga_id) is run:
                del self._runs[saga_id]
            # A failed journal raises here too, and the coordinator crashes (as it must).
            found = await self._read_back(saga_id)
            if found is None:
                # The create was refused, yet the id is not in the journal: a finished saga of
                # that id was pruned in between (or only this request was bad).  Answer, and
                # run nothing: its outcome is gone, and running it again would repeat effects.
                for reply in (*run.waiters, *([started] if started is not None else [])):
                    error = JournalError(
                        f"Saga {saga_id!r} could not be created ({exc}); it is not in the "
                        "journal now: a finished saga with this id may have been pruned just "
                        "now, and its outcome is no longer known.",
                        suggested_action=(
                            "Use a new saga id, or keep finished sagas longer (the journal's "
                            "retain_for / retain_last)."
                        ),
                    )
                    error.__cause__ = exc
                    reply.fail(error)
                run.waiters = []
                return False
            self._answer_existing(run, found, started)
            return False
        except BaseException:
            if self._runs.get(saga_id) is run:
                del self._runs[saga_id]
            raise
        if started is not None:
            started.set(SagaStarted(saga_id))
        return True

    def _answer_existing(
        self, run: _Run, found: tuple[SagaHeader, list[SagaEvent]], started: Reply[Any] | None
    ) -> None:
        """A StartSaga for an id already in the journal (and not running here)."""
        header, events = found
        waiters = [*run.waiters, *([started] if started is not None else [])]
        if header.definition != run.header.definition or header.payload != run.header.payload:
            for reply in waiters:
                reply.fail(IdempotencyConflict(key=header.saga_id))
            return
        state = saga_state(header, events)
        if not state.finished and self._fleet is not None:
            # Driven by another instance (or handed back to this one later): its callers
            # get its outcome when it ends.
            if started is not None:
                started.set(SagaStarted(header.saga_id))
            waiters = [reply for reply in run.waiters if not reply.done]
            if waiters:
                self.spawn(
                    self._await_end,
                    header.saga_id,
                    run.definition,
                    waiters,
                    name=f"{self.path}:awaiting {header.saga_id}",
                )
            return
        if not state.finished:
            for reply in waiters:
                reply.fail(
                    JournalError(
                        f"Saga {header.saga_id!r} is in the journal but not running here (it "
                        "could not be resumed: see the coordinator's log)."
                    )
                )
            return
        if started is not None:
            started.set(SagaStarted(header.saga_id))
        old = _Run(header, run.definition, run.view.input, run.plan)
        old.state = state
        for reply in run.waiters:
            self._answer(old, reply)

    # ------------------------------------------------------------------ queries

    async def _get(self, reply: Reply[Any], saga_id: str) -> None:
        fleet = self._fleet
        try:
            found = await self._journal.get(saga_id)
            owned = await fleet.ownership(saga_id) if fleet is not None and found else None
        except (JournalError, JournalUnavailable) as exc:
            reply.fail(exc)  # the query's answer; a failed journal shows at the writes
            return
        if found is None:
            reply.set(None)
            return
        header, events = found
        definition = self._definitions.get(header.definition)
        reply.set(
            saga_info(
                header,
                events,
                definition,
                running_here=header.saga_id in self._runs,
                owner=None if owned is None else owned.owner,
                owner_alive=None if owned is None else owned.owner_alive,
            )
        )

    async def _list(self, reply: Reply[Any]) -> None:
        try:
            reply.set(await self._journal.list_unfinished())
        except (JournalError, JournalUnavailable) as exc:
            reply.fail(exc)

    async def _discard(self, reply: Reply[Any], saga_id: str) -> None:
        if saga_id in self._runs:
            reply.fail(JournalError(f"Saga {saga_id!r} is running; it cannot be discarded."))
            return
        try:
            found = await self._journal.discard(saga_id)
        except (JournalError, JournalUnavailable) as exc:
            reply.fail(exc)
            return
        reply.set(found)

    async def _journal_status(self, reply: Reply[Any]) -> None:
        journal = self._journal
        fleet = self._fleet
        statistics = journal.statistics()
        if fleet is None:
            failed = getattr(journal, "_failure", None)
            reply.set(
                JournalStatus(
                    kind=type(journal).__name__,
                    where=str(getattr(journal, "path", None) or ""),
                    available=failed is None,
                    reason="" if failed is None else _shown(failed[0]),
                    instance_id="",
                    instances=[],
                    statistics=statistics,
                    fleet=None,
                )
            )
            return
        stats = fleet.fleet_statistics()
        try:
            instances = await fleet.instances()
        except (JournalError, JournalUnavailable):
            instances = []  # the state says why
        reply.set(
            JournalStatus(
                kind=type(journal).__name__,
                where=fleet.where,
                available=stats.available,
                reason=stats.unavailable_reason,
                instance_id=fleet.instance_id,
                instances=instances,
                statistics=statistics,
                fleet=stats,
            )
        )


def _is_fleet(journal: Journal) -> TypeGuard[FleetJournal]:
    """Whether ``journal`` is shared by a fleet (it has the FleetJournal protocol's calls)."""
    return all(
        callable(getattr(journal, name, None))
        for name in ("claim_orphans", "wait_available", "wait_finished", "fleet_statistics")
    )


def _answer_within(run: _Run, started: Reply[Any] | None) -> float | None:
    """Seconds the create of ``run`` may wait for its journal: a little less than its callers'
    earliest deadline leaves (so they hear of an outage before it); ``None``: no deadline."""
    replies = [*run.waiters, *([started] if started is not None else [])]
    deadlines = [reply.deadline for reply in replies if not reply.done]
    if not deadlines or min(deadlines) == float("inf"):
        return None
    left = min(deadlines) - trio.current_time()
    return max(0.0, left - min(0.25, left / 4))
