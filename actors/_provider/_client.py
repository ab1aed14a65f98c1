"""The :class:`Provider` client: how application code calls a provider actor.

Theory of operation
-------------------
``Provider.call`` behaves as an ask of a :class:`~actors.Call` message, with two
shortcuts, both taken in the caller's task (trio runs one task at a time, so what it reads is
consistent):

* while the provider's circuit breaker is open (or the fleet's, for a provider sharing its
  breaker), the client reads the breaker and raises ``CircuitOpen`` at once, without a round
  trip.  Providers with a fallback always go to the actor (the fallback answers).  A call
  with an idempotency key is refused so only if its key holds nothing; while the breaker is
  not closed or every worker is busy, a stored outcome under the key answers it, and another
  payload under the key is refused with ``IdempotencyConflict``, in the caller's task too
  (:meth:`ProviderActor.intake`).  A key in flight is joined by a worker, as before.  A
  provider that shares its keys with a fleet sends every keyed call to the actor (the
  fleet's store may hold the outcome);
* otherwise the call is queued straight for the provider's worker pool
  (:meth:`ProviderActor.submit`) instead of the mailbox: a worker of the actor admits and runs
  it, so the call costs one task switch each way, like a bare ask.

While the actor is restarting the call goes through the mailbox and waits for the next
incarnation.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, final

import trio
from trio.lowlevel import wait_task_rescheduled

from actors._core._cell import effective_timeout, new_reply
from actors._core._ref import ActorRef
from actors._policies._breaker import BreakerState
from actors._protocol import Call, GateVerdict
from actors._provider._actor import ProviderActor
from actors._provider._jobs import NOT_ANSWERED
from actors._provider._messages import GetStatus, Isolate, ProviderStatus, Reset
from actors._provider._tracing import not_permitted
from actors._telemetry import current_trace_context

__all__ = ["Provider"]

_CLOSED = BreakerState.CLOSED
_GATE_REJECT = GateVerdict.REJECT

P = TypeVar("P")
R = TypeVar("R")


@final
class Provider(Generic[P, R]):
    """A client for a provider actor's slot (stable across restarts, like its ref).

    Example::

        openai: Provider[Prompt, Completion] = Provider(root.ref("providers/openai"))
        completion = await openai.call(Prompt("hi"), key=f"req-{request_id}", timeout=20)
    """

    __slots__ = ("_ref",)

    # ``self`` typed: ``Provider(ref)`` is a ``Provider[Any, Any]`` without an annotation, and
    # ``Provider[Prompt, Completion](ref)`` or an annotated variable narrows it.
    def __init__(self: Provider[Any, Any], ref: ActorRef[Any, Any]) -> None:
        if not isinstance(ref, ActorRef):
            raise TypeError(f"Provider() takes the ActorRef of a provider actor, got {ref!r}")
        self._ref = ref

    @property
    def ref(self) -> ActorRef[Any, Any]:
        """The provider actor's ref."""
        return self._ref

    # A timeout parameter, not a cancel scope: see ActorRef.ask.
    async def call(
        self,
        payload: P,
        *,
        key: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> R:
        """Call the service through the provider's policies and return its reply.

        Args:
            payload: what the provider's function receives.
            key: an idempotency key (the call runs at most once per key and payload).
            timeout: seconds to wait at most (default: the actor's ask timeout); the caller's
                trio deadline also applies and caps the provider's attempts.

        Raises:
            CircuitOpen: the breaker is open (raised without a round trip when possible).
            RetriesExhausted: every attempt failed.
            RetryBudgetExhausted: a retry was due but the retry budget had no room.
            BulkheadFull: the bulkhead had no free slot and no room in its queue.
            RateLimited: the local rate limiter refused the call.
            ProviderError: a failure the classifier does not retry (its category says why).
            IdempotencyConflict: the key was used before with another payload.
            FleetStoreUnavailable: a provider sharing its keyed calls with a fleet whose store
                is down, when its ``on_store_down`` is ``"reject"``.
            AskTimeout: as for any ask (also ``ActorStopped`` and ``ActorCrashed``).

        The errors table of the README says what each error carries.
        """
        cell = self._ref._cell
        inc = cell.incarnation
        if inc is None or cell.closed or inc.stop_requested:
            # Restarting or stopped: the mailbox queues the call (or says it is stopped).
            result: R = await self._ref.ask(
                Call(payload, key, current_trace_context()), timeout=timeout
            )
            return result
        actor = inc.actor
        if not isinstance(actor, ProviderActor):
            raise TypeError(f"{cell.path!r} is not a provider actor ({type(actor).__name__})")
        now = actor._now()
        # A keyed call is answered here only from the actor's own table (a provider sharing
        # its keys with a fleet may find the outcome in the fleet's store: the actor decides).
        local_key = key is not None and type(key) is str and not actor._claims
        gate = actor._gate  # the fleet's, when the provider shares its breaker
        breaker = actor._breaker
        if breaker._state is not _CLOSED or (
            gate is not None and (key is None or local_key) and gate(now) is _GATE_REJECT
        ):
            table = actor._table
            if key is None or (
                # The table's holds(), with its two dict misses in line (the hot case).
                local_key
                and key not in table._inflight
                and (key not in table._meta or not table.holds(key, now))
            ):
                # Nothing a worker could answer from: refused here if the breaker refuses
                # (with a fallback, the actor answers from it).
                if actor._fallback_spec is not None:
                    rejected = None
                elif gate is None:
                    rejected = breaker.refusal(now)
                else:
                    rejected = actor._breaker_rejection(now)
                if rejected is not None:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    # Counted as the actor counts the same refusal (_refused, in line).
                    counters = actor.counters
                    counters.calls += 1
                    counters.rejected += 1
                    counters.failed += 1
                    if actor._tel is not None:
                        not_permitted(actor._tel, actor.name)
                    raise rejected
            elif local_key:
                await trio.lowlevel.checkpoint_if_cancelled()
                answer = actor.intake(payload, key, now)
                if answer is not NOT_ANSWERED:
                    return answer  # type: ignore[no-any-return]
        elif local_key and not actor._idle and actor._workers >= actor._max_workers:
            # Every worker is busy: a stored outcome or a conflict need not wait for one.
            await trio.lowlevel.checkpoint_if_cancelled()
            answer = actor.intake(payload, key, now)  # type: ignore[arg-type]
            if answer is not NOT_ANSWERED:
                return answer  # type: ignore[no-any-return]
        # The caller's span travels with the call (None unless telemetry traces).
        trace = current_trace_context()
        reply = new_reply(cell, effective_timeout(timeout, cell), now)
        try:
            lane = actor.submit(payload, key, reply, trace)
        except BaseException:
            # Refused before the caller parked: nothing may wake this task for that reply
            # later (its timer, or the runtime failing the incarnation's deferred replies).
            reply._retire()
            await trio.lowlevel.checkpoint_if_cancelled()
            raise
        if not lane:
            # Refused by a full bulkhead while a stored outcome or a fallback may still
            # answer: the actor decides, as for a call sent to its mailbox.
            reply._retire()
            result = await self._ref.ask(Call(payload, key, trace), timeout=timeout)
            return result
        value: R = await wait_task_rescheduled(reply._abort)
        return value

    async def status(self) -> ProviderStatus:
        """The provider's :class:`ProviderStatus`."""
        status: ProviderStatus = await self._ref.ask(GetStatus())
        return status

    async def isolate(self) -> ProviderStatus:
        """Hold the breaker open (every call fails fast) until :meth:`reset`."""
        status: ProviderStatus = await self._ref.ask(Isolate())
        return status

    async def reset(self) -> ProviderStatus:
        """Close the breaker with a clean window."""
        status: ProviderStatus = await self._ref.ask(Reset())
        return status

    def __repr__(self) -> str:
        return f"<Provider {self._ref.path!r}>"
