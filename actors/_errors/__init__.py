"""The one error hierarchy of aura-actors.

Theory of operation
-------------------
Every error a caller can see derives from :class:`AuraError` and carries an
:class:`ErrorCategory` (one of ten categories), a message a person can act on, and a
suggested action.  The category decides what the resilience machinery
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
working.  This package imports no trio: the sans-I/O policies raise these errors too.

Layout: the categories and their table in ``_categories``; :class:`AuraError` and the caller's
errors in ``_base``; then one module per family: ``_runtime``, ``_resilience``, ``_fleet``
(the shared store) and ``_journal`` (the fleet journal); ``_hints`` builds the choices and
did-you-mean suggestions every refusal of a typed name carries.  The rest of the code imports the
vocabulary from this package.
"""

from actors._errors._base import AuraError, ConfigError, IdempotencyConflict
from actors._errors._base import _rebuild as _rebuild  # pickles made before the split name it here
from actors._errors._base import shown as shown
from actors._errors._categories import CATEGORY_INFO, CategoryInfo, ErrorCategory
from actors._errors._fleet import FleetStoreUnavailable
from actors._errors._hints import ConfigWarning, choice, did_you_mean, path_hint
from actors._errors._journal import JournalUnavailable, OwnershipLost
from actors._errors._resilience import (
    BulkheadFull,
    CircuitOpen,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ResilienceError,
    RetriesExhausted,
    RetryBudgetExhausted,
)
from actors._errors._runtime import (
    ActorCrashed,
    ActorError,
    ActorNotFound,
    ActorStopped,
    AskTimeout,
    MailboxFull,
)

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
    "ConfigWarning",
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
    "choice",
    "did_you_mean",
    "path_hint",
]
