"""The cached fleet breaker a provider's hot path reads: no I/O, no trio, time passed in.

Theory of operation
-------------------
A :class:`FleetBreakerView` is one provider's shared breaker as this instance last heard of
it, with its times converted to this instance's clock: ``open_until = now_at_receipt +
open_ms / 1000``.  The hot path calls :meth:`FleetBreakerView.check` with ``now`` and gets a
:class:`GateVerdict`:

==========  ===============================================================================
``PASS``    the fleet breaker is closed: the local breaker decides (as it always does)
``REJECT``  open, isolated, or another instance holds the probe: fail fast with
            :meth:`~FleetBreakerView.retry_after`
``PROBE``   the break is over (or the probe lease is this instance's, or it lapsed): this
            call may become the fleet's one probe, after ``await acquire_probe(name)``
``IGNORE``  the view is stale or the store unreachable: the local breaker decides alone and
            health says ``degraded``
==========  ===============================================================================

A view goes stale ``stale_after`` seconds after its last authoritative update (a read or the
reply to a change) and at once when the store is found unreachable.  Updates are ordered by
epoch: a published change older than the view is dropped.  A read replaces the view even
when its epoch is lower (a restarted store without persistence starts again at epoch 0),
unless a change arrived while the read was in flight (the read may predate it).

:func:`trip_scope` sorts a failure category into the fleet's trip policy: rate limits and
5xx-style dependency failures are the provider's own (``"wide"``: one instance's trip opens
the fleet breaker); timeouts, network errors and unknown failures may be this instance's path
(``"local"``: a quorum of instances must agree).
"""

from __future__ import annotations

import math
from typing import Final

from actors._errors import ErrorCategory
from actors._fleet._breaker_store import BreakerSnapshot, TripScope
from actors._policies._breaker import BreakerState
from actors._protocol import GateVerdict

__all__ = ["FleetBreakerView", "GateVerdict", "trip_scope"]

_WIDE: Final = frozenset({ErrorCategory.RATE_LIMIT, ErrorCategory.DEPENDENCY})


def trip_scope(category: ErrorCategory) -> TripScope:
    """``"wide"`` for rate limits and dependency (5xx) failures, ``"local"`` for the rest."""
    return "wide" if category in _WIDE else "local"


_PASS: Final = GateVerdict.PASS
_REJECT: Final = GateVerdict.REJECT
_PROBE: Final = GateVerdict.PROBE
_IGNORE: Final = GateVerdict.IGNORE
_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN
_STATES: Final = {state.value: state for state in BreakerState}


class FleetBreakerView:
    """One provider's shared breaker as this instance knows it (see the module docstring).

    Args:
        name: the provider.
        instance: this instance's id (to recognise its own probe lease).
        stale_after: seconds after the last authoritative update at which the view is stale.

    A new view is stale until its first update.  Attributes are read-only for everyone but
    the fleet member that owns the view.
    """

    __slots__ = (
        "break_length",
        "changed_at",
        "epoch",
        "fresh_until",
        "instance",
        "live",
        "name",
        "open_until",
        "probe_owner",
        "probe_until",
        "refreshed_at",
        "stale_after",
        "state",
        "streak",
        "votes",
    )

    def __init__(self, name: str, instance: str, stale_after: float) -> None:
        self.name = name
        self.instance = instance
        self.stale_after = stale_after
        self.state = _CLOSED
        self.epoch = -1
        self.open_until = -math.inf
        self.probe_owner = ""
        self.probe_until = -math.inf
        self.break_length = 0.0
        self.streak = 0
        self.votes = 0
        self.live = 0
        self.fresh_until = -math.inf
        self.refreshed_at = -math.inf
        self.changed_at = -math.inf

    # ------------------------------------------------------------------------ hot path

    def check(self, now: float) -> GateVerdict:
        """The gate's verdict on a call at ``now`` (no I/O; a few comparisons)."""
        if now > self.fresh_until:
            return _IGNORE
        state = self.state
        if state is _CLOSED:
            return _PASS
        if state is _OPEN:
            return _REJECT if now < self.open_until else _PROBE
        if state is _HALF_OPEN and (self.probe_owner == self.instance or now >= self.probe_until):
            return _PROBE
        return _REJECT

    def retry_after(self, now: float) -> float | None:
        """Seconds a rejected caller should wait: the rest of the break; for a probe running
        elsewhere, its lease (at most ``stale_after``); ``None`` when isolated."""
        state = self.state
        if state is _OPEN:
            return max(0.0, self.open_until - now)
        if state is _HALF_OPEN:
            return max(0.0, min(self.probe_until - now, self.stale_after))
        if state is BreakerState.ISOLATED:
            return None
        return 0.0

    def is_stale(self, now: float) -> bool:
        """Whether the gate is ignored at ``now`` (stale view or unreachable store)."""
        return now > self.fresh_until

    # ------------------------------------------------------------------------ updates

    def apply(self, snapshot: BreakerSnapshot, now: float, *, authoritative: bool) -> bool:
        """Take ``snapshot`` (received at ``now``) unless it is older than the view.

        ``authoritative`` (a read, or the reply to this instance's change) also makes the view
        fresh.  Returns whether the snapshot was taken.
        """
        if snapshot.epoch < self.epoch:
            return False
        self._take(snapshot, now)
        if authoritative:
            self.touch(now)
        return True

    def replace(self, snapshot: BreakerSnapshot, now: float) -> None:
        """Take a read's ``snapshot`` whatever its epoch (the store may have restarted empty)
        and make the view fresh."""
        self._take(snapshot, now)
        self.touch(now)

    def _take(self, snapshot: BreakerSnapshot, now: float) -> None:
        state = _STATES.get(snapshot.state, _CLOSED)
        if snapshot.epoch != self.epoch or state is not self.state:
            self.changed_at = now
        self.state = state
        self.epoch = snapshot.epoch
        self.open_until = now + snapshot.open_ms / 1000.0 if state is _OPEN else -math.inf
        self.probe_owner = snapshot.probe_owner
        self.probe_until = now + snapshot.probe_ms / 1000.0 if state is _HALF_OPEN else -math.inf
        self.break_length = snapshot.break_ms / 1000.0
        self.streak = snapshot.streak
        self.votes = snapshot.votes

    def touch(self, now: float) -> None:
        """Mark the view fresh as of ``now``."""
        self.refreshed_at = now
        self.fresh_until = now + self.stale_after

    def expire(self) -> None:
        """Mark the view stale at once (the store is unreachable)."""
        self.fresh_until = -math.inf

    def __repr__(self) -> str:
        return (
            f"<FleetBreakerView {self.name!r} {self.state.value} epoch={self.epoch} "
            f"probe={self.probe_owner!r}>"
        )
