"""The ten error categories and the table of how the resilience machinery treats each."""

from __future__ import annotations

import enum
from typing import Final

import attrs


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
"""The default behaviour of each category.  Provider configuration can override which categories
retry; this table is what holds when nothing is configured.
"""
