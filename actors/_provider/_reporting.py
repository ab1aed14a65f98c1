"""A provider's reports to the monitor, and its housekeeping timer.

Every attempt that reached the service is reported exactly once, in the order things happened
(an attempt's report before the breaker transition it caused); reports are batched and sent with
``tell_nowait``, never blocking the provider, and only the oldest call reports are dropped when
too many are pending.  One housekeeping task flushes them, moves an open breaker to half-open on
time, admits the jobs whose retry (or hedge) delay is over and expires idempotency records when
the oldest is due, and sleeps while there is nothing to do.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Final

import trio

from actors._errors import ActorError, ErrorCategory
from actors._policies._breaker import BreakerState, BreakerTransition
from actors._policies._logs import library_logger
from actors._protocol import BreakerReport, CallReport, DependencyReport
from actors._provider._base import _EXPIRE_EVERY, _FLUSH_EVERY, _ProviderBase
from actors._provider._tracing import breaker_moved

#: Breaker transitions and scheduled retries of every provider (redacted, see ``_logs``).
log: Final = library_logger("actors.provider")

# An opening (or an operator's isolation) is what an operator must see; the way back is news.
_TRANSITION_LEVELS: Final = {
    BreakerState.OPEN: logging.WARNING,
    BreakerState.ISOLATED: logging.WARNING,
    BreakerState.HALF_OPEN: logging.INFO,
    BreakerState.CLOSED: logging.INFO,
}


#: At most one refusal line a minute per provider and kind (bulkhead, retry budget).
_REFUSAL_LINE_EVERY: Final = 60.0


class _Reporting(_ProviderBase):
    """Reporting and housekeeping of :class:`~actors.ProviderActor` (see the module docstring)."""

    if TYPE_CHECKING:

        def _admit_due(self, now: float) -> None: ...

    def _on_transition(self, transition: BreakerTransition) -> None:
        if self._tel is not None:
            breaker_moved(self._tel, self.name, transition.new.value)
        level = _TRANSITION_LEVELS[transition.new]
        if log.isEnabledFor(level):
            detail = f": {transition.detail}" if transition.detail else ""
            log.log(
                level,
                "circuit breaker of %r %s -> %s (%s)%s",
                self.name,
                transition.old.value,
                transition.new.value,
                transition.reason,
                detail,
                extra={"aura_service": self.name, "aura_breaker": transition.new.value},
            )
        if transition.new is BreakerState.OPEN:
            # Wake the housekeeper when the break ends, so the monitor sees half-open on time.
            wait = self._breaker.retry_after(transition.at)
            if wait is not None:
                self._wake_at(transition.at + wait)
            link = self._link
            if link is not None and link.check is not None:
                # This instance's trip vote for the fleet breaker, with the failure behind it
                # (a slow-call trip has none: it counts as this instance's path).
                if transition.reason == "slow_call_ratio":
                    link.report_trip(None, None)
                else:
                    link.report_trip(*self._trip_hint)
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

    def _refusal_line(self, kind: str, text: str) -> None:
        """Log a refusal of ``kind`` at WARNING: the first at once, then at most one line a
        minute while they go on, each counting the refusals since the last line (the
        counters and the metrics have them all)."""
        if not log.isEnabledFor(logging.WARNING):
            return
        counters = self.counters
        lines = counters.lines
        if lines is None:
            lines = counters.lines = {}
        now = trio.current_time()
        count, due = lines.get(kind, (0, -math.inf))
        count += 1
        if now < due:
            lines[kind] = (count, due)
            return
        lines[kind] = (0, now + _REFUSAL_LINE_EVERY)
        log.warning(
            "%r: %s; %d refused since the last such line (one a minute at most)",
            self.name,
            text,
            count,
            extra={"aura_service": self.name, "aura_refusal": kind},
        )

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

    def _on_dependency(self, report: DependencyReport) -> None:
        """The fleet's store changed state: tell the monitor (its health shows it)."""
        if self._monitor_spec is None:
            return
        self._reports.append(report)
        try:
            self._flush()
        except RuntimeError:  # this incarnation is gone; the next one reports the state
            pass

    def _trim(self, reports: list[Any]) -> None:
        """Drop the oldest call reports beyond ``max_pending``, keeping every transition and
        dependency report (in place and in order: the ones among the dropped ones move up,
        which only removes call reports from between them)."""
        overflow = len(reports) - self._max_pending
        # The transitions already moved to the front by earlier trims stay there.
        start = 0
        while start < len(reports) and type(reports[start]) is not CallReport:
            start += 1
        end = start
        dropped = 0
        moved = []
        while dropped < overflow and end < len(reports):
            report = reports[end]
            end += 1
            if type(report) is not CallReport:
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
        delayed = self._delayed
        if delayed and delayed[0][0] < due:
            due = delayed[0][0]
        return due

    async def _housekeeping(self) -> None:
        while True:
            scope = trio.CancelScope(deadline=self._housekeeping_due(trio.current_time()))
            self._housekeeper = scope
            with scope:
                await trio.sleep_forever()
            self._housekeeper = None
            now = trio.current_time()
            self._admit_due(now)
            if self._reports and now >= self._flush_at:
                self._flush()
                if self._reports:  # the monitor could not take them: try again later
                    self._flush_at = now + self._report_interval
            self._breaker.poll(now)
            if now >= self._expire_at:
                self._table.expire(now)
                self._expire_at = self._next_sweep(now)
            elif self._expire_at == math.inf and len(self._table):
                self._expire_at = self._next_sweep(now)

    def _next_sweep(self, now: float) -> float:
        """When the idempotency table is next swept: when its oldest record expires, at most
        every ``_EXPIRE_EVERY`` seconds (an idle provider sleeps until then); every
        ``_EXPIRE_EVERY`` seconds while it holds only calls in flight; never when empty."""
        table = self._table
        expiry = table.next_expiry()
        if expiry == math.inf:
            return now + _EXPIRE_EVERY if len(table) else math.inf
        return max(now + _EXPIRE_EVERY, expiry)
