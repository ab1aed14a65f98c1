"""The saga coordinator actor: runs sagas step by step, journals every transition first,
compensates on failure or cancellation, and resumes every unfinished saga after a restart.

Theory of operation
-------------------
A :class:`SagaCoordinator` owns a journal (``actors._journal``) and a set of
:class:`~actors._saga_definition.SagaDefinition`.  Its mailbox only *admits*: ``StartSaga``
validates the request, defers the reply and spawns one background task for the saga (in the
coordinator's scope, :meth:`Actor.spawn`); queries that need the journal are answered from a
spawned task too.  So the mailbox never waits for a step, and many sagas run at once.  The
coordinator's state (the table of running sagas, counters) is touched only by its own tasks.

A saga's task drives the saga state machine of ``actors._journal`` (table ``TRANSITIONS``)
and is write-ahead: every transition is durable in the journal *before* the message it
announces is sent.  Forward, step ``i``'s completion and step ``i + 1``'s start are journaled in
one ``append_many`` (one commit per step, not two; the SQLite journal stores them in one row),
then step ``i + 1``'s message is sent; a new saga is created with its first step's start::

    create(started, then=[step_started(0)]) -> send 0 -> [step_completed(0), step_started(1)]
    -> send 1 -> ... -> [step_completed(n-1), completed]

On the in-memory journal, whose writes never block, the per-step write is made without a
coroutine (``MemoryJournal.append_saga_nowait``); a subclass gets the awaited calls.

Each step and compensation carries the idempotency key ``{saga_id}:{step}`` or
``{saga_id}:{step}:compensate`` (see ``actors._saga_definition`` for how it reaches the
target); retries and re-sends after a restart reuse it, so a target that honours keys applies
each effect once.

Failure.  A step that fails (after its retries) is journaled ``step_failed`` with a
:class:`~actors._saga_definition.StepError`; if any completed compensatable step (or the failed
step itself, when its outcome is uncertain) needs undoing the saga journals ``compensating``
and compensates them in reverse order, else it ends ``failed``.  A failed step's outcome is
uncertain once any send of its key may have landed: an attempt failed with a timeout, a crash
or a cancellation, or the key was sent more than once (a retry, a re-send after a restart, a
provider's own retry), since a final refusal ("already charged") says nothing about the sends
before it.  Journaled errors are redacted and bounded (``actors._redact``), and so is every
log line and monitor report.  A compensation that fails is
journaled ``compensation_failed_step`` and retried with backoff under the step's
``compensation_retry`` and the definition's ``compensation_deadline``; when it gives up the saga
ends ``compensation_failed``: it stays listed, a :class:`SagaReport` goes to the monitor (if
its mailbox is full, a background task waits for room: that report is never dropped) and
the caller gets :class:`~actors._saga_definition.CompensationFailed`.

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
process (a new :class:`~actors._sqlite_journal.SqliteJournal` over the same file).  Sagas whose
callers are gone still finish; ``GetSaga`` shows their outcome and a ``StartSaga`` with the
same ``saga_id`` and input joins the running saga or returns the stored outcome.  A saga whose
definition is not registered is left untouched in the journal (and reported), never guessed
at.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any, Final, TypeAlias

import attrs
import msgspec
import outcome
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task, current_task, reschedule, wait_task_rescheduled

from actors._core._actor import Actor
from actors._core._ref import ActorRef
from actors._core._reply import Failure, Reply
from actors._errors import (
    ActorError,
    ActorNotFound,
    ActorStopped,
    BulkheadFull,
    ConfigError,
    ErrorCategory,
    IdempotencyConflict,
    MailboxFull,
)
from actors._policies._classify import Classifier
from actors._policies._redact import check_printable, redact
from actors._policies._retry import GiveUp, RetryPolicy, RetryState
from actors._protocol import Call, CallReceiver, SagaReport
from actors._saga._definition import (
    CompensationFailed,
    SagaDefinition,
    SagaFailed,
    SagaStep,
    SagaStepMessage,
    SagaView,
    StepContext,
    StepError,
    UnknownSagaDefinition,
    decoder,
    is_uncertain,
    step_error,
    step_key,
)
from actors._saga._journals._records import (
    Journal,
    JournalError,
    MemoryJournal,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
    SagaPhase,
    SagaState,
    normalize_header,
    saga_state,
    storable,
)
from actors._saga._messages import (
    DiscardSaga,
    GetSaga,
    GetSagaStatistics,
    ListSagas,
    SagaAuditEntry,
    SagaCoordinatorStatistics,
    SagaInfo,
    SagaMessage,
    SagaResult,
    SagaStarted,
    StartSaga,
    decode_error,
    saga_info,
)

# The protocol lives in actors._saga_messages and the definitions in actors._saga_definition;
# their public names are re-exported here so the coordinator's users need one import.
__all__ = [
    "CompensationFailed",
    "DiscardSaga",
    "GetSaga",
    "GetSagaStatistics",
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

_log = logging.getLogger("actors.saga")

# Enum member lookups cost a descriptor call each on Python 3.11: module constants instead.
_K = SagaEventKind
_P = SagaPhase
_STARTED: Final = _K.STARTED
_STEP_STARTED: Final = _K.STEP_STARTED
_STEP_COMPLETED: Final = _K.STEP_COMPLETED
_STEP_FAILED: Final = _K.STEP_FAILED
_COMPLETED: Final = _K.COMPLETED
_RUNNING: Final = _P.RUNNING
_STEP_IN_FLIGHT: Final = _P.STEP_IN_FLIGHT
_DONE: Final = _P.COMPLETED
_COMPENSATION_PHASES: Final = frozenset(
    {_P.COMPENSATING, _P.COMPENSATION_IN_FLIGHT, _P.COMPENSATION_RETRYING}
)
_DEFAULT_MAX_RUNNING: Final = 10_000
_MAX_IDLE_WORKERS: Final = 256

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder.decode  # (decoder, data)


@attrs.define
class _Counters:
    started: int = 0
    recovered: int = 0
    unresumable: int = 0
    completed: int = 0
    compensated: int = 0
    failed: int = 0
    cancelled: int = 0
    compensation_failed: int = 0
    steps_sent: int = 0
    step_retries: int = 0
    compensations_sent: int = 0
    compensation_retries: int = 0
    reports_sent: int = 0
    reports_dropped: int = 0


# ------------------------------------------------------------------------------- one saga


class _Run:
    """One saga driven by this coordinator."""

    __slots__ = (
        "abandoned",
        "cancellable",
        "cause",
        "definition",
        "error",
        "finished",
        "forwarding",
        "header",
        "pending",
        "plan",
        "scope",
        "sent",
        "sent_seq",
        "state",
        "view",
        "waiters",
    )

    def __init__(
        self,
        header: SagaHeader,
        definition: SagaDefinition,
        input: Any,
        plan: _Plan | None = None,
    ) -> None:
        self.header = header
        self.definition = definition
        self.plan = _Plan(definition) if plan is None else plan
        self.view = SagaView(header.saga_id, definition, input)
        self.state = SagaState(header.saga_id, header.definition)
        self.waiters: list[Reply[Any]] = []
        # While `forwarding`, the cancel scope its forward part runs in (its worker's): its
        # caller giving up cancels it.
        self.scope: trio.CancelScope | None = None
        self.forwarding = False
        self.cancellable = False  # whether a caller can cancel it (then `scope` is used)
        self.abandoned = False  # its caller gave up
        self.finished = False
        self.sent: int | None = None  # the step whose message this run sent last
        self.sent_seq = -1  # the seq of the step_started (or compensation_started) sent last
        self.pending: tuple[int, bytes] | None = None  # a reply being journaled
        self.cause: BaseException | None = None  # the live exception that failed the saga
        self.error: StepError | None = None  # decoded step_error (cache)


_Job: TypeAlias = "tuple[_Run, Reply[Any] | None, bool]"
#: A step's target and how messages are delivered to it (one of the constants below).
_Target: TypeAlias = "tuple[ActorRef[Any, Any], str]"
_CALL: Final = "call"
_ENVELOPE: Final = "envelope"
_RAW: Final = "raw"
_DELIVERIES: Final = {"call": _CALL, "envelope": _ENVELOPE, "raw": _RAW}


class _Plan:
    """What a coordinator keeps about one definition, shared by the sagas that run it."""

    __slots__ = ("checked", "decoders", "input", "names", "retrying", "targets")

    def __init__(self, definition: SagaDefinition) -> None:
        steps = definition.steps
        self.names = tuple(step.name for step in steps)
        self.input = decoder(definition.input_type)
        #: Per step: the decoder of its replies; whether replies must be validated by it;
        #: whether it may be retried; its target, once resolved.
        self.decoders = tuple(decoder(step.reply_type) for step in steps)
        self.checked = tuple(step.reply_type is not Any for step in steps)
        self.retrying = tuple(step.retry.max_attempts > 1 for step in steps)
        self.targets: list[_Target | None] = [None] * len(steps)


def _step_message(
    delivery: str, payload: Any, key: str, saga_id: str, step: str, *, compensate: bool = False
) -> Any:
    """What a step's (or its compensation's) target receives: the payload in a
    :class:`SagaStepMessage`, in a provider :class:`Call` with the idempotency key, or as it
    is."""
    if delivery is _ENVELOPE:
        return SagaStepMessage(key, payload, saga_id, step, compensate)
    if delivery is _CALL:
        return Call(payload, key)
    return payload


def _shown(text: object) -> str:
    """Text for a log line or a monitor report: redacted (provider errors quote credentials)."""
    try:
        value = str(text)
    except Exception as exc:  # an exception's __str__ may raise
        value = f"<str() raised {type(exc).__name__}>"
    return redact(value, max_length=_MAX_SHOWN)


#: Report statuses that need an operator: delivered to the monitor even when its mailbox is
#: full (waiting for room), never dropped while the coordinator runs.
_CRITICAL: Final = frozenset({_P.COMPENSATION_FAILED.value, "unresumable"})
#: Critical reports waiting for room in the monitor's mailbox, at most.
_MAX_PENDING_REPORTS: Final = 1000
#: Longest text a log line or report carries (redaction bounds it).
_MAX_SHOWN: Final = 4000


def _category(error: StepError) -> ErrorCategory:
    try:
        return ErrorCategory(error.category)
    except ValueError:
        return ErrorCategory.UNKNOWN


def _abort_idle(raise_cancel: RaiseCancelT) -> Abort:
    return Abort.SUCCEEDED


_CANCELLED_IN_FLIGHT: Final = "the saga's caller stopped waiting while the step was in flight"
_NOT_RUNNING: Final = (
    "it is not running (stopped, or waiting to restart), so how to deliver to it is unknown"
)
#: Why a saga without a failed step is compensated: it was cancelled between two steps.
_CANCELLED_BETWEEN_STEPS: Final = StepError(
    type="Cancelled",
    message="the saga's caller stopped waiting",
    category=ErrorCategory.CANCELLATION.value,
    cancelled=True,
)


def _bad_id(message: str, saga_id: str) -> ValueError:
    # Never the id itself: it cannot even be encoded.
    return ValueError(
        f"{message}.saga_id holds characters that cannot be stored (a lone surrogate, at "
        f"position {next(i for i, c in enumerate(saga_id) if not storable(c))}): use valid text"
    )


# ------------------------------------------------------------------------------- the actor


def _not_a_str(field: str, value: object) -> TypeError:
    # Never repr() the value: a bad input may not even print.
    return TypeError(f"{field} must be a str, not {type(value).__name__}")


class SagaCoordinator(Actor[SagaMessage, Any]):
    """Runs sagas over a journal; resumes unfinished ones when it starts (see the module
    docstring).

    Args:
        journal: an *open* journal (``MemoryJournal``, or ``SqliteJournal`` for durability);
            it outlives restarts of the coordinator, which never closes it.
        definitions: the saga definitions it can run (unique names).
        monitor: where :class:`SagaReport` messages go: an ``ActorRef`` or the monitor's path
            in the tree (looked up when first needed); ``None`` for no reports.
        max_running: sagas driven at once before ``StartSaga`` is refused with
            ``BulkheadFull`` (default 10,000; resumed sagas are never refused).
        classifier: sorts step failures into categories for the retry decisions (default:
            the built-in rules).
        rng: the random source of the retry backoff jitter (seed it for replayable runs).

    Messages: :class:`StartSaga`, :class:`GetSaga`, :class:`ListSagas`,
    :class:`DiscardSaga`, :class:`GetSagaStatistics`.

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
        # write without a coroutine (a subclass, which may override the awaited calls, gets
        # those).  Cancellation is checked before it as the awaited call would.
        self._write_now = journal.append_saga_nowait if type(journal) is MemoryJournal else None
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
        self.counters = _Counters()

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        """Resume every unfinished saga of the journal."""
        self._token = trio.lowlevel.current_trio_token()
        # The counters belong to the slot: exported as counters, they never go down when the
        # coordinator restarts.
        self.counters = self._inc.cell.keep.setdefault("saga_counters", self.counters)
        recovered = 0
        for header, events in await self._journal.load_unfinished():
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
                continue
            run = _Run(header, definition, value, self._plans[definition.name])
            run.state = state
            self._runs[header.saga_id] = run
            self.counters.recovered += 1
            recovered += 1
            self._launch(run, None, fresh=False)
        if recovered:
            _log.info("%s resumed %d unfinished saga(s)", self.path, recovered)
        if self._monitor_spec is not None:
            self.spawn(self._report_waiting, name=f"{self.path}:waiting sagas")

    async def _report_waiting(self) -> None:
        """Report again every saga that waits for an operator (``compensation_failed`` and not
        discarded): a report lost with a killed process (or a monitor restart) is raised again.
        The monitor keeps one alert per saga."""
        for summary in await self._journal.list_unfinished():
            if summary.phase is not _P.COMPENSATION_FAILED:
                continue
            definition = self._definitions.get(summary.definition)
            found = await self._journal.get(summary.saga_id) if definition is not None else None
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
            return await self._journal.list_unfinished()
        if type(message) is DiscardSaga:
            if type(message.saga_id) is not str:
                return Failure(_not_a_str("DiscardSaga.saga_id", message.saga_id))
            if not storable(message.saga_id):
                return Failure(_bad_id("DiscardSaga", message.saga_id))
            self.spawn(self._discard, self.defer(), message.saga_id)
            return None
        if type(message) is GetSagaStatistics:
            return self.statistics()
        return Failure(
            TypeError(
                "the saga coordinator accepts StartSaga, GetSaga, ListSagas, DiscardSaga and "
                f"GetSagaStatistics messages, not {type(message).__name__}"
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
        header = SagaHeader(saga_id, definition.name, time.time(), payload, message.metadata)
        if message.metadata:  # checked here: a bad header must not crash the saga's task
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
                    if state is None:  # its forward part was cut short
                        state = await self._after_cancel(run)
                    await self._conclude(run, state)
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
        try:
            run.state = await self._journal.create(
                header,
                SagaEvent(saga_id, 0, _STARTED, None, at),
                then=(SagaEvent(saga_id, 1, _STEP_STARTED, 0, at),),
            )
        except JournalError as exc:
            if self._runs.get(saga_id) is run:
                del self._runs[saga_id]
            # A failed journal raises here too, and the coordinator crashes (as it must).
            found = await self._journal.get(saga_id)
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

    # ------------------------------------------------------------------ driving a saga

    async def _forward(self, run: _Run, fresh: bool) -> SagaState:
        """The forward part: send each step (write-ahead) until the last completes or one
        fails (``fresh``: the first step's start was journaled with the saga, unsent)."""
        journal = self._journal
        state = run.state
        steps = run.definition.steps
        last = len(steps) - 1
        if fresh:
            # A caller that gave up while the saga was created must not have the step sent.
            await trio.lowlevel.checkpoint_if_cancelled()
        elif state.phase is _RUNNING:
            if state.next_step > last:  # resumed after the last step completed
                state = run.state = await journal.append(state.next_event(_COMPLETED))
                return state
            state = run.state = await journal.append(
                state.next_event(_STEP_STARTED, state.next_step)
            )
        else:  # resumed with a step in flight: journal the re-send, then send
            state = run.state = await journal.append(
                state.next_event(_STEP_STARTED, state.step_in_flight)
            )
        saga_id = run.header.saga_id
        append_many = journal.append_many
        write_now = self._write_now
        plan = run.plan
        targets = plan.targets
        view = run.view
        counters = self.counters
        while True:
            i: int = state.step_in_flight  # type: ignore[assignment]
            step = steps[i]
            target = targets[i]
            data: bytes | StepError
            if target is None:
                data = await self._send_step(run, i, step)
            else:
                # The first attempt, inline (a coroutine less on the hot path); failures and
                # retries go on in _send_step.
                started = trio.current_time() if plan.retrying[i] else 0.0
                key = f"{saga_id}:{step.name}"
                try:
                    payload = step.action(
                        StepContext(view, i, key, state.step_attempts, state.results)
                    )
                except Exception as exc:
                    data = self._builder_failed(run, exc, "action", state.step_attempts > 1)
                else:
                    ref, delivery = target
                    message = _step_message(delivery, payload, key, saga_id, step.name)
                    run.sent = i
                    run.sent_seq = state.next_seq - 1
                    counters.steps_sent += 1
                    try:
                        reply = await ref.ask(message, timeout=step.timeout)
                    except Exception as exc:
                        data = await self._send_step(run, i, step, started, exc)
                    else:
                        data = self._journalable(run, i, reply)
            state = run.state  # retries journal re-sends
            if type(data) is not bytes:
                state = run.state = await journal.append(
                    state.next_event(_STEP_FAILED, i, _encode(data))
                )
                return state
            # The step's completion and the next step's start (or the end): one write.
            seq = state.next_seq
            at = time.time()
            done = SagaEvent(saga_id, seq, _STEP_COMPLETED, i, at, data)
            if i < last:
                then = SagaEvent(saga_id, seq + 1, _STEP_STARTED, i + 1, at)
            else:
                then = SagaEvent(saga_id, seq + 1, _COMPLETED, None, at)
            run.pending = (i, data)
            if write_now is None:
                state = run.state = (await append_many((done, then)))[saga_id]
            else:
                if run.abandoned:  # deliver the caller's cancellation before writing
                    await trio.lowlevel.checkpoint_if_cancelled()
                written = write_now((done, then))
                if written is None:  # not an open saga of this journal: the precise error
                    written = (await append_many((done, then)))[saga_id]
                state = run.state = written
            run.pending = None
            if i == last:
                return state

    def _builder_failed(
        self, run: _Run, exc: Exception, which: str, uncertain: bool = False
    ) -> StepError:
        """Nothing was sent (``uncertain``: an earlier send of the same key may have landed)."""
        run.cause = exc
        return step_error(
            exc,
            self._classifier.classify(exc).category,
            prefix=f"the step's {which} raised: ",
            uncertain=uncertain,
            unsent=True,
        )

    def _journalable(self, run: _Run, i: int, reply: Any) -> bytes | StepError:
        """A step's reply encoded for the journal (and checked against its ``reply_type``)."""
        try:
            data = _encode(reply)
            plan = run.plan
            if plan.checked[i]:
                plan.decoders[i].decode(data)
        except (msgspec.EncodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
            run.cause = exc
            return step_error(
                exc,
                ErrorCategory.VALIDATION,
                prefix="the step's reply cannot be journaled: ",
                uncertain=True,  # the target did the work
            )
        return data

    async def _send_step(
        self,
        run: _Run,
        i: int,
        step: SagaStep,
        started: float | None = None,
        error: Exception | None = None,
    ) -> bytes | StepError:
        """Send step ``i`` (retrying per its policy); its encoded reply, or why it failed.

        With ``error``, the first attempt (begun at ``started``) was made and failed with it.
        The failure is uncertain when any attempt's was, or when the key was sent more than
        once (a retry, or a re-send after a restart): a later refusal ("already done") says
        nothing about whether an earlier send landed.  Each retry's ``step_started`` carries
        the error of the attempt before it (for the audit trail).
        """
        saga_id = run.header.saga_id
        key = f"{saga_id}:{step.name}"
        retry: RetryState | None = None
        if started is None:
            started = trio.current_time()
        doubt = error is not None and is_uncertain(error)  # a send may have landed
        unsent = False  # the last attempt was never sent
        while True:
            if error is None:
                state = run.state
                try:
                    payload = step.action(
                        StepContext(run.view, i, key, state.step_attempts, state.results)
                    )
                except Exception as exc:
                    return self._builder_failed(
                        run, exc, "action", doubt or state.step_attempts > 1
                    )
                target = run.plan.targets[i]
                if target is None:
                    try:
                        target = await self._resolve(run, i)
                    except ActorNotFound as exc:
                        run.cause = exc
                        return step_error(
                            exc,
                            exc.category,
                            uncertain=doubt or run.state.step_attempts > 1,
                            unsent=True,
                        )
                    except ActorStopped as exc:  # not running: retried like a failed send
                        error, unsent = exc, True
                if target is not None:
                    ref, delivery = target
                    message = _step_message(delivery, payload, key, saga_id, step.name)
                    run.sent = i
                    run.sent_seq = run.state.next_seq - 1
                    self.counters.steps_sent += 1
                    try:
                        reply = await ref.ask(message, timeout=step.timeout)
                    except Exception as exc:
                        error, unsent = exc, False
                        doubt = doubt or is_uncertain(exc)
                    else:
                        return self._journalable(run, i, reply)
            assert error is not None
            verdict = self._classifier.classify(error)
            if retry is None:
                retry = self._policy(run.definition, i, False).begin(started)
            now = trio.current_time()
            decision = retry.on_failure(now, verdict.category, verdict.retry_after)
            if type(decision) is GiveUp:
                run.cause = error
                return step_error(
                    error,
                    verdict.category,
                    uncertain=doubt or run.state.step_attempts > 1,
                    unsent=unsent,
                )
            info = step_error(error, verdict.category, uncertain=doubt, unsent=unsent)
            error = None
            await trio.sleep_until(decision.at)  # type: ignore[union-attr]
            run.state = await self._journal.append(
                run.state.next_event(_STEP_STARTED, i, _encode(info))
            )
            self.counters.step_retries += 1

    async def _resolve(self, run: _Run, i: int) -> _Target:
        """The target ref of step ``i`` and how to deliver to it; cached once known.

        Raises:
            ActorNotFound: no actor at the step's path.
            ActorStopped: ``delivery="auto"`` and the target is not running (stopped, or
                waiting out a restart backoff) within the step's timeout: how to deliver to
                it is not known, so nothing is sent and nothing is cached.
        """
        step = run.definition.steps[i]
        target = step.target
        ref = target if isinstance(target, ActorRef) else self.lookup(target)
        delivery: str = step.delivery
        if delivery == "auto":
            cell = ref._cell
            # Decide from the running actor; while it is (re)starting, wait for it a little.
            waited = 0.0
            pause = 0.01
            while cell.incarnation is None and not cell.closed and waited < step.timeout:
                await trio.sleep(pause)
                waited += pause
                pause = min(pause * 2, 0.5, max(step.timeout - waited, 0.01))
            inc = cell.incarnation
            if inc is None:  # undecided: never cache a guess (every later saga would keep it)
                raise ActorStopped(
                    actor=ref.path, reason=_NOT_RUNNING, category=ErrorCategory.DEPENDENCY
                )
            delivery = "call" if isinstance(inc.actor, CallReceiver) else "envelope"
        found = run.plan.targets[i] = (ref, _DELIVERIES[delivery])
        return found

    def _policy(self, definition: SagaDefinition, i: int, compensate: bool) -> RetryPolicy:
        key = (definition.name, i, compensate)
        policy = self._policies.get(key)
        if policy is None:
            step = definition.steps[i]
            settings = step.compensation_retry if compensate else step.retry
            policy = self._policies[key] = RetryPolicy(settings, random=self._rng)
        return policy

    async def _after_cancel(self, run: _Run) -> SagaState:
        """The caller gave up during the forward part: record the step in flight, decide."""
        found = await self._journal.get(run.header.saga_id)
        # A write cut short by the cancellation may have landed: the journal has the truth.
        state = run.state = saga_state(*found) if found is not None else run.state
        if state.phase is _STEP_IN_FLIGHT:
            i = state.step_in_flight
            pending = run.pending
            if pending is not None and pending[0] == i:  # its reply had arrived
                state = run.state = await self._journal.append(
                    state.next_event(_STEP_COMPLETED, i, pending[1])
                )
            else:
                error = StepError(
                    type="Cancelled",
                    message=_CANCELLED_IN_FLIGHT,
                    category=ErrorCategory.CANCELLATION.value,
                    uncertain=run.sent == i or state.step_attempts > 1,
                    cancelled=True,
                    unsent=run.sent_seq != state.next_seq - 1,  # gone before it left
                )
                run.error = error
                return await self._journal.append(state.next_event(_STEP_FAILED, i, _encode(error)))
        if state.phase is _RUNNING:
            if state.next_step >= len(run.definition.steps):
                state = run.state = await self._journal.append(state.next_event(_COMPLETED))
                return state
            return await self._decide(run, state, _CANCELLED_BETWEEN_STEPS)
        return state

    def _failed_error(self, run: _Run, state: SagaState) -> StepError | None:
        if state.failed_step is None:
            return None
        if run.error is None:
            run.error = decode_error(state.step_error)
        return run.error

    def _uncertain(self, run: _Run, state: SagaState) -> bool:
        """Whether the failed step may have taken effect: its error says so, or its key was
        sent more than once (journals written before errors recorded that say it this way)."""
        error = self._failed_error(run, state)
        return state.step_attempts > 1 or (error is not None and error.uncertain)

    def _next_compensation(self, run: _Run, state: SagaState, below: int) -> int | None:
        """The highest step below ``below`` that must be compensated, or ``None``."""
        steps = run.definition.steps
        failed = state.failed_step
        for j in range(min(below, len(steps)) - 1, -1, -1):
            step = steps[j]
            if step.compensate is None:
                continue
            if j < state.next_step:
                return j
            if j == failed:
                policy = step.compensate_failed
                if policy == "always" or (policy == "uncertain" and self._uncertain(run, state)):
                    return j
        return None

    async def _decide(self, run: _Run, state: SagaState, reason: StepError | None) -> SagaState:
        """After a failure (or a cancellation between steps): compensate, or end."""
        if reason is None:
            reason = self._failed_error(run, state)
            assert reason is not None
        below = state.next_step + (0 if state.failed_step is None else 1)
        if self._next_compensation(run, state, below) is not None:
            kind = _K.COMPENSATING
        else:
            kind = _K.CANCELLED if reason.cancelled else _K.FAILED
        state = run.state = await self._journal.append(
            state.next_event(kind, None, _encode(reason))
        )
        return state

    # ------------------------------------------------------------------ compensating

    async def _compensate(self, run: _Run, state: SagaState) -> SagaState:
        journal = self._journal
        deadline = trio.current_time() + run.definition.compensation_deadline
        if state.phase is _P.COMPENSATING:
            j = self._next_compensation(run, state, state.compensate_below or 0)
            if j is None:
                # The final event keeps the reason of `compensating` (for the saga's error).
                state = run.state = await journal.append(
                    state.next_event(_K.COMPENSATED, None, state.reason)
                )
                return state
            event = state.next_event(_K.COMPENSATION_STARTED, j)
        else:  # resumed in flight or waiting for a retry: re-send (journaled first)
            event = state.next_event(_K.COMPENSATION_STARTED, state.compensation_step)
        state = run.state = await journal.append(event)
        saga_id = run.header.saga_id
        while True:
            j = state.compensation_step
            assert j is not None
            error = await self._send_compensation(run, j, deadline)
            state = run.state
            if error is not None:
                state = run.state = await journal.append(
                    state.next_event(_K.COMPENSATION_FAILED, j, _encode(error))
                )
                return state
            done = state.next_event(_K.COMPENSATED_STEP, j)
            nxt = self._next_compensation(run, state, j)
            if nxt is None:
                then = SagaEvent(saga_id, done.seq + 1, _K.COMPENSATED, None, done.at, state.reason)
            else:
                then = SagaEvent(saga_id, done.seq + 1, _K.COMPENSATION_STARTED, nxt, done.at)
            state = run.state = (await journal.append_many((done, then)))[saga_id]
            if nxt is None:
                return state

    async def _send_compensation(self, run: _Run, j: int, deadline: float) -> StepError | None:
        """Send the compensation of step ``j`` until it succeeds (``None``) or gives up."""
        step = run.definition.steps[j]
        saga_id = run.header.saga_id
        key = f"{saga_id}:{step.name}:compensate"
        assert step.compensate is not None
        error_info = self._failed_error(run, run.state) if j == run.state.failed_step else None
        retry: RetryState | None = None
        started = trio.current_time()
        while True:
            state = run.state
            try:
                payload = step.compensate(
                    StepContext(
                        run.view,
                        j,
                        key,
                        state.compensation_attempts,
                        state.results,
                        compensating=True,
                        error=error_info,
                    )
                )
            except Exception as exc:
                return step_error(
                    exc,
                    self._classifier.classify(exc).category,
                    prefix="the step's compensate builder raised: ",
                    unsent=True,
                )
            now = trio.current_time()
            timeout = min(step.compensation_timeout, deadline - now)
            if timeout <= 0:
                return StepError(
                    type="DeadlineExceeded",
                    message="the saga's compensation deadline passed",
                    category=ErrorCategory.TIMEOUT.value,
                    unsent=True,
                )
            error: Exception
            unsent = False
            target = run.plan.targets[j]
            if target is None:
                try:
                    target = await self._resolve(run, j)
                except ActorNotFound as exc:
                    return step_error(exc, exc.category, unsent=True)
                except ActorStopped as exc:  # not running: retried like a failed send
                    error, unsent = exc, True
            if target is not None:
                ref, delivery = target
                message = _step_message(delivery, payload, key, saga_id, step.name, compensate=True)
                self.counters.compensations_sent += 1
                try:
                    await ref.ask(message, timeout=timeout)
                except Exception as exc:
                    error = exc
                else:
                    return None
            verdict = self._classifier.classify(error)
            if retry is None:
                retry = self._policy(run.definition, j, True).begin(started, deadline)
            now = trio.current_time()
            info = step_error(error, verdict.category, unsent=unsent)
            decision = retry.on_failure(now, verdict.category, verdict.retry_after)
            if type(decision) is GiveUp:
                return info
            _log.warning(
                "saga %s: compensation of step %r failed (%s); retrying in %.3g s",
                saga_id,
                step.name,
                _shown(info.describe()),
                decision.delay,  # type: ignore[union-attr]
            )
            run.state = await self._journal.append(
                run.state.next_event(_K.COMPENSATION_FAILED_STEP, j, _encode(info))
            )
            await trio.sleep_until(decision.at)  # type: ignore[union-attr]
            run.state = await self._journal.append(run.state.next_event(_K.COMPENSATION_STARTED, j))
            self.counters.compensation_retries += 1

    # ------------------------------------------------------------------ ending

    def _finish(self, run: _Run, state: SagaState) -> None:
        run.finished = True
        phase = state.phase
        counters = self.counters
        if phase is _DONE:
            counters.completed += 1
        elif phase is _P.COMPENSATED:
            counters.compensated += 1
        elif phase is _P.FAILED:
            counters.failed += 1
        elif phase is _P.CANCELLED:
            counters.cancelled += 1
        elif phase is _P.COMPENSATION_FAILED:
            counters.compensation_failed += 1
        for reply in run.waiters:
            self._answer(run, reply)
        run.waiters = []
        if phase is not _DONE:
            error = self._error(run)
            step = state.compensation_step if phase is _P.COMPENSATION_FAILED else state.failed_step
            text = _shown(error)
            if phase is _P.COMPENSATION_FAILED:
                _log.error("%s", text)
            else:
                _log.info("%s", text)
            self._report(run.header.saga_id, run.definition.name, phase.value, step, text)

    def _answer(self, run: _Run, reply: Reply[Any]) -> None:
        if run.state.phase is _DONE:
            # Replies decoded from the journal (the values builders saw, where they looked).
            seen = run.view.replies
            plan = run.plan
            values = list(map(_decode, plan.decoders, run.state.results))
            for i, value in seen.items():
                values[i] = value
            results = dict(zip(plan.names, values, strict=True))
            reply.set(SagaResult(run.header.saga_id, run.definition.name, results))
        else:
            reply.fail(self._error(run))

    def _error(self, run: _Run) -> SagaFailed:
        """A fresh exception describing how a finished, not completed, saga ended."""
        state = run.state
        steps = run.definition.steps
        failed = state.failed_step
        # Without a failed step the saga was cancelled between steps; the final event's data
        # is the reason (`compensated`, `cancelled`), or the compensation's error.
        info = self._failed_error(run, state) if failed is not None else None
        if info is None:
            if state.phase is _P.COMPENSATION_FAILED:
                info = _CANCELLED_BETWEEN_STEPS
            else:
                info = decode_error(state.reason)
        compensated = [steps[j].name for j in state.compensated]
        step_name = steps[failed].name if failed is not None else None
        if state.phase is _P.COMPENSATION_FAILED:
            j = state.compensation_step
            return CompensationFailed(
                saga_id=run.header.saga_id,
                definition=run.definition.name,
                step=failed,
                step_name=step_name,
                reason=info.describe(),
                compensation_step=j,
                compensation_step_name=steps[j].name if j is not None else None,
                compensation_error=decode_error(state.reason).describe(),
                cancelled=info.cancelled,
                compensated=compensated,
                cause=run.cause,
            )
        return SagaFailed(
            saga_id=run.header.saga_id,
            definition=run.definition.name,
            outcome=state.phase.value,
            step=failed,
            step_name=step_name,
            reason=info.describe(),
            category=_category(info),
            cancelled=info.cancelled,
            compensated=compensated,
            cause=run.cause,
        )

    def _report(
        self, saga_id: str, definition: str, status: str, step: int | None, detail: str
    ) -> None:
        """Tell the monitor (never blocking).  A full mailbox drops an ordinary report (counted);
        a critical one (``compensation_failed``, ``unresumable``: an operator must act) is handed
        to a background task that waits for room, so it is delivered without holding up the
        coordinator's other sagas."""
        spec = self._monitor_spec
        if spec is None:
            return
        report = SagaReport(saga_id, definition, status, step, _shown(detail), time.time())
        monitor = self._monitor
        if monitor is None:
            try:
                monitor = self._monitor = self.lookup(spec)  # type: ignore[arg-type]
            except LookupError:
                if status in _CRITICAL and self._queue_report(report):
                    return
                self.counters.reports_dropped += 1
                return
        try:
            monitor.tell_nowait(report)
        except MailboxFull:
            if status in _CRITICAL and self._queue_report(report):
                return
            self.counters.reports_dropped += 1
        except ActorError:
            self.counters.reports_dropped += 1
        else:
            self.counters.reports_sent += 1

    def _queue_report(self, report: SagaReport) -> bool:
        """Deliver ``report`` in the background (``False``: too many are waiting already)."""
        if self._pending_reports >= _MAX_PENDING_REPORTS:
            return False
        self._pending_reports += 1
        self.spawn(self._deliver_report, report, name=f"{self.path}:critical report")
        return True

    async def _deliver_report(self, report: SagaReport) -> None:
        """Wait for room in the monitor's mailbox and send ``report``; while the monitor is
        missing or stopped, look it up again and retry with backoff (up to 30 s apart)."""
        pause = 0.5
        try:
            while True:
                monitor = self._monitor
                try:
                    if monitor is None:
                        monitor = self._monitor = self.lookup(self._monitor_spec)  # type: ignore[arg-type]
                    await monitor.tell(report)
                except (ActorError, LookupError):
                    self._monitor = None if isinstance(self._monitor_spec, str) else monitor
                    await trio.sleep(pause)
                    pause = min(pause * 2, 30.0)
                    continue
                self.counters.reports_sent += 1
                return
        finally:
            self._pending_reports -= 1

    # ------------------------------------------------------------------ queries

    async def _get(self, reply: Reply[Any], saga_id: str) -> None:
        try:
            found = await self._journal.get(saga_id)
        except JournalError as exc:  # the query's answer; a failed journal shows at the writes
            reply.fail(exc)
            return
        if found is None:
            reply.set(None)
            return
        header, events = found
        definition = self._definitions.get(header.definition)
        reply.set(saga_info(header, events, definition, running_here=header.saga_id in self._runs))

    async def _discard(self, reply: Reply[Any], saga_id: str) -> None:
        if saga_id in self._runs:
            reply.fail(JournalError(f"Saga {saga_id!r} is running; it cannot be discarded."))
            return
        try:
            found = await self._journal.discard(saga_id)
        except JournalError as exc:
            reply.fail(exc)
            return
        reply.set(found)
