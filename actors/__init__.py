"""aura-actors: a fault-tolerant actor runtime for trio.

General layout: implementation lives in private ``_modules``; this package only re-exports the
public names, listed in ``__all__``.
"""

from actors._errors import (
    CATEGORY_INFO,
    ActorCrashed,
    ActorError,
    ActorStopped,
    AskTimeout,
    AuraError,
    BulkheadFull,
    CategoryInfo,
    CircuitOpen,
    ConfigError,
    ErrorCategory,
    IdempotencyConflict,
    MailboxFull,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ResilienceError,
    RetriesExhausted,
    RetryBudgetExhausted,
)

__all__ = [
    "CATEGORY_INFO",
    "ActorCrashed",
    "ActorError",
    "ActorStopped",
    "AskTimeout",
    "AuraError",
    "BulkheadFull",
    "CategoryInfo",
    "CircuitOpen",
    "ConfigError",
    "ErrorCategory",
    "IdempotencyConflict",
    "MailboxFull",
    "ProviderError",
    "ProviderTimeout",
    "RateLimited",
    "ResilienceError",
    "RetriesExhausted",
    "RetryBudgetExhausted",
]
