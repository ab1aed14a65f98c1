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

Housekeeping (flushing, moving an open breaker to half-open on time, admitting jobs whose retry
or hedge delay is over, expiring idempotency records) runs in one task, on one timer armed only
when there is something to do: reports pending, a break to end, a delay to end, the oldest
completed record's expiry (at most one sweep a minute).  An idle provider with nothing pending
does not wake up, and a provider costs two tasks (its own and this one).

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

Fleet: given a fleet member (``fleet=``, see ``actors.fleet``), a provider shares its breaker
(a gate read from a cached view, trip votes, one half-open probe fleet-wide), its keyed calls
(claimed in the fleet's store, so a key runs once in the fleet) and an optional quota with the
other instances, without a round trip on the hot path; ``_fleet`` explains how.  ``Isolate``
and ``Reset`` then act fleet-wide.

Layout: this module is the actor's shell (construction, lifecycle, messages, status); the
job machinery (admission, workers, retries, hedging, fallback) is in ``_jobs``, reporting and
housekeeping in ``_reporting``, the fields and small records in ``_base``, the messages in
``_messages``, and the :class:`~actors.Provider` client in ``_client``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import trio
from trio.lowlevel import Task

from actors._core._correlation import ids
from actors._core._ref import ActorRef
from actors._core._reply import Failure, _Timers
from actors._errors import CircuitOpen, ErrorCategory, FleetStoreUnavailable, path_hint
from actors._policies._breaker import CircuitBreaker
from actors._policies._budget import RetryBudget
from actors._policies._bulkhead import Bulkhead
from actors._policies._classify import Classifier
from actors._policies._config._schema import ProviderSettings
from actors._policies._idempotency import IdempotencyTable
from actors._policies._ratelimit import RateLimiter
from actors._policies._redact import check_printable
from actors._policies._retry import RetryPolicy
from actors._protocol import BreakerReport, Call, CallReceiver, FleetMember
from actors._provider._base import (
    _EXPIRE_EVERY,
    _PROBING,
    Fallback,
    ProviderFunction,
    _BreakerRelay,
    _Counters,
    _Fresh,
    _Job,
)
from actors._provider._jobs import _Jobs
from actors._provider._messages import GetStatus, Isolate, ProviderMessage, ProviderStatus, Reset
from actors._provider._reporting import log
from actors._provider._tracing import breaker_state, stopped_during
from actors._telemetry import Telemetry, telemetry
from actors.chaos import wrap_provider_function

__all__ = ["ProviderActor"]


class ProviderActor(_Jobs, CallReceiver):
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
        fleet: this instance's member of a fleet (``actors.fleet.open_fleet``), or ``None``
            (default): the provider shares what ``settings.fleet`` says with the other
            instances through it (see the module docstring).  One provider actor per service
            per member.

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
        fleet: FleetMember | None = None,
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
        self._waiting = 0
        self._jobs = 0  # jobs not settled yet (a graceful stop waits for them)
        self._drained: trio.Event | None = None  # set as jobs settle while on_stop waits
        self._log_ids = ids(service=name)
        self._timers = _Timers()  # replaced by the runtime's timer service in on_start
        self._token: trio.lowlevel.TrioToken | None = None
        # The run's clock, read directly (trio.current_time looks it up on every call): the
        # Provider client's fast paths read it in the caller's task.
        self._now: Callable[[], float] = trio.current_time
        self._tel: Telemetry | None = None  # resolved when an incarnation starts
        self._observed: set[_Job] = set()  # jobs with spans not ended yet (telemetry on)
        self.counters = _Counters()
        self._fleet = fleet
        self._link = self._gate = self._quota = None
        self._claims = False
        self._trip_hint = (None, None)
        if fleet is not None:
            link = self._link = fleet.attach(name, settings.breaker, settings.fleet)
            self._gate = link.check
            self._quota = link if link.has_quota else None
            self._claims = link.shares_idempotency

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._now = trio.lowlevel.current_clock().current_time
        self._tel = tel = telemetry()
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
        if self._link is not None and kept is not None:
            # Keys the previous incarnation had claimed in the fleet's store died with it.
            self._link.abandon_all()
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
                if job.probe == _PROBING and self._link is not None:
                    self._link.release_probe()
                self._report(
                    False,
                    max(0.0, now - job.started),
                    now,
                    ErrorCategory.CANCELLATION,
                    "the provider actor stopped during the attempt",
                    job.attempts > 1,
                )
            left.clear()
        # Calls whose spans the previous incarnation had not ended (their callers were told
        # it stopped): end them, and their attempts', as cancelled.
        for job in keep.pop("observed", ()):
            if job.obs is not None:
                stopped_during(self.name, job.obs, job.attempts, max(0.0, now - job.started))
                job.obs = None
        keep["attempting"] = self._attempting
        if tel is not None:
            keep["observed"] = self._observed
            breaker_state(tel, self.name, self._breaker.poll(now).value)
        if not keep.get("paths_checked"):
            keep["paths_checked"] = True
            self._check_paths()
        # Tell the monitor the breaker's state as this incarnation starts (old == new: a state
        # report), so its copy is right whatever it missed or kept; and the fleet store's, which
        # it is then told of whenever it changes.
        if self._monitor_spec is not None:
            state = self._breaker.poll(now).value
            self._reports.append(
                BreakerReport(self.name, state, state, now, "provider started", self._path)
            )
            if self._link is not None:
                self._reports.append(self._link.watch_health(self._on_dependency))
            self._flush_at = now
            self._flush()
        if len(self._table):
            self._expire_at = now + _EXPIRE_EVERY
        self.spawn(self._housekeeping, name=f"{self.path}:housekeeping")

    def _check_paths(self) -> None:
        """Warn (once per slot) about a monitor or fallback path that names no actor of the tree.

        A monitor's reports would be held, then dropped, and a fallback would fail, in silence.
        A warning, not an error: the actor may be added to the tree later.  Every slot of the
        tree exists from its start, so a monitor declared after this provider is found.
        """
        cell = self._inc.cell
        known = [p for p, c in cell.registry.items() if not c.closed]
        if isinstance(self._monitor_spec, str) and self._monitor_spec not in known:
            log.warning(
                "provider %r: no actor at its monitor path %r%s: its reports are held (at most "
                "%d, then dropped) until a monitor runs there",
                self.name,
                self._monitor_spec,
                path_hint(self._monitor_spec, known),
                self._max_pending,
            )
        fallback = self._fallback_spec
        if isinstance(fallback, str):
            parent = self.path.rpartition("/")[0]
            path = fallback if "/" in fallback or not parent else f"{parent}/{fallback}"
            if path not in known:
                log.warning(
                    "provider %r: no actor at its fallback path %r%s: calls that fail for good "
                    "will fail with that lookup's error until one runs there",
                    self.name,
                    path,
                    path_hint(path, known),
                )

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
        if isinstance(message, Isolate | Reset):
            if isinstance(message, Isolate):
                self._breaker.isolate(now)
            else:
                self._breaker.reset(now)
            link = self._link
            if link is not None and link.check is not None:
                # Fleet-wide too (one round trip); the local breaker already obeys.
                try:
                    await (link.isolate() if isinstance(message, Isolate) else link.reset())
                except FleetStoreUnavailable as exc:
                    return Failure(exc)
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
            fleet=self._fleet_state(now),
            retry_budget_rejections=c.retry_budget_rejections,
            bulkhead_rejections=c.bulkhead_rejections,
            break_duration=self.settings.breaker.break_duration,
            open_for=self._breaker.open_for(now),
        )

    def _fleet_state(self, now: float) -> str | None:
        link = self._link
        if link is None:
            return None
        status = link.status(now)
        if status is None:
            return None
        return status.state if status.fresh else "stale"

    def rejection(self, now: float) -> CircuitOpen | None:
        """The error a call would be rejected with right now by the breaker, or ``None``.

        Read-only: the :class:`~actors.Provider` client uses it to fail fast in the caller's
        task, without a mailbox round trip, while the breaker is open.  ``None`` when a
        fallback is configured (the call must reach the actor, which uses the fallback).
        """
        if self._fallback_spec is not None:
            return None  # the actor answers from the fallback
        return self._breaker_rejection(now)
