"""Saga definitions: steps, the context their message builders see, keys, envelopes and errors.

Theory of operation
-------------------
A :class:`SagaDefinition` is a named, ordered tuple of :class:`SagaStep`.  A step names a target
actor (a path in the coordinator's tree, or an :class:`~actors.ActorRef`), a function that
builds the step's message from a :class:`StepContext`, and optionally a function that builds
the message undoing it (its *compensation*).  Definitions are configuration: immutable, checked
when they are built, shared by every saga that runs them.

Idempotency keys.  The forward message of step ``name`` of saga ``saga_id`` carries the key
``f"{saga_id}:{name}"`` and its compensation ``f"{saga_id}:{name}:compensate"``
(:func:`step_key`).  The key is the same for every attempt and every re-send after a crash, so a
target that honours it applies each effect once.  How the key reaches the target depends on the
step's ``delivery``:

* ``"call"``: the message is ``Call(payload, key=key)``: what a provider actor expects (its
  idempotency table then deduplicates by key);
* ``"envelope"``: the message is ``SagaStepMessage(key, payload, saga_id, step, compensate)``;
  the target actor reads ``message.key``;
* ``"raw"``: the builder's return value is sent as it is; the builder puts ``ctx.key`` into
  its own message;
* ``"auto"`` (default): ``"call"`` when the target actor is a ``ProviderActor``, else
  ``"envelope"`` (decided from the running actor the first time the coordinator sends to it).

Builders must be deterministic functions of their context (apart from ``ctx.attempt``, which
they should not put in the message): a step re-sent after a restart is built again, and a
provider actor that still holds the key answers a different payload under the same key with
``IdempotencyConflict``.

Values.  The saga's input and every step's reply are encoded with msgpack (``msgspec``) and
journaled, so they must be msgspec-encodable.  Builders always see values *decoded from those
bytes*, live and after recovery alike, so a builder that works live also works after a crash:
declare ``input_type`` on the definition and ``reply_type`` on a step to get typed values back
(a ``msgspec.Struct``, a dataclass, ``list[str]``, ...); without them values come back as plain
dicts, lists and scalars.

Which failed step is compensated.  A step that failed may or may not have taken effect: after
a timeout, a crash of the target or a cancellation nobody knows.  The journal allows its
compensation to run too (see ``actors._saga._journals._records``); ``compensate_failed`` decides:
``"uncertain"`` (default) compensates the failed step only when its outcome is uncertain (a
timeout, the target crashed or was stopped while handling it, the saga was cancelled while it
was in flight, or its key was sent more than once: a retry, a re-send after a restart or a
provider's own retry may have landed before a final refusal); ``"always"`` and ``"never"`` do
what they say.  Completed compensatable steps are
always compensated, in reverse order.  Compensations must therefore tolerate undoing an effect
that never happened: the step's key tells the target which effect is meant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, Final, Literal, TypeAlias

import attrs
import msgspec

from actors._core._ref import ActorRef
from actors._errors import (
    ActorCrashed,
    ActorStopped,
    AuraError,
    ConfigError,
    ErrorCategory,
    RetriesExhausted,
)
from actors._policies._backoff import BackoffKind, BackoffSettings, Jitter
from actors._policies._redact import redact
from actors._policies._retry import RetrySettings
from actors._telemetry._trace import TraceContext

__all__ = [
    "DEFAULT_COMPENSATION_RETRY",
    "NO_RETRY",
    "CompensationFailed",
    "SagaDefinition",
    "SagaFailed",
    "SagaStep",
    "SagaStepMessage",
    "StepContext",
    "StepError",
    "UnknownSagaDefinition",
    "step_key",
]

Delivery: TypeAlias = Literal["auto", "call", "envelope", "raw"]
CompensateFailed: TypeAlias = Literal["uncertain", "always", "never"]
Builder: TypeAlias = Callable[["StepContext"], Any]

NO_RETRY: Final = RetrySettings(max_attempts=1)
"""Step retries by default: none (one attempt; provider actors retry on their own)."""
DEFAULT_COMPENSATION_RETRY: Final = RetrySettings(
    max_attempts=5,
    retry_on=frozenset(ErrorCategory)
    - {ErrorCategory.VALIDATION, ErrorCategory.AUTHENTICATION, ErrorCategory.CONFIGURATION},
    total_timeout=120.0,
    backoff=BackoffSettings(kind=BackoffKind.EXPONENTIAL, base_delay=0.5, jitter=Jitter.FULL),
)
"""Compensation retries by default: 5 attempts on any failure but a validation, authentication or
configuration error, exponential backoff from 0.5 s with full jitter, the whole compensation of
one step within 120 s (and within the saga's compensation deadline).
"""

_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]+")
_DELIVERIES: Final = ("auto", "call", "envelope", "raw")
_COMPENSATE_FAILED: Final = ("uncertain", "always", "never")


#: The last part of a compensation's key; no step may have this name (see :func:`step_key`).
COMPENSATE_SUFFIX: Final = "compensate"


def step_key(saga_id: str, step: str, *, compensate: bool = False) -> str:
    """The idempotency key of a step (``"{saga_id}:{step}"``) or of its compensation
    (``"{saga_id}:{step}:compensate"``).

    Keys are unambiguous: a step name holds no ``":"`` and is never ``"compensate"``, so a key
    ending in ``":compensate"`` is a compensation's and the part before the last ``":"`` of
    any other key is its saga id (saga ids may hold ``":"``).  Two different effects never
    share a key.

    Raises:
        ValueError: ``step`` holds a ``":"`` or is ``"compensate"``.
    """
    if ":" in step or step == COMPENSATE_SUFFIX:
        raise ValueError(
            f"a step name may not hold ':' nor be {COMPENSATE_SUFFIX!r} (keys would collide), "
            f"got {step!r}"
        )
    return f"{saga_id}:{step}:compensate" if compensate else f"{saga_id}:{step}"


class SagaStepMessage(msgspec.Struct, frozen=True, tag="saga.step"):
    """The envelope a step (or compensation) is sent in to an actor that is not a provider.

    Attributes:
        key: the idempotency key (``"{saga_id}:{step}"`` or ``"...:compensate"``): apply the
            effect at most once per key.
        payload: what the step's builder returned.
        saga_id: the saga.
        step: the step's name.
        compensate: ``True`` for the compensation of the step.
        trace: the step's (or compensation's) span, the parent of what the target does with
            it (``None`` when the coordinator does not trace).
    """

    key: str
    payload: Any
    saga_id: str
    step: str
    compensate: bool = False
    trace: TraceContext | None = None


class StepError(msgspec.Struct, frozen=True):
    """Why a step or a compensation failed, as journaled (and shown in audit trails).

    Attributes:
        type: the exception's class name (``"Cancelled"`` for a cancellation).
        message: the exception's message, redacted (``actors._policies._redact``: no API keys,
            tokens or URL passwords reach the journal) and bounded to about 1,000 characters.
        category: the :class:`~actors._errors.ErrorCategory` value.
        uncertain: whether the effect may have happened anyway: a send failed with a timeout,
            a crash or a cancellation, or the key was sent more than once (a retry, a re-send
            after a restart, a provider's own retry) and a later refusal cannot tell whether
            an earlier send landed.
        cancelled: the saga's caller gave up while the step was in flight.
        unsent: the message was never sent (its builder raised, its target was missing or not
            running, the deadline had passed, or the caller gave up before it left).
    """

    type: str
    message: str
    category: str
    uncertain: bool = False
    cancelled: bool = False
    unsent: bool = False

    def describe(self) -> str:
        """``"Type: message"``."""
        return f"{self.type}: {self.message}" if self.message else self.type


def describe_exception(exc: BaseException) -> str:
    """``str(exc)``, redacted and bounded; never raises (an exception's ``__str__`` may)."""
    try:
        text = str(exc)
    except Exception as error:
        text = f"<str() raised {type(error).__name__}>"
    return redact(text)


def step_error(
    exc: BaseException,
    category: ErrorCategory,
    *,
    prefix: str = "",
    uncertain: bool = False,
    unsent: bool = False,
) -> StepError:
    """The journaled :class:`StepError` of ``exc``: its message redacted and bounded, uncertain
    when ``uncertain`` is true or :func:`is_uncertain` says so."""
    return StepError(
        type=type(exc).__name__,
        message=prefix + describe_exception(exc),
        category=category.value,
        uncertain=uncertain or (not unsent and is_uncertain(exc)),
        unsent=unsent,
    )


def is_uncertain(exc: BaseException) -> bool:
    """Whether a failed send may still have taken effect.

    True when ``exc``, or an error it wraps (``last_error``, ``__cause__``), is a timeout, a
    crash, a cancellation or a stop while handling the message; and for a provider's
    ``RetriesExhausted`` after more than one attempt (the same key was sent again after a
    failure, so the final refusal says nothing about the earlier sends).  An open breaker
    whose ``__cause__`` is the timeout of the attempt before it is uncertain too.
    """
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 16:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, TimeoutError | ActorCrashed):
            return True
        category = getattr(error, "category", None)
        if category is ErrorCategory.TIMEOUT or category is ErrorCategory.CANCELLATION:
            return True
        if isinstance(error, ActorStopped) and error.category is ErrorCategory.DEPENDENCY:
            return True  # stopped while handling the message
        if isinstance(error, RetriesExhausted) and error.attempts > 1:
            return True
        for inner in (getattr(error, "last_error", None), error.__cause__):
            if isinstance(inner, BaseException):
                pending.append(inner)
    return False


def _seconds(value: float | timedelta) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected seconds (a number or timedelta), got {value!r}")
    return float(value)


def _check_name(what: str, name: object) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{what} name must be a non-empty string of letters, digits, '_', '.' or '-', "
            f"got {name!r}",
            path="name",
        )
    if what == "step" and name == COMPENSATE_SUFFIX:
        raise ConfigError(
            f"a step may not be named {COMPENSATE_SUFFIX!r}: its key would be the key of "
            "another step's compensation (see step_key)",
            path="name",
        )


@attrs.frozen
class SagaStep:
    """One step of a :class:`SagaDefinition`.

    Attributes:
        name: unique in its definition; letters, digits, ``_``, ``.``, ``-``, and not
            ``"compensate"`` (it is part of the idempotency key ``"{saga_id}:{name}"``).
        target: the actor that performs the step: its path in the coordinator's tree (looked
            up with ``Actor.lookup``) or its ``ActorRef``.
        action: ``action(ctx) -> payload``: builds the step's message from the
            :class:`StepContext` (saga input, earlier steps' replies, the key).  An exception
            from it fails the step (nothing was sent).
        compensate: ``compensate(ctx) -> payload``: builds the message that undoes the step,
            sent to the same target; ``None`` for a step that cannot be compensated (it is
            skipped when the saga compensates).
        timeout: seconds one attempt of the step waits for its reply (default 30).
        retry: retries of the step (default :data:`NO_RETRY`: one attempt); ``max_attempts``,
            ``retry_on``, ``total_timeout`` and ``backoff`` apply (``attempt_timeout`` does
            not: ``timeout`` is the per-attempt limit).  Every attempt carries the same key.
        compensation_timeout: seconds one attempt of the compensation waits (default 30).
        compensation_retry: retries of the compensation (default
            :data:`DEFAULT_COMPENSATION_RETRY`: 5 attempts, exponential backoff); a failing
            compensation is retried with backoff until this gives up, then the saga ends
            ``compensation_failed``.
        delivery: how the key reaches the target (see the module docstring); default
            ``"auto"``.
        reply_type: the type replies are decoded to for later steps (default ``Any``).
        compensate_failed: whether the step's own compensation runs when the step itself
            failed: ``"uncertain"`` (default), ``"always"`` or ``"never"``.

    Raises:
        ConfigError: a bad name, target, builder, timeout or option (named in the message).

    Example::

        SagaStep("charge", "providers/payments",
                 action=lambda ctx: {"order": ctx.input["order"], "amount": 12},
                 compensate=lambda ctx: {"refund": ctx.reply["charge_id"]},
                 timeout=20)
    """

    name: str
    target: str | ActorRef[Any, Any]
    action: Builder
    compensate: Builder | None = None
    timeout: float = attrs.field(default=30.0, converter=_seconds)
    retry: RetrySettings = NO_RETRY
    compensation_timeout: float = attrs.field(default=30.0, converter=_seconds)
    compensation_retry: RetrySettings = DEFAULT_COMPENSATION_RETRY
    delivery: Delivery = "auto"
    reply_type: Any = Any
    compensate_failed: CompensateFailed = "uncertain"

    def __attrs_post_init__(self) -> None:
        _check_name("step", self.name)
        if isinstance(self.target, str):
            if not self.target or self.target.startswith("/") or self.target.endswith("/"):
                raise ConfigError(
                    f"step {self.name!r}: target must be an actor path like 'providers/x', "
                    f"got {self.target!r}",
                    path="target",
                )
        elif not isinstance(self.target, ActorRef):
            raise ConfigError(
                f"step {self.name!r}: target must be an actor path or an ActorRef, "
                f"got {self.target!r}",
                path="target",
            )
        if not callable(self.action):
            raise ConfigError(f"step {self.name!r}: action must be callable", path="action")
        if self.compensate is not None and not callable(self.compensate):
            raise ConfigError(
                f"step {self.name!r}: compensate must be callable or None", path="compensate"
            )
        for field in ("timeout", "compensation_timeout"):
            value = getattr(self, field)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(
                    f"step {self.name!r}: {field} must be a finite number of seconds > 0, "
                    f"got {value!r}",
                    path=field,
                )
        for field in ("retry", "compensation_retry"):
            if not isinstance(getattr(self, field), RetrySettings):
                raise ConfigError(f"step {self.name!r}: {field} must be RetrySettings", path=field)
        if self.delivery not in _DELIVERIES:
            raise ConfigError(
                f"step {self.name!r}: delivery must be one of {_DELIVERIES}, got {self.delivery!r}",
                path="delivery",
            )
        if self.compensate_failed not in _COMPENSATE_FAILED:
            raise ConfigError(
                f"step {self.name!r}: compensate_failed must be one of {_COMPENSATE_FAILED}, "
                f"got {self.compensate_failed!r}",
                path="compensate_failed",
            )
        try:
            msgspec.msgpack.Decoder(self.reply_type)
        except TypeError as exc:
            raise ConfigError(
                f"step {self.name!r}: reply_type {self.reply_type!r} is not a type msgspec can "
                f"decode ({exc})",
                path="reply_type",
            ) from None

    @property
    def compensatable(self) -> bool:
        """Whether the step has a compensation."""
        return self.compensate is not None


def _steps(value: Iterable[SagaStep]) -> tuple[SagaStep, ...]:
    return tuple(value)


@attrs.frozen
class SagaDefinition:
    """A named, ordered list of steps that either all complete or are compensated.

    Attributes:
        name: the definition's name (``StartSaga(definition=name, ...)``); letters, digits,
            ``_``, ``.``, ``-``.
        steps: the steps, run in order (at least one; unique names).
        input_type: the type the saga's input is decoded to for the builders (default
            ``Any``).
        compensation_deadline: seconds the whole compensation of one saga may take, from the
            moment it starts (or resumes after a restart), retries included (default 300).
            Past it the compensation in progress is abandoned and the saga ends
            ``compensation_failed``.

    Raises:
        ConfigError: no steps, duplicate step names, a bad name or deadline.

    Example::

        VIDEO = SagaDefinition("video", [
            SagaStep("script", "providers/llm", action=..., compensate=...),
            SagaStep("render", "providers/render", action=...),   # cannot be compensated
        ])
    """

    name: str
    steps: tuple[SagaStep, ...] = attrs.field(converter=_steps)
    input_type: Any = Any
    compensation_deadline: float = attrs.field(default=300.0, converter=_seconds)

    def __attrs_post_init__(self) -> None:
        _check_name("saga definition", self.name)
        if not self.steps:
            raise ConfigError(f"saga {self.name!r} has no steps", path="steps")
        seen: set[str] = set()
        for i, step in enumerate(self.steps):
            if not isinstance(step, SagaStep):
                raise ConfigError(
                    f"saga {self.name!r}: step #{i} must be a SagaStep, got {step!r}",
                    path=f"steps[{i}]",
                )
            if step.name in seen:
                raise ConfigError(
                    f"saga {self.name!r}: two steps are named {step.name!r}", path=f"steps[{i}]"
                )
            seen.add(step.name)
        if not (self.compensation_deadline > 0 and math.isfinite(self.compensation_deadline)):
            raise ConfigError(
                f"saga {self.name!r}: compensation_deadline must be a finite number of seconds "
                f"> 0, got {self.compensation_deadline!r}",
                path="compensation_deadline",
            )
        try:
            msgspec.msgpack.Decoder(self.input_type)
        except TypeError as exc:
            raise ConfigError(
                f"saga {self.name!r}: input_type {self.input_type!r} is not a type msgspec can "
                f"decode ({exc})",
                path="input_type",
            ) from None

    def index(self, name: str) -> int:
        """The position of the step called ``name``.  Raises ``KeyError``."""
        for i, step in enumerate(self.steps):
            if step.name == name:
                return i
        raise KeyError(f"saga {self.name!r} has no step {name!r}")


# ---------------------------------------------------------------------------- the context


_DECODERS: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
_UNSEEN: Final = object()  # a reply not decoded yet


def decoder(tp: Any) -> msgspec.msgpack.Decoder[Any]:
    """A cached msgpack decoder for ``tp``."""
    try:
        return _DECODERS[tp]
    except (KeyError, TypeError):
        pass
    found: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(tp)
    try:
        if len(_DECODERS) < 1024:
            _DECODERS[tp] = found
    except TypeError:  # an unhashable type annotation: not cached
        pass
    return found


class SagaView:
    """What a running saga exposes to its builders (shared by its contexts).  Private.

    ``replies`` caches decoded step replies by step index; journaled replies never change, so
    a cached value stays right for the life of the saga.
    """

    __slots__ = ("definition", "input", "replies", "saga_id")

    def __init__(self, saga_id: str, definition: SagaDefinition, input: Any) -> None:
        self.saga_id = saga_id
        self.definition = definition
        self.input = input
        self.replies: dict[int, Any] = {}

    def reply(self, index: int, results: Sequence[bytes]) -> Any:
        value = self.replies.get(index, _UNSEEN)
        if value is _UNSEEN:
            value = decoder(self.definition.steps[index].reply_type).decode(results[index])
            self.replies[index] = value
        return value


class StepContext:
    """What a step's ``action`` (or ``compensate``) builder receives.

    Attributes:
        saga_id: the saga.
        step: the step's position (0-based).
        name: the step's name.
        key: the idempotency key of this message (``"{saga_id}:{name}"``, or
            ``"{saga_id}:{name}:compensate"`` for a compensation).
        attempt: 1 for the first send, more for retries and re-sends after a restart.
        compensating: whether this builds a compensation.
        error: for the compensation of a step that failed, why it failed; else ``None``.

    Replies of earlier steps are read with :meth:`result` (or :attr:`results`), decoded from
    the journal (see the module docstring).
    """

    __slots__ = ("_results", "_view", "attempt", "compensating", "error", "key", "name", "step")

    def __init__(
        self,
        view: SagaView,
        step: int,
        key: str,
        attempt: int,
        results: Sequence[bytes],
        *,
        compensating: bool = False,
        error: StepError | None = None,
    ) -> None:
        self._view = view
        self._results = results
        self.step = step
        self.name = view.definition.steps[step].name
        self.key = key
        self.attempt = attempt
        self.compensating = compensating
        self.error = error

    @property
    def saga_id(self) -> str:
        """The saga's id."""
        return self._view.saga_id

    @property
    def definition(self) -> str:
        """The definition's name."""
        return self._view.definition.name

    @property
    def input(self) -> Any:
        """The saga's input (decoded as the definition's ``input_type``)."""
        return self._view.input

    def result(self, name: str) -> Any:
        """The reply of the completed step ``name``.

        Raises:
            KeyError: no step has that name, or it has not completed.
        """
        index = self._view.definition.index(name)
        if index >= len(self._results):
            raise KeyError(f"step {name!r} of saga {self.saga_id!r} has not completed")
        return self._view.reply(index, self._results)

    @property
    def results(self) -> dict[str, Any]:
        """Replies of every completed step, by step name, in step order."""
        steps = self._view.definition.steps
        return {
            steps[i].name: self._view.reply(i, self._results) for i in range(len(self._results))
        }

    @property
    def reply(self) -> Any:
        """For a compensation: this step's own reply (``None`` if the step did not complete)."""
        if self.step < len(self._results):
            return self._view.reply(self.step, self._results)
        return None

    def __repr__(self) -> str:
        what = "compensate" if self.compensating else "step"
        return f"<StepContext {what} {self.saga_id}:{self.name} attempt={self.attempt}>"


# ---------------------------------------------------------------------------------- errors


class UnknownSagaDefinition(AuraError, LookupError):
    """A saga was started with a definition name the coordinator does not know.

    Attributes:
        definition: the name asked for.
    """

    default_category = ErrorCategory.VALIDATION

    def __init__(self, definition: str, known: Iterable[str]) -> None:
        names = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"No saga definition named {definition!r} (known: {names}).",
            suggested_action="Register the definition with the coordinator or fix the name.",
        )
        self.definition = definition


class SagaFailed(AuraError):
    """A saga did not complete: a step failed, or its caller gave up while it ran.

    The completed compensatable steps were compensated in reverse order before this was
    raised (see :attr:`outcome`).

    Attributes:
        saga_id, definition: the saga.
        outcome: how it ended: ``"compensated"``, ``"failed"`` (nothing needed compensating),
            ``"cancelled"`` (cancelled, nothing needed compensating) or
            ``"compensation_failed"`` (see :class:`CompensationFailed`).
        step: the index of the step that failed (``None`` if the saga was cancelled between
            steps).
        step_name: its name.
        reason: why, as ``"Type: message"``.
        cancelled: whether the caller's cancellation (or timeout) ended the saga.
        compensated: names of the steps compensated, in the order they were.
        cause: the original exception when the saga failed in this process, else ``None``.

    The category is the step error's category (``cancellation`` when cancelled).
    """

    def __init__(
        self,
        *,
        saga_id: str,
        definition: str,
        outcome: str,
        step: int | None,
        step_name: str | None,
        reason: str,
        category: ErrorCategory = ErrorCategory.UNKNOWN,
        cancelled: bool = False,
        compensated: Sequence[str] = (),
        cause: BaseException | None = None,
        message: str | None = None,
        suggested_action: str | None = None,
    ) -> None:
        if message is None:
            where = f"step {step_name!r}" if step_name is not None else "between steps"
            what = "was cancelled by its caller" if cancelled else "failed"
            undone = (
                "compensated: " + ", ".join(compensated) if compensated else "nothing compensated"
            )
            message = (
                f"Saga {saga_id!r} ({definition}) {what} at {where}: {reason.rstrip('.')}; "
                f"{undone}."
            )
        super().__init__(message, category=category, suggested_action=suggested_action)
        self.saga_id = saga_id
        self.definition = definition
        self.outcome = outcome
        self.step = step
        self.step_name = step_name
        self.reason = reason
        self.cancelled = cancelled
        self.compensated = tuple(compensated)
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause


class CompensationFailed(SagaFailed):
    """A saga failed and a compensation could not be completed: an operator must look.

    The saga stays listed (``ListSagas``) and in the journal until an operator discards it; a
    report was sent to the monitor.

    Attributes:
        compensation_step: the index of the step whose compensation failed (``None`` when the
            compensation deadline passed between compensations).
        compensation_step_name: its name.
        compensation_error: the last failure of that compensation, as ``"Type: message"``.

    It also has everything :class:`SagaFailed` has; :attr:`compensated` lists the
    compensations that did succeed.
    """

    default_category = ErrorCategory.INVALID_STATE

    def __init__(
        self,
        *,
        saga_id: str,
        definition: str,
        step: int | None,
        step_name: str | None,
        reason: str,
        compensation_step: int | None,
        compensation_step_name: str | None,
        compensation_error: str,
        cancelled: bool = False,
        compensated: Sequence[str] = (),
        cause: BaseException | None = None,
    ) -> None:
        which = (
            f"the compensation of step {compensation_step_name!r}"
            if compensation_step_name is not None
            else "the compensation"
        )
        done = ", ".join(compensated) if compensated else "none"
        super().__init__(
            saga_id=saga_id,
            definition=definition,
            outcome="compensation_failed",
            step=step,
            step_name=step_name,
            reason=reason,
            category=ErrorCategory.INVALID_STATE,
            cancelled=cancelled,
            compensated=compensated,
            cause=cause,
            message=(
                f"Saga {saga_id!r} ({definition}) failed ({reason.rstrip('.')}) and {which} "
                f"failed: {compensation_error.rstrip('.')}; compensated before that: {done}."
            ),
            suggested_action=(
                "An operator must undo the remaining effects by hand (see the saga's audit "
                "trail), then discard the saga from the journal."
            ),
        )
        self.compensation_step = compensation_step
        self.compensation_step_name = compensation_step_name
        self.compensation_error = compensation_error
