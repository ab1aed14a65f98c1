"""The trio shell of the shared idempotency store: claims, joiners, takeovers, renewals.

Theory of operation
-------------------
:class:`SharedIdempotency` is the second tier behind a provider's in-process
:class:`~actors.IdempotencyTable`: the table keeps serving joins of calls running
in this process and outcomes it already holds; a call the table *starts* asks the shared store
here, once, before it runs.  :meth:`~SharedIdempotency.begin` answers

* a :class:`SharedClaim`: this instance owns the key and runs the call, then finishes the
  claim with :meth:`~SharedIdempotency.complete`, :meth:`~SharedIdempotency.fail` or
  :meth:`~SharedIdempotency.abandon`;
* a :class:`~actors._policies._idempotency.Completed`: the call already ran somewhere in the
  fleet and this is its outcome (decoded by the
  :class:`~actors._fleet._idempotency_codec.OutcomeCodec`);
* :class:`~actors._errors.IdempotencyConflict`: the key was used with another request.

When another instance is running the key, ``begin`` waits as a *joiner*: it wakes when the key
is published as finished or released, and polls every ``idempotency_poll`` seconds besides
(pub/sub may miss a message), so it sees the outcome, or claims the key itself once the owner's
lease lapsed (the owner died).  The wait ends only with an answer, or when the caller cancels.
On the success path a keyed call costs two round trips: the claim and the finish.

While this instance owns claims, :meth:`~SharedIdempotency.run` renews all of them in one round
trip every third of the lease.  A claim whose renewal finds another owner is *lost*: its
finish is refused (fencing), the call's caller still gets its result, and the loss is counted.

A store that cannot be reached raises :class:`~actors._errors.FleetStoreUnavailable` from
``begin``; the provider's store-down policy (``"local"`` or ``"reject"``) decides what happens
to the call.  Finishing calls made while the store is down are counted and their claims left to
lapse.
"""

from __future__ import annotations

import secrets

import attrs
import trio

from actors._errors import ErrorCategory, FleetStoreUnavailable, IdempotencyConflict, ProviderError
from actors._fleet._idempotency_codec import OutcomeCodec, stable_fingerprint
from actors._fleet._idempotency_store import IdempotencyRecordStore
from actors._policies._config._fleet import FleetSettings
from actors._policies._idempotency import Completed
from actors._policies._logs import library_logger

__all__ = ["SharedClaim", "SharedIdempotency", "SharedIdempotencyStatistics"]

_log = library_logger("actors.fleet.idempotency")


class SharedClaim:
    """This instance's claim on an idempotency key (made by :meth:`SharedIdempotency.begin`).

    Attributes:
        key: the idempotency key.
        token: the owner token that fences the record.
        fingerprint: the request's stable fingerprint.
        took_over: whether the claim took the key over from an owner whose lease lapsed.
        lost: whether a renewal found the claim taken by another owner.
    """

    __slots__ = ("fingerprint", "key", "lost", "token", "took_over")

    def __init__(self, key: str, token: str, fingerprint: str, took_over: bool) -> None:
        self.key = key
        self.token = token
        self.fingerprint = fingerprint
        self.took_over = took_over
        self.lost = False

    def __repr__(self) -> str:
        return f"<SharedClaim {self.key!r} lost={self.lost}>"


@attrs.frozen
class SharedIdempotencyStatistics:
    """Counters of a :class:`SharedIdempotency`.

    Attributes:
        service: the provider.
        owned: claims held now.
        claims: keys claimed; ``takeovers`` of them after another owner's lease lapsed.
        replays: ``begin`` answered with a stored outcome; ``joins`` calls that waited.
        conflicts: ``begin`` refused with IdempotencyConflict.
        finished: outcomes stored; ``fenced`` finishes refused (claim lost); ``lost`` claims
            found lost by renewal; ``failures`` store calls that failed.
    """

    service: str
    owned: int
    claims: int
    takeovers: int
    replays: int
    joins: int
    conflicts: int
    finished: int
    fenced: int
    lost: int
    failures: int


class SharedIdempotency:
    """The shared idempotency tier of one provider (see the module docstring).

    Args:
        store: the record store (Redis, or in memory in tests).
        settings: the fleet settings (lease, poll interval, TTL, record cap).
        service: the provider's name (in replayed errors).
        codec: encodes and decodes outcomes (default: plain builtins).
    """

    def __init__(
        self,
        store: IdempotencyRecordStore,
        settings: FleetSettings,
        service: str,
        codec: OutcomeCodec | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.service = service
        self.codec = OutcomeCodec() if codec is None else codec
        self._owned: dict[str, SharedClaim] = {}
        self._wakeups: dict[str, trio.Event] = {}
        self._claims = self._takeovers = self._replays = self._joins = self._conflicts = 0
        self._finished = self._fenced = self._lost = self._failures = 0

    # ------------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen for finished keys and renew owned claims, until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._listen)
            nursery.start_soon(self._renew_loop)
            task_status.started()

    async def _listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self.store.listen(self._wake, on_subscribed=self._wake_all, task_status=task_status)

    def _wake(self, key: str) -> None:
        event = self._wakeups.pop(key, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        # A (re)subscription may have missed messages: every joiner looks again.
        for event in self._wakeups.values():
            event.set()
        self._wakeups.clear()

    async def _renew_loop(self) -> None:
        lease = self.settings.idempotency_lease
        while True:
            await trio.sleep(lease / 3)
            claims = list(self._owned.values())
            if not claims:
                continue
            try:
                kept = await self.store.renew(
                    [c.key for c in claims], [c.token for c in claims], lease
                )
            except FleetStoreUnavailable:
                self._failures += 1
                continue
            for claim, ok in zip(claims, kept, strict=True):
                if not ok and not claim.lost:
                    claim.lost = True
                    self._lost += 1
                    _log.warning(
                        "idempotency key %r of %s: claim lost (its lease lapsed and another "
                        "instance may have taken it over)", claim.key, self.service,
                    )  # fmt: skip

    # ------------------------------------------------------------------------ calls

    async def begin(
        self, key: str, request: object = None, *, fingerprint: str | None = None
    ) -> SharedClaim | Completed:
        """Claim ``key`` for a call with ``request``, or get the fleet's outcome for it.

        ``fingerprint`` (a :func:`stable_fingerprint`) may be given instead of ``request``.
        Waits while another instance runs the key (see the module docstring); cancellable.

        Raises:
            IdempotencyConflict: ``key`` is held with a different request.
            FleetStoreUnavailable: the store did not answer within its deadline.
            TypeError: ``request`` cannot be fingerprinted.
        """
        if not isinstance(key, str):
            raise TypeError(f"an idempotency key must be a str, not {type(key).__name__}")
        fp = stable_fingerprint(request) if fingerprint is None else fingerprint
        token = secrets.token_hex(12)
        lease = self.settings.idempotency_lease
        waited = False
        while True:
            try:
                reply = await self.store.claim(key, fp, token, lease)
            except FleetStoreUnavailable:
                self._failures += 1
                raise
            if reply.outcome == "claimed":
                claim = SharedClaim(key, token, fp, took_over=waited)
                self._owned[token] = claim
                self._claims += 1
                self._takeovers += waited
                return claim
            if reply.outcome == "conflict":
                self._conflicts += 1
                raise IdempotencyConflict(key=key)
            if reply.outcome in ("done", "failed"):
                self._replays += 1
                value, failed = self.codec.decode(reply.data, service=self.service)
                return Completed(value, failed)
            if not waited:
                self._joins += 1
                waited = True
            wakeup = self._wakeups.get(key)
            if wakeup is None:
                wakeup = self._wakeups[key] = trio.Event()
            pause = min(self.settings.idempotency_poll, reply.lease_ms / 1000.0 + 0.001)
            with trio.move_on_after(pause):
                await wakeup.wait()

    async def complete(self, claim: SharedClaim, value: object) -> bool:
        """Store ``value`` as the key's outcome; False when the claim was lost (fenced).

        Raises TypeError when the value cannot be encoded (the claim is then released),
        FleetStoreUnavailable when the store does not answer (the claim lapses by itself).
        """
        try:
            data = self.codec.encode_value(value)
        except TypeError:
            await self.abandon(claim)
            raise
        return await self._finish(claim, data, failed=False)

    async def fail(self, claim: SharedClaim, error: BaseException, *, transient: bool) -> bool:
        """The call failed: store ``error`` as the outcome, or, if ``transient``, release the
        key so a later call runs again.  False when the claim was lost."""
        if transient:
            return await self.abandon(claim)
        return await self._finish(claim, self.codec.encode_error(error), failed=True)

    async def finish(
        self, claim: SharedClaim, outcome: object, *, failed: bool, transient: bool
    ) -> bool:
        """Store the claimed call's outcome: a value, or an error (``failed``); a transient
        error releases the key instead, so a later call runs again.

        A value the codec cannot encode is stored as a failure saying so (a joiner on another
        instance then gets an error rather than running the call a second time), and logged.
        False when the claim was lost.  Raises FleetStoreUnavailable.
        """
        if failed:
            assert isinstance(outcome, BaseException)
            return await self.fail(claim, outcome, transient=transient)
        try:
            data = self.codec.encode_value(outcome)
        except TypeError as exc:
            _log.warning(
                "idempotency key %r of %s: %s; the fleet keeps an error in its place",
                claim.key, self.service, exc,
            )  # fmt: skip
            refused = ProviderError(
                f"the outcome of this key's call could not be shared with the fleet ({exc})",
                service=self.service,
                category=ErrorCategory.VALIDATION,
            )
            return await self._finish(claim, self.codec.encode_error(refused), failed=True)
        return await self._finish(claim, data, failed=False)

    def forget(self, claim: SharedClaim) -> None:
        """Stop renewing ``claim`` without telling the store (its outcome could not be sent):
        it lapses after its lease."""
        self._owned.pop(claim.token, None)

    def owned(self) -> list[SharedClaim]:
        """The claims this instance holds now."""
        return list(self._owned.values())

    async def abandon(self, claim: SharedClaim) -> bool:
        """Release the claim without an outcome (the caller gave up): a joiner may claim the
        key at once.  False when the claim was lost."""
        self._owned.pop(claim.token, None)
        try:
            released = await self.store.release(claim.key, claim.token)
        except FleetStoreUnavailable:
            self._failures += 1
            raise
        if not released:
            self._fenced += 1
        return released

    async def _finish(self, claim: SharedClaim, data: bytes, *, failed: bool) -> bool:
        self._owned.pop(claim.token, None)
        s = self.settings
        try:
            stored = await self.store.finish(
                claim.key, claim.token, data, failed, s.idempotency_ttl, s.idempotency_max_records
            )
        except FleetStoreUnavailable:
            self._failures += 1
            raise
        if stored:
            self._finished += 1
        else:
            self._fenced += 1
            claim.lost = True
        return stored

    def statistics(self) -> SharedIdempotencyStatistics:
        """Counters of this tier."""
        return SharedIdempotencyStatistics(
            service=self.service,
            owned=len(self._owned),
            claims=self._claims,
            takeovers=self._takeovers,
            replays=self._replays,
            joins=self._joins,
            conflicts=self._conflicts,
            finished=self._finished,
            fenced=self._fenced,
            lost=self._lost,
            failures=self._failures,
        )
