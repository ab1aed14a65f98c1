"""Supervision trees for aura-actors (Erlang/OTP semantics in trio form), and the operator
surface: the admin HTTP API, Prometheus metrics and structured logging.

General layout: the one-line entry point (``@resilient``, ``open_providers``) in
``_providers``; child specs and strategies in ``_spec``, the errors in ``_errors``, what a
tree keeps across restarts (nodes, child records) in ``_node``, the engine in ``_supervisor``,
the public entry points and handles in ``_tree``, events, counts and snapshots in ``_events``;
the operator surface in ``_operator``: the admin API in ``_admin``, metrics in ``_metrics``,
logging in ``_logging``, the ``aura`` command in ``_cli`` and ``_live``.  This package only
re-exports the public names, listed in ``__all__``.
"""

from actors._metadata import fixup_module_metadata as _fixup_module_metadata
from supervisors._errors import (
    ChildRunning,
    ChildStartFailed,
    MaxChildrenReached,
    NoSuchChild,
    SupervisorError,
    SupervisorGaveUp,
    SupervisorNotRunning,
)
from supervisors._events import ChildCounts, EventKind, Subscription, SupervisionEvent, TreeNode
from supervisors._operator._admin._actor import (
    AdminActor,
    AdminAddress,
    GetAdminAddress,
    admin_spec,
)
from supervisors._operator._admin._requests import AdminBackend
from supervisors._operator._admin._routes import build_admin_app
from supervisors._operator._admin._settings import AdminSettings
from supervisors._operator._logging import (
    CorrelationFilter,
    JsonFormatter,
    configure_logging,
    correlation,
    correlation_ids,
)
from supervisors._operator._metrics import (
    AuraCollector,
    OperatorSnapshot,
    render_metrics,
    render_metrics_async,
    take_snapshot,
)
from supervisors._providers import Providers, Resilient, open_providers, resilient
from supervisors._spec import (
    ChildSpec,
    DynamicSupervisorSpec,
    Restart,
    RestartBackoff,
    Strategy,
    SupervisorSpec,
)
from supervisors._tree import DynamicSupervisor, Supervisor, open_supervisor, root_of

__all__ = [
    "AdminActor",
    "AdminAddress",
    "AdminBackend",
    "AdminSettings",
    "AuraCollector",
    "ChildCounts",
    "ChildRunning",
    "ChildSpec",
    "ChildStartFailed",
    "CorrelationFilter",
    "DynamicSupervisor",
    "DynamicSupervisorSpec",
    "EventKind",
    "GetAdminAddress",
    "JsonFormatter",
    "MaxChildrenReached",
    "NoSuchChild",
    "OperatorSnapshot",
    "Providers",
    "Resilient",
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
    "admin_spec",
    "build_admin_app",
    "configure_logging",
    "correlation",
    "correlation_ids",
    "open_providers",
    "open_supervisor",
    "render_metrics",
    "render_metrics_async",
    "resilient",
    "root_of",
    "take_snapshot",
]

# Public names show their public module in reprs, tracebacks and pickles (see actors._metadata).
_fixup_module_metadata(__name__, globals(), __all__)
del _fixup_module_metadata
