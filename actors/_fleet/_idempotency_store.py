"""The shared idempotency store: one record per key, claims as fenced leases.

Theory of operation
-------------------
A record ``{prefix}:idem:{service}:rec:{key}`` is a hash:

=======  ==========================================================================
``fp``   the request's stable fingerprint (a different one is a conflict)
``st``   ``running`` | ``done`` | ``failed``
``tok``  the owner's token: only it may renew, finish or release the claim (fencing)
``out``  the encoded outcome, once finished; ``at`` the server time it finished (ms)
=======  ==========================================================================

A **claim** creates a running record that expires after the lease (``PEXPIRE``): the owner
renews it while the call runs, so the lease lapses only when the owner stops renewing (it died,
or lost the store).  A lapsed claim is simply gone, so the next claim takes the key over; the
old owner's late finish then finds another token (or no record) and is refused.  Claiming again
with the owner's own token renews.  **Finish** stores the outcome, keeps it for the TTL, and
enters it in the finished index ``{prefix}:idem:{service}:done`` (a sorted set by finish
time); past ``max_records`` the oldest finished records are deleted, never a running one.
The index has no expiry of its own: it is bounded by ``max_records`` and drops entries older
than the TTL on every finish.
**Release** deletes a running claim without an outcome (the caller gave up, or the failure was
transient and may be retried), so a waiting joiner can claim it at once.  Finishing and
releasing publish the key on ``{prefix}:idem:{service}``, which wakes joiners on every
instance.

:class:`RedisIdempotencyStore` runs this as Lua scripts; :class:`MemoryIdempotencyStore`
applies the same rules to a :class:`~actors._fleet._memory.MemoryServer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, Protocol

import msgspec
import trio

from actors._fleet._client import LUA_PRELUDE, LuaScript, StoreClient
from actors._fleet._memory import MemoryServer

__all__ = [
    "ClaimReply",
    "IdempotencyRecordStore",
    "MemoryIdempotencyStore",
    "RedisIdempotencyStore",
]

ClaimOutcome = Literal["claimed", "running", "done", "failed", "conflict"]


class ClaimReply(msgspec.Struct, frozen=True):
    """The answer to a claim.

    Attributes:
        outcome: ``claimed`` (the caller owns the key now), ``running`` (another owner),
            ``done`` / ``failed`` (finished: ``data`` is the encoded outcome), ``conflict``
            (the key is held with another fingerprint).
        lease_ms: while ``running``, ms left on the owner's lease.
        data: the encoded outcome when finished.
    """

    outcome: ClaimOutcome
    lease_ms: int = 0
    data: bytes = b""


class IdempotencyRecordStore(Protocol):
    """Shared idempotency records (see the module docstring); one round trip per method,
    :class:`~actors._errors.FleetStoreUnavailable` when the store cannot be reached."""

    async def claim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimReply:
        """Claim ``key`` for ``token`` (or renew it), or say who holds it or how it ended."""
        ...

    async def renew(self, keys: Sequence[str], tokens: Sequence[str], lease: float) -> list[bool]:
        """Renew each claim whose owner is still the token; False for each claim lost."""
        ...

    async def finish(
        self, key: str, token: str, data: bytes, failed: bool, ttl: float, max_records: int
    ) -> bool:
        """Store the outcome if ``token`` still owns ``key``; False when fenced off."""
        ...

    async def release(self, key: str, token: str) -> bool:
        """Delete ``token``'s running claim without an outcome; False when not the owner."""
        ...

    async def listen(
        self,
        on_key: Callable[[str], None],
        *,
        on_subscribed: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_key`` for every key finished or released, until cancelled."""
        ...


_PRELUDE: Final = LUA_PRELUDE

#: KEYS: record.  ARGV: fingerprint, token, lease_ms.
_CLAIM: Final = LuaScript(
    "idempotency.claim",
    _PRELUDE
    + """
local h = redis.call('HMGET', KEYS[1], 'fp', 'st', 'tok', 'out')
if not h[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'st', 'running', 'tok', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  return {'claimed', 0, ''}
end
if h[1] ~= ARGV[1] then return {'conflict', 0, ''} end
if h[2] == 'running' then
  if h[3] == ARGV[2] then
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
    return {'claimed', 0, ''}
  end
  return {'running', math.max(0, redis.call('PTTL', KEYS[1])), ''}
end
return {h[2], 0, h[4] or ''}
""",
)

#: KEYS: records.  ARGV: lease_ms, then one token per record.  Returns 1/0 per record.
_RENEW: Final = LuaScript(
    "idempotency.renew",
    _PRELUDE
    + """
local out = {}
for i = 1, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'st', 'tok')
  if h[1] == 'running' and h[2] == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]))
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
""",
)

#: KEYS: record, index.  ARGV: token, state, data, ttl_ms, max_records, channel, key.
_FINISH: Final = LuaScript(
    "idempotency.finish",
    _PRELUDE
    + """
local h = redis.call('HMGET', KEYS[1], 'st', 'tok')
if h[1] ~= 'running' or h[2] ~= ARGV[1] then return 0 end
local now = now_ms()
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'st', ARGV[2], 'out', ARGV[3], 'at', now)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #old, 2 do
    local r = redis.call('HMGET', old[i], 'st', 'at')
    if r[1] and r[1] ~= 'running' and tonumber(r[2]) == tonumber(old[i + 1]) then
      redis.call('DEL', old[i])
    end
  end
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
""",
)

#: KEYS: record.  ARGV: token, channel, key.
_RELEASE: Final = LuaScript(
    "idempotency.release",
    _PRELUDE
    + """
local h = redis.call('HMGET', KEYS[1], 'st', 'tok')
if h[1] ~= 'running' or h[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
""",
)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisIdempotencyStore:
    """:class:`IdempotencyRecordStore` for one service on a Redis-protocol server."""

    def __init__(self, client: StoreClient, prefix: str, service: str) -> None:
        self.client = client
        self._base = f"{prefix}:idem:{service}"
        self._index = f"{self._base}:done"
        self.channel = self._base

    def record_key(self, key: str) -> str:
        """The Redis key of ``key``'s record."""
        return f"{self._base}:rec:{key}"

    async def claim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimReply:
        """See :meth:`IdempotencyRecordStore.claim`."""
        raw = await self.client.script(
            "idempotency.claim", _CLAIM, [self.record_key(key)], [fingerprint, token, _ms(lease)]
        )
        data = raw[2]
        outcome: Any = _text(raw[0])
        return ClaimReply(outcome, int(raw[1]), data if isinstance(data, bytes) else b"")

    async def renew(self, keys: Sequence[str], tokens: Sequence[str], lease: float) -> list[bool]:
        """See :meth:`IdempotencyRecordStore.renew`."""
        if not keys:
            return []
        records = [self.record_key(key) for key in keys]
        raw = await self.client.script("idempotency.renew", _RENEW, records, [_ms(lease), *tokens])
        return [bool(int(item)) for item in raw]

    async def finish(
        self, key: str, token: str, data: bytes, failed: bool, ttl: float, max_records: int
    ) -> bool:
        """See :meth:`IdempotencyRecordStore.finish`."""
        args = [
            token,
            "failed" if failed else "done",
            data,
            _ms(ttl),
            max_records,
            self.channel,
            key,
        ]
        raw = await self.client.script(
            "idempotency.finish", _FINISH, [self.record_key(key), self._index], args
        )
        return bool(int(raw))

    async def release(self, key: str, token: str) -> bool:
        """See :meth:`IdempotencyRecordStore.release`."""
        raw = await self.client.script(
            "idempotency.release", _RELEASE, [self.record_key(key)], [token, self.channel, key]
        )
        return bool(int(raw))

    async def listen(
        self,
        on_key: Callable[[str], None],
        *,
        on_subscribed: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """See :meth:`IdempotencyRecordStore.listen`."""
        await self.client.listen(
            [self.channel],
            lambda channel, data: on_key(data.decode(errors="replace")),
            on_subscribed=on_subscribed,
            task_status=task_status,
        )


# --------------------------------------------------------------------------- in memory


class _Record:
    __slots__ = ("at", "data", "expires", "fp", "st", "tok")

    def __init__(self, fp: str, tok: str, expires: int) -> None:
        self.fp = fp
        self.st = "running"
        self.tok = tok
        self.data = b""
        self.at = 0
        self.expires = expires


class MemoryIdempotencyStore:
    """:class:`IdempotencyRecordStore` on a :class:`~actors._fleet._memory.MemoryServer`."""

    def __init__(self, server: MemoryServer, prefix: str, service: str) -> None:
        self.server = server
        self._base = f"{prefix}:idem:{service}"
        self.channel = self._base

    def _records(self) -> dict[str, _Record]:
        found: dict[str, _Record] = self.server.data.setdefault(f"{self._base}:records", {})
        return found

    def _index(self) -> dict[str, int]:
        """key -> finish time (ms), in finish order (the sorted set of the Lua scripts)."""
        found: dict[str, int] = self.server.data.setdefault(f"{self._base}:done", {})
        return found

    def _get(self, key: str, now: int) -> _Record | None:
        records = self._records()
        record = records.get(key)
        if record is not None and record.expires <= now:
            del records[key]
            return None
        return record

    async def claim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimReply:
        """See :meth:`IdempotencyRecordStore.claim`."""
        now = await self.server.begin("idempotency.claim")
        record = self._get(key, now)
        if record is None:
            self._records()[key] = _Record(fingerprint, token, now + _ms(lease))
            return ClaimReply("claimed")
        if record.fp != fingerprint:
            return ClaimReply("conflict")
        if record.st == "running":
            if record.tok == token:
                record.expires = now + _ms(lease)
                return ClaimReply("claimed")
            return ClaimReply("running", max(0, record.expires - now))
        return ClaimReply("done" if record.st == "done" else "failed", 0, record.data)

    async def renew(self, keys: Sequence[str], tokens: Sequence[str], lease: float) -> list[bool]:
        """See :meth:`IdempotencyRecordStore.renew`."""
        if not keys:
            return []
        now = await self.server.begin("idempotency.renew")
        out = []
        for key, token in zip(keys, tokens, strict=True):
            record = self._get(key, now)
            owned = record is not None and record.st == "running" and record.tok == token
            if owned:
                assert record is not None
                record.expires = now + _ms(lease)
            out.append(owned)
        return out

    async def finish(
        self, key: str, token: str, data: bytes, failed: bool, ttl: float, max_records: int
    ) -> bool:
        """See :meth:`IdempotencyRecordStore.finish`."""
        now = await self.server.begin("idempotency.finish")
        record = self._get(key, now)
        if record is None or record.st != "running" or record.tok != token:
            return False
        ttl_ms = _ms(ttl)
        record.st, record.data, record.at = "failed" if failed else "done", data, now
        record.expires = now + ttl_ms
        index = self._index()
        index.pop(key, None)
        index[key] = now
        for old in [k for k, at in index.items() if at <= now - ttl_ms]:
            del index[old]
        records = self._records()
        while len(index) > max_records:
            # ZPOPMIN's order: the oldest finish first, ties by the member's bytes.
            old = min(index, key=lambda k: (index[k], k.encode()))
            at = index.pop(old)
            found = records.get(old)
            if found is not None and found.st != "running" and found.at == at:
                del records[old]
        self.server.publish(self.channel, key.encode())
        return True

    async def release(self, key: str, token: str) -> bool:
        """See :meth:`IdempotencyRecordStore.release`."""
        now = await self.server.begin("idempotency.release")
        record = self._get(key, now)
        if record is None or record.st != "running" or record.tok != token:
            return False
        del self._records()[key]
        self.server.publish(self.channel, key.encode())
        return True

    async def listen(
        self,
        on_key: Callable[[str], None],
        *,
        on_subscribed: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """See :meth:`IdempotencyRecordStore.listen`."""
        await self.server.listen(
            [self.channel],
            lambda channel, data: on_key(data.decode(errors="replace")),
            on_subscribed=on_subscribed,
            task_status=task_status,
        )
