"""Runtime errors: what happened to the message you sent to an actor."""

from __future__ import annotations

from actors._errors._base import AuraError
from actors._errors._categories import ErrorCategory


class ActorError(AuraError):
    """Something happened to the message you sent to an actor.

    Attributes:
        actor: the path of the actor (for example ``"providers/openai"``).
    """

    actor: str

    def __init__(
        self,
        message: str,
        *,
        actor: str,
        category: ErrorCategory | None = None,
        suggested_action: str | None = None,
    ) -> None:
        super().__init__(message, category=category, suggested_action=suggested_action)
        self.actor = actor


class ActorCrashed(ActorError):
    """The actor crashed while it was handling your message.

    Only the message being handled is lost: messages queued behind it are handled by the
    restarted actor.  The original exception is :attr:`cause` (and ``__cause__``).
    """

    default_category = ErrorCategory.DEPENDENCY
    cause: BaseException | None

    def __init__(self, *, actor: str, cause: BaseException | None) -> None:
        what = "an error" if cause is None else f"{type(cause).__name__}: {cause}"
        super().__init__(
            f"Actor {actor!r} crashed while handling this message ({what}).",
            actor=actor,
            suggested_action=(
                "The supervisor restarts the actor; retry the request. If it crashes again, "
                "the cause is a bug or a bad message: look at the cause."
            ),
        )
        self.cause = cause
        self.__cause__ = cause


class ActorStopped(ActorError):
    """The actor is stopped (or stopped before it handled your message).

    The category is ``INVALID_STATE`` when the actor is stopped for good, and ``DEPENDENCY``
    (transient: a retry reaches the next incarnation) when it was stopped by a restart while it
    handled your message.
    """

    default_category = ErrorCategory.INVALID_STATE

    def __init__(
        self,
        *,
        actor: str,
        reason: str = "it is stopped",
        category: ErrorCategory | None = None,
    ) -> None:
        super().__init__(
            f"Actor {actor!r} cannot handle the message: {reason}.",
            actor=actor,
            category=category,
            suggested_action=(
                "Start the actor (or its supervisor) again, or send to a running actor."
            ),
        )
        self.reason = reason


class ActorNotFound(ActorError, LookupError):
    """No actor is running at the path that was looked up."""

    default_category = ErrorCategory.VALIDATION

    def __init__(self, *, actor: str, detail: str = "") -> None:
        super().__init__(
            f"No actor at {actor!r}{detail}.",
            actor=actor,
            suggested_action="Check the path against the supervision tree's snapshot.",
        )


class MailboxFull(ActorError):
    """The actor's bounded mailbox has no room (raised by ``tell_nowait``)."""

    default_category = ErrorCategory.RATE_LIMIT

    def __init__(self, *, actor: str, capacity: int) -> None:
        super().__init__(
            f"Actor {actor!r} has a full mailbox ({capacity} messages).",
            actor=actor,
            suggested_action=(
                "Slow down or use `await ref.tell(...)`, which waits for room; raise the "
                "mailbox capacity only if the actor keeps up on average."
            ),
        )
        self.capacity = capacity


class AskTimeout(ActorError, TimeoutError):
    """An ask got no reply within its timeout (or the caller's deadline)."""

    default_category = ErrorCategory.TIMEOUT

    def __init__(self, *, actor: str, timeout: float) -> None:
        super().__init__(
            f"No reply from actor {actor!r} within {timeout:g} s.",
            actor=actor,
            suggested_action=(
                "The actor is slow or overloaded: retry later, raise the timeout, or check "
                "its mailbox depth."
            ),
        )
        self.timeout = timeout
