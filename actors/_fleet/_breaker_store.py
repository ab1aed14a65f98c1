"""The fleet breaker store: its protocol, the Redis store, and the in-memory store for tests.

Theory of operation
-------------------
:class:`BreakerStore` is what a fleet member needs from the shared store: heartbeats, a read of
several providers' shared breakers in one round trip, the four epoch-checked changes (a trip
vote, taking the probe lease, settling the probe, an operator's isolate or reset), and a
subscription to changes.  Every change answers a :class:`BreakerReply`: what happened
(``opened``, ``voted``, ``stale``, ...) and the breaker as it is now, so the caller's view is
up to date without another read.

:class:`RedisBreakerStore` runs the Lua scripts of ``actors._fleet._breaker_lua``;
:class:`MemoryBreakerStore` applies the same rules to a
:class:`~actors._fleet._memory.MemoryServer` (the contract tests hold them to one behaviour).
Times cross the store boundary only as milliseconds remaining on the server's clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, Protocol

import attrs
import msgspec
import trio

from actors._fleet import _breaker_lua as lua
from actors._fleet._client import StoreClient
from actors._fleet._memory import MemoryServer

__all__ = [
    "BreakPolicy",
    "BreakerReply",
    "BreakerSnapshot",
    "BreakerStore",
    "MemoryBreakerStore",
    "QuorumPolicy",
    "RedisBreakerStore",
    "TripScope",
]

#: ``"local"``: a failure on this instance's own path (timeout, network, unknown), which needs
#: a quorum of instances; ``"wide"``: the provider said it is failing for everyone (rate limit,
#: 5xx), which needs one instance.
TripScope = Literal["local", "wide"]


class BreakerSnapshot(msgspec.Struct, frozen=True, array_like=True):
    """The shared breaker of one provider as the store saw it (times in ms remaining).

    Attributes:
        name: the provider.
        state: ``closed`` | ``open`` | ``half_open`` | ``isolated``.
        epoch: +1 on every state change (0 for a provider never tripped).
        open_ms: while open, ms until the break ends (0 once it is over).
        break_ms: the current break length (0 before the first trip).
        streak: trips since the breaker last closed.
        probe_owner: while half-open, the instance holding the probe lease (else ``""``).
        probe_ms: while half-open, ms left on the probe lease.
        votes: unexpired trip votes.
    """

    name: str
    state: str
    epoch: int
    open_ms: int
    break_ms: int
    streak: int
    probe_owner: str
    probe_ms: int
    votes: int


class BreakerReply(msgspec.Struct, frozen=True):
    """What a change did (``outcome``) and the breaker after it; ``live`` instances when the
    operation counted them, else -1."""

    outcome: str
    live: int
    snapshot: BreakerSnapshot


@attrs.frozen
class BreakPolicy:
    """Break lengths in ms: ``base`` for the first trip, times ``factor`` per reopening, capped
    at ``maximum`` (from the provider's ``BreakerSettings``)."""

    base: int
    factor: float
    maximum: int

    @classmethod
    def from_seconds(cls, base: float, factor: float = 1.0, maximum: float = 600.0) -> BreakPolicy:
        """From seconds, as ``BreakerSettings`` states them."""
        base_ms = max(1, math.ceil(base * 1000))
        return cls(base_ms, float(factor), max(base_ms, math.ceil(maximum * 1000)))


@attrs.frozen
class QuorumPolicy:
    """Votes needed for path-local trips: ``max(minimum, ceil(ratio * live))`` capped at live."""

    ratio: float
    minimum: int

    def needed(self, live: int) -> int:
        """The votes needed with ``live`` live instances (at least 1)."""
        needed = max(self.minimum, math.ceil(self.ratio * live - 1e-9))
        return max(1, min(needed, live))


class BreakerStore(Protocol):
    """The shared breaker state of a fleet (see the module docstring).

    Every method makes one round trip and raises
    :class:`~actors._errors.FleetStoreUnavailable` when the store cannot be reached in time.
    """

    async def heartbeat(self, instance: str, ttl: float) -> int:
        """Mark ``instance`` live for ``ttl`` seconds; return the number of live instances."""
        ...

    async def leave(self, instance: str) -> None:
        """Drop ``instance`` from the live set (an orderly exit)."""
        ...

    async def read(self, names: Sequence[str]) -> tuple[int, list[BreakerSnapshot]]:
        """The live instance count and each named provider's shared breaker."""
        ...

    async def trip(
        self,
        name: str,
        instance: str,
        epoch: int,
        scope: TripScope,
        retry_after: float,
        breaks: BreakPolicy,
        quorum: QuorumPolicy,
        vote_ttl: float,
        instance_ttl: float,
    ) -> BreakerReply:
        """``instance``'s local breaker tripped: vote, and open at the quorum."""
        ...

    async def acquire_probe(
        self, name: str, instance: str, epoch: int, lease: float
    ) -> BreakerReply:
        """Take the fleet-wide probe lease (``granted``) if the break is over and it is free."""
        ...

    async def settle_probe(
        self,
        name: str,
        instance: str,
        epoch: int,
        ok: bool,
        retry_after: float,
        breaks: BreakPolicy,
    ) -> BreakerReply:
        """The lease holder's probe outcome: close (ok) or reopen with the grown break."""
        ...

    async def operate(
        self, name: str, action: Literal["isolate", "reset"], breaks: BreakPolicy
    ) -> BreakerReply:
        """An operator's fleet-wide isolate or reset (unconditional)."""
        ...

    async def listen(
        self,
        on_change: Callable[[BreakerSnapshot], None],
        *,
        on_subscribed: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_change`` for every published change until cancelled (see
        ``StoreClient.listen`` for resubscription)."""
        ...


def _ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _snapshot(raw: Sequence[Any]) -> BreakerSnapshot:
    name, state, epoch, open_ms, break_ms, streak, owner, probe_ms, votes = raw
    return BreakerSnapshot(
        _text(name),
        _text(state),
        int(epoch),
        int(open_ms),
        int(break_ms),
        int(streak),
        _text(owner),
        int(probe_ms),
        int(votes),
    )


def _reply(raw: Sequence[Any]) -> BreakerReply:
    return BreakerReply(_text(raw[0]), int(raw[1]), _snapshot(raw[2]))


_decode_change: Final = msgspec.json.Decoder(BreakerSnapshot).decode


class RedisBreakerStore:
    """:class:`BreakerStore` on a Redis-protocol server through a :class:`StoreClient`."""

    def __init__(self, client: StoreClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.instances_key = f"{prefix}:instances"
        self.channel = f"{prefix}:breaker"

    def _keys(self, name: str) -> list[str]:
        return [f"{self.prefix}:breaker:state:{name}", f"{self.prefix}:breaker:votes:{name}"]

    async def heartbeat(self, instance: str, ttl: float) -> int:
        """See :meth:`BreakerStore.heartbeat`."""
        live = await self.client.script(
            "fleet.heartbeat", lua.HEARTBEAT, [self.instances_key], [instance, _ms(ttl)]
        )
        return int(live)

    async def leave(self, instance: str) -> None:
        """See :meth:`BreakerStore.leave`."""
        key = self.instances_key
        await self.client.call("fleet.leave", lambda redis: redis.zrem(key, [instance]))

    async def read(self, names: Sequence[str]) -> tuple[int, list[BreakerSnapshot]]:
        """See :meth:`BreakerStore.read`."""
        keys = [self.instances_key]
        for name in names:
            keys.extend(self._keys(name))
        raw = await self.client.script("breaker.read", lua.READ, keys, list(names))
        return int(raw[0]), [_snapshot(item) for item in raw[1:]]

    async def trip(
        self,
        name: str,
        instance: str,
        epoch: int,
        scope: TripScope,
        retry_after: float,
        breaks: BreakPolicy,
        quorum: QuorumPolicy,
        vote_ttl: float,
        instance_ttl: float,
    ) -> BreakerReply:
        """See :meth:`BreakerStore.trip`."""
        args = [
            name, instance, epoch, scope, _ms(retry_after), breaks.base, repr(breaks.factor),
            breaks.maximum, _ms(vote_ttl), _ms(instance_ttl), repr(quorum.ratio), quorum.minimum,
            self.channel,
        ]  # fmt: skip
        keys = [self.instances_key, *self._keys(name)]
        return _reply(await self.client.script("breaker.trip", lua.TRIP, keys, args))

    async def acquire_probe(
        self, name: str, instance: str, epoch: int, lease: float
    ) -> BreakerReply:
        """See :meth:`BreakerStore.acquire_probe`."""
        args = [name, instance, epoch, _ms(lease), self.channel]
        return _reply(await self.client.script("breaker.probe", lua.PROBE, self._keys(name), args))

    async def settle_probe(
        self,
        name: str,
        instance: str,
        epoch: int,
        ok: bool,
        retry_after: float,
        breaks: BreakPolicy,
    ) -> BreakerReply:
        """See :meth:`BreakerStore.settle_probe`."""
        args = [
            name, instance, epoch, "1" if ok else "0", _ms(retry_after), breaks.base,
            repr(breaks.factor), breaks.maximum, self.channel,
        ]  # fmt: skip
        raw = await self.client.script("breaker.settle", lua.SETTLE, self._keys(name), args)
        return _reply(raw)

    async def operate(
        self, name: str, action: Literal["isolate", "reset"], breaks: BreakPolicy
    ) -> BreakerReply:
        """See :meth:`BreakerStore.operate`."""
        args = [name, action, breaks.base, self.channel]
        raw = await self.client.script(f"breaker.{action}", lua.OPERATE, self._keys(name), args)
        return _reply(raw)

    async def listen(
        self,
        on_change: Callable[[BreakerSnapshot], None],
        *,
        on_subscribed: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """See :meth:`BreakerStore.listen`."""

        def deliver(channel: str, data: bytes) -> None:
            try:
                change = _decode_change(data)
            except msgspec.DecodeError:
                return  # not ours (another writer on the channel): ignore it
            on_change(change)

        await self.client.listen(
            [self.channel], deliver, on_subscribed=on_subscribed, task_status=task_status
        )


# --------------------------------------------------------------------------- in memory

_encode_change: Final = msgspec.json.Encoder().encode


class _Breaker:
    """One provider's shared breaker in a MemoryServer (the Lua scripts' hash, as fields)."""

    __slots__ = ("brk", "ep", "plu", "probe", "st", "streak", "until", "votes")

    def __init__(self) -> None:
        self.st = "closed"
        self.ep = 0
        self.until = 0
        self.brk = 0
        self.streak = 0
        self.probe = ""
        self.plu = 0
        self.votes: dict[str, int] = {}

    def snap(self, name: str, now: int) -> BreakerSnapshot:
        return BreakerSnapshot(
            name,
            self.st,
            self.ep,
            max(0, self.until - now) if self.st == "open" else 0,
            self.brk,
            self.streak,
            self.probe,
            max(0, self.plu - now) if self.st == "half_open" else 0,
            sum(1 for expiry in self.votes.values() if expiry > now),
        )


class MemoryBreakerStore:
    """:class:`BreakerStore` on a :class:`~actors._fleet._memory.MemoryServer` (tests)."""

    def __init__(self, server: MemoryServer, prefix: str = "aura") -> None:
        self.server = server
        self.prefix = prefix
        self.channel = f"{prefix}:breaker"
        self._instances_key = f"{prefix}:instances"

    def _instances(self) -> dict[str, int]:
        found: dict[str, int] = self.server.data.setdefault(self._instances_key, {})
        return found

    def _breaker(self, name: str) -> _Breaker:
        key = f"{self.prefix}:breaker:state:{name}"
        found = self.server.data.get(key)
        if found is None:
            found = self.server.data[key] = _Breaker()
        assert isinstance(found, _Breaker)
        return found

    def _live(self, now: int) -> int:
        instances = self._instances()
        for instance in [i for i, expiry in instances.items() if expiry <= now]:
            del instances[instance]
        return len(instances)

    def _publish(self, snapshot: BreakerSnapshot) -> None:
        self.server.publish(self.channel, _encode_change(snapshot))

    async def heartbeat(self, instance: str, ttl: float) -> int:
        """See :meth:`BreakerStore.heartbeat`."""
        now = await self.server.begin("fleet.heartbeat")
        self._instances()[instance] = now + _ms(ttl)
        return self._live(now)

    async def leave(self, instance: str) -> None:
        """See :meth:`BreakerStore.leave`."""
        await self.server.begin("fleet.leave")
        self._instances().pop(instance, None)

    async def read(self, names: Sequence[str]) -> tuple[int, list[BreakerSnapshot]]:
        """See :meth:`BreakerStore.read`."""
        now = await self.server.begin("breaker.read")
        live = sum(1 for expiry in self._instances().values() if expiry > now)
        return live, [self._breaker(name).snap(name, now) for name in names]

    async def trip(
        self,
        name: str,
        instance: str,
        epoch: int,
        scope: TripScope,
        retry_after: float,
        breaks: BreakPolicy,
        quorum: QuorumPolicy,
        vote_ttl: float,
        instance_ttl: float,
    ) -> BreakerReply:
        """See :meth:`BreakerStore.trip`."""
        now = await self.server.begin("breaker.trip")
        self._instances()[instance] = now + _ms(instance_ttl)
        live = self._live(now)
        b = self._breaker(name)
        retry = _ms(retry_after)
        if b.ep != epoch:
            return BreakerReply("stale", live, b.snap(name, now))
        if b.st == "open":
            if scope == "wide" and now + retry > b.until:
                b.until = now + retry
                snapshot = b.snap(name, now)
                self._publish(snapshot)
                return BreakerReply("extended", live, snapshot)
            return BreakerReply("ignored", live, b.snap(name, now))
        if b.st != "closed":
            return BreakerReply("ignored", live, b.snap(name, now))
        b.votes[instance] = now + _ms(vote_ttl)
        b.votes = {i: expiry for i, expiry in b.votes.items() if expiry > now}
        needed = 1 if scope == "wide" else quorum.needed(live)
        if len(b.votes) < needed:
            return BreakerReply("voted", live, b.snap(name, now))
        b.st, b.ep, b.until = "open", b.ep + 1, now + max(breaks.base, retry)
        b.brk, b.streak, b.probe, b.plu, b.votes = breaks.base, 1, "", 0, {}
        snapshot = b.snap(name, now)
        self._publish(snapshot)
        return BreakerReply("opened", live, snapshot)

    async def acquire_probe(
        self, name: str, instance: str, epoch: int, lease: float
    ) -> BreakerReply:
        """See :meth:`BreakerStore.acquire_probe`."""
        now = await self.server.begin("breaker.probe")
        b = self._breaker(name)
        if b.ep != epoch:
            return BreakerReply("stale", -1, b.snap(name, now))
        free = (b.st == "open" and now >= b.until) or (
            b.st == "half_open" and (now >= b.plu or b.probe == instance)
        )
        if not free:
            return BreakerReply("denied", -1, b.snap(name, now))
        b.st, b.ep, b.probe, b.plu = "half_open", b.ep + 1, instance, now + _ms(lease)
        snapshot = b.snap(name, now)
        self._publish(snapshot)
        return BreakerReply("granted", -1, snapshot)

    async def settle_probe(
        self,
        name: str,
        instance: str,
        epoch: int,
        ok: bool,
        retry_after: float,
        breaks: BreakPolicy,
    ) -> BreakerReply:
        """See :meth:`BreakerStore.settle_probe`."""
        now = await self.server.begin("breaker.settle")
        b = self._breaker(name)
        if b.ep != epoch or b.st != "half_open" or b.probe != instance:
            return BreakerReply("stale", -1, b.snap(name, now))
        if ok:
            b.st, b.ep, b.until, b.brk, b.streak = "closed", b.ep + 1, 0, breaks.base, 0
            b.probe, b.plu, b.votes = "", 0, {}
            outcome = "closed"
        else:
            streak = b.streak + 1
            brk = math.floor(min(breaks.maximum, breaks.base * breaks.factor ** (streak - 1)))
            b.st, b.ep, b.until = "open", b.ep + 1, now + max(brk, _ms(retry_after))
            b.brk, b.streak, b.probe, b.plu = brk, streak, "", 0
            outcome = "reopened"
        snapshot = b.snap(name, now)
        self._publish(snapshot)
        return BreakerReply(outcome, -1, snapshot)

    async def operate(
        self, name: str, action: Literal["isolate", "reset"], breaks: BreakPolicy
    ) -> BreakerReply:
        """See :meth:`BreakerStore.operate`."""
        now = await self.server.begin(f"breaker.{action}")
        b = self._breaker(name)
        if action == "isolate":
            b.st, b.ep, b.probe, b.plu = "isolated", b.ep + 1, "", 0
            outcome = "isolated"
        else:
            b.st, b.ep, b.until, b.brk, b.streak = "closed", b.ep + 1, 0, breaks.base, 0
            b.probe, b.plu, b.votes = "", 0, {}
            outcome = "reset"
        snapshot = b.snap(name, now)
        self._publish(snapshot)
        return BreakerReply(outcome, -1, snapshot)

    async def listen(
        self,
        on_change: Callable[[BreakerSnapshot], None],
        *,
        on_subscribed: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """See :meth:`BreakerStore.listen`."""

        def deliver(channel: str, data: bytes) -> None:
            on_change(_decode_change(data))

        await self.server.listen(
            [self.channel], deliver, on_subscribed=on_subscribed, task_status=task_status
        )
