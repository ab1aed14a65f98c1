"""A provider's jobs: admission, the workers and their attempts, retries, hedging, fallback.

These are the methods of :class:`~actors.ProviderActor` that carry a call from ``handle`` to
its answer (see the theory of operation in ``actors._provider._actor``): the admission checks in
the mailbox's task, the long-lived workers that run the service's function, the delay queue of
retries, and the endings (answer every waiter, store the outcome, report).  What a fleet adds
(the gate's probe, trip votes, keys claimed fleet-wide) is in ``_fleet``; the hooks are here.
"""

from __future__ import annotations

import heapq
import logging
import math
from typing import Any

import outcome
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task, current_task, reschedule, wait_task_rescheduled

from actors._core._cell import is_cancellation, is_fatal
from actors._core._correlation import CORRELATION, ServiceCall
from actors._core._ref import ActorRef
from actors._core._reply import ABANDONED, DONE, PENDING, CancelAt, Reply
from actors._errors import (
    ActorError,
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
from actors._policies._breaker import Permit
from actors._policies._bulkhead import ENTERED
from actors._policies._classify import Classified
from actors._policies._idempotency import Completed, InFlight, Joined, fingerprint
from actors._policies._retry import GiveUp, GiveUpReason, RetryAt
from actors._protocol import Call, GateVerdict
from actors._provider._base import (
    _CLOSED,
    _NOT_FALLBACK,
    _WANTS_PROBE,
    _WON,
    Fallback,
    _describe,
    _Fresh,
    _fresh,
    _Job,
)
from actors._provider._fleet import _Shared
from actors._provider._reporting import log
from actors._provider._tracing import (
    attempt_ended,
    attempt_left,
    attempt_started,
    call_ended,
    call_started,
    not_permitted,
)
from actors._telemetry import TraceContext
from actors._telemetry._names import ON_FALLBACK, ON_HEDGING, ON_RETRY, ON_TIMEOUT

_GATE_REJECT = GateVerdict.REJECT
_GATE_PROBE = GateVerdict.PROBE

#: What :meth:`_Jobs.intake` returns when the call needs a worker.
NOT_ANSWERED: Any = object()


class _Jobs(_Shared):
    """The job machinery of :class:`~actors.ProviderActor` (see the module docstring)."""

    def _breaker_rejection(self, now: float) -> CircuitOpen | None:
        """The error a call would be refused with now: the local breaker's, else the fleet
        gate's (``None``: admitted, or the fleet's probe may be taken)."""
        breaker = self._breaker
        if breaker._state is not _CLOSED:
            rejected = breaker.refusal(now)
            if rejected is not None:
                return rejected
        gate = self._gate
        if gate is not None and gate(now) is _GATE_REJECT:
            assert self._link is not None
            return self._fleet_rejection(self._link, now)
        return None

    # ------------------------------------------------------------------ admission

    def _call(self, message: Call) -> None:
        self._begin(
            message.payload, message.key, self.defer(), trio.current_time(), False, message.trace
        )

    def submit(
        self, payload: Any, key: str | None, reply: Reply[Any], trace: TraceContext | None = None
    ) -> bool:
        """Queue a call for the worker pool directly (the :class:`Provider` client's lane).

        Called from the caller's task instead of sending a :class:`Call` to the mailbox: the
        item is queued like a message and a worker of this actor admits and runs it, so a call
        costs one task switch each way.  ``trace`` is the caller's span (``Call.trace``).
        ``reply`` becomes one of this incarnation's deferred
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
            reschedule(self._idle.pop(), outcome.Value((payload, key, reply, trace)))
        elif self._workers < self._max_workers:
            reply.deferred = True
            self._inc.deferred.add(reply)
            self._workers += 1
            self.spawn(self._worker, (payload, key, reply, trace), name=f"{self.path}:worker")
        elif self._lane_full():
            if key is not None or self._fallback_spec is not None:
                return False
            self._refused()
            self._bulkhead_refused()
            raise BulkheadFull(
                service=self.name, max_concurrent=self._max_workers, max_queued=self._max_queued
            )
        else:
            reply.deferred = True
            self._inc.deferred.add(reply)
            self._fresh.append((payload, key, reply, trace))
        return True

    def intake(self, payload: Any, key: str, now: float) -> Any:
        """Answer a keyed call in the caller's task when its answer does not need a worker.

        The :class:`Provider` client calls this (instead of queueing the call) while the
        breaker is not closed, a fleet gate may refuse, or every worker is busy, for a
        provider that keeps its keys in its own table.  The answer is the one the actor
        would give, counted the same way:

        * a stored outcome under ``key`` (same payload): its value is returned, its error
          raised (a fresh copy);
        * another payload under ``key`` (completed or in flight): IdempotencyConflict;
        * nothing under ``key`` and the breaker (or the gate) refuses calls: CircuitOpen,
          without computing the payload's fingerprint, since the actor would only admit the
          key to refuse it at once (no entry is made; nothing runs, so a key still runs at
          most once).

        Returns :data:`NOT_ANSWERED` otherwise (the call goes on to the workers: a call in
        flight under ``key`` is joined there).

        Raises:
            CircuitOpen, IdempotencyConflict: as above.
            TypeError: the payload of a call under a held key cannot be fingerprinted.
        """
        table = self._table
        if not table.holds(key, now):
            # With a fallback the actor answers from it; otherwise the breaker decides.
            rejected = None if self._fallback_spec is not None else self._breaker_rejection(now)
            if rejected is None:
                return NOT_ANSWERED
            self._refused()
            if self._tel is not None:
                not_permitted(self._tel, self.name)
            raise rejected
        try:
            found = table.peek(key, fingerprint(payload), now)
        except (ResilienceError, ValueError, TypeError):
            self._refused()
            raise
        if type(found) is not Completed:
            return NOT_ANSWERED  # in flight with this payload: a worker joins it
        counters = self.counters
        counters.calls += 1
        if found.failed:
            counters.failed += 1
            raise _fresh(found.value)  # type: ignore[arg-type]
        counters.succeeded += 1
        return found.value

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

    def _bulkhead_refused(self) -> None:
        """Count a call the bulkhead refused, and say so in the log (rate-limited)."""
        self.counters.bulkhead_rejections += 1
        self._refusal_line(
            "bulkhead",
            f"bulkhead full (max_concurrent={self._max_workers}, "
            f"max_queued={self._max_queued}): calls are refused with BulkheadFull",
        )

    def _begin(
        self,
        payload: Any,
        key: str | None,
        reply: Reply[Any],
        now: float,
        run_here: bool,
        trace: TraceContext | None = None,
    ) -> _Job | None:
        """Admit one call: idempotency, then :meth:`_admit`.  With ``run_here`` (a worker
        calling), a job that got a bulkhead slot is returned for the caller to run.
        ``trace`` is the caller's span, the parent of the call's (with telemetry on)."""
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
        if self._tel is not None:
            job.obs = call_started(self._tel, self.name, trace)
            self._observed.add(job)
        self._jobs += 1
        if entry is not None:
            entry.waiters.append(job)
        self._add_waiter(job, reply)
        if entry is not None and self._claims:
            self._start_claim(job)  # the fleet's tier: claim the key, then admit
            return None
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
        rejected: CircuitOpen | None = None
        if self._breaker._state is not _CLOSED:
            rejected = self._breaker.refusal(now)
        if rejected is None and self._gate is not None:
            # The local breaker admits: the fleet's gate may still refuse (see _fleet).
            verdict = self._gate(now)
            if verdict is _GATE_REJECT:
                assert self._link is not None
                rejected = self._fleet_rejection(self._link, now)
            elif verdict is _GATE_PROBE:
                job.probe = _WANTS_PROBE
        if rejected is not None:
            self.counters.rejected += 1
            if self._tel is not None:
                not_permitted(self._tel, self.name)
            if job.last_error is not None:
                rejected.__cause__ = job.last_error
            self._give_up(job, rejected)
            return None
        quota = self._quota
        fleet_token = False
        if quota is not None:
            wait: float | None = quota.take_quota(now)
            if wait is None:  # the fleet's store does not answer
                if quota.on_store_down == "reject":
                    self.counters.rejected += 1
                    self._give_up(job, quota.store_down("quota.take"))
                    return None
            elif wait:
                if now + wait >= job.deadline:
                    self.counters.rejected += 1
                    self._give_up(job, RateLimited(service=self.name, retry_after=wait))
                else:
                    self._delay(job, now + wait)
                return None
            else:
                fleet_token = True
        limiter = self._limiter
        if limiter is not None:
            wait = limiter.try_acquire(now)
            if wait:
                if fleet_token:
                    quota.give_back_quota()  # type: ignore[union-attr]
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
            if type(exc) is BulkheadFull:
                self._bulkhead_refused()
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
        payload, key, reply, trace = item  # type: ignore[misc]
        if self._drained is not None:
            self._drained.set()  # a graceful stop waits for this call: let it look again
        if reply.done:  # the caller gave up while the call was queued
            return None
        return self._begin(payload, key, reply, self._now(), True, trace)

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
        now = self._now()
        if job.cancelled:
            self._abandon(job)
            return self._release_slot()
        if job.probe == _WANTS_PROBE:
            if not await self._take_probe(job):
                return self._release_slot()
            now = trio.current_time()
        try:
            permit = self._breaker.acquire(now)
        except CircuitOpen as exc:
            if job.probe:
                self._end_probe(job, None)
            self.counters.rejected += 1
            if self._tel is not None:
                not_permitted(self._tel, self.name)
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
        if job.obs is not None:
            attempt_started(self.name, job.obs, job.attempts - 1)
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
        end = self._now()
        if job.probe:
            self._end_probe(job, True)
        # The attempt's report goes before the transition its outcome may cause.
        self._report(True, end - now, end, None, None, job.attempts > 1)
        if job.obs is not None:
            attempt_ended(self.name, job.obs, job.attempts - 1, end - now)
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
        if job.obs is not None:
            attempt_left(job.obs)

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
            if job.probe:
                self._end_probe(job, None)
            self._breaker.release(job.permit, now)
            self._report(
                False,
                now - job.started,
                now,
                ErrorCategory.CANCELLATION,
                "cancelled: every caller gave up",
                job.attempts > 1,
            )
            if job.obs is not None:
                attempt_ended(
                    self.name,
                    job.obs,
                    job.attempts - 1,
                    now - job.started,
                    ErrorCategory.CANCELLATION,
                )
            if not job.cancelled:
                return job  # a caller joined meanwhile: run it again for that caller
            self._abandon(job)
        else:
            timeout = ProviderTimeout(service=self.name, timeout=job.timeout)
            if self._tel is not None:
                self._tel.event(ON_TIMEOUT, self.name)
            self._failed(job, job.permit, job.started, timeout)
        return self._release_slot()

    def _failed(self, job: _Job, permit: Permit, started: float, exc: BaseException) -> None:
        now = trio.current_time()
        verdict = self._classifier.classify(exc)
        category = verdict.category
        text = _describe(exc)
        if self._link is not None:
            if job.probe:  # the fleet's probe failed: reopen it, unless this does not count
                counts = category in self._breaker._counted
                self._end_probe(job, False if counts else None, verdict.retry_after)
            # The vote a trip caused by this failure sends (see _on_transition).
            self._trip_hint = (category, verdict.retry_after)
        # The attempt's report goes before the transition its outcome may cause.
        self._report(False, now - started, now, category, text, job.attempts > 1)
        if job.obs is not None:
            attempt_ended(self.name, job.obs, job.attempts - 1, now - started, category)
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
        if self._tel is not None:
            self._tel.event(ON_RETRY, self.name)
        if log.isEnabledFor(logging.DEBUG):
            self._log_retry(decision, text)  # type: ignore[arg-type]
        self._delay(job, decision.at)  # type: ignore[union-attr]

    def _log_retry(self, decision: RetryAt, error: str) -> None:
        """The DEBUG line of a scheduled retry: which attempt, after how long, and why."""
        log.debug(
            "%r: retry scheduled: attempt %d of %d in %.3g s after %s",
            self.name,
            decision.attempt,
            self.settings.retry.max_attempts,
            decision.delay,
            error,
            extra={
                "aura_service": self.name,
                "aura_attempt": decision.attempt,
                "aura_wait": decision.delay,
            },
        )

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
            self.counters.retry_budget_rejections += 1
            self._refusal_line(
                "retry budget",
                "retry budget exhausted: failures are not retried (RetryBudgetExhausted)",
            )
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
                    if self._tel is not None:
                        self._tel.event(ON_HEDGING, self.name, "Information")
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
        if self._tel is not None:
            self._tel.event(ON_FALLBACK, self.name)
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
            obs = job.obs  # the fallback's call is a child of this call
            trace = None if obs is None else obs.tel.context_of(obs.span)
            return await fallback.ask(Call(job.payload, key, trace), timeout=timeout)
        return await fallback(job.payload, error)

    def _finish(self, job: _Job, result: Any, now: float, *, failed: bool = False) -> None:
        if job.done:
            return
        self._settle(job)
        if job.obs is not None:
            self._observed.discard(job)
            call_ended(
                self.name,
                job.obs,
                now - job.retry.started,
                job.attempts,
                result if failed else None,
            )
        entry = job.entry
        if entry is not None:
            job.entry = None  # the entry lists the job: break the cycle so both die at once
            transient = bool(getattr(result, "transient", False)) if failed else False
            if failed:
                self._table.fail(entry, now, result, transient=transient)
            else:
                self._table.complete(entry, now, result)
            claim = job.claim
            if claim is not None:  # the fleet's tier: store the outcome (queued, no wait)
                job.claim = None
                assert self._link is not None
                self._link.finish(claim, result, failed=failed, transient=transient)
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
        if job.obs is not None:
            self._observed.discard(job)
            now = trio.current_time()
            call_ended(
                self.name,
                job.obs,
                now - job.retry.started,
                job.attempts,
                cancelled=True,
            )
        entry = job.entry
        if entry is not None:
            job.entry = None
            self._table.abandon(entry)
        claim = job.claim
        if claim is not None:
            job.claim = None
            assert self._link is not None
            self._link.abandon(claim)

    def _settle(self, job: _Job) -> None:
        job.done = True
        self._jobs -= 1
        if self._drained is not None:
            self._drained.set()

    # ------------------------------------------------------------------ delays

    def _delay(self, job: _Job, at: float) -> None:
        self._waiting += 1
        heapq.heappush(self._delayed, (at, next(self._delay_seq), job))
        self._wake_at(at)

    def _admit_due(self, now: float) -> None:
        """Admit the delayed jobs whose time has come (the housekeeping task calls it)."""
        heap = self._delayed
        while heap and heap[0][0] <= now:
            _, _, job = heapq.heappop(heap)
            self._waiting -= 1
            self._admit(job, now)
