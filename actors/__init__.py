"""aura-actors: a fault-tolerant actor runtime for trio.

General layout: implementation lives in private ``_modules``; this package only re-exports the
public names, listed in ``__all__``.
"""

from actors._actor import Actor
from actors._cell import ActorStatistics, CellState
from actors._errors import (
    CATEGORY_INFO,
    ActorCrashed,
    ActorError,
    ActorNotFound,
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
from actors._ref import ActorRef
from actors._reply import Failure, Reply
from actors._runtime import open_actor

__all__ = [
    "Actor",
    "ActorCrashed",
    "ActorError",
    "ActorNotFound",
    "ActorRef",
    "ActorStatistics",
    "ActorStopped",
    "AskTimeout",
    "AuraError",
    "BulkheadFull",
    "CATEGORY_INFO",
    "CategoryInfo",
    "CellState",
    "CircuitOpen",
    "ConfigError",
    "ErrorCategory",
    "Failure",
    "IdempotencyConflict",
    "MailboxFull",
    "ProviderError",
    "ProviderTimeout",
    "RateLimited",
    "Reply",
    "ResilienceError",
    "RetriesExhausted",
    "RetryBudgetExhausted",
    "open_actor",
]
