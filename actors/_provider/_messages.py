"""The messages a provider actor takes besides :class:`~actors.Call`, and its status."""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from actors._protocol import Call

__all__ = ["GetStatus", "Isolate", "ProviderMessage", "ProviderStatus", "Reset"]


class Isolate(msgspec.Struct, frozen=True, tag="isolate"):
    """Hold the provider's breaker open until :class:`Reset` (an operator's kill switch).

    A provider sharing its breaker with a fleet isolates the fleet breaker too, on every
    instance; when the fleet's store does not answer the reply is ``FleetStoreUnavailable``
    (this instance's breaker is isolated all the same)."""


class Reset(msgspec.Struct, frozen=True, tag="reset"):
    """Close the provider's breaker with a clean window (fleet-wide too, like
    :class:`Isolate`)."""


class GetStatus(msgspec.Struct, frozen=True, tag="status"):
    """Ask for a :class:`ProviderStatus`."""


class ProviderStatus(msgspec.Struct, frozen=True, gc=False):
    """A provider's state for status views (the reply to :class:`GetStatus`).

    Not tracked by the garbage collector (it holds only values): a scrape asks every provider
    for one.

    Attributes:
        service: the provider's name.
        breaker: the breaker's state (``closed``, ``open``, ``half_open``, ``isolated``).
        retry_after: seconds until the breaker admits a call (``None`` when isolated).
        budget_balance: retries the budget allows right now.
        running: attempts in progress.
        queued: calls waiting for a bulkhead slot.
        waiting: calls waiting for a retry delay or a rate-limit token.
        cached: idempotency records held.
        calls, succeeded, failed: calls taken and how each ended, once per caller: answered
            with a reply (from the service, the fallback, a joined call or a stored outcome) or
            failed (an error, a refusal, or the caller gave up).  Once nothing is in flight,
            ``calls == succeeded + failed`` (calls the runtime answered because the actor
            crashed or was cancelled are not counted as ended).
        attempts, retries: attempts made, of which retries.
        rejected: calls refused before any attempt (breaker, bulkhead, rate limit, conflicts).
        fallbacks, hedges: fallbacks used and hedged attempts sent.
        reports_dropped: monitor reports dropped because the monitor could not keep up.
        fleet: the fleet breaker's state as this instance sees it (``closed``, ``open``,
            ``half_open``, ``isolated``), ``stale`` while the view is too old to be used (the
            local breaker decides alone), or ``None`` when the breaker is not shared.
        retry_budget_rejections: calls that failed because the retry budget refused their
            retry (``RetryBudgetExhausted``).
        break_duration: the breaker's break duration after a first trip, in seconds.
        open_for: seconds since the breaker tripped from closed, while it has not closed since
            (open, or half-open); ``0.0`` when closed or isolated.  Longer than
            ``break_duration`` while ``breaker`` is ``open``: its probes failed.
        bulkhead_rejections: calls the bulkhead refused (``BulkheadFull``: every slot busy and
            the queue full), also counted in ``rejected``.
    """

    service: str
    breaker: str
    retry_after: float | None
    budget_balance: int
    running: int
    queued: int
    waiting: int
    cached: int
    calls: int
    succeeded: int
    failed: int
    attempts: int
    retries: int
    rejected: int
    fallbacks: int
    hedges: int
    reports_dropped: int
    fleet: str | None = None
    retry_budget_rejections: int = 0
    break_duration: float = 0.0
    open_for: float = 0.0
    bulkhead_rejections: int = 0


ProviderMessage: TypeAlias = Call | Isolate | Reset | GetStatus
