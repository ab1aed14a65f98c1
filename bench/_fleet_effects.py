"""Saga step targets that apply each effect exactly once across a fleet, and their ground truth.

Theory of operation
-------------------
When an instance dies, a survivor takes its sagas over and re-sends each step in flight with
the same idempotency key, from another process.  For the step to take effect once across the
fleet, its target must dedupe by key through a store every instance shares *and* apply the
effect atomically with the key's outcome record: a process killed between applying an effect
and recording it would have the next claimant apply it again.

:class:`FleetTarget` does both with the shared idempotency store's records (Redis,
:class:`~actors._fleet._idempotency_store.RedisIdempotencyStore`: one record per key, claimed
as a fenced lease).  It claims the key; a key finished anywhere in the fleet answers its stored
outcome; a key another live instance holds is waited for; a key whose claimant died is claimed
again once its lease lapses.  The effect is then applied by the same Lua script that finishes
the record, and only while the claim still holds (:data:`APPLY`): a claimant frozen past its
lease applies nothing, since its successor's claim is the one that counts.  Effects here are
entries of the hash ``{prefix}:effects``, counted by *what they are* (saga, step, do or
compensate, from the message), not by key: a coordinator that sent one step under two keys,
or drove one saga from two instances with different keys, would show a double.

:func:`audit` checks finished sagas against those counts: every effect and compensation at
most once, completed sagas with every step's effect, compensated ones with each effect that
happened undone.
"""

from __future__ import annotations

import math
import secrets
import zlib
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, Final

import msgspec
import trio

from actors import Actor, Failure
from actors._errors import FleetStoreUnavailable, IdempotencyConflict
from actors._fleet._client import LUA_PRELUDE, LuaScript, StoreClient
from actors._fleet._idempotency_codec import stable_fingerprint
from actors._fleet._idempotency_store import RedisIdempotencyStore
from actors._saga._definition import SagaStepMessage

__all__ = [
    "APPLY",
    "Declined",
    "Effects",
    "FleetTarget",
    "audit",
    "declined",
    "effects_key",
    "read_effects",
]

#: KEYS: the key's record, the effects hash.  ARGV: token, effect field ('' for none), final
#: state, encoded outcome, ttl_ms, channel, key.  1 if applied (the claim held), else 0.
APPLY: Final = LuaScript(
    "fleet-effects.apply",
    LUA_PRELUDE
    + """
local h = redis.call('HMGET', KEYS[1], 'st', 'tok')
if h[1] ~= 'running' or h[2] ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[2], 1) end
redis.call('HSET', KEYS[1], 'st', ARGV[3], 'out', ARGV[4], 'at', now_ms())
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
""",
)

#: How long a finished outcome is kept (seconds): longer than any run.
OUTCOME_TTL: Final = 24 * 3600.0

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.decode


class Declined(ValueError):
    """A step the service refuses for good (the same answer at every attempt)."""


def effects_key(prefix: str) -> str:
    """The hash counting the effects applied under ``prefix``."""
    return f"{prefix}:effects"


def declined(saga_id: str, step: str, seed: int, rate: float) -> bool:
    """Whether the service declines ``step`` of ``saga_id`` (a fixed verdict per seed)."""
    digest = zlib.crc32(f"{seed}:{saga_id}:{step}".encode())
    return digest < rate * 2**32


class Effects:
    """Applies effects once across a fleet: one service's records in the shared store (see the
    module docstring).  :class:`FleetTarget` uses it for saga step messages; a provider's
    service function can use it for keyed calls."""

    def __init__(self, client: StoreClient, prefix: str, service: str, *, lease: float) -> None:
        self.client = client
        self.store = RedisIdempotencyStore(client, prefix, service)
        self.hash = effects_key(prefix)
        self.lease = lease

    async def apply(
        self,
        key: str,
        payload: Any,
        field: str,
        value: Any,
        *,
        failed: bool = False,
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> Any:
        """Apply the effect ``field`` (counted in the effects hash; ``""`` for none) under
        ``key`` once across the fleet and return its outcome (``value``, stored with the key;
        ``failed``: stored as a failure).  A key finished anywhere answers its stored outcome;
        a key another live claimant holds is waited for; ``before()`` runs once the key is
        claimed, before the effect (a service's latency).  Cancelled between the claim and the
        effect, nothing is applied and the key is claimed again once the claim lapses."""
        fingerprint = stable_fingerprint(payload)
        token = secrets.token_hex(12)
        while True:
            reply = await self.store.claim(key, fingerprint, token, self.lease)
            if reply.outcome == "conflict":
                return Failure(IdempotencyConflict(key=key))
            if reply.outcome in ("done", "failed"):
                return _outcome(reply.data)
            if reply.outcome == "running":  # another claimant: wait for it (or its lease)
                await trio.sleep(min(0.02, reply.lease_ms / 1000.0 + 0.001))
                continue
            if before is not None:
                await before()
            applied = await self.client.script(
                "fleet-effects.apply",
                APPLY,
                [self.store.record_key(key), self.hash],
                [
                    token,
                    field,
                    "failed" if failed else "done",
                    _encode(value),
                    max(1, math.ceil(OUTCOME_TTL * 1000)),
                    self.store.channel,
                    key,
                ],
            )
            if int(applied):
                return _outcome(_encode(value))
            # The claim lapsed while this instance was frozen: whoever holds the key now
            # applies it; ask again for the outcome.


class FleetTarget(Actor[Any, Any]):
    """A saga step target shared by a fleet (see the module docstring).

    Args:
        client: the shared store's client.
        prefix: the store's key prefix (records and the effects hash live under it).
        service: the service's name (records are per service).
        lease: seconds a claim lasts: a claimant that dies holds the key this long.
        declines: ``declines(message)``: whether the service refuses this step for good.
        latency: ``latency()``: seconds the service takes (default none).
    """

    def __init__(
        self,
        client: StoreClient,
        prefix: str,
        service: str,
        *,
        lease: float = 1.0,
        declines: Callable[[SagaStepMessage], bool] | None = None,
        latency: Callable[[], float] | None = None,
    ) -> None:
        self.effects = Effects(client, prefix, service, lease=lease)
        self.declines = declines
        self.latency = latency

    async def handle(self, message: Any) -> Any:
        if not isinstance(message, SagaStepMessage):
            return Failure(TypeError(f"expected a SagaStepMessage, got {type(message).__name__}"))
        try:
            return await self._apply(message)
        except FleetStoreUnavailable as exc:  # a transient failure: the saga retries
            return Failure(exc)

    async def _apply(self, message: SagaStepMessage) -> Any:
        refused = not message.compensate and (self.declines is not None and self.declines(message))
        kind = "compensate" if message.compensate else "do"
        return await self.effects.apply(
            message.key,
            message.payload,
            "" if refused else f"{message.saga_id}:{message.step}:{kind}",
            {"declined": message.key} if refused else {kind: message.key},
            failed=refused,
            before=lambda: self.before_apply(message),
        )

    async def before_apply(self, message: SagaStepMessage) -> None:
        """Runs once the key is claimed, before the effect: the service's latency."""
        if self.latency is not None:
            await trio.sleep(self.latency())


def _outcome(data: bytes) -> Any:
    value = _decode(data)
    if isinstance(value, dict) and "declined" in value:
        return Failure(Declined(f"the service declined {value['declined']}"))
    return value


async def read_effects(client: StoreClient, prefix: str) -> dict[str, int]:
    """Every effect applied under ``prefix``: ``"{saga}:{step}:{do|compensate}"`` -> count."""
    key = effects_key(prefix)
    raw = await client.call("fleet-effects.read", lambda redis: redis.hgetall(key))
    return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}


def audit(
    sagas: Iterable[tuple[str, str]],
    effects: dict[str, int],
    steps: tuple[str, ...],
    compensatable: frozenset[str],
    *,
    left_to_operator: Collection[str] = (),
) -> list[str]:
    """Violations of exactly-once among finished sagas ``(saga_id, outcome)``: an effect or a
    compensation applied twice; a completed saga missing an effect or with a compensation; a
    compensated one with an effect left undone; any other outcome, except those in
    ``left_to_operator`` (``compensation_failed`` where a failure was injected on purpose:
    only "never twice" is checked for them).  Empty when every saga is right."""
    problems: list[str] = []
    for saga_id, outcome in sagas:
        done = {step: effects.get(f"{saga_id}:{step}:do", 0) for step in steps}
        undone = {step: effects.get(f"{saga_id}:{step}:compensate", 0) for step in steps}
        twice = [f"{s} x{n}" for s, n in done.items() if n > 1]
        twice += [f"undo {s} x{n}" for s, n in undone.items() if n > 1]
        if twice:
            problems.append(f"saga {saga_id} ({outcome}): applied more than once: {twice}")
        if outcome == "completed":
            if any(n != 1 for n in done.values()) or any(undone.values()):
                problems.append(f"completed saga {saga_id}: effects {done}, undone {undone}")
        elif outcome in ("compensated", "failed", "cancelled"):
            left = [s for s in compensatable if done[s] and not undone[s]]
            if left:
                problems.append(f"{outcome} saga {saga_id}: {left} not undone")
        elif outcome not in left_to_operator:
            problems.append(f"saga {saga_id} ended {outcome}")
    return problems
