"""Driving a saga: forward step by step, then, on failure or cancellation, compensating.

The methods of :class:`~actors.SagaCoordinator` that run in a saga's task (see the theory of
operation in ``actors._saga._coordinator``): each transition is journaled before the message it
announces is sent; a step goes to its target in the form its ``delivery`` asks for (in a
:class:`~actors.Call` for an actor that takes calls, known by the
:class:`~actors._protocol.CallReceiver` marker), under its retry policy; compensation runs in
reverse order, outside the caller's cancel scope.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import trio

from actors._core._ref import ActorRef
from actors._errors import ActorNotFound, ActorStopped, ErrorCategory
from actors._policies._retry import GiveUp, RetryPolicy, RetryState
from actors._protocol import Call, CallReceiver
from actors._saga._definition import (
    SagaDefinition,
    SagaStep,
    SagaStepMessage,
    StepContext,
    StepError,
    is_uncertain,
    step_error,
)
from actors._saga._fleet import _Fleet
from actors._saga._journals._records import SagaEvent
from actors._saga._journals._state import SagaState, saga_state
from actors._saga._run import (
    _CALL,
    _CANCELLED_BETWEEN_STEPS,
    _CANCELLED_IN_FLIGHT,
    _COMPLETED,
    _DELIVERIES,
    _ENVELOPE,
    _K,
    _NOT_RUNNING,
    _P,
    _RUNNING,
    _STEP_COMPLETED,
    _STEP_FAILED,
    _STEP_IN_FLIGHT,
    _STEP_STARTED,
    _encode,
    _log,
    _Run,
    _shown,
    _Target,
)
from actors._saga._tracing import step_ended, step_started
from actors._telemetry import TraceContext


def _step_message(
    delivery: str,
    payload: Any,
    key: str,
    saga_id: str,
    step: str,
    *,
    compensate: bool = False,
    trace: TraceContext | None = None,
) -> Any:
    """What a step's (or its compensation's) target receives: the payload in a
    :class:`SagaStepMessage`, in a provider :class:`Call` with the idempotency key, or as it
    is.  ``trace`` is the step's span (a bare payload cannot carry it)."""
    if delivery is _ENVELOPE:
        return SagaStepMessage(key, payload, saga_id, step, compensate, trace)
    if delivery is _CALL:
        return Call(payload, key, trace)
    return payload


def _pair(state: SagaState, i: int, data: bytes, last: bool) -> tuple[SagaEvent, SagaEvent]:
    """Step ``i`` completed with ``data``, and the next step started (or the saga completed,
    if ``last``): the per-step write, in one append."""
    saga_id = state.saga_id
    seq = state.next_seq
    at = time.time()
    done = SagaEvent(saga_id, seq, _STEP_COMPLETED, i, at, data)
    if last:
        return done, SagaEvent(saga_id, seq + 1, _COMPLETED, None, at)
    return done, SagaEvent(saga_id, seq + 1, _STEP_STARTED, i + 1, at)


def _trace(run: _Run) -> TraceContext | None:
    """The context a step's message carries: its span's (``None`` without a tracer)."""
    obs = run.obs
    return None if obs is None else obs.step_trace


class _Driver(_Fleet):
    """Forward and compensation of :class:`~actors.SagaCoordinator` (see the module docstring)."""

    # ------------------------------------------------------------------ driving a saga

    async def _forward(self, run: _Run, fresh: bool) -> SagaState:
        """The forward part: send each step (write-ahead) until the last completes or one
        fails (``fresh``: the first step's start was journaled with the saga, unsent)."""
        append = self._append
        state = run.state
        steps = run.definition.steps
        last = len(steps) - 1
        if fresh:
            # A caller that gave up while the saga was created must not have the step sent.
            await trio.lowlevel.checkpoint_if_cancelled()
        elif state.phase is _RUNNING:
            if state.next_step > last:  # resumed after the last step completed
                state = run.state = await append(state.next_event(_COMPLETED))
                return state
            state = run.state = await append(state.next_event(_STEP_STARTED, state.next_step))
        else:  # resumed with a step in flight: journal the re-send, then send
            state = run.state = await append(state.next_event(_STEP_STARTED, state.step_in_flight))
        saga_id = run.header.saga_id
        append_many = self._append_many
        step_now = self._step_now
        plan = run.plan
        targets = plan.targets
        checked = plan.checked
        view = run.view
        counters = self.counters
        obs = run.obs
        while True:
            i: int = state.step_in_flight  # type: ignore[assignment]
            step = steps[i]
            target = targets[i]
            if obs is not None:
                step_started(obs, i, step.name, trio.current_time(), compensate=False)
            data: bytes | StepError
            if target is None:
                data = await self._send_step(run, i, step)
            else:
                # The first attempt, inline (a coroutine less on the hot path); failures and
                # retries go on in _send_step.
                started = trio.current_time() if plan.retrying[i] else 0.0
                key = f"{saga_id}:{step.name}"
                try:
                    payload = step.action(
                        StepContext(view, i, key, state.step_attempts, state.results)
                    )
                except Exception as exc:
                    data = self._builder_failed(run, exc, "action", state.step_attempts > 1)
                else:
                    ref, delivery = target
                    # _step_message and _trace, in line.
                    message: Any
                    if delivery is _ENVELOPE:
                        trace = None if obs is None else obs.step_trace
                        message = SagaStepMessage(key, payload, saga_id, step.name, False, trace)
                    elif delivery is _CALL:
                        message = Call(payload, key, None if obs is None else obs.step_trace)
                    else:
                        message = payload
                    run.sent = i
                    run.sent_seq = state.next_seq - 1
                    counters.steps_sent += 1
                    try:
                        reply = await ref.ask(message, timeout=step.timeout)
                    except Exception as exc:
                        data = await self._send_step(run, i, step, started, exc)
                    else:
                        if checked[i]:
                            data = self._journalable(run, i, reply)
                        else:  # _journalable, in line; its error path on failure
                            try:
                                data = _encode(reply)
                            except (msgspec.EncodeError, TypeError, ValueError):
                                data = self._journalable(run, i, reply)
            state = run.state  # retries journal re-sends
            if obs is not None:
                failed = None if type(data) is bytes else data.category  # type: ignore[union-attr]
                step_ended(obs, trio.current_time(), failed)
            if type(data) is not bytes:
                state = run.state = await append(state.next_event(_STEP_FAILED, i, _encode(data)))
                return state
            # The step's completion and the next step's start (or the end): one write.
            run.pending = (i, data)
            if step_now is None:
                state = run.state = (await append_many(_pair(state, i, data, i == last)))[saga_id]
            else:
                if run.abandoned:  # deliver the caller's cancellation before writing
                    await trio.lowlevel.checkpoint_if_cancelled()
                # The in-memory journal builds both events from the state it returned last.
                written = step_now(state, data, i == last)
                if written is None:  # not the journal's state of an open saga: the precise error
                    pair = _pair(state, i, data, i == last)
                    written = (await append_many(pair))[saga_id]
                state = run.state = written
            run.pending = None
            if i == last:
                return state

    def _builder_failed(
        self, run: _Run, exc: Exception, which: str, uncertain: bool = False
    ) -> StepError:
        """Nothing was sent (``uncertain``: an earlier send of the same key may have landed)."""
        run.cause = exc
        return step_error(
            exc,
            self._classifier.classify(exc).category,
            prefix=f"the step's {which} raised: ",
            uncertain=uncertain,
            unsent=True,
        )

    def _journalable(self, run: _Run, i: int, reply: Any) -> bytes | StepError:
        """A step's reply encoded for the journal (and checked against its ``reply_type``)."""
        try:
            data = _encode(reply)
            plan = run.plan
            if plan.checked[i]:
                plan.decoders[i].decode(data)
        except (msgspec.EncodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
            run.cause = exc
            return step_error(
                exc,
                ErrorCategory.VALIDATION,
                prefix="the step's reply cannot be journaled: ",
                uncertain=True,  # the target did the work
            )
        return data

    async def _send_step(
        self,
        run: _Run,
        i: int,
        step: SagaStep,
        started: float | None = None,
        error: Exception | None = None,
    ) -> bytes | StepError:
        """Send step ``i`` (retrying per its policy); its encoded reply, or why it failed.

        With ``error``, the first attempt (begun at ``started``) was made and failed with it.
        The failure is uncertain when any attempt's was, or when the key was sent more than
        once (a retry, or a re-send after a restart): a later refusal ("already done") says
        nothing about whether an earlier send landed.  Each retry's ``step_started`` carries
        the error of the attempt before it (for the audit trail).
        """
        saga_id = run.header.saga_id
        key = f"{saga_id}:{step.name}"
        retry: RetryState | None = None
        if started is None:
            started = trio.current_time()
        doubt = error is not None and is_uncertain(error)  # a send may have landed
        unsent = False  # the last attempt was never sent
        while True:
            if error is None:
                state = run.state
                try:
                    payload = step.action(
                        StepContext(run.view, i, key, state.step_attempts, state.results)
                    )
                except Exception as exc:
                    return self._builder_failed(
                        run, exc, "action", doubt or state.step_attempts > 1
                    )
                target = run.plan.targets[i]
                if target is None:
                    try:
                        target = await self._resolve(run, i)
                    except ActorNotFound as exc:
                        run.cause = exc
                        return step_error(
                            exc,
                            exc.category,
                            uncertain=doubt or run.state.step_attempts > 1,
                            unsent=True,
                        )
                    except ActorStopped as exc:  # not running: retried like a failed send
                        error, unsent = exc, True
                if target is not None:
                    ref, delivery = target
                    message = _step_message(
                        delivery, payload, key, saga_id, step.name, trace=_trace(run)
                    )
                    run.sent = i
                    run.sent_seq = run.state.next_seq - 1
                    self.counters.steps_sent += 1
                    try:
                        reply = await ref.ask(message, timeout=step.timeout)
                    except Exception as exc:
                        error, unsent = exc, False
                        doubt = doubt or is_uncertain(exc)
                    else:
                        return self._journalable(run, i, reply)
            assert error is not None
            verdict = self._classifier.classify(error)
            if retry is None:
                retry = self._policy(run.definition, i, False).begin(started)
            now = trio.current_time()
            decision = retry.on_failure(now, verdict.category, verdict.retry_after)
            if type(decision) is GiveUp:
                run.cause = error
                return step_error(
                    error,
                    verdict.category,
                    uncertain=doubt or run.state.step_attempts > 1,
                    unsent=unsent,
                )
            info = step_error(error, verdict.category, uncertain=doubt, unsent=unsent)
            error = None
            await trio.sleep_until(decision.at)  # type: ignore[union-attr]
            run.state = await self._append(run.state.next_event(_STEP_STARTED, i, _encode(info)))
            self.counters.step_retries += 1

    async def _resolve(self, run: _Run, i: int) -> _Target:
        """The target ref of step ``i`` and how to deliver to it; cached once known.

        Raises:
            ActorNotFound: no actor at the step's path.
            ActorStopped: ``delivery="auto"`` and the target is not running (stopped, or
                waiting out a restart backoff) within the step's timeout: how to deliver to
                it is not known, so nothing is sent and nothing is cached.
        """
        step = run.definition.steps[i]
        target = step.target
        ref = target if isinstance(target, ActorRef) else self.lookup(target)
        delivery: str = step.delivery
        if delivery == "auto":
            cell = ref._cell
            # Decide from the running actor; while it is (re)starting, wait for it a little.
            waited = 0.0
            pause = 0.01
            while cell.incarnation is None and not cell.closed and waited < step.timeout:
                await trio.sleep(pause)
                waited += pause
                pause = min(pause * 2, 0.5, max(step.timeout - waited, 0.01))
            inc = cell.incarnation
            if inc is None:  # undecided: never cache a guess (every later saga would keep it)
                raise ActorStopped(
                    actor=ref.path, reason=_NOT_RUNNING, category=ErrorCategory.DEPENDENCY
                )
            delivery = "call" if isinstance(inc.actor, CallReceiver) else "envelope"
        found = run.plan.targets[i] = (ref, _DELIVERIES[delivery])
        return found

    def _policy(self, definition: SagaDefinition, i: int, compensate: bool) -> RetryPolicy:
        key = (definition.name, i, compensate)
        policy = self._policies.get(key)
        if policy is None:
            step = definition.steps[i]
            settings = step.compensation_retry if compensate else step.retry
            policy = self._policies[key] = RetryPolicy(settings, random=self._rng)
        return policy

    async def _after_cancel(self, run: _Run) -> SagaState:
        """The caller gave up during the forward part: record the step in flight, decide."""
        found = await self._read_back(run.header.saga_id)
        # A write cut short by the cancellation may have landed: the journal has the truth.
        state = run.state = saga_state(*found) if found is not None else run.state
        if state.phase is _STEP_IN_FLIGHT:
            i = state.step_in_flight
            pending = run.pending
            if pending is not None and pending[0] == i:  # its reply had arrived
                state = run.state = await self._append(
                    state.next_event(_STEP_COMPLETED, i, pending[1])
                )
            else:
                error = StepError(
                    type="Cancelled",
                    message=_CANCELLED_IN_FLIGHT,
                    category=ErrorCategory.CANCELLATION.value,
                    uncertain=run.sent == i or state.step_attempts > 1,
                    cancelled=True,
                    unsent=run.sent_seq != state.next_seq - 1,  # gone before it left
                )
                run.error = error
                return await self._append(state.next_event(_STEP_FAILED, i, _encode(error)))
        if state.phase is _RUNNING:
            if state.next_step >= len(run.definition.steps):
                state = run.state = await self._append(state.next_event(_COMPLETED))
                return state
            return await self._decide(run, state, _CANCELLED_BETWEEN_STEPS)
        return state

    def _uncertain(self, run: _Run, state: SagaState) -> bool:
        """Whether the failed step may have taken effect: its error says so, or its key was
        sent more than once (journals written before errors recorded that say it this way)."""
        error = self._failed_error(run, state)
        return state.step_attempts > 1 or (error is not None and error.uncertain)

    def _next_compensation(self, run: _Run, state: SagaState, below: int) -> int | None:
        """The highest step below ``below`` that must be compensated, or ``None``."""
        steps = run.definition.steps
        failed = state.failed_step
        for j in range(min(below, len(steps)) - 1, -1, -1):
            step = steps[j]
            if step.compensate is None:
                continue
            if j < state.next_step:
                return j
            if j == failed:
                policy = step.compensate_failed
                if policy == "always" or (policy == "uncertain" and self._uncertain(run, state)):
                    return j
        return None

    async def _decide(self, run: _Run, state: SagaState, reason: StepError | None) -> SagaState:
        """After a failure (or a cancellation between steps): compensate, or end."""
        if reason is None:
            reason = self._failed_error(run, state)
            assert reason is not None
        below = state.next_step + (0 if state.failed_step is None else 1)
        if self._next_compensation(run, state, below) is not None:
            kind = _K.COMPENSATING
        else:
            kind = _K.CANCELLED if reason.cancelled else _K.FAILED
        state = run.state = await self._append(state.next_event(kind, None, _encode(reason)))
        return state

    # ------------------------------------------------------------------ compensating

    async def _compensate(self, run: _Run, state: SagaState) -> SagaState:
        append = self._append
        deadline = trio.current_time() + run.definition.compensation_deadline
        if state.phase is _P.COMPENSATING:
            j = self._next_compensation(run, state, state.compensate_below or 0)
            if j is None:
                # The final event keeps the reason of `compensating` (for the saga's error).
                state = run.state = await append(
                    state.next_event(_K.COMPENSATED, None, state.reason)
                )
                return state
            event = state.next_event(_K.COMPENSATION_STARTED, j)
        else:  # resumed in flight or waiting for a retry: re-send (journaled first)
            event = state.next_event(_K.COMPENSATION_STARTED, state.compensation_step)
        state = run.state = await append(event)
        saga_id = run.header.saga_id
        obs = run.obs
        while True:
            j = state.compensation_step
            assert j is not None
            if obs is not None:
                name = run.definition.steps[j].name
                step_started(obs, j, name, trio.current_time(), compensate=True)
            error = await self._send_compensation(run, j, deadline)
            if obs is not None:
                step_ended(obs, trio.current_time(), None if error is None else error.category)
            state = run.state
            if error is not None:
                state = run.state = await append(
                    state.next_event(_K.COMPENSATION_FAILED, j, _encode(error))
                )
                return state
            done = state.next_event(_K.COMPENSATED_STEP, j)
            nxt = self._next_compensation(run, state, j)
            if nxt is None:
                then = SagaEvent(saga_id, done.seq + 1, _K.COMPENSATED, None, done.at, state.reason)
            else:
                then = SagaEvent(saga_id, done.seq + 1, _K.COMPENSATION_STARTED, nxt, done.at)
            state = run.state = (await self._append_many((done, then)))[saga_id]
            if nxt is None:
                return state

    async def _send_compensation(self, run: _Run, j: int, deadline: float) -> StepError | None:
        """Send the compensation of step ``j`` until it succeeds (``None``) or gives up."""
        step = run.definition.steps[j]
        saga_id = run.header.saga_id
        key = f"{saga_id}:{step.name}:compensate"
        assert step.compensate is not None
        error_info = self._failed_error(run, run.state) if j == run.state.failed_step else None
        retry: RetryState | None = None
        started = trio.current_time()
        while True:
            state = run.state
            try:
                payload = step.compensate(
                    StepContext(
                        run.view,
                        j,
                        key,
                        state.compensation_attempts,
                        state.results,
                        compensating=True,
                        error=error_info,
                    )
                )
            except Exception as exc:
                return step_error(
                    exc,
                    self._classifier.classify(exc).category,
                    prefix="the step's compensate builder raised: ",
                    unsent=True,
                )
            now = trio.current_time()
            timeout = min(step.compensation_timeout, deadline - now)
            if timeout <= 0:
                return StepError(
                    type="DeadlineExceeded",
                    message="the saga's compensation deadline passed",
                    category=ErrorCategory.TIMEOUT.value,
                    unsent=True,
                )
            error: Exception
            unsent = False
            target = run.plan.targets[j]
            if target is None:
                try:
                    target = await self._resolve(run, j)
                except ActorNotFound as exc:
                    return step_error(exc, exc.category, unsent=True)
                except ActorStopped as exc:  # not running: retried like a failed send
                    error, unsent = exc, True
            if target is not None:
                ref, delivery = target
                message = _step_message(
                    delivery, payload, key, saga_id, step.name, compensate=True, trace=_trace(run)
                )
                self.counters.compensations_sent += 1
                try:
                    await ref.ask(message, timeout=timeout)
                except Exception as exc:
                    error = exc
                else:
                    return None
            verdict = self._classifier.classify(error)
            if retry is None:
                retry = self._policy(run.definition, j, True).begin(started, deadline)
            now = trio.current_time()
            info = step_error(error, verdict.category, unsent=unsent)
            decision = retry.on_failure(now, verdict.category, verdict.retry_after)
            if type(decision) is GiveUp:
                return info
            _log.warning(
                "saga %s: compensation of step %r failed (%s); retrying in %.3g s",
                saga_id,
                step.name,
                _shown(info.describe()),
                decision.delay,  # type: ignore[union-attr]
            )
            run.state = await self._append(
                run.state.next_event(_K.COMPENSATION_FAILED_STEP, j, _encode(info))
            )
            await trio.sleep_until(decision.at)  # type: ignore[union-attr]
            run.state = await self._append(run.state.next_event(_K.COMPENSATION_STARTED, j))
            self.counters.compensation_retries += 1
