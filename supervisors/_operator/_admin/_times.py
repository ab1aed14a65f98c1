"""Wall-clock ISO 8601 times beside the monotonic ones in the admin API's JSON.

The monitor stamps what it records with trio's clock (``trio.current_time()``): monotonic,
immune to clock steps, and what ages and windows are computed from, but meaningless to a
person (``"raised_at": 207609.05``).  Every JSON document the admin API answers therefore
carries, beside each timestamp field ``K``, a field ``K_iso``: the same instant on the wall
clock, in UTC, as ISO 8601 with milliseconds (``"raised_at_iso": "2026-11-28T21:21:39.716Z"``),
``null`` when ``K`` is (an alert not acknowledged yet).

Where the monitor also recorded the wall clock at that instant (``wall``, ``raised_wall``, ...),
that reading is used.  Otherwise the instant is placed on the wall clock by its age: now on the
wall clock minus (now on trio's clock minus the timestamp); a step of the wall clock since then
shifts it, which is the best a monotonic reading can say.  Saga documents are stamped with the
wall clock already (the journal's times): their ``K_iso`` is that reading written out.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

__all__ = ["iso", "with_iso_times"]

#: Timestamp fields of the monitor's documents (trio clock), and their wall-clock sibling.
MONOTONIC: Final[dict[str, str | None]] = {
    "at": "wall",
    "checked_at": None,
    "since": None,
    "raised_at": "raised_wall",
    "acknowledged_at": "acknowledged_wall",
    "resolved_at": "resolved_wall",
}

#: Fields that hold a caller's data (a saga's input, metadata, step replies): left as they are.
OPAQUE: Final = frozenset({"input", "metadata", "results", "result", "reply"})

#: Timestamp fields of the saga and journal documents (the journal's wall clock).
WALL: Final = frozenset({"at", "created_at", "updated_at", "started_at"})


def iso(wall: float) -> str:
    """``wall`` (seconds since the epoch) as UTC ISO 8601 with milliseconds and a ``Z``."""
    stamp = datetime.datetime.fromtimestamp(wall, tz=datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def with_iso_times(document: Any, *, wall_clock: bool, now: float, now_wall: float) -> Any:
    """``document`` (JSON-ready builtins) with a ``K_iso`` field beside each timestamp ``K``.

    ``wall_clock``: the document's timestamps are wall-clock readings (sagas); otherwise they
    are trio times, placed on the wall clock with ``now`` (trio) and ``now_wall`` (epoch).
    Other values are returned as they are; the document is copied, never changed.
    """
    if isinstance(document, list):
        return [
            with_iso_times(item, wall_clock=wall_clock, now=now, now_wall=now_wall)
            for item in document
        ]
    if not isinstance(document, dict):
        return document
    out: dict[str, Any] = {}
    for key, value in document.items():
        if key in OPAQUE:
            out[key] = value
            continue
        out[key] = with_iso_times(value, wall_clock=wall_clock, now=now, now_wall=now_wall)
        if f"{key}_iso" in document:
            continue
        if value is None:  # not happened yet (acknowledged_at): the ISO field is null too
            if key in (WALL if wall_clock else MONOTONIC):
                out[f"{key}_iso"] = None
            continue
        if not _number(value):
            continue
        if wall_clock:
            if key in WALL:
                out[f"{key}_iso"] = _safe_iso(float(value))
            continue
        if key not in MONOTONIC:
            continue
        sibling = MONOTONIC[key]
        recorded = document.get(sibling) if sibling is not None else None
        if isinstance(recorded, int | float) and not isinstance(recorded, bool):
            wall = float(recorded)
        else:
            wall = now_wall - (now - float(value))
        out[f"{key}_iso"] = _safe_iso(wall)
    return out


def _safe_iso(wall: float) -> str | None:
    try:
        return iso(wall)
    except (OverflowError, OSError, ValueError):  # not a time the calendar can write
        return None
