"""The one error hierarchy of aura-actors.

Theory of operation
-------------------
Every error a caller can see derives from :class:`AuraError` and carries an
:class:`ErrorCategory` (one of the ten categories of the seed's error middleware), a message a
person can act on, and a suggested action.  The category decides what the resilience machinery
does with a failure: whether it is *transient* (worth retrying) and whether it *counts against
the circuit breaker*.  That table is data (:data:`CATEGORY_INFO`) so it can be read, tested and
documented without running anything.

Errors are split by whose fault they are:

* runtime errors (:class:`ActorError` and subclasses) say what happened to the message you sent:
  the actor crashed, is stopped, its mailbox is full, or your ask timed out;
* resilience errors (:class:`ResilienceError` and subclasses) say why a provider call was not
  attempted or did not succeed: an open breaker, an exhausted budget, a full bulkhead;
* caller errors (:class:`IdempotencyConflict`, :class:`ConfigError`) say the request itself is
  wrong and will fail again unchanged.
* fleet journal errors (:class:`OwnershipLost`, :class:`JournalUnavailable`) say a shared
  saga journal refused a write: another instance owns the saga, or the server is unreachable.

Errors that behave like a builtin subclass it (:class:`AskTimeout` is a :class:`TimeoutError`,
:class:`ConfigError` a :class:`ValueError`), so code that already handles the builtin keeps
working.  This module imports no trio: the sans-I/O policies raise these errors too.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Final

import attrs

__all__ = [
    "CATEGORY_INFO",
    "ActorCrashed",
    "ActorError",
    "ActorNotFound",
    "ActorStopped",
    "AskTimeout",
    "AuraError",
    "BulkheadFull",
    "CategoryInfo",
    "CircuitOpen",
    "ConfigError",
    "ErrorCategory",
    "FleetStoreUnavailable",
    "IdempotencyConflict",
    "JournalUnavailable",
    "MailboxFull",
    "OwnershipLost",
    "ProviderError",
    "ProviderTimeout",
    "RateLimited",
    "ResilienceError",
    "RetriesExhausted",
    "RetryBudgetExhausted",
]


class ErrorCategory(enum.Enum):
    """The ten categories every failure is sorted into.

    The value is the stable, lower-case name used in configuration files, metrics labels and
    JSON documents.
    """

    TIMEOUT = "timeout"
    NETWORK = "network"
    AUTHENTICATION = "authentication"
    VALIDATION = "validation"
    RATE_LIMIT = "rate_limit"
    INVALID_STATE = "invalid_state"
    CANCELLATION = "cancellation"
    CONFIGURATION = "configuration"
    DEPENDENCY = "dependency"
    UNKNOWN = "unknown"

    # Members are singletons compared by identity: identity hashing is correct and runs in C,
    # where Enum's own __hash__ is Python code on hot paths (dicts keyed by category).
    __hash__ = object.__hash__

    @property
    def info(self) -> CategoryInfo:
        """The behaviour table row for this category (see :data:`CATEGORY_INFO`)."""
        return CATEGORY_INFO[self]

    @property
    def transient(self) -> bool:
        """Whether a failure of this category is worth retrying by default."""
        return CATEGORY_INFO[self].transient

    @property
    def counts_against_breaker(self) -> bool:
        """Whether a failure of this category counts towards tripping a circuit breaker."""
        return CATEGORY_INFO[self].counts_against_breaker


@attrs.frozen
class CategoryInfo:
    """How the resilience machinery treats one :class:`ErrorCategory` by default.

    Attributes:
        transient: a retry may succeed (timeouts, network errors, rate limits, 5xx).
        counts_against_breaker: the failure says the dependency is unhealthy, so it counts
            towards opening its circuit breaker.  Caller mistakes (validation, authentication,
            configuration) never do: one bad request must not cut every caller off.
        message: what happened, for a person.
        suggested_action: what that person can do about it.
    """

    transient: bool
    counts_against_breaker: bool
    message: str
    suggested_action: str


#: The default behaviour of each category.  Provider configuration can override which
#: categories retry; this table is what holds when nothing is configured.
CATEGORY_INFO: Final[dict[ErrorCategory, CategoryInfo]] = {
    ErrorCategory.TIMEOUT: CategoryInfo(
        transient=True,
        counts_against_breaker=True,
        message="The operation took too long and was abandoned.",
        suggested_action=(
            "Retry later. If it keeps happening, check the service's latency or raise the timeout."
        ),
    ),
    ErrorCategory.NETWORK: CategoryInfo(
        transient=True,
        counts_against_breaker=True,
        message="A network error prevented reaching the service.",
        suggested_action=(
            "Check connectivity and the service address; transient errors are retried."
        ),
    ),
    ErrorCategory.AUTHENTICATION: CategoryInfo(
        transient=False,
        counts_against_breaker=False,
        message="The service refused the credentials or the permission for this operation.",
        suggested_action="Check the API key or token and its permissions; retrying will not help.",
    ),
    ErrorCategory.VALIDATION: CategoryInfo(
        transient=False,
        counts_against_breaker=False,
        message="The request was rejected as invalid.",
        suggested_action="Correct the request; sending it again unchanged will fail again.",
    ),
    ErrorCategory.RATE_LIMIT: CategoryInfo(
        transient=True,
        counts_against_breaker=True,
        message="The service is rate limiting requests or the quota is used up.",
        suggested_action=(
            "Slow down: wait for the time the service asked for (Retry-After) or raise the quota."
        ),
    ),
    ErrorCategory.INVALID_STATE: CategoryInfo(
        transient=False,
        counts_against_breaker=False,
        message="The operation is not possible in the current state.",
        suggested_action="Check the state of the resource or component and try a valid operation.",
    ),
    ErrorCategory.CANCELLATION: CategoryInfo(
        transient=False,
        counts_against_breaker=False,
        message="The operation was cancelled before it finished.",
        suggested_action=(
            "Nothing to fix if the cancellation was intended; otherwise raise the deadline."
        ),
    ),
    ErrorCategory.CONFIGURATION: CategoryInfo(
        transient=False,
        counts_against_breaker=False,
        message="The configuration is missing or invalid.",
        suggested_action="Fix the named setting and restart; retrying will not help.",
    ),
    ErrorCategory.DEPENDENCY: CategoryInfo(
        transient=True,
        counts_against_breaker=True,
        message="A service this operation depends on failed or is unavailable.",
        suggested_action="Retry later; check the dependency's health if it persists.",
    ),
    ErrorCategory.UNKNOWN: CategoryInfo(
        transient=False,
        counts_against_breaker=True,
        message="An unexpected error occurred.",
        suggested_action="Look at the error's cause and logs; report it if it is a bug.",
    ),
}


_DEPENDENCY: Final = ErrorCategory.DEPENDENCY


class AuraError(Exception):
    """Base class of every error aura-actors raises.

    Attributes:
        category: the :class:`ErrorCategory` of the failure.
        message: what happened, for a person.
        suggested_action: what to do about it.

    ``str(error)`` is the message; :meth:`describe` adds the category and the action.
    """

    #: The category of every instance of this class, unless the constructor is given one.
    default_category: ClassVar[ErrorCategory] = ErrorCategory.UNKNOWN

    category: ErrorCategory
    message: str
    suggested_action: str

    def __init__(
        self,
        message: str,
        *,
        category: ErrorCategory | None = None,
        suggested_action: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.category = self.default_category if category is None else category
        self.suggested_action = (
            self.category.info.suggested_action if suggested_action is None else suggested_action
        )

    @property
    def transient(self) -> bool:
        """Whether retrying may succeed (from the category's defaults)."""
        return self.category.transient

    def describe(self) -> str:
        """One line for a person: category, message and suggested action."""
        return f"[{self.category.value}] {self.message} Suggested action: {self.suggested_action}"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle by args; ours take keyword-only data, so rebuild from __dict__.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[AuraError], state: dict[str, Any]) -> AuraError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


# --------------------------------------------------------------------------- runtime errors


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


# ------------------------------------------------------------------------ resilience errors


class ResilienceError(AuraError):
    """A provider call was refused or failed after the resilience policies had their say.

    Attributes:
        service: the provider's name (``""`` when the policy is used on its own).
    """

    service: str

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        category: ErrorCategory | None = None,
        suggested_action: str | None = None,
    ) -> None:
        super().__init__(message, category=category, suggested_action=suggested_action)
        self.service = service


class CircuitOpen(ResilienceError):
    """The service's circuit breaker is open (or isolated): the call was not attempted.

    Attributes:
        retry_after: seconds until the breaker lets a probe through (``None`` when isolated
            by an operator: it stays open until reset).
        isolated: whether an operator holds the breaker open.

    Rejections are the hot path of an open breaker, so the message and the suggested action
    are formatted only when read.
    """

    default_category = ErrorCategory.DEPENDENCY

    def __init__(
        self, *, service: str = "", retry_after: float | None, isolated: bool = False
    ) -> None:
        Exception.__init__(self)
        self.service = service
        self.retry_after = retry_after
        self.isolated = isolated
        self.category = _DEPENDENCY

    @property
    def message(self) -> str:  # type: ignore[override]
        who = self.service or "the service"
        if self.isolated:
            return f"The circuit breaker for {who} is isolated by an operator."
        return f"The circuit breaker for {who} is open; calls fail fast."

    @property
    def suggested_action(self) -> str:  # type: ignore[override]
        if self.isolated:
            return "Wait for an operator to reset the breaker."
        wait = "shortly" if self.retry_after is None else f"in {self.retry_after:.3g} s"
        return f"Retry {wait}, when the breaker lets a probe through."


class RetryBudgetExhausted(ResilienceError):
    """A retry was not made because the service's retry budget is spent.

    The budget keeps retries a bounded fraction of first attempts, so a failing dependency is
    not hit by a retry storm.  :attr:`last_error` is the failure that would have been retried.
    """

    default_category = ErrorCategory.DEPENDENCY

    def __init__(self, *, service: str = "", last_error: BaseException | None = None) -> None:
        super().__init__(
            f"The retry budget for {service or 'the service'!s} is exhausted; not retrying.",
            service=service,
            suggested_action="The service is failing for many callers: retry later.",
        )
        self.last_error = last_error
        if last_error is not None:
            self.__cause__ = last_error


class RetriesExhausted(ResilienceError):
    """Every allowed attempt failed.

    Attributes:
        attempts: how many attempts were made.
        last_error: the last attempt's failure (also ``__cause__``); the error's category is
            the last error's category.
    """

    def __init__(
        self,
        *,
        service: str = "",
        attempts: int,
        last_error: BaseException,
        category: ErrorCategory | None = None,
    ) -> None:
        if category is None:
            category = getattr(last_error, "category", ErrorCategory.UNKNOWN)
            if not isinstance(category, ErrorCategory):
                category = ErrorCategory.UNKNOWN
        super().__init__(
            f"{service or 'The call'!s} failed after {attempts} attempt(s); last error: "
            f"{type(last_error).__name__}: {last_error}",
            service=service,
            category=category,
        )
        self.attempts = attempts
        self.last_error = last_error
        self.__cause__ = last_error


class BulkheadFull(ResilienceError):
    """The service's bulkhead has no free slot and no room in its queue."""

    default_category = ErrorCategory.RATE_LIMIT

    def __init__(self, *, service: str = "", max_concurrent: int, max_queued: int) -> None:
        super().__init__(
            f"{service or 'The service'!s} is at its concurrency limit ({max_concurrent} running, "
            f"{max_queued} queued).",
            service=service,
            suggested_action=(
                "Retry later, or raise the bulkhead's limits if the service can take it."
            ),
        )
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued


class RateLimited(ResilienceError):
    """The local rate limiter refused the call (the provider's quota would be exceeded).

    Attributes:
        retry_after: seconds until a token is available.
    """

    default_category = ErrorCategory.RATE_LIMIT

    def __init__(self, *, service: str = "", retry_after: float) -> None:
        super().__init__(
            f"{service or 'The service'!s} is rate limited locally; next call allowed in "
            f"{retry_after:.3g} s.",
            service=service,
            suggested_action="Slow down, or raise the configured rate if the quota allows it.",
        )
        self.retry_after = retry_after


class ProviderTimeout(ResilienceError, TimeoutError):
    """One attempt of a provider call exceeded its per-attempt timeout."""

    default_category = ErrorCategory.TIMEOUT

    def __init__(self, *, service: str = "", timeout: float) -> None:
        super().__init__(
            f"{service or 'The call'!s} did not answer within {timeout:g} s.",
            service=service,
        )
        self.timeout = timeout


class ProviderError(ResilienceError):
    """A provider call failed with a classified error.

    Wraps the provider's own exception (:attr:`cause`, also ``__cause__``) with the category the
    classifier gave it and, for rate limits, the provider's ``Retry-After`` in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        category: ErrorCategory,
        cause: BaseException | None = None,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, service=service, category=category)
        self.cause = cause
        self.retry_after = retry_after
        self.status_code = status_code
        if cause is not None:
            self.__cause__ = cause


# ------------------------------------------------------------------------------ fleet errors


class FleetStoreUnavailable(ResilienceError):
    """The fleet's shared store (Redis) did not answer an operation within its deadline.

    Raised by the fleet stores for every failure to reach or use the store: refused or lost
    connections, a deadline that passed, an error reply.  Transient (category ``DEPENDENCY``):
    the store's client reconnects by itself.  Provider calls never see it unless the provider's
    store-down policy is ``"reject"``; otherwise the local policies decide alone meanwhile.

    Attributes:
        operation: what was attempted (``"breaker.report"``, ``"idempotency.claim"``, ...).
        store: where the store is, as ``host:port`` (never the URL's credentials).
    """

    default_category = ErrorCategory.DEPENDENCY

    def __init__(self, *, operation: str, store: str = "", reason: str) -> None:
        where = f" at {store}" if store else ""
        super().__init__(
            f"The fleet store{where} is unavailable ({operation}): {reason}",
            suggested_action=(
                "Check that the store is running and reachable; the client reconnects by "
                "itself, and calls go on under local policies meanwhile unless configured "
                "to reject."
            ),
        )
        self.operation = operation
        self.store = store
        self.reason = reason


# ----------------------------------------------------------------------------- caller errors


class IdempotencyConflict(AuraError, ValueError):
    """The idempotency key was used before with a different request.

    Attributes:
        key: the idempotency key.
    """

    default_category = ErrorCategory.VALIDATION

    def __init__(self, *, key: str) -> None:
        super().__init__(
            f"Idempotency key {key!r} was already used for a different request.",
            suggested_action=(
                "Use a fresh key for a new request, or send exactly the same request again."
            ),
        )
        self.key = key


class ConfigError(AuraError, ValueError):
    """Configuration is invalid.

    Attributes:
        path: where the problem is, as a dotted path
            (``"providers.openai.retry.max_attempts"``), or ``""`` for the whole document.
        source: the file the configuration came from, when known.
    """

    default_category = ErrorCategory.CONFIGURATION

    def __init__(self, problem: str, *, path: str = "", source: str | None = None) -> None:
        where = f" at `{path}`" if path else ""
        origin = f" in {source}" if source else ""
        super().__init__(
            f"Invalid configuration{origin}{where}: {problem}",
            suggested_action="Fix the named setting and load the configuration again.",
        )
        self.problem = problem
        self.path = path
        self.source = source


# ---------------------------------------------------------------------- fleet journal errors


class OwnershipLost(AuraError):
    """Another instance owns the saga now: this instance must stop driving it.

    A fleet journal (``PostgresJournal``) raises it from a write when the saga's row no longer
    names this instance and its fencing epoch: a survivor claimed the saga after this
    instance's lease expired (or the saga is unknown to the journal).  Nothing was written.
    Stop the saga at once and send nothing more for it: its new owner resumes it from the
    journal, re-sending the step in flight with the same idempotency key.

    Attributes:
        saga_id: the saga.
        owner: the instance that owns it now (``None`` if unknown).
        epoch: its fencing epoch now (``None`` if unknown).
    """

    default_category = ErrorCategory.INVALID_STATE

    def __init__(self, *, saga_id: str, owner: str | None = None, epoch: int | None = None) -> None:
        now = f" (now owned by instance {owner!r}, epoch {epoch})" if owner is not None else ""
        super().__init__(
            f"Saga {saga_id!r} is no longer owned by this instance{now}; nothing was written.",
            suggested_action=(
                "Stop driving the saga and send nothing more for it: its new owner resumes it "
                "from the journal. If this happens often, leases expire too soon: check the "
                "lease duration and the instance's pauses."
            ),
        )
        self.saga_id = saga_id
        self.owner = owner
        self.epoch = epoch


class JournalUnavailable(AuraError):
    """The journal's server cannot be reached (down, restarting, or not answering).

    A dependency failure: retrying after the server is back succeeds.  A write refused at once
    (the journal already knew the server was down) was not written.  A write that was queued
    before and did not commit within the journal's ``write_timeout`` is *in doubt*
    (``in_doubt``): it stays queued and lands when the server is back, unless the journal is
    closed first; until then nothing it announces may be acted on.

    Attributes:
        journal: where the journal is (a URL without its password, or a path).
        in_doubt: whether the write may still land.
    """

    default_category = ErrorCategory.DEPENDENCY

    def __init__(self, message: str, *, journal: str = "", in_doubt: bool = False) -> None:
        super().__init__(
            message,
            suggested_action=(
                "Wait for the journal's server to be reachable again (the journal reconnects "
                "by itself), then retry; check the database server's health if it persists."
            ),
        )
        self.journal = journal
        self.in_doubt = in_doubt


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters; never raises (a value
    whose ``repr`` fails is named by its type)."""
    try:
        text = repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
