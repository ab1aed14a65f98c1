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
* *resolve* only at periodic checks, once the value has been measured below ``threshold x
  resolve_factor`` at ``resolve_checks`` checks in a row.  A check that finds the value between
  the resolve level and the threshold restarts the streak.  A check that cannot measure the
  value (too few calls in the window) neither advances nor restarts it: silence is not
  recovery, so an alert raised by a burst of failures stays active while no call is made.

State rules (breaker open, supervisor gave up) follow the state they watch: raised when the
breaker opens (or is isolated) and resolved when it closes (or its provider is stopped for
good); raised when a supervisor gives up and resolved when that subtree starts again.

``saga_compensation_failed`` is an *event* rule: there is one alert per saga definition, whose
``count`` says how many of its sagas could not be compensated since it was raised (each new one
publishes an ``updated`` event), and nothing but an operator resolves it.

Acknowledging (:meth:`AlertBook.acknowledge`) works as in alerting tools: a condition alert
stays active, marked acknowledged (silenced), until its condition clears; an event alert has no
condition to wait for, so its acknowledgement resolves it.  :meth:`AlertBook.acknowledge_all`
does the same to every active alert matching a rule and a subject prefix.

Every rule has its own limit of active alerts (``max_active``), so no rule can crowd out
another; a raise refused for lack of room is counted once per (rule, subject) until room is made.
Every event carries ``seq``, increasing by one per event of the book: a subscriber that sees a
gap knows it lost events (and can list the alerts to catch up).

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
    "EVENT_RULES",
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


#: Rules whose alerts stand for an event rather than a condition: acknowledging resolves them.
EVENT_RULES: Final = frozenset({AlertRule.SAGA_COMPENSATION_FAILED})


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """One alert, active (``resolved_at is None``) or resolved.

    Attributes:
        id: unique and increasing within one monitor.
        rule: the :class:`AlertRule` that raised it.
        service: the subject: a service name, a supervision path for ``supervisor_gave_up``,
            ``saga:<definition>`` for ``saga_compensation_failed``.
        severity: ``warning`` or ``critical`` (see :data:`RULE_SEVERITY`).
        message: what happened, for a person (secrets redacted; for an alert counting several
            occurrences, the latest one).
        value: the measured value when raised (threshold rules), else ``None``.
        threshold: the threshold it reached (threshold rules), else ``None``.
        count: occurrences folded into this alert (sagas of one definition), else 1.
        raised_at / raised_wall: monotonic and wall-clock time it was raised.
        acknowledged_at / acknowledged_wall: when an operator acknowledged (silenced) it,
            ``None`` until then.
        resolved_at / resolved_wall: the same for its resolution, ``None`` while active.
        resolution: why it was resolved: ``recovered``, ``breaker_closed``, ``stopped``,
            ``restarted``, ``acknowledged``, ``reset``; ``None`` while active.
    """

    id: int
    rule: AlertRule
    service: str
    severity: Severity
    message: str
    value: float | None = None
    threshold: float | None = None
    count: int = 1
    raised_at: float
    raised_wall: float
    acknowledged_at: float | None = None
    acknowledged_wall: float | None = None
    resolved_at: float | None = None
    resolved_wall: float | None = None
    resolution: str | None = None

    @property
    def active(self) -> bool:
        """Whether the alert is still active."""
        return self.resolved_at is None

    @property
    def acknowledged(self) -> bool:
        """Whether an operator acknowledged (silenced) it."""
        return self.acknowledged_at is not None


class AlertEvent(msgspec.Struct, frozen=True, tag=True):
    """What the monitor publishes to its subscribers.

    Attributes:
        kind: ``raised``; ``acknowledged`` (silenced by an operator, still active);
            ``updated`` (one more occurrence folded into it: ``alert.count``); ``resolved``.
        alert: the alert after the change.
        seq: the event's number: one more than the previous event of the same monitor, so a
            subscriber that sees a gap knows it lost events.
    """

    kind: Literal["raised", "acknowledged", "updated", "resolved"]
    alert: Alert
    seq: int = 0


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
        dropped: alerts not raised because their rule had ``max_active`` alerts active
            (counted once per rule and subject until room is made, not once per attempt).
        events: events produced (the ``seq`` of the latest one).
    """

    active: int
    history: int
    raised: int
    resolved: int
    dropped: int
    events: int = 0


_Key = tuple[AlertRule, str]


class AlertBook:
    """Active alerts, resolved history and hysteresis streaks (see the module docstring).

    Args:
        history: how many resolved alerts to keep (oldest dropped first).
        max_active: the most alerts of one rule active at once; a raise that would pass it is
            refused and counted in ``statistics().dropped``.
        wall_clock: returns the wall-clock time stamped on alerts (seconds since the epoch).
    """

    __slots__ = ("_active", "_dropped", "_history", "_max_active", "_next_id", "_per_rule",
                 "_raised", "_refused", "_resolved", "_seq", "_streaks",
                 "_wall_clock")  # fmt: skip

    def __init__(self, *, history: int, max_active: int, wall_clock: Callable[[], float]) -> None:
        self._active: dict[_Key, Alert] = {}
        self._per_rule: dict[AlertRule, int] = dict.fromkeys(AlertRule, 0)
        self._streaks: dict[_Key, int] = {}
        self._history: collections.deque[Alert] = collections.deque(maxlen=history)
        self._max_active = max_active
        self._wall_clock = wall_clock
        self._refused: set[_Key] = set()
        self._next_id = 1
        self._seq = 0
        self._raised = 0
        self._resolved = 0
        self._dropped = 0

    def _event(
        self, kind: Literal["raised", "acknowledged", "updated", "resolved"], alert: Alert
    ) -> AlertEvent:
        self._seq += 1
        return AlertEvent(kind, alert, self._seq)

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
        """Raise an alert unless one for (rule, service) is active; return the event or None.

        ``None`` also when the rule has ``max_active`` alerts active (counted once per
        (rule, service) until one of the rule's alerts is resolved).
        """
        key = (rule, service)
        if key in self._active:
            return None
        if self._per_rule[rule] >= self._max_active:
            if key not in self._refused:
                if len(self._refused) >= 4 * self._max_active:
                    self._refused.clear()  # bounded: a very long run may count a key again
                self._refused.add(key)
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
        self._per_rule[rule] += 1
        self._streaks.pop(key, None)
        return self._event("raised", alert)

    def raise_or_count(
        self, rule: AlertRule, service: str, message: str, now: float
    ) -> AlertEvent | None:
        """Raise an alert for (rule, service), or fold one more occurrence into the active one
        (``count + 1``, the new ``message``: an ``updated`` event).  ``None`` if refused."""
        alert = self._active.get((rule, service))
        if alert is None:
            return self.raise_alert(rule, service, message, now)
        alert = msgspec.structs.replace(alert, count=alert.count + 1, message=message)
        self._active[(rule, service)] = alert
        return self._event("updated", alert)

    def resolve(
        self, rule: AlertRule, service: str, now: float, resolution: str
    ) -> AlertEvent | None:
        """Resolve the active (rule, service) alert, if any; return the event or None."""
        key = (rule, service)
        alert = self._active.pop(key, None)
        if alert is None:
            return None
        self._per_rule[rule] -= 1
        if self._refused:
            # Room was made: a later refusal of the same subject is a new drop.
            self._refused = {k for k in self._refused if k[0] is not rule}
        self._streaks.pop(key, None)
        done = msgspec.structs.replace(
            alert, resolved_at=now, resolved_wall=self._wall_clock(), resolution=resolution
        )
        self._history.append(done)
        self._resolved += 1
        return self._event("resolved", done)

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

        ``value`` ``None`` means "not measurable" (too few calls): it raises nothing and, for
        an active alert, neither advances nor restarts the clear streak.  Raises when ``value
        >= threshold``; an active alert is resolved once ``value < threshold x
        resolve_factor`` at ``resolve_checks`` measured checks in a row.  ``message(value)``
        builds the alert's text (only called when one is raised).
        """
        key = (rule, service)
        active = key in self._active
        if value is None:
            return None
        if value >= threshold:
            if active:
                self._streaks[key] = 0
                return None
            return self.raise_alert(
                rule, service, message(value), now, value=value, threshold=threshold
            )
        if not active:
            return None
        if value >= threshold * resolve_factor:
            self._streaks[key] = 0
            return None
        streak = self._streaks.get(key, 0) + 1
        if streak >= resolve_checks:
            return self.resolve(rule, service, now, "recovered")
        self._streaks[key] = streak
        return None

    def acknowledge(self, alert_id: int, now: float) -> AlertEvent:
        """Acknowledge the active alert with this id on an operator's word.

        A condition alert stays active, marked acknowledged (an ``acknowledged`` event; a
        second acknowledgement keeps the first one's time); an event alert
        (:data:`EVENT_RULES`) is resolved (resolution ``acknowledged``).

        Raises:
            UnknownAlert: no active alert has this id.
        """
        for key, alert in self._active.items():
            if alert.id == alert_id:
                return self._acknowledge(key, alert, now)
        raise UnknownAlert(alert_id)

    def acknowledge_all(
        self, now: float, *, rule: AlertRule | None = None, subject: str = ""
    ) -> list[AlertEvent]:
        """Acknowledge every active alert of ``rule`` (any rule if ``None``) whose subject is
        ``subject`` or starts with it followed by ``/`` or ``:`` (any subject if empty); return
        the events, oldest alert first.  Alerts already acknowledged are left as they are."""
        events = []
        for key, alert in sorted(self._active.items(), key=lambda item: item[1].id):
            if rule is not None and key[0] is not rule:
                continue
            if alert.acknowledged or not _under(key[1], subject):
                continue
            events.append(self._acknowledge(key, alert, now))
        return events

    def _acknowledge(self, key: _Key, alert: Alert, now: float) -> AlertEvent:
        if key[0] in EVENT_RULES:
            event = self.resolve(key[0], key[1], now, "acknowledged")
            assert event is not None
            return event
        if alert.acknowledged_at is None:
            alert = msgspec.structs.replace(
                alert, acknowledged_at=now, acknowledged_wall=self._wall_clock()
            )
            self._active[key] = alert
        return self._event("acknowledged", alert)

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
            events=self._seq,
        )


def _under(name: str, prefix: str) -> bool:
    """Whether ``name`` is ``prefix`` or below it (``prefix/...`` or ``prefix:...``)."""
    if not prefix or name == prefix:
        return True
    return name.startswith(prefix) and name[len(prefix)] in "/:"
