"""The supervision errors: what a supervisor's caller (``open_supervisor``, a handle) can see.

Each one names the supervisor or child it is about by its path (``""`` is the root) and says
what to do.  :class:`ChildStartFailed` nests the way Erlang/OTP's
``{shutdown, {failed_to_start_child, Id, Reason}}`` does: a supervisor that could not start
because one of its own children could not is a child that failed to start, whose ``cause`` is
the inner failure; the message follows the chain down to the child that actually failed.
"""

from __future__ import annotations

from actors._errors import ActorNotFound, AuraError, ErrorCategory
from actors._policies._logs import describe_exception

__all__ = [
    "ChildRunning",
    "ChildStartFailed",
    "MaxChildrenReached",
    "NoSuchChild",
    "SupervisorError",
    "SupervisorGaveUp",
    "SupervisorNotRunning",
]


class SupervisorError(AuraError):
    """Base class of supervision errors."""

    default_category = ErrorCategory.INVALID_STATE


class SupervisorGaveUp(SupervisorError):
    """A supervisor exceeded its restart intensity, stopped its children and gave up.

    Attributes:
        path: the supervisor's path (``""`` for the root).
        child: the path of the child whose exit (or failed restart) exceeded the intensity.
        max_restarts, period: the intensity that was exceeded.
        cause: the child's last crash (also ``__cause__``), or ``None`` for a normal exit.
    """

    default_category = ErrorCategory.DEPENDENCY

    def __init__(
        self,
        *,
        path: str,
        child: str,
        max_restarts: int,
        period: float,
        cause: BaseException | None,
    ) -> None:
        what = "exited" if cause is None else f"crashed ({describe_exception(cause)})"
        super().__init__(
            f"Supervisor {path or '(root)'!r} gave up: {child!r} {what} and more than "
            f"{max_restarts} restart(s) happened within {period:g} s.",
            suggested_action=(
                "Look at the cause of the repeated crashes; raise max_restarts/period or add a "
                "restart backoff only if the failures are expected to pass."
            ),
        )
        self.path = path
        self.child = child
        self.max_restarts = max_restarts
        self.period = period
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause


class NoSuchChild(SupervisorError, ActorNotFound):
    """No child (or actor, or supervisor) exists at the given name or path."""

    default_category = ErrorCategory.VALIDATION

    def __init__(self, path: str, detail: str = "") -> None:
        AuraError.__init__(
            self,
            f"No such child: {path!r}{detail}.",
            suggested_action="Check the name against Supervisor.snapshot().",
        )
        self.path = path
        self.actor = path


class SupervisorNotRunning(SupervisorError):
    """The supervisor is stopped or restarting, so it cannot take the request now."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"Supervisor {path or '(root)'!r} is not running.",
            suggested_action="Retry once the supervisor is running again.",
        )
        self.path = path


class ChildStartFailed(SupervisorError):
    """A child failed to start: its factory or ``on_start`` raised, or (for a supervisor) one
    of its own children failed to start.

    Raised by ``open_supervisor`` when a child of the tree fails to start while the tree
    starts (the children already started are stopped first, in reverse order), and by
    ``start_child`` and ``restart_child`` (the child is then left down and the supervisor is
    unaffected).  Erlang/OTP: ``{error, {shutdown, {failed_to_start_child, Id, Reason}}}``.

    Attributes:
        path: the path of the child that failed to start.
        cause: why (also ``__cause__``): the exception its factory or ``on_start`` raised, or
            the :class:`ChildStartFailed` of the grandchild that made a supervisor fail.
    """

    default_category = ErrorCategory.DEPENDENCY

    def __init__(self, path: str, cause: BaseException | None) -> None:
        super().__init__(
            f"Child {path!r} failed to start{_reason(cause)}.",
            suggested_action="Fix the cause (see __cause__) and start the child again.",
        )
        self.path = path
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause

    @property
    def origin(self) -> str:
        """The path of the child that actually failed, at the end of a nested chain."""
        error: ChildStartFailed = self
        while isinstance(error.cause, ChildStartFailed):
            error = error.cause
        return error.path


def _reason(cause: BaseException | None) -> str:
    if cause is None:
        return ""
    if isinstance(cause, ChildStartFailed):
        # Follow the chain down: the message names the child that actually failed.
        return f": its child {cause.path!r} failed to start{_reason(cause.cause)}"
    return f": {describe_exception(cause)}"


class ChildRunning(SupervisorError):
    """``restart_child`` or ``delete_child`` of a child that is not terminated.

    Erlang/OTP answers ``{error, running}`` or ``{error, restarting}``: a running child must be
    terminated (``terminate_child``) first, and one its supervisor is about to restart is left
    to it.

    Attributes:
        path: the child's path.
        state: ``"running"``, or ``"restarting"`` when its supervisor is about to restart it.
    """

    def __init__(self, path: str, state: str) -> None:
        super().__init__(
            f"Child {path!r} is {state}.",
            suggested_action=(
                "Call terminate_child() first to stop it."
                if state == "running"
                else "Wait for its supervisor to restart it, or terminate_child() it."
            ),
        )
        self.path = path
        self.state = state


class MaxChildrenReached(SupervisorError):
    """A dynamic supervisor already runs ``max_children`` children (Elixir's
    ``{:error, :max_children}``): the new child was not started.

    Attributes:
        path: the dynamic supervisor's path.
        max_children: its limit.
    """

    default_category = ErrorCategory.RATE_LIMIT

    def __init__(self, path: str, max_children: int) -> None:
        super().__init__(
            f"Dynamic supervisor {path or '(root)'!r} already has its maximum of "
            f"{max_children} children.",
            suggested_action=(
                "Retry once some children have stopped, or raise max_children if the process "
                "can take more."
            ),
        )
        self.path = path
        self.max_children = max_children
