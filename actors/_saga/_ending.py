"""Ending a saga: the caller's answer, the error it gets, and the report to the monitor.

A saga that did not complete is reported to the monitor with ``tell_nowait`` (never blocking the
saga); an ordinary report is dropped and counted when the monitor's mailbox is full, a report
that needs an operator (``compensation_failed``, ``unresumable``) waits for room in a
background task.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from actors._core._reply import Reply
from actors._errors import ActorError, MailboxFull
from actors._protocol import SagaReport
from actors._saga._definition import CompensationFailed, SagaFailed, StepError
from actors._saga._journals._state import SagaState
from actors._saga._messages import SagaResult, decode_error
from actors._saga._run import (
    _CANCELLED_BETWEEN_STEPS,
    _CRITICAL,
    _DONE,
    _MAX_PENDING_REPORTS,
    _P,
    _category,
    _CoordinatorBase,
    _decode,
    _log,
    _Run,
    _shown,
)
from actors._saga._tracing import saga_ended


class _Ending(_CoordinatorBase):
    """The endings of :class:`~actors.SagaCoordinator`'s sagas (see the module docstring)."""

    def _failed_error(self, run: _Run, state: SagaState) -> StepError | None:
        if state.failed_step is None:
            return None
        if run.error is None:
            run.error = decode_error(state.step_error)
        return run.error

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
        obs = run.obs
        if obs is not None:
            run.obs = None
            error_type = None
            if phase is not _DONE:
                info = self._failed_error(run, state) or _CANCELLED_BETWEEN_STEPS
                if phase is _P.COMPENSATION_FAILED:
                    info = decode_error(state.reason)
                error_type = _category(info).value
            saga_ended(obs, trio.current_time(), phase.value, error_type)

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
