"""Supervision trees for aura-actors (Erlang/OTP semantics in trio form).

General layout: child specs and strategies in ``_spec``, the engine in ``_supervisor``, the
public entry points in ``_tree``, events and snapshots in ``_events``.  This package only
re-exports the public names, listed in ``__all__``.
"""

from supervisors._events import EventKind, Subscription, SupervisionEvent, TreeNode
from supervisors._spec import ChildSpec, Restart, RestartBackoff, Strategy, SupervisorSpec
from supervisors._supervisor import (
    ChildStartFailed,
    NoSuchChild,
    SupervisorError,
    SupervisorGaveUp,
    SupervisorNotRunning,
)
from supervisors._tree import Supervisor, open_supervisor

__all__ = [
    "ChildSpec",
    "ChildStartFailed",
    "EventKind",
    "NoSuchChild",
    "Restart",
    "RestartBackoff",
    "Strategy",
    "Subscription",
    "SupervisionEvent",
    "Supervisor",
    "SupervisorError",
    "SupervisorGaveUp",
    "SupervisorNotRunning",
    "SupervisorSpec",
    "TreeNode",
    "open_supervisor",
]
