"""The Lua scripts of the fleet breaker (run by ``RedisBreakerStore``; mirrored in memory).

Theory of operation
-------------------
One hash per provider (``{prefix}:breaker:state:{name}``) holds the shared breaker:

=========  ==============================================================================
``st``     ``closed`` | ``open`` | ``half_open`` | ``isolated`` (no hash: closed, epoch 0)
``ep``     the epoch, +1 on every state change
``until``  while open: the server time (ms) the break ends
``brk``    the current break length (ms); ``streak`` the trips since the breaker last closed
``probe``  while half-open: the instance holding the probe lease, until ``plu`` (ms)
=========  ==============================================================================

Trip votes live in ``{prefix}:breaker:votes:{name}`` (instance -> expiry ms), live instances
in the sorted set ``{prefix}:instances`` (instance -> expiry ms).  Every script reads the time
from the server (``TIME``), never from a client, and returns times as *milliseconds
remaining*.  Every change checks the caller's epoch first, so a late or stale write is a no-op
answered with ``stale`` and the current state; a change is published on
``{prefix}:breaker`` as a JSON array (the same fields a read returns).
"""

from __future__ import annotations

from typing import Final

from actors._fleet._client import LUA_PRELUDE, LuaScript

__all__ = ["HEARTBEAT", "OPERATE", "PROBE", "READ", "SETTLE", "TRIP"]

# Shared helpers, prepended to every script.
_PRELUDE: Final = (
    LUA_PRELUDE
    + """
local function num(v, d)
  if v then return tonumber(v) end
  return d
end
local function snap(bkey, vkey, name, now)
  local h = redis.call('HMGET', bkey, 'st', 'ep', 'until', 'brk', 'streak', 'probe', 'plu')
  local st = h[1] or 'closed'
  local rem, prem = 0, 0
  if st == 'open' then rem = math.max(0, num(h[3], 0) - now) end
  if st == 'half_open' then prem = math.max(0, num(h[7], 0) - now) end
  local votes = 0
  local all = redis.call('HGETALL', vkey)
  for i = 2, #all, 2 do
    if tonumber(all[i]) > now then votes = votes + 1 end
  end
  return {name, st, num(h[2], 0), rem, num(h[4], 0), num(h[5], 0), h[6] or '', prem, votes}
end
local function publish(channel, s)
  redis.call('PUBLISH', channel, cjson.encode(s))
end
"""
)


def _script(name: str, body: str) -> LuaScript:
    return LuaScript(name=name, source=_PRELUDE + body)


#: KEYS: instances.  ARGV: instance, ttl_ms.  Returns the number of live instances.
HEARTBEAT: Final = _script(
    "heartbeat",
    """
local now = now_ms()
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
""",
)

#: KEYS: instances, then (state, votes) per provider.  ARGV: the provider names.
#: Returns {live, snapshot...}.
READ: Final = _script(
    "read",
    """
local now = now_ms()
local out = {redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')}
for i = 1, #ARGV do
  out[#out + 1] = snap(KEYS[2 * i], KEYS[2 * i + 1], ARGV[i], now)
end
return out
""",
)

#: A local breaker tripped: vote, and open the fleet breaker when the votes reach the quorum.
#: KEYS: instances, state, votes.  ARGV: name, instance, epoch, scope ('local' | 'wide'),
#: retry_ms, base_ms, factor, max_ms, vote_ttl_ms, instance_ttl_ms, ratio, min_quorum, channel.
#: Returns {outcome, live, snapshot}: opened | voted | extended | ignored | stale.
TRIP: Final = _script(
    "trip",
    """
local now = now_ms()
local name, instance, scope = ARGV[1], ARGV[2], ARGV[4]
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[10]), instance)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local live = redis.call('ZCARD', KEYS[1])
local h = redis.call('HMGET', KEYS[2], 'st', 'ep', 'until')
local st, ep = h[1] or 'closed', num(h[2], 0)
local retry = tonumber(ARGV[5])
if ep ~= tonumber(ARGV[3]) then
  return {'stale', live, snap(KEYS[2], KEYS[3], name, now)}
end
if st == 'open' then
  if scope == 'wide' and now + retry > num(h[3], 0) then
    redis.call('HSET', KEYS[2], 'until', now + retry)
    local s = snap(KEYS[2], KEYS[3], name, now)
    publish(ARGV[13], s)
    return {'extended', live, s}
  end
  return {'ignored', live, snap(KEYS[2], KEYS[3], name, now)}
end
if st ~= 'closed' then
  return {'ignored', live, snap(KEYS[2], KEYS[3], name, now)}
end
local vote_ttl = tonumber(ARGV[9])
redis.call('HSET', KEYS[3], instance, now + vote_ttl)
redis.call('PEXPIRE', KEYS[3], vote_ttl)
local votes = 0
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) > now then votes = votes + 1 else redis.call('HDEL', KEYS[3], all[i]) end
end
local needed = 1
if scope ~= 'wide' then
  needed = math.max(tonumber(ARGV[12]), math.ceil(tonumber(ARGV[11]) * live - 1e-9))
  needed = math.max(1, math.min(needed, live))
end
if votes < needed then
  return {'voted', live, snap(KEYS[2], KEYS[3], name, now)}
end
local base = tonumber(ARGV[6])
redis.call('HSET', KEYS[2], 'st', 'open', 'ep', ep + 1, 'until', now + math.max(base, retry),
  'brk', base, 'streak', 1, 'probe', '', 'plu', 0)
redis.call('DEL', KEYS[3])
local s = snap(KEYS[2], KEYS[3], name, now)
publish(ARGV[13], s)
return {'opened', live, s}
""",
)

#: Take the one fleet-wide probe lease once the break is over (or the last prober's lease
#: lapsed).  KEYS: state, votes.  ARGV: name, instance, epoch, lease_ms, channel.
#: Returns {outcome, -1, snapshot}: granted | denied | stale.
PROBE: Final = _script(
    "probe",
    """
local now = now_ms()
local name, instance = ARGV[1], ARGV[2]
local h = redis.call('HMGET', KEYS[1], 'st', 'ep', 'until', 'probe', 'plu')
local st, ep = h[1] or 'closed', num(h[2], 0)
if ep ~= tonumber(ARGV[3]) then
  return {'stale', -1, snap(KEYS[1], KEYS[2], name, now)}
end
local free = (st == 'open' and now >= num(h[3], 0))
  or (st == 'half_open' and (now >= num(h[5], 0) or h[4] == instance))
if not free then
  return {'denied', -1, snap(KEYS[1], KEYS[2], name, now)}
end
redis.call('HSET', KEYS[1], 'st', 'half_open', 'ep', ep + 1, 'probe', instance,
  'plu', now + tonumber(ARGV[4]))
local s = snap(KEYS[1], KEYS[2], name, now)
publish(ARGV[5], s)
return {'granted', -1, s}
""",
)

#: The probe's outcome: success closes the fleet breaker, failure reopens it with the grown
#: break.  Only the lease holder at the current epoch may settle (fencing).
#: KEYS: state, votes.  ARGV: name, instance, epoch, ok ('1' | '0'), retry_ms, base_ms,
#: factor, max_ms, channel.  Returns {outcome, -1, snapshot}: closed | reopened | stale.
SETTLE: Final = _script(
    "settle",
    """
local now = now_ms()
local name, instance = ARGV[1], ARGV[2]
local h = redis.call('HMGET', KEYS[1], 'st', 'ep', 'probe', 'streak')
local st, ep = h[1] or 'closed', num(h[2], 0)
if ep ~= tonumber(ARGV[3]) or st ~= 'half_open' or h[3] ~= instance then
  return {'stale', -1, snap(KEYS[1], KEYS[2], name, now)}
end
local base = tonumber(ARGV[6])
local outcome
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'st', 'closed', 'ep', ep + 1, 'until', 0, 'brk', base,
    'streak', 0, 'probe', '', 'plu', 0)
  redis.call('DEL', KEYS[2])
  outcome = 'closed'
else
  local streak = num(h[4], 1) + 1
  local brk = math.floor(math.min(tonumber(ARGV[8]), base * tonumber(ARGV[7]) ^ (streak - 1)))
  redis.call('HSET', KEYS[1], 'st', 'open', 'ep', ep + 1,
    'until', now + math.max(brk, tonumber(ARGV[5])), 'brk', brk, 'streak', streak,
    'probe', '', 'plu', 0)
  outcome = 'reopened'
end
local s = snap(KEYS[1], KEYS[2], name, now)
publish(ARGV[9], s)
return {outcome, -1, s}
""",
)

#: An operator's isolate or reset, fleet-wide and unconditional.
#: KEYS: state, votes.  ARGV: name, 'isolate' | 'reset', base_ms, channel.
#: Returns {outcome, -1, snapshot}: isolated | reset.
OPERATE: Final = _script(
    "operate",
    """
local now = now_ms()
local name = ARGV[1]
local ep = num(redis.call('HGET', KEYS[1], 'ep'), 0)
local outcome
if ARGV[2] == 'isolate' then
  redis.call('HSET', KEYS[1], 'st', 'isolated', 'ep', ep + 1, 'probe', '', 'plu', 0)
  outcome = 'isolated'
else
  redis.call('HSET', KEYS[1], 'st', 'closed', 'ep', ep + 1, 'until', 0,
    'brk', tonumber(ARGV[3]), 'streak', 0, 'probe', '', 'plu', 0)
  redis.call('DEL', KEYS[2])
  outcome = 'reset'
end
local s = snap(KEYS[1], KEYS[2], name, now)
publish(ARGV[4], s)
return {outcome, -1, s}
""",
)
