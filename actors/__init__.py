"""aura-actors: a fault-tolerant actor runtime for trio.

General layout: implementation lives in private ``_modules``; this package only re-exports the
public names, listed in ``__all__``:

* the runtime core: ``Actor``, ``ActorRef``, ``Reply``, ``Failure``, ``open_actor``;
* the error hierarchy (``AuraError`` and its subclasses, ``ErrorCategory``);
* the sans-I/O resilience policies: classifier, circuit breaker, backoff and retry, retry
  budget, bulkhead, rate limiter, idempotency table, and the configuration schema;
* the built-in actors: provider actors (``ProviderActor`` and the ``Provider`` client), the
  monitor (``MonitorActor``);
* chaos injection for tests (the public module ``actors.chaos``; ``ChaosSettings`` here);
* the fleet: ``open_fleet`` (a ``Fleet`` member sharing breakers, keyed calls and quotas
  with other instances through Redis; needs the ``fleet`` extra), its settings and status;
* the saga coordinator (definitions, messages, results and errors) and its journal (records,
  the state fold, memory, SQLite and PostgreSQL journals);
* OpenTelemetry support (the ``otel`` extra): ``TraceContext``, ``current_trace_context``,
  ``configure_telemetry``.
"""

from actors._core._actor import Actor
from actors._core._cell import ActorStatistics, CellState
from actors._core._ref import ActorRef
from actors._core._reply import Failure, Reply
from actors._core._runtime import open_actor
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
    ConfigWarning,
    ErrorCategory,
    FleetStoreUnavailable,
    IdempotencyConflict,
    JournalUnavailable,
    MailboxFull,
    OwnershipLost,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ResilienceError,
    RetriesExhausted,
    RetryBudgetExhausted,
)
from actors._fleet._breakers import FleetHealth
from actors._fleet._member import Fleet, open_fleet
from actors._metadata import fixup_module_metadata as _fixup_module_metadata
from actors._monitor._actor import (
    AcknowledgeAlert,
    AcknowledgeAlerts,
    GetAlerts,
    GetBreaker,
    GetBreakers,
    GetErrorRate,
    GetHealth,
    GetMetrics,
    GetMonitorStatistics,
    GetRecentErrors,
    GetServiceMetrics,
    MonitorActor,
    ResetService,
    SubscribeAlerts,
    UnsubscribeAlerts,
)
from actors._monitor._alerts import Alert, AlertEvent, AlertList, AlertRule, Severity, UnknownAlert
from actors._monitor._state import MonitorState
from actors._monitor._types import (
    BreakerInfo,
    BreakerList,
    DependencyHealth,
    ErrorRate,
    ErrorRecord,
    HealthReport,
    HealthStatus,
    InvalidQuery,
    InvalidReport,
    MetricsReport,
    MonitorStatistics,
    RecentErrors,
    ServiceHealth,
    ServiceMetrics,
    UnknownService,
)
from actors._policies._backoff import Backoff, BackoffKind, BackoffSettings, Jitter
from actors._policies._breaker import (
    BreakerSettings,
    BreakerState,
    BreakerStatistics,
    BreakerTransition,
    CircuitBreaker,
)
from actors._policies._budget import BudgetSettings, RetryBudget
from actors._policies._bulkhead import Bulkhead, BulkheadSettings
from actors._policies._classify import Classified, Classifier, parse_retry_after
from actors._policies._config._chaos import ChaosSettings
from actors._policies._config._fleet import FleetProviderSettings, FleetSettings
from actors._policies._config._monitoring import MonitorSettings
from actors._policies._config._schema import (
    ProviderSettings,
    ResilienceConfig,
    example_config,
    load_config,
    loads_config,
)
from actors._policies._idempotency import (
    IdempotencySettings,
    IdempotencyStore,
    IdempotencyTable,
    IdempotencyTableFull,
    fingerprint,
)
from actors._policies._ratelimit import RateLimiter, RateLimiterSettings
from actors._policies._redact import redact
from actors._policies._retry import (
    RETRY_PRESETS,
    GiveUp,
    GiveUpReason,
    RetryAt,
    RetryPolicy,
    RetrySettings,
)
from actors._protocol import (
    BreakerReport,
    Call,
    CallReport,
    DependencyReport,
    FleetBreakerStatus,
    FleetStatus,
    SagaReport,
    SupervisionReport,
)
from actors._provider._actor import ProviderActor
from actors._provider._client import Provider
from actors._provider._messages import GetStatus, Isolate, ProviderStatus, Reset
from actors._saga._coordinator import SagaCoordinator, SagaCoordinatorStatistics
from actors._saga._definition import (
    DEFAULT_COMPENSATION_RETRY,
    NO_RETRY,
    CompensationFailed,
    SagaDefinition,
    SagaFailed,
    SagaStep,
    SagaStepMessage,
    StepContext,
    StepError,
    UnknownSagaDefinition,
    step_key,
)
from actors._saga._journals._fleet import FleetStatistics, InstanceInfo, SagaOwnership
from actors._saga._journals._memory import MemoryJournal
from actors._saga._journals._postgres._journal import PostgresJournal
from actors._saga._journals._records import (
    Journal,
    JournalError,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
    SagaPhase,
    SagaSequenceError,
    SagaSummary,
)
from actors._saga._journals._sqlite._journal import SqliteJournal
from actors._saga._journals._state import SagaState, saga_state
from actors._saga._messages import (
    DiscardSaga,
    GetJournalStatus,
    GetSaga,
    GetSagaStatistics,
    JournalStatus,
    ListSagas,
    SagaAuditEntry,
    SagaInfo,
    SagaResult,
    SagaStarted,
    StartSaga,
)
from actors._telemetry import TraceContext, configure_telemetry, current_trace_context

__all__ = [
    "AcknowledgeAlert",
    "AcknowledgeAlerts",
    "Actor",
    "ActorCrashed",
    "ActorError",
    "ActorNotFound",
    "ActorRef",
    "ActorStatistics",
    "ActorStopped",
    "Alert",
    "AlertEvent",
    "AlertList",
    "AlertRule",
    "AskTimeout",
    "AuraError",
    "Backoff",
    "BackoffKind",
    "BackoffSettings",
    "BreakerInfo",
    "BreakerList",
    "BreakerReport",
    "BreakerSettings",
    "BreakerState",
    "BreakerStatistics",
    "BreakerTransition",
    "BudgetSettings",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadSettings",
    "CATEGORY_INFO",
    "Call",
    "CallReport",
    "CategoryInfo",
    "CellState",
    "ChaosSettings",
    "CircuitBreaker",
    "CircuitOpen",
    "Classified",
    "Classifier",
    "CompensationFailed",
    "ConfigError",
    "ConfigWarning",
    "DEFAULT_COMPENSATION_RETRY",
    "DependencyHealth",
    "DependencyReport",
    "DiscardSaga",
    "ErrorCategory",
    "ErrorRate",
    "ErrorRecord",
    "Failure",
    "Fleet",
    "FleetBreakerStatus",
    "FleetHealth",
    "FleetProviderSettings",
    "FleetSettings",
    "FleetStatistics",
    "FleetStatus",
    "FleetStoreUnavailable",
    "GetAlerts",
    "GetBreaker",
    "GetBreakers",
    "GetErrorRate",
    "GetHealth",
    "GetJournalStatus",
    "GetMetrics",
    "GetMonitorStatistics",
    "GetRecentErrors",
    "GetSaga",
    "GetSagaStatistics",
    "GetServiceMetrics",
    "GetStatus",
    "GiveUp",
    "GiveUpReason",
    "HealthReport",
    "HealthStatus",
    "IdempotencyConflict",
    "IdempotencySettings",
    "IdempotencyStore",
    "IdempotencyTable",
    "IdempotencyTableFull",
    "InstanceInfo",
    "InvalidQuery",
    "InvalidReport",
    "Isolate",
    "Jitter",
    "Journal",
    "JournalError",
    "JournalStatus",
    "JournalUnavailable",
    "ListSagas",
    "MailboxFull",
    "MemoryJournal",
    "MetricsReport",
    "MonitorActor",
    "MonitorSettings",
    "MonitorState",
    "MonitorStatistics",
    "NO_RETRY",
    "OwnershipLost",
    "PostgresJournal",
    "Provider",
    "ProviderActor",
    "ProviderError",
    "ProviderSettings",
    "ProviderStatus",
    "ProviderTimeout",
    "RETRY_PRESETS",
    "RateLimited",
    "RateLimiter",
    "RateLimiterSettings",
    "RecentErrors",
    "Reply",
    "Reset",
    "ResetService",
    "ResilienceConfig",
    "ResilienceError",
    "RetriesExhausted",
    "RetryAt",
    "RetryBudget",
    "RetryBudgetExhausted",
    "RetryPolicy",
    "RetrySettings",
    "SagaAuditEntry",
    "SagaCoordinator",
    "SagaCoordinatorStatistics",
    "SagaDefinition",
    "SagaEvent",
    "SagaEventKind",
    "SagaFailed",
    "SagaHeader",
    "SagaInfo",
    "SagaOwnership",
    "SagaPhase",
    "SagaReport",
    "SagaResult",
    "SagaSequenceError",
    "SagaStarted",
    "SagaState",
    "SagaStep",
    "SagaStepMessage",
    "SagaSummary",
    "ServiceHealth",
    "ServiceMetrics",
    "Severity",
    "SqliteJournal",
    "StartSaga",
    "StepContext",
    "StepError",
    "SubscribeAlerts",
    "SupervisionReport",
    "TraceContext",
    "UnknownAlert",
    "UnknownSagaDefinition",
    "UnknownService",
    "UnsubscribeAlerts",
    "configure_telemetry",
    "current_trace_context",
    "example_config",
    "fingerprint",
    "load_config",
    "loads_config",
    "open_actor",
    "open_fleet",
    "parse_retry_after",
    "redact",
    "saga_state",
    "step_key",
]

# Public names show their public module in reprs, tracebacks and pickles (see actors._metadata).
_fixup_module_metadata(__name__, globals(), __all__)
del _fixup_module_metadata
