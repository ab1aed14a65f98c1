"""Resilience errors: why a provider call was not attempted or did not succeed."""

from __future__ import annotations

from typing import Final

from actors._errors._base import AuraError
from actors._errors._categories import ErrorCategory

_DEPENDENCY: Final = ErrorCategory.DEPENDENCY


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
        fleet: whether it is the fleet's breaker, shared by every instance through the fleet
            store (it opened on other instances, or an operator isolated it fleet-wide),
            rather than this instance's own.

    Rejections are the hot path of an open breaker, so the message and the suggested action
    are formatted only when read.
    """

    default_category = ErrorCategory.DEPENDENCY
    # Class-level defaults: a rejection sets only what differs from them (an exception's
    # attribute writes are most of its cost).  Pickling and copies keep the defaults too.
    category = _DEPENDENCY
    isolated: bool = False
    fleet: bool = False

    def __init__(
        self,
        *,
        service: str = "",
        retry_after: float | None,
        isolated: bool = False,
        fleet: bool = False,
    ) -> None:
        # No Exception.__init__: BaseException.__new__ already set ``args`` to ().
        self.service = service
        self.retry_after = retry_after
        if isolated:
            self.isolated = True
        if fleet:
            self.fleet = True

    @property
    def message(self) -> str:  # type: ignore[override]
        who = self.service or "the service"
        whose = "The fleet's circuit breaker" if self.fleet else "The circuit breaker"
        if self.isolated:
            return f"{whose} for {who} is isolated by an operator."
        return f"{whose} for {who} is open; calls fail fast."

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
