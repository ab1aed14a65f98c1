"""Provider actors: one external service behind a supervised actor with all its policies.

Theory of operation
-------------------
A :class:`ProviderActor` owns one service's circuit breaker, retry policy and budget, bulkhead,
optional rate limiter and idempotency table (the sans-I/O policies), and a pool of worker tasks
in its own scope that run the service's function.  A call (a :class:`Call` message, usually sent
through the :class:`~actors.Provider` client) goes through::

    idempotency  cached outcome -> answer | same call in flight -> join it | conflict -> error
    breaker      open -> CircuitOpen (retry_after), no attempt
    rate limit   wait for a token if the wait fits the deadline, else RateLimited
    bulkhead     a free worker slot, or a place in the queue, else BulkheadFull
    attempt      the function under min(attempt timeout, time left to the deadline)
    classify     the failure's category (one of ten) and the provider's Retry-After
    record       breaker outcome, monitor report
    retry?       transient, attempts left, budget allows, the delay fits the deadline
    answer       every waiter (joiners too), store the outcome under the key

``handle`` only admits: it defers the reply and hands the job on, so the mailbox never waits
for the service.  Workers are long-lived tasks (at most the bulkhead's ``max_concurrent``), each
inside a cancel scope whose deadline is moved per attempt: no task spawn and no new cancel scope
per call on the success path.  A worker that finishes an attempt takes the next queued job
directly.  Retries wait on one delay queue (one task) without holding a bulkhead slot.

Cancellation: a job lives as long as someone waits for it, until the latest deadline of its
callers.  When the last waiter gives up (ask timeout or caller cancelled), the job is cancelled
wherever it is: queued or waiting for a retry, at once; mid-attempt or in the fallback, by
cancelling that task's scope, and the task settles the job (its key stays in flight until then,
so a key never runs twice side by side).  A caller that joins in between revives the job.  A
worker whose scope fired in the batch the attempt's outcome arrived in takes a fresh scope for
its next job.

A graceful stop waits (within the shutdown grace) for the jobs in progress to settle.

Reports: every attempt that reached the service is reported to the monitor exactly once
(success, failure category, latency), in the order things happened: an attempt's report comes
before the breaker transition it caused.  Reports are batched and sent with ``tell_nowait``
within ``report_interval`` seconds of the first one pending, or at once every 256 reports, so
reporting never blocks the provider; when the monitor's mailbox is full they wait for the next
flush, and only beyond ``max_pending_reports`` are the oldest call reports dropped (and
counted).  Breaker transitions are sent at once and never dropped to make room (only if more
than ``max_pending_reports`` transitions alone were pending would the oldest go).

Housekeeping (flushing, moving an open breaker to half-open on time, expiring idempotency
records) runs on one timer armed only when there is something to do: reports pending, a break
to end, completed records to expire (checked every minute while there are some).  An idle
provider with nothing pending does not wake up.

Restarts: the circuit breaker, the idempotency table, the counters, the unsent reports and the
set of attempts running belong to the actor's slot (``cell.keep``), not to one incarnation.  An
open breaker stays open through a restart (the service did not heal because the actor
restarted) and every incarnation starts by reporting its breaker's state to the monitor (a
:class:`~actors.BreakerReport` with ``old == new``), so the monitor's copy is never stale.  A key
completed before a restart is still answered from its outcome; reports not sent yet go out with
the next incarnation's; and attempts cut short by a crash or a restart are reported by the next
incarnation as cancelled (category ``cancellation``, their breaker permits given back), so the
monitor counts every attempt the service saw.  The counters behind ``ProviderStatus`` (and the
``aura_provider_*_total`` metrics) count for the life of the slot.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeAlias

import attrs
import msgspec
import outcome
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task, current_task, reschedule, wait_task_rescheduled

from actors._core._actor import Actor
from actors._core._cell import is_cancellation, is_fatal
from actors._core._correlation import CORRELATION, ServiceCall, ids
from actors._core._ref import ActorRef
from actors._core._reply import ABANDONED, DONE, PENDING, CancelAt, Failure, Reply, _Timers
from actors._errors import (
    ActorError,
    AuraError,
    BulkheadFull,
    CircuitOpen,
    ErrorCategory,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ResilienceError,
    RetriesExhausted,
    RetryBudgetExhausted,
)
from actors._policies._breaker import BreakerState, BreakerTransition, CircuitBreaker, Permit
from actors._policies._budget import RetryBudget
from actors._policies._bulkhead import ENTERED, Bulkhead
from actors._policies._classify import Classified, Classifier
from actors._policies._config._schema import ProviderSettings
from actors._policies._idempotency import Completed, IdempotencyTable, InFlight, Joined, fingerprint
from actors._policies._ratelimit import RateLimiter
from actors._policies._redact import check_printable
from actors._policies._retry import GiveUp, GiveUpReason, RetryPolicy, RetryState
from actors._protocol import BreakerReport, Call, CallReceiver, CallReport
from actors.chaos import wrap_provider_function

__all__ = [
    "GetStatus",
    "Isolate",
    "ProviderActor",
    "ProviderStatus",
    "Reset",
]

ProviderFunction: TypeAlias = Callable[[Any], Awaitable[Any]]
Fallback: TypeAlias = "ActorRef[Any, Any] | str | Callable[[Any, BaseException], Awaitable[Any]]"

_FLUSH_EVERY: Final = 256
# Seconds between expiry sweeps of the idempotency table while it holds records (a store also
# expires what is due, so the sweep only frees the memory of a provider gone quiet).
_EXPIRE_EVERY: Final = 60.0
# Enum member look-ups are slow on Python 3.11: hot paths compare with these.
_CLOSED: Final = BreakerState.CLOSED
_ISOLATED: Final = BreakerState.ISOLATED
_NOT_FALLBACK: Final = frozenset({ErrorCategory.VALIDATION})


class Isolate(msgspec.Struct, frozen=True, tag="isolate"):
    """Hold the provider's breaker open until :class:`Reset` (an operator's kill switch)."""


class Reset(msgspec.Struct, frozen=True, tag="reset"):
    """Close the provider's breaker with a clean window."""


class GetStatus(msgspec.Struct, frozen=True, tag="status"):
    """Ask for a :class:`ProviderStatus`."""


class ProviderStatus(msgspec.Struct, frozen=True, gc=False):
    """A provider's state for status views (the reply to :class:`GetStatus`).

    Not tracked by the garbage collector (it holds only values): a scrape asks every provider
    for one.

    Attributes:
        service: the provider's name.
        breaker: the breaker's state (``closed``, ``open``, ``half_open``, ``isolated``).
        retry_after: seconds until the breaker admits a call (``None`` when isolated).
        budget_balance: retries the budget allows right now.
        running: attempts in progress.
        queued: calls waiting for a bulkhead slot.
        waiting: calls waiting for a retry delay or a rate-limit token.
        cached: idempotency records held.
        calls, succeeded, failed: calls taken and how each ended, once per caller: answered
            with a reply (from the service, the fallback, a joined call or a stored outcome) or
            failed (an error, a refusal, or the caller gave up).  Once nothing is in flight,
            ``calls == succeeded + failed`` (calls the runtime answered because the actor
            crashed or was cancelled are not counted as ended).
        attempts, retries: attempts made, of which retries.
        rejected: calls refused before any attempt (breaker, bulkhead, rate limit, conflicts).
        fallbacks, hedges: fallbacks used and hedged attempts sent.
        reports_dropped: monitor reports dropped because the monitor could not keep up.
    """

    service: str
    breaker: str
    retry_after: float | None
    budget_balance: int
    running: int
    queued: int
    waiting: int
    cached: int
    calls: int
    succeeded: int
    failed: int
    attempts: int
    retries: int
    rejected: int
    fallbacks: int
    hedges: int
    reports_dropped: int


ProviderMessage: TypeAlias = Call | Isolate | Reset | GetStatus


class _Job:
    """One call in progress, shared by every caller waiting for it.

    ``live`` counts the callers still waiting and ``deadline`` is the latest of theirs (the
    job runs for its longest-waiting caller).  When ``live`` drops to zero the job is
    cancelled: at once if it is queued or waiting for a retry; else the task running it (a
    worker's attempt or the fallback) has its ``scope`` cancelled (``stopping``) and settles
    it.  A caller that joins before then revives the job (``cancelled`` is cleared) and is
    answered like any other.
    """

    __slots__ = (
        "attempts",
        "cancelled",
        "deadline",
        "done",
        "entry",
        "guard",
        "last_error",
        "live",
        "log_ids",
        "payload",
        "permit",
        "retry",
        "running",
        "scope",
        "started",
        "stopping",
        "ticket",
        "timeout",
        "waiters",
    )

    def __init__(
        self, payload: Any, entry: InFlight | None, retry: RetryState, log_ids: Mapping[str, str]
    ) -> None:
        self.payload = payload
        self.log_ids = log_ids
        self.entry = entry
        self.retry = retry
        self.deadline = retry.deadline
        self.waiters: list[Reply[Any]] = []
        self.live = 0
        self.attempts = 0
        self.last_error: BaseException | None = None
        self.done = False
        self.cancelled = False
        self.running = False
        self.stopping = False
        self.scope: trio.CancelScope | None = None
        self.guard: CancelAt | None = None  # the running attempt's timeout
        self.ticket = 0
        self.permit = Permit(0)
        self.started = 0.0
        self.timeout = 0.0


#: A call queued on the direct lane: (payload, idempotency key, reply).
_Fresh: TypeAlias = tuple[Any, "str | None", Reply[Any]]


def _fresh(error: BaseException) -> BaseException:
    """A copy of ``error`` for one more waiter (one exception object per raise)."""
    if isinstance(error, AuraError):
        fresh = copy.copy(error)  # copies the attributes, not the chain: keep it
        fresh.__cause__ = error.__cause__
        fresh.__context__ = error.__context__
        fresh.__suppress_context__ = error.__suppress_context__
        return fresh
    return ProviderError(str(error), category=ErrorCategory.UNKNOWN, cause=error)


def _describe(exc: BaseException) -> str:
    """``"Type: message"`` for reports; never raises (an exception's ``__str__`` may)."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception as error:
        return f"{type(exc).__name__}: <str() raised {type(error).__name__}>"


@attrs.define
class _Counters:
    calls: int = 0
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    rejected: int = 0
    fallbacks: int = 0
    hedges: int = 0
    reports_dropped: int = 0


#: The outcome of the winning send of a hedged attempt.
_WON: Final = object()


class ProviderActor(Actor[ProviderMessage, Any], CallReceiver):
    """A supervised actor around one external service (see the module docstring).

    Args:
        name: the service's name (breaker, reports, errors).
        fn: ``async def fn(payload) -> reply``: the call to the service, or an object with such
            a ``call`` method.
        settings: the :class:`~actors.ProviderSettings` (``config.for_provider(name)``); default
            settings when omitted.
        classifier: maps failures to categories (default: the built-in rules).
        monitor: where outcome reports go: a ref or the monitor's path in the tree.
        fallback: used when a call fails for good (except for validation errors): another
            provider (a ref or path; the call is re-sent to it) or
            ``async def fallback(payload, error) -> reply``.  ``settings.fallback`` names a
            sibling provider when this is not given.
        rng: the random source of backoff jitter (seed it for replayable runs).
        report_interval: seconds between report flushes to the monitor.
        max_pending_reports: reports kept while the monitor cannot take them (the oldest call
            reports are dropped beyond it; breaker transitions are kept).

    Example::

        ChildSpec("openai", lambda: ProviderActor("openai", call_openai,
                                                  config.for_provider("openai"),
                                                  monitor="monitor"))
    """

    def __init__(
        self,
        name: str,
        fn: ProviderFunction | Any,
        settings: ProviderSettings | None = None,
        *,
        classifier: Classifier | None = None,
        monitor: ActorRef[Any, Any] | str | None = None,
        fallback: Fallback | None = None,
        rng: random.Random | None = None,
        report_interval: float = 0.5,
        max_pending_reports: int = 10_000,
    ) -> None:
        check_printable(name, "provider name", max_length=200)
        if not callable(fn):
            method = getattr(fn, "call", None)
            if not callable(method):
                raise TypeError(
                    f"provider {name!r}: fn must be an async function or have an async `call` "
                    f"method, got {fn!r}"
                )
            fn = method
        if not report_interval > 0:
            raise ValueError(f"provider {name!r}: report_interval must be > 0")
        self.name = name
        self.settings = settings = ProviderSettings() if settings is None else settings
        if settings.chaos is not None and settings.chaos.enabled:  # tests and game days only
            fn = wrap_provider_function(fn, settings.chaos, name)
        self._fn: ProviderFunction = fn
        self._classifier = classifier or Classifier()
        self._monitor_spec = monitor
        self._monitor: ActorRef[Any, Any] | None = (
            monitor if isinstance(monitor, ActorRef) else None
        )
        self._fallback_spec: Fallback | None = (
            fallback if fallback is not None else settings.fallback
        )
        # The breaker belongs to the slot (see on_start): its listener is a relay that the
        # incarnation running now points at itself.
        self._relay = _BreakerRelay(self._on_transition)
        self._breaker = self._relay.breaker = CircuitBreaker(
            settings.breaker, name=name, listener=self._relay
        )
        self._budget = RetryBudget(settings.budget)
        self._retry = RetryPolicy(settings.retry, budget=self._budget, random=rng)
        self._bulkhead = Bulkhead(settings.bulkhead, name=name)
        self._limiter = (
            RateLimiter(settings.rate_limit, name=name) if settings.rate_limit is not None else None
        )
        self._table = IdempotencyTable(settings.idempotency)
        self._hedging = settings.hedging_delay
        self._report_interval = report_interval
        self._max_pending = max_pending_reports
        self._reports: list[Any] = []
        self._keep: dict[str, Any] = {}  # the slot's cell.keep once started
        self._housekeeper: trio.CancelScope | None = None  # its sleep, while it sleeps
        self._path = ""  # the slot's path once started (in breaker reports)
        self._flush_at = math.inf  # when the pending reports are due to go out
        self._expire_at = math.inf  # when the idempotency table is next swept
        self._queued: dict[int, _Job] = {}
        self._attempting: set[_Job] = set()  # attempts running now (the slot keeps it)
        self._fresh: deque[_Fresh] = deque()
        self._max_workers = settings.bulkhead.max_concurrent
        self._max_queued = settings.bulkhead.max_queued
        self._idle: list[Task] = []
        self._workers = 0
        self._running = 0
        self._delayed: list[tuple[float, int, _Job]] = []
        self._delay_seq = itertools.count()
        self._delay_scope: trio.CancelScope | None = None
        self._waiting = 0
        self._jobs = 0  # jobs not settled yet (a graceful stop waits for them)
        self._drained: trio.Event | None = None  # set as jobs settle while on_stop waits
        self._log_ids = ids(service=name)
        self._timers = _Timers()  # replaced by the runtime's timer service in on_start
        self._token: trio.lowlevel.TrioToken | None = None
        self.counters = _Counters()

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        cell = self._inc.cell
        self._timers = cell.timers
        # The idempotency table belongs to the slot, not the incarnation: a key that completed
        # before a restart still answers from its stored outcome (calls that were in flight
        # died with the old incarnation; their callers got ActorCrashed / ActorStopped).
        kept = cell.keep.get("idempotency")
        if isinstance(kept, IdempotencyTable) and kept.settings == self._table.settings:
            kept.abandon_all()
            self._table = kept
        else:
            cell.keep["idempotency"] = self._table
        # Reports the previous incarnation had not sent yet go out with this one's.
        self._keep = keep = cell.keep
        self._path = cell.path
        self._reports = keep.setdefault("reports", self._reports)
        self.counters = keep.setdefault("counters", self.counters)
        # The breaker outlives an incarnation too: a restart does not heal the service.
        kept = keep.get("breaker")
        reused = False
        if isinstance(kept, _BreakerRelay) and kept.breaker.settings == self._breaker.settings:
            reused = True
            self._relay = kept
            self._breaker = kept.breaker
            kept.target = self._on_transition
        else:
            keep["breaker"] = self._relay
        now = trio.current_time()
        # Attempts the previous incarnation was running when it crashed or stopped never got
        # an outcome: report them now, so the monitor counts every attempt the service saw,
        # and give their permits back (a probe's would hold a half-open breaker forever).
        left = keep.get("attempting")
        if left:
            for job in left:
                if reused:
                    self._breaker.release(job.permit, now)
                self._report(
                    False,
                    max(0.0, now - job.started),
                    now,
                    ErrorCategory.CANCELLATION,
                    "the provider actor stopped during the attempt",
                    job.attempts > 1,
                )
            left.clear()
        keep["attempting"] = self._attempting
        # Tell the monitor the breaker's state as this incarnation starts (old == new: a state
        # report), so its copy is right whatever it missed or kept.
        if self._monitor_spec is not None:
            state = self._breaker.poll(now).value
            self._reports.append(
                BreakerReport(self.name, state, state, now, "provider started", self._path)
            )
            self._flush_at = now
            self._flush()
        if len(self._table):
            self._expire_at = now + _EXPIRE_EVERY
        self.spawn(self._housekeeping, name=f"{self.path}:housekeeping")
        self.spawn(self._delay_loop, name=f"{self.path}:delays")

    async def on_stop(self) -> None:
        # A graceful stop lets the calls in progress finish (running, queued, waiting for a
        # retry or in the fallback), within the shutdown grace: past it the runtime cancels
        # them and their callers get ActorStopped.  New calls already go to the mailbox.
        # Calls handed to a worker that has not taken them yet are among the deferred
        # replies (the direct lane's are deferred from the start).
        inc = self._inc
        while self._jobs or inc.deferred:
            drained = self._drained = trio.Event()
            await drained.wait()
        self._drained = None
        self._flush()

    async def handle(self, message: ProviderMessage) -> Any:
        if type(message) is Call:
            self._call(message)
            return None
        if isinstance(message, GetStatus):
            return self.status()
        now = trio.current_time()
        if isinstance(message, Isolate):
            self._breaker.isolate(now)
            return self.status()
        if isinstance(message, Reset):
            self._breaker.reset(now)
            return self.status()
        return Failure(
            TypeError(
                f"provider {self.name!r} accepts Call, Isolate, Reset and GetStatus messages, "
                f"not {type(message).__name__}"
            )
        )

    def status(self, now: float | None = None) -> ProviderStatus:
        """The provider's :class:`ProviderStatus` (also the reply to :class:`GetStatus`)."""
        now = trio.current_time() if now is None else now
        c = self.counters
        return ProviderStatus(
            service=self.name,
            breaker=self._breaker.state.value,
            retry_after=self._breaker.retry_after(now),
            budget_balance=self._budget.balance(now),
            running=self._running,
            queued=len(self._queued) + sum(1 for item in self._fresh if not item[2].done),
            waiting=self._waiting,
            cached=self._table.statistics().records,
            calls=c.calls,
            succeeded=c.succeeded,
            failed=c.failed,
            attempts=c.attempts,
            retries=c.retries,
            rejected=c.rejected,
            fallbacks=c.fallbacks,
            hedges=c.hedges,
            reports_dropped=c.reports_dropped,
        )

    def rejection(self, now: float) -> CircuitOpen | None:
        """The error a call would be rejected with right now by the breaker, or ``None``.

        Read-only: the :class:`~actors.Provider` client uses it to fail fast in the caller's
        task, without a mailbox round trip, while the breaker is open.  ``None`` when a
        fallback is configured (the call must reach the actor, which uses the fallback).
        """
        if self._fallback_spec is not None:
            return None  # the actor answers from the fallback
        return self._breaker_rejection(now)

    def _breaker_rejection(self, now: float) -> CircuitOpen | None:
        breaker = self._breaker
        state = breaker._state
        if state is _CLOSED or breaker.allows(now):
            return None
        return CircuitOpen(
            service=self.name, retry_after=breaker.retry_after(now), isolated=state is _ISOLATED
        )

    # ------------------------------------------------------------------ admission

    def _call(self, message: Call) -> None:
        self._begin(message.payload, message.key, self.defer(), trio.current_time(), False)

    def submit(self, payload: Any, key: str | None, reply: Reply[Any]) -> bool:
        """Queue a call for the worker pool directly (the :class:`Provider` client's lane).

        Called from the caller's task instead of sending a :class:`Call` to the mailbox: the
        item is queued like a message and a worker of this actor admits and runs it, so a call
        costs one task switch each way.  ``reply`` becomes one of this incarnation's deferred
        replies (answered with ``ActorStopped`` / ``ActorCrashed`` if the actor goes away).

        Returns ``False`` (and keeps nothing) when the bulkhead is full but the call may still
        be answered without a slot (it has a key, whose stored outcome or call in flight may
        answer it, or there is a fallback): the caller then sends it through the mailbox, so
        the actor decides as for any :class:`Call`.

        Raises:
            BulkheadFull: every worker is busy and ``max_queued`` calls already wait (the
                caller's ``reply`` is not kept: retire it).
        """
        if self._idle:
            reply.deferred = True
            self._inc.deferred.add(reply)
            reschedule(self._idle.pop(), outcome.Value((payload, key, reply)))
        elif self._workers < self._max_workers:
            reply.deferred = True
            self._inc.deferred.add(reply)
            self._workers += 1
            self.spawn(self._worker, (payload, key, reply), name=f"{self.path}:worker")
        elif self._lane_full():
            if key is not None or self._fallback_spec is not None:
                return False
            self._refused()
            raise BulkheadFull(
                service=self.name, max_concurrent=self._max_workers, max_queued=self._max_queued
            )
        else:
            reply.deferred = True
            self._inc.deferred.add(reply)
            self._fresh.append((payload, key, reply))
        return True

    def _lane_full(self) -> bool:
        """Whether a call that finds every slot busy must be refused: its place in the queue
        would pass ``max_queued`` (direct-lane calls and admitted jobs wait in one queue).
        Calls whose callers gave up while queued leave it first."""
        fresh = self._fresh
        if fresh:
            live = [item for item in fresh if not item[2].done]
            if len(live) != len(fresh):
                fresh.clear()
                fresh.extend(live)
        return len(fresh) + self._bulkhead.queued >= self._max_queued

    def _refused(self) -> None:
        """Count a call refused before admission (the client's fast paths), exactly as the
        actor counts the same refusal of a :class:`Call`: a call, rejected, failed."""
        counters = self.counters
        counters.calls += 1
        counters.rejected += 1
        counters.failed += 1

    def _begin(
        self, payload: Any, key: str | None, reply: Reply[Any], now: float, run_here: bool
    ) -> _Job | None:
        """Admit one call: idempotency, then :meth:`_admit`.  With ``run_here`` (a worker
        calling), a job that got a bulkhead slot is returned for the caller to run."""
        counters = self.counters
        counters.calls += 1
        entry: InFlight | None = None
        if key is not None:
            try:
                begun = self._table.begin(key, fingerprint(payload), now)
            except (ResilienceError, ValueError, TypeError) as exc:
                counters.rejected += 1
                counters.failed += 1
                reply.fail(exc)
                return None
            if type(begun) is Completed:
                if begun.failed:
                    counters.failed += 1
                    reply.fail(_fresh(begun.value))  # type: ignore[arg-type]
                else:
                    counters.succeeded += 1
                    reply.set(begun.value)
                return None
            if type(begun) is Joined:
                job: _Job = begun.entry.waiters[0]  # type: ignore[assignment]
                self._join(job, reply)
                return None
            entry = begun.entry  # type: ignore[union-attr]
        log_ids = self._log_ids if key is None else ServiceCall(self.name, key)
        job = _Job(payload, entry, self._retry.begin(now, reply.deadline), log_ids)
        self._jobs += 1
        if entry is not None:
            entry.waiters.append(job)
        self._add_waiter(job, reply)
        return self._admit(job, now, run_here)

    def _add_waiter(self, job: _Job, reply: Reply[Any]) -> None:
        job.waiters.append(reply)
        job.live += 1
        reply.on_abandon(lambda _reply: self._waiter_gone(job))

    def _join(self, job: _Job, reply: Reply[Any]) -> None:
        """A caller joins the call in flight under its key: it is answered with that call's
        outcome, and the call now runs until the latest deadline of its callers."""
        self._add_waiter(job, reply)
        # If every earlier caller had just left, the job was being cancelled: it goes on for
        # this caller (whoever settles it sees the flag cleared).
        job.cancelled = False
        deadline = reply.deadline
        if deadline > job.deadline:
            self._extend(job, deadline)

    def _extend(self, job: _Job, deadline: float) -> None:
        """Move ``job``'s deadline later (a caller with a later deadline joined), within the
        call's ``total_timeout``; a running attempt or fallback that was cut at the old
        deadline gets the new one."""
        total = self.settings.retry.total_timeout
        if total is not None and deadline > job.retry.started + total:
            deadline = job.retry.started + total
        if deadline <= job.deadline:
            return
        job.deadline = job.retry.deadline = deadline
        guard = job.guard
        if job.running and guard is not None and guard._state == PENDING:
            timeout = job.retry.attempt_timeout(job.started)
            if timeout > job.timeout:
                guard._state = DONE
                job.timeout = timeout
                job.guard = guard = CancelAt(guard.scope)
                self._timers.add(job.started + timeout, guard)
        elif not job.running and job.scope is not None:  # the fallback runs under the scope
            job.scope.deadline = deadline

    def _waiter_gone(self, job: _Job) -> None:
        # Runs inside trio's cancellation machinery: only count, and schedule the real work.
        # A caller that gave up is a call that ended without an answer: it failed.
        self.counters.failed += 1
        job.live -= 1
        if job.live <= 0 and not job.done and self._token is not None:
            self._token.run_sync_soon(self._cancel_job, job)

    def _cancel_job(self, job: _Job) -> None:
        if job.done or job.live > 0:
            return
        job.cancelled = True
        scope = job.scope
        if scope is not None:
            # An attempt or the fallback runs it: that task settles the job (and its key stays
            # in flight until then, so the same key cannot run twice side by side).
            job.stopping = True
            scope.cancel()
            return
        if job.ticket and self._bulkhead.cancel(job.ticket):
            self._queued.pop(job.ticket, None)
        self._abandon(job)

    def _admit(self, job: _Job, now: float, run_here: bool = False) -> _Job | None:
        """Breaker, rate limit, bulkhead; then a worker runs the attempt (this one, if
        ``run_here`` and a slot is free: the job is returned)."""
        if job.cancelled:
            self._abandon(job)
            return None
        rejected = self._breaker_rejection(now)
        if rejected is not None:
            self.counters.rejected += 1
            if job.last_error is not None:
                rejected.__cause__ = job.last_error
            self._give_up(job, rejected)
            return None
        limiter = self._limiter
        if limiter is not None:
            wait = limiter.try_acquire(now)
            if wait:
                if now + wait >= job.deadline:
                    self.counters.rejected += 1
                    self._give_up(job, RateLimited(service=self.name, retry_after=wait))
                else:
                    self._delay(job, now + wait)
                return None
        try:
            if self._fresh and self._bulkhead.running >= self._max_workers and self._lane_full():
                # Direct-lane calls and admitted jobs share one queue of max_queued places.
                raise BulkheadFull(
                    service=self.name,
                    max_concurrent=self._max_workers,
                    max_queued=self._max_queued,
                )
            ticket = self._bulkhead.try_enter()
        except ResilienceError as exc:
            self.counters.rejected += 1
            self._give_up(job, exc)
            return None
        if ticket == ENTERED:
            if run_here:
                return job
            self._dispatch(job)
        else:
            job.ticket = ticket
            self._queued[ticket] = job
        return None

    def _dispatch(self, job: _Job) -> None:
        """Hand an admitted job (it holds a bulkhead slot) to an idle or a new worker."""
        job.ticket = 0
        if self._idle:
            reschedule(self._idle.pop(), outcome.Value(job))
        else:
            self._workers += 1
            self.spawn(self._worker, job, name=f"{self.path}:worker")

    def _release_slot(self) -> _Job | None:
        """Give the bulkhead slot back; return the queued job it passes to, if any."""
        ticket = self._bulkhead.leave()
        while ticket is not None:
            job = self._queued.pop(ticket, None)
            if job is not None and not job.cancelled:
                job.ticket = 0
                return job
            if job is not None:
                self._abandon(job)
            ticket = self._bulkhead.leave()
        return None

    # ------------------------------------------------------------------ workers

    def _take(self, item: _Job | _Fresh) -> _Job | None:
        """A job to run from a handed-over item: an admitted job as it is, a direct-lane call
        after admission (``None`` if admission answered it or queued it)."""
        if type(item) is _Job:
            return item
        payload, key, reply = item  # type: ignore[misc]
        if self._drained is not None:
            self._drained.set()  # a graceful stop waits for this call: let it look again
        if reply.done:  # the caller gave up while the call was queued
            return None
        return self._begin(payload, key, reply, trio.current_time(), True)

    async def _next_job(self) -> _Job:
        """The next job for this worker: queued direct-lane calls first, else wait for one."""
        fresh = self._fresh
        while True:
            while fresh:
                job = self._take(fresh.popleft())
                if job is not None:
                    return job
            task = current_task()
            idle = self._idle
            idle.append(task)

            def abort(
                raise_cancel: RaiseCancelT, task: Task = task, idle: list[Task] = idle
            ) -> Abort:
                # Leave the idle list at once: nobody may hand this task work any more.
                if task in idle:
                    idle.remove(task)
                return Abort.SUCCEEDED

            handed: _Job | _Fresh = await wait_task_rescheduled(abort)
            job = self._take(handed)
            if job is not None:
                return job

    async def _worker(self, first: _Job | _Fresh) -> None:
        job = self._take(first)
        while True:
            scope = trio.CancelScope()
            with scope:
                while True:
                    if job is None:
                        job = await self._next_job()
                    job = await self._attempt(job, scope)
                    if scope.cancel_called:
                        # The attempt's timeout (or its cancellation) fired in the batch its
                        # outcome arrived in: the next job needs a scope of its own.
                        break
            # The scope's deadline passed (attempt timeout) or the job was cancelled.
            job = self._interrupted(job)

    async def _attempt(self, job: _Job, scope: trio.CancelScope) -> _Job | None:
        """Run one attempt of ``job`` in this worker; return the next job to run, if any."""
        now = trio.current_time()
        if job.cancelled:
            self._abandon(job)
            return self._release_slot()
        try:
            permit = self._breaker.acquire(now)
        except CircuitOpen as exc:
            self.counters.rejected += 1
            if job.last_error is not None:
                exc.__cause__ = job.last_error
            self._give_up(job, exc)
            return self._release_slot()
        timeout = job.retry.attempt_timeout(now)
        job.running = True
        job.scope = scope
        job.attempts += 1
        self._running += 1
        self.counters.attempts += 1
        if job.attempts > 1:
            self.counters.retries += 1
        job.permit = permit
        job.started = now
        job.timeout = timeout
        self._attempting.add(job)
        guard = job.guard = CancelAt(scope)
        self._timers.add(now + timeout, guard)
        CORRELATION.set(job.log_ids)  # log records of the attempt carry service and key
        try:
            if self._hedging is None:
                value = await self._fn(job.payload)
            else:
                value = await self._hedged(job)
        except BaseException as exc:
            if is_cancellation(exc) or is_fatal(exc):
                raise
            self._end_attempt(job)
            self._failed(job, permit, now, exc)
            return self._release_slot()
        self._end_attempt(job)
        end = trio.current_time()
        # The attempt's report goes before the transition its outcome may cause.
        self._report(True, end - now, end, None, None, job.attempts > 1)
        self._breaker.record_success(permit, end, end - now)
        self._finish(job, value, end)
        return self._release_slot()

    def _end_attempt(self, job: _Job) -> None:
        guard = job.guard
        if guard is not None:
            guard._state = DONE
            job.guard = None
        self._attempting.discard(job)
        self._running -= 1
        job.running = False
        job.scope = None
        job.stopping = False

    def _interrupted(self, job: _Job | None) -> _Job | None:
        """The worker's scope fired during ``job``'s attempt: a timeout or a cancellation."""
        if job is None or not job.running:
            return job  # the scope fired as the attempt ended: nothing was interrupted
        now = trio.current_time()
        guard = job.guard
        timed_out = guard is not None and guard._state == ABANDONED
        if timed_out and job.retry.attempt_timeout(job.started) > job.timeout:
            # Cut at its callers' deadline just as a caller with a later one joined (in the
            # same batch, before the timeout could move): not a failure of the service.
            timed_out = False
            job.stopping = True
        stopped = job.stopping and not timed_out
        self._end_attempt(job)
        if stopped:  # cancelled because every caller had left (or cut short, above)
            self._breaker.release(job.permit, now)
            self._report(
                False,
                now - job.started,
                now,
                ErrorCategory.CANCELLATION,
                "cancelled: every caller gave up",
                job.attempts > 1,
            )
            if not job.cancelled:
                return job  # a caller joined meanwhile: run it again for that caller
            self._abandon(job)
        else:
            timeout = ProviderTimeout(service=self.name, timeout=job.timeout)
            self._failed(job, job.permit, job.started, timeout)
        return self._release_slot()

    def _failed(self, job: _Job, permit: Permit, started: float, exc: BaseException) -> None:
        now = trio.current_time()
        verdict = self._classifier.classify(exc)
        category = verdict.category
        text = _describe(exc)
        # The attempt's report goes before the transition its outcome may cause.
        self._report(False, now - started, now, category, text, job.attempts > 1)
        self._breaker.record_failure(permit, now, category, now - started)
        error = self._translate(exc, verdict, text)
        job.last_error = error
        decision = job.retry.on_failure(now, category, verdict.retry_after)
        if type(decision) is GiveUp:
            self._give_up(job, self._final_error(job, decision, error))
            return
        if job.cancelled:
            self._abandon(job)
            return
        self._delay(job, decision.at)  # type: ignore[union-attr]

    def _translate(
        self, exc: BaseException, verdict: Classified | None = None, text: str | None = None
    ) -> BaseException:
        """The typed error a caller gets for ``exc`` (a service's or a fallback's failure)."""
        if isinstance(exc, ResilienceError | ActorError):
            return exc
        if verdict is None:
            verdict = self._classifier.classify(exc)
        try:
            return verdict.to_error(self.name, exc)
        except Exception:  # the exception's __str__ fails: describe it without it
            return ProviderError(
                f"{self.name}: {verdict.message} ({text or _describe(exc)})",
                service=self.name,
                category=verdict.category,
                cause=exc,
                retry_after=verdict.retry_after,
                status_code=verdict.status_code,
            )

    def _final_error(self, job: _Job, decision: GiveUp, error: BaseException) -> BaseException:
        reason = decision.reason
        if reason is GiveUpReason.BUDGET:
            return RetryBudgetExhausted(service=self.name, last_error=error)
        if job.attempts == 1:
            return error  # nothing was retried: the classified error says it all
        return RetriesExhausted(service=self.name, attempts=job.attempts, last_error=error)

    # ------------------------------------------------------------------ hedging

    async def _hedged(self, job: _Job) -> Any:
        """Race the attempt with a second one sent if it is still running after
        ``hedging_delay``; the first success wins.  A first attempt that fails before the
        delay is this attempt's outcome: it is never re-sent here (the retry policy decides,
        as without hedging).

        The service sees every send, and so does the monitor: the send whose outcome is the
        attempt's is reported by the caller as usual; the other one is reported here (its
        failure, or ``cancellation`` when it lost the race or was cut short with the attempt).
        """
        assert self._hedging is not None
        results: list[Any] = []
        errors: list[BaseException] = []
        # Per send: its start, its outcome (None while it runs or once it was cancelled; an
        # exception; or _WON for the winning answer) and when that outcome came.
        sends: list[list[Any]] = [[trio.current_time(), None, 0.0]]
        finished = trio.Event()

        async def one(nursery: trio.Nursery, index: int) -> None:
            try:
                value = await self._fn(job.payload)
            except BaseException as exc:
                if is_cancellation(exc) or is_fatal(exc):
                    raise
                sends[index][1:] = exc, trio.current_time()
                errors.append(exc)
                if len(errors) == len(sends):
                    finished.set()
                return
            if not results:
                results.append(value)
                sends[index][1] = _WON
                finished.set()
                nursery.cancel_scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, nursery, 0)
                with trio.move_on_after(self._hedging):
                    await finished.wait()
                if not finished.is_set():
                    self.counters.hedges += 1
                    sends.append([trio.current_time(), None, 0.0])
                    nursery.start_soon(one, nursery, 1)
                    await finished.wait()
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            if results and is_cancellation(exc):
                # The answer arrived in the batch the attempt was cancelled in (its timeout,
                # or every caller left): it counts, as it does without hedging (the service
                # took effect; dropping the answer would run the call again).  The worker's
                # scope stays cancelled, so the cancellation is not lost.
                self._report_hedge(job, sends)
                return results[0]
            if is_cancellation(exc):
                self._report_hedge(job, sends)
            raise
        self._report_hedge(job, sends)
        if results:
            return results[0]
        raise errors[-1]

    def _report_hedge(self, job: _Job, sends: list[list[Any]]) -> None:
        """Report the send of a hedged attempt whose outcome is not the attempt's own.

        The attempt's own outcome is the winning answer, else (cut short) a send still
        running, else the last failure: the caller reports that one.
        """
        if len(sends) < 2:
            return
        outcomes = [result for _start, result, _end in sends]
        if _WON in outcomes:
            own = outcomes.index(_WON)
        elif None in outcomes:
            own = outcomes.index(None)
        else:
            own = len(sends) - 1  # every send failed: the last failure is the attempt's
        now = trio.current_time()
        retried = job.attempts > 1
        for index, (started, result, ended) in enumerate(sends):
            if index == own:
                continue
            if result is None:
                text = "cancelled: the other hedged send settled the attempt"
                self._report(False, now - started, now, ErrorCategory.CANCELLATION, text, retried)
            else:  # a failure (two answers cannot both win: the first cancels the other)
                category = self._classifier.classify(result).category
                text = _describe(result)
                self._report(False, ended - started, ended, category, text, retried)

    # ------------------------------------------------------------------ ending a call

    def _give_up(self, job: _Job, error: BaseException) -> None:
        fallback = self._fallback_spec
        category = getattr(error, "category", ErrorCategory.UNKNOWN)
        if fallback is None or category in _NOT_FALLBACK or job.cancelled:
            self._finish(job, error, trio.current_time(), failed=True)
            return
        self.counters.fallbacks += 1
        self._waiting += 1
        # The scope exists from now on, so a cancellation before the task first runs finds
        # it (see _cancel_job); its deadline is the job's.
        job.scope = scope = trio.CancelScope(deadline=job.deadline)
        self.spawn(self._run_fallback, job, error, fallback, scope, name=f"{self.path}:fallback")

    async def _run_fallback(
        self, job: _Job, error: BaseException, fallback: Fallback, scope: trio.CancelScope
    ) -> None:
        """Answer ``job`` from the fallback within the job's deadline (``scope``).

        When every caller leaves, ``_cancel_job`` cancels ``scope`` and the job is abandoned
        here (its key stays in flight until then); a caller that joined meanwhile has the
        fallback run again for it.  Past the deadline the callers get ``error``.
        """
        try:
            while True:
                with scope:
                    try:
                        value = await self._fallback_value(job, error, fallback)
                    except Exception as exc:
                        exc.__context__ = error  # the failure the fallback stood in for
                        failure = self._translate(exc)
                        self._finish(job, failure, trio.current_time(), failed=True)
                    else:
                        self._finish(job, value, trio.current_time())
                    return
                if not job.stopping:  # the deadline passed
                    self._finish(job, error, trio.current_time(), failed=True)
                    return
                job.stopping = False
                if job.cancelled:
                    self._abandon(job)
                    return
                job.scope = scope = trio.CancelScope(deadline=job.deadline)
        finally:
            job.scope = None
            self._waiting -= 1

    async def _fallback_value(self, job: _Job, error: BaseException, fallback: Fallback) -> Any:
        if isinstance(fallback, str):
            parent = self.path.rpartition("/")[0]
            path = fallback if "/" in fallback or not parent else f"{parent}/{fallback}"
            fallback = self.lookup(path)
        if isinstance(fallback, ActorRef):
            timeout = max(1e-3, job.deadline - trio.current_time())
            if math.isinf(timeout):
                timeout = 30.0
            # The same key: the fallback provider runs this call at most once too.
            key = None if job.entry is None else job.entry.key
            return await fallback.ask(Call(job.payload, key), timeout=timeout)
        return await fallback(job.payload, error)

    def _finish(self, job: _Job, result: Any, now: float, *, failed: bool = False) -> None:
        if job.done:
            return
        self._settle(job)
        entry = job.entry
        if entry is not None:
            job.entry = None  # the entry lists the job: break the cycle so both die at once
            if failed:
                transient = getattr(result, "transient", False)
                self._table.fail(entry, now, result, transient=bool(transient))
            else:
                self._table.complete(entry, now, result)
        waiters = job.waiters
        job.waiters = []
        counters = self.counters
        if failed:
            first = True
            for reply in waiters:
                if not reply.done:  # callers that gave up were counted when they did
                    reply.fail(result if first else _fresh(result))
                    counters.failed += 1
                    first = False
        else:
            for reply in waiters:
                if reply.set(result):
                    counters.succeeded += 1

    def _abandon(self, job: _Job) -> None:
        if job.done:
            return
        self._settle(job)
        job.cancelled = True
        entry = job.entry
        if entry is not None:
            job.entry = None
            self._table.abandon(entry)

    def _settle(self, job: _Job) -> None:
        job.done = True
        self._jobs -= 1
        if self._drained is not None:
            self._drained.set()

    # ------------------------------------------------------------------ delays

    def _delay(self, job: _Job, at: float) -> None:
        self._waiting += 1
        heapq.heappush(self._delayed, (at, next(self._delay_seq), job))
        scope = self._delay_scope
        if scope is not None and at < scope.deadline:
            scope.deadline = at

    async def _delay_loop(self) -> None:
        heap = self._delayed
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, job = heapq.heappop(heap)
                self._waiting -= 1
                self._admit(job, now)
            scope = trio.CancelScope(deadline=heap[0][0] if heap else math.inf)
            self._delay_scope = scope
            with scope:
                await trio.sleep_forever()
            self._delay_scope = None

    # ------------------------------------------------------------------ reporting

    def _on_transition(self, transition: BreakerTransition) -> None:
        if transition.new is BreakerState.OPEN:
            # Wake the housekeeper when the break ends, so the monitor sees half-open on time.
            wait = self._breaker.retry_after(transition.at)
            if wait is not None:
                self._wake_at(transition.at + wait)
        if self._monitor_spec is None:
            return
        self._reports.append(
            BreakerReport(
                service=self.name,
                old=transition.old.value,
                new=transition.new.value,
                at=transition.at,
                reason=transition.reason,
                path=self._path,
            )
        )
        self._flush()

    def _report(
        self,
        ok: bool,
        latency: float,
        at: float,
        category: ErrorCategory | None,
        error: str | None,
        retried: bool,
    ) -> None:
        if self._monitor_spec is None:
            return
        reports = self._reports
        reports.append(CallReport(self.name, ok, latency, at, category, error, retried))
        n = len(reports)
        if n == 1:
            self._flush_at = at + self._report_interval
            self._wake_at(self._flush_at)
        elif n >= _FLUSH_EVERY:
            self._flush()

    def _wake_at(self, at: float) -> None:
        """Have the housekeeper run at ``at`` at the latest."""
        scope = self._housekeeper
        if scope is not None and at < scope.deadline:
            scope.deadline = at

    def _flush(self) -> None:
        reports = self._reports
        if not reports:
            return
        monitor = self._monitor
        if monitor is None and isinstance(self._monitor_spec, str):
            try:
                monitor = self._monitor = self.lookup(self._monitor_spec)
            except LookupError:
                monitor = None
        if monitor is not None:
            try:
                monitor.tell_nowait(reports)
            except ActorError:
                pass
            else:
                self._reports = self._keep["reports"] = []
                self._flush_at = math.inf
                return
        if len(reports) > self._max_pending:
            self._trim(reports)
        if self._flush_at == math.inf:  # e.g. a transition that could not go at once
            self._flush_at = trio.current_time() + self._report_interval
            self._wake_at(self._flush_at)

    def _trim(self, reports: list[Any]) -> None:
        """Drop the oldest call reports beyond ``max_pending``, keeping every transition (in
        place and in order: the transitions among the dropped ones move up, which only removes
        call reports from between them)."""
        overflow = len(reports) - self._max_pending
        # The transitions already moved to the front by earlier trims stay there.
        start = 0
        while start < len(reports) and type(reports[start]) is BreakerReport:
            start += 1
        end = start
        dropped = 0
        moved = []
        while dropped < overflow and end < len(reports):
            report = reports[end]
            end += 1
            if type(report) is BreakerReport:
                moved.append(report)
            else:
                dropped += 1
        reports[start:end] = moved
        rest = overflow - dropped
        if rest > 0:  # nothing but transitions left: the oldest go (the newest state stays)
            del reports[:rest]
            dropped += rest
        self.counters.reports_dropped += dropped

    def _housekeeping_due(self, now: float) -> float:
        due = self._flush_at if self._reports else math.inf
        breaker = self._breaker
        if breaker.state is BreakerState.OPEN:
            wait = breaker.retry_after(now)
            if wait is not None:
                due = min(due, now + wait)
        if self._expire_at < due:
            due = self._expire_at
        return due

    async def _housekeeping(self) -> None:
        while True:
            scope = trio.CancelScope(deadline=self._housekeeping_due(trio.current_time()))
            self._housekeeper = scope
            with scope:
                await trio.sleep_forever()
            self._housekeeper = None
            now = trio.current_time()
            if self._reports and now >= self._flush_at:
                self._flush()
                if self._reports:  # the monitor could not take them: try again later
                    self._flush_at = now + self._report_interval
            self._breaker.poll(now)
            if now >= self._expire_at:
                self._table.expire(now)
                self._expire_at = now + _EXPIRE_EVERY if len(self._table) else math.inf
            elif self._expire_at == math.inf and len(self._table):
                self._expire_at = now + _EXPIRE_EVERY


class _BreakerRelay:
    """A provider's breaker and its listener, kept in the slot: it forwards each transition
    to the incarnation running now."""

    __slots__ = ("breaker", "target")

    breaker: CircuitBreaker

    def __init__(self, target: Callable[[BreakerTransition], None]) -> None:
        self.target = target

    def __call__(self, transition: BreakerTransition) -> None:
        self.target(transition)
