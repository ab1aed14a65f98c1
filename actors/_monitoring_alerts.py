"""Alerts of the monitor: rules, records, events and the book that keeps them.

Theory of operation
-------------------
An alert is identified by its *rule* and its *subject* (a service name, or a supervision path for
:attr:`AlertRule.SUPERVISOR_GAVE_UP`).  At most one alert per (rule, subject) is active.  The
:class:`AlertBook` holds the active alerts, a bounded history of resolved ones, and for each
threshold rule a *clear streak*: how many periodic checks in a row found the value below the
resolve level.  Every change comes out as an :class:`AlertEvent` (raised or resolved) for the
monitor actor to publish; the book itself never does I/O.

Threshold rules (error rate, error ratio) have hysteresis, so a value hovering around the
threshold does not make an alert flap:

* *raise* as soon as the value reaches the threshold (at a periodic check, or on intake of an
  error report, which can only make the value worse);
* *resolve* only at periodic checks, once the value has stayed below ``threshold x
  resolve_factor`` for ``resolve_checks`` checks in a row.  A check that finds the value between
  the resolve level and the threshold restarts the streak.

State rules (breaker open, supervisor gave up) follow the state they watch: raised when the
breaker opens (or is isolated) and resolved when it closes; raised when a supervisor gives up and
resolved when that subtree starts again.  Any alert can also be resolved by an operator
(:meth:`AlertBook.acknowledge`); a threshold alert whose value is still high is raised again, as
a new alert, at the next check.

Times are the caller's monotonic ``now`` (``raised_at``, ``resolved_at``) plus a wall-clock
reading (``raised_wall``, ``resolved_wall``) for people and JSON documents.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from typing import Final, Literal

import attrs
import msgspec

from actors._errors import AuraError, ErrorCategory

__all__ = [
    "RULE_SEVERITY",
    "Alert",
    "AlertBook",
    "AlertBookStatistics",
    "AlertEvent",
    "AlertList",
    "AlertRule",
    "Severity",
    "UnknownAlert",
]


class AlertRule(enum.Enum):
    """What an alert watches.  The value is the stable name used in JSON and metrics."""

    #: Errors per minute over the window reached ``high_error_rate``.
    HIGH_ERROR_RATE = "high_error_rate"
    #: The window's error ratio reached ``critical_error_ratio`` (with at least ``min_calls``).
    CRITICAL_ERROR_RATIO = "critical_error_ratio"
    #: The service's circuit breaker is open or isolated.
    BREAKER_OPEN = "breaker_open"
    #: A supervisor exceeded its restart intensity and gave up on its subtree.
    SUPERVISOR_GAVE_UP = "supervisor_gave_up"
    #: A saga could not be compensated: it needs an operator (resolved by acknowledging it).
    SAGA_COMPENSATION_FAILED = "saga_compensation_failed"

    # Members are singletons compared by identity, so identity hashing is correct, and it runs
    # in C: Enum's own __hash__ is Python code on the monitor's hot path (alert look-ups).
    __hash__ = object.__hash__


class Severity(enum.Enum):
    """How urgent an alert is."""

    WARNING = "warning"
    CRITICAL = "critical"


#: The severity of each rule's alerts.
RULE_SEVERITY: Final[dict[AlertRule, Severity]] = {
    AlertRule.HIGH_ERROR_RATE: Severity.WARNING,
    AlertRule.CRITICAL_ERROR_RATIO: Severity.CRITICAL,
    AlertRule.BREAKER_OPEN: Severity.CRITICAL,
    AlertRule.SUPERVISOR_GAVE_UP: Severity.CRITICAL,
    AlertRule.SAGA_COMPENSATION_FAILED: Severity.CRITICAL,
}


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """One alert, active (``resolved_at is None``) or resolved.

    Attributes:
        id: unique and increasing within one monitor.
        rule: the :class:`AlertRule` that raised it.
        service: the subject: a service name, or a supervision path for ``supervisor_gave_up``.
        severity: ``warning`` or ``critical`` (see :data:`RULE_SEVERITY`).
        message: what happened, for a person (secrets redacted).
        value: the measured value when raised (threshold rules), else ``None``.
        threshold: the threshold it reached (threshold rules), else ``None``.
        raised_at / raised_wall: monotonic and wall-clock time it was raised.
        resolved_at / resolved_wall: the same for its resolution, ``None`` while active.
        resolution: why it was resolved: ``recovered``, ``breaker_closed``, ``restarted``,
            ``acknowledged``, ``reset``, ``evicted``; ``None`` while active.
    """

    id: int
    rule: AlertRule
    service: str
    severity: Severity
    message: str
    value: float | None = None
    threshold: float | None = None
    raised_at: float
    raised_wall: float
    resolved_at: float | None = None
    resolved_wall: float | None = None
    resolution: str | None = None

    @property
    def active(self) -> bool:
        """Whether the alert is still active."""
        return self.resolved_at is None


class AlertEvent(msgspec.Struct, frozen=True, tag=True):
    """An alert was raised or resolved: what the monitor publishes to its subscribers."""

    kind: Literal["raised", "resolved"]
    alert: Alert


class AlertList(msgspec.Struct, frozen=True):
    """The body of ``GET /api/resilience/alerts``.

    Attributes:
        active: active alerts, newest first.
        resolved: recently resolved alerts, newest resolution first (empty unless asked for).
    """

    active: list[Alert]
    resolved: list[Alert]


class UnknownAlert(AuraError, KeyError):
    """No active alert has this id (it never existed or is already resolved)."""

    default_category = ErrorCategory.VALIDATION

    def __init__(self, alert_id: int) -> None:
        super().__init__(
            f"No active alert with id {alert_id}.",
            suggested_action="List the alerts to find the id of an active one.",
        )
        self.alert_id = alert_id


@attrs.frozen
class AlertBookStatistics:
    """Counters of an :class:`AlertBook`.

    Attributes:
        active: alerts active now.
        history: resolved alerts kept in the history.
        raised: alerts raised since the book was made.
        resolved: alerts resolved since the book was made.
        dropped: alerts not raised because ``max_active`` alerts were already active.
    """

    active: int
    history: int
    raised: int
    resolved: int
    dropped: int


_Key = tuple[AlertRule, str]


class AlertBook:
    """Active alerts, resolved history and hysteresis streaks (see the module docstring).

    Args:
        history: how many resolved alerts to keep (oldest dropped first).
        max_active: the most alerts active at once; a rule that would raise one more is
            counted in ``statistics().dropped`` instead.
        wall_clock: returns the wall-clock time stamped on alerts (seconds since the epoch).
    """

    __slots__ = ("_active", "_dropped", "_history", "_max_active", "_next_id", "_raised",
                 "_resolved", "_streaks", "_wall_clock")  # fmt: skip

    def __init__(self, *, history: int, max_active: int, wall_clock: Callable[[], float]) -> None:
        self._active: dict[_Key, Alert] = {}
        self._streaks: dict[_Key, int] = {}
        self._history: collections.deque[Alert] = collections.deque(maxlen=history)
        self._max_active = max_active
        self._wall_clock = wall_clock
        self._next_id = 1
        self._raised = 0
        self._resolved = 0
        self._dropped = 0

    # ------------------------------------------------------------------------------ changes

    def raise_alert(
        self,
        rule: AlertRule,
        service: str,
        message: str,
        now: float,
        *,
        value: float | None = None,
        threshold: float | None = None,
    ) -> AlertEvent | None:
        """Raise an alert unless one for (rule, service) is active; return the event or None."""
        key = (rule, service)
        if key in self._active:
            return None
        if len(self._active) >= self._max_active:
            self._dropped += 1
            return None
        alert = Alert(
            id=self._next_id,
            rule=rule,
            service=service,
            severity=RULE_SEVERITY[rule],
            message=message,
            value=value,
            threshold=threshold,
            raised_at=now,
            raised_wall=self._wall_clock(),
        )
        self._next_id += 1
        self._raised += 1
        self._active[key] = alert
        self._streaks.pop(key, None)
        return AlertEvent("raised", alert)

    def resolve(
        self, rule: AlertRule, service: str, now: float, resolution: str
    ) -> AlertEvent | None:
        """Resolve the active (rule, service) alert, if any; return the event or None."""
        key = (rule, service)
        alert = self._active.pop(key, None)
        if alert is None:
            return None
        self._streaks.pop(key, None)
        done = msgspec.structs.replace(
            alert, resolved_at=now, resolved_wall=self._wall_clock(), resolution=resolution
        )
        self._history.append(done)
        self._resolved += 1
        return AlertEvent("resolved", done)

    def check(
        self,
        rule: AlertRule,
        service: str,
        value: float | None,
        threshold: float,
        *,
        resolve_factor: float,
        resolve_checks: int,
        now: float,
        message: Callable[[float], str],
    ) -> AlertEvent | None:
        """One periodic check of a threshold rule for one service (with hysteresis).

        ``value`` ``None`` means "not measurable" (too few calls) and counts as below.  Raises
        when ``value >= threshold``; an active alert is resolved once ``value < threshold x
        resolve_factor`` at ``resolve_checks`` checks in a row.  ``message(value)`` builds the
        alert's text (only called when one is raised).
        """
        key = (rule, service)
        active = key in self._active
        if value is not None and value >= threshold:
            if active:
                self._streaks[key] = 0
                return None
            return self.raise_alert(
                rule, service, message(value), now, value=value, threshold=threshold
            )
        if not active:
            return None
        if value is not None and value >= threshold * resolve_factor:
            self._streaks[key] = 0
            return None
        streak = self._streaks.get(key, 0) + 1
        if streak >= resolve_checks:
            return self.resolve(rule, service, now, "recovered")
        self._streaks[key] = streak
        return None

    def acknowledge(self, alert_id: int, now: float) -> AlertEvent:
        """Resolve the active alert with this id on an operator's word.

        Raises:
            UnknownAlert: no active alert has this id.
        """
        for key, alert in self._active.items():
            if alert.id == alert_id:
                event = self.resolve(key[0], key[1], now, "acknowledged")
                assert event is not None
                return event
        raise UnknownAlert(alert_id)

    # ------------------------------------------------------------------------------ queries

    def is_active(self, rule: AlertRule, service: str) -> bool:
        """Whether an alert for (rule, service) is active."""
        return (rule, service) in self._active

    def subjects(self, rule: AlertRule) -> list[str]:
        """The subjects (services or paths) with an active alert of ``rule``."""
        return [name for (r, name) in self._active if r is rule]

    def active_rules(self, service: str) -> list[AlertRule]:
        """The rules with an active alert for ``service``."""
        return [rule for (rule, name) in self._active if name == service]

    def active_alerts(self) -> list[Alert]:
        """Active alerts, newest first."""
        return sorted(self._active.values(), key=lambda a: a.id, reverse=True)

    def history(self) -> list[Alert]:
        """Resolved alerts kept in the history, newest resolution first."""
        return list(reversed(self._history))

    def listing(self, include_resolved: bool = False) -> AlertList:
        """The alert list (resolved ones only when ``include_resolved``)."""
        return AlertList(
            active=self.active_alerts(), resolved=self.history() if include_resolved else []
        )

    @property
    def active_count(self) -> int:
        """How many alerts are active."""
        return len(self._active)

    def statistics(self) -> AlertBookStatistics:
        """Counters (see :class:`AlertBookStatistics`)."""
        return AlertBookStatistics(
            active=len(self._active),
            history=len(self._history),
            raised=self._raised,
            resolved=self._resolved,
            dropped=self._dropped,
        )
