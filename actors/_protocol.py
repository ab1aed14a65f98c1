"""The messages and reports the built-in actors share, and nothing else.

Theory of operation
-------------------
The built-in actors (provider, monitor, saga coordinator, fleet) are independent of each other:
none imports another.  What crosses between them is defined here, as plain data:

* the reports the monitor takes in: a provider's :class:`CallReport` per attempt and its
  :class:`BreakerReport` per transition, a :class:`SupervisionReport`, the coordinator's
  :class:`SagaReport` about a saga that did not complete, and a :class:`DependencyReport` about
  something shared the application needs besides its providers (a saga journal's database).
  States and kinds are lower-case strings (:data:`BREAKER_STATES`, :data:`SUPERVISION_KINDS`,
  :data:`DEPENDENCY_STATES`), not another package's enums;
* the provider's :class:`Call`, which the coordinator sends a saga step in when its target
  takes calls, and :class:`CallReceiver`, the marker by which it knows such a target without
  importing the provider.

Who talks to whom is decided where the tree is built (the user's code, or the supervisors
layer): a provider is given the monitor's ref or path, a coordinator the monitor's and its
steps' targets.  Everything here is a msgspec Struct (or a marker class) over the error
vocabulary, so this module imports neither trio nor any actor.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from actors._errors import ErrorCategory

__all__ = [
    "BREAKER_STATES",
    "DEPENDENCY_STATES",
    "SUPERVISION_KINDS",
    "BreakerReport",
    "Call",
    "CallReceiver",
    "CallReport",
    "DependencyReport",
    "Report",
    "SagaReport",
    "SupervisionReport",
]

#: The breaker state names a :class:`BreakerReport` may carry.
BREAKER_STATES: Final = frozenset({"closed", "open", "half_open", "isolated"})
#: The kinds a :class:`SupervisionReport` may carry.
SUPERVISION_KINDS: Final = frozenset({"started", "crashed", "restarted", "stopped", "gave_up"})
#: The states a :class:`DependencyReport` may carry.
DEPENDENCY_STATES: Final = frozenset({"ok", "unavailable", "failed"})


# ---------------------------------------------------------------------------- provider calls


class Call(msgspec.Struct, frozen=True, tag="call"):
    """Ask a provider actor to call its service with ``payload``.

    Attributes:
        payload: what the service function receives.
        key: an idempotency key: calls with the same key (and the same payload) run the
            service at most once within the key's TTL; others join or get the stored outcome.
    """

    payload: Any
    key: str | None = None


class CallReceiver:
    """Marker base of the actors that take :class:`Call` messages (the provider actor).

    A saga step whose ``delivery`` is ``"auto"`` is sent to such an actor in a :class:`Call`
    carrying the step's idempotency key, and to any other actor in a ``SagaStepMessage``.
    """

    __slots__ = ()


# ----------------------------------------------------------------------------------- reports


class CallReport(msgspec.Struct, frozen=True, tag=True, gc=False):
    """The outcome of one attempt of a provider call.

    Attributes:
        service: the provider's name.
        ok: whether the attempt succeeded.
        latency: seconds the attempt took (>= 0).
        at: when it ended, on the monitor's monotonic clock (trio's ``current_time()``).
        category: the failure's :class:`ErrorCategory` (or its string value); ``None`` on a
            failure counts as ``unknown``; ignored when ``ok``.
        error: the failure's message (redacted and cut on intake); ignored when ``ok``.
        retried: the attempt was a retry of an earlier failed attempt of the same call.
    """

    service: str
    ok: bool
    latency: float
    at: float
    category: ErrorCategory | None = None
    error: str | None = None
    retried: bool = False


class BreakerReport(msgspec.Struct, frozen=True, tag=True, gc=False):
    """A circuit breaker moved from ``old`` to ``new`` (names in :data:`BREAKER_STATES`).

    A report with ``old == new`` is a *state report*, not a transition: a provider actor
    sends one each time an incarnation starts, so the monitor's copy of the state is right
    again after a restart of either side.  ``path`` is where the provider actor runs, so the
    monitor can forget the breaker when that actor is stopped for good (a supervision
    ``stopped`` event for the path or a path above it).
    """

    service: str
    old: str
    new: str
    at: float
    reason: str = ""
    path: str = ""


class SupervisionReport(msgspec.Struct, frozen=True, tag=True):
    """A supervision event: ``kind`` (in :data:`SUPERVISION_KINDS`) happened at ``path``.

    For ``gave_up`` the path is the supervisor that gave up; ``detail`` is free text (redacted).
    """

    path: str
    kind: str
    detail: str = ""


class DependencyReport(msgspec.Struct, frozen=True, tag=True):
    """The state of a dependency the application shares with its other instances, besides its
    providers: the database of a saga journal, a fleet store.  Sent when the state changes
    (and again by a reporter that starts).

    States (:data:`DEPENDENCY_STATES`): ``ok``; ``unavailable``: it cannot be reached now
    and its user waits for it (the application is *degraded*: the outage is shared by every
    instance, so no instance is better taken out of rotation); ``failed``: this instance
    cannot use it until it is restarted (the application is *unhealthy*).

    Attributes:
        name: what it is, for people (``"saga journal"``); one state per name.
        status: its state (see above).
        reason: why it is not ``ok`` (redacted and cut on intake).
        where: where it is (a URL without password), or ``""``.
        at: wall-clock time of the report (``time.time()``).
    """

    name: str
    status: str
    reason: str = ""
    where: str = ""
    at: float = 0.0


#: Anything :meth:`MonitorState.record` accepts.
Report = CallReport | BreakerReport | SupervisionReport | DependencyReport


class SagaReport(msgspec.Struct, frozen=True, tag=True):
    """What the coordinator tells the monitor about a saga that did not complete.

    Sent with ``tell_nowait`` (never blocking the saga) when a saga ends ``compensated``,
    ``failed``, ``cancelled`` or ``compensation_failed`` (the last one needs an operator: the
    monitor raises an alert), and with status ``"unresumable"`` for a journaled saga the
    coordinator cannot resume (unknown or incompatible definition).  When the monitor's mailbox
    is full an ordinary report is dropped and counted; a ``compensation_failed`` or
    ``unresumable`` one is handed to a background task that waits for room.  A coordinator that
    starts sends the report of every ``compensation_failed`` saga still in its journal again.
    ``detail`` is redacted.

    Attributes:
        saga_id, definition: the saga.
        status: the saga's outcome (a phase value) or ``"unresumable"``.
        step: the step that failed, or whose compensation failed.
        detail: a one-line explanation.
        at: wall-clock time of the report.
    """

    saga_id: str
    definition: str
    status: str
    step: int | None
    detail: str
    at: float
