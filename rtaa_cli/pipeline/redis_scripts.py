"""The Redis bus's Lua scripts: each is one atomic step (docs/scale-out.md lists the keys).

Every write a worker makes about a call is fenced: it runs only if the call's lease still holds this
worker's value (``worker_id:token``, the token from a per-call INCR), so a stale owner can neither publish
a transcript nor move the checkpoint, whatever its clock says.
"""
from __future__ import annotations

# KEYS: stream, registry, announce, src, feed. ARGV: maxlen, iid, now_ms, origin, feed_maxlen, field, value, ...
# A START appends like any entry; a call not yet in the registry is registered and announced to workers.
# ``src`` names the ingest (origin) whose stream is the call's newest: when a START comes from another
# ingest than the previous one, a ``_superseded`` notice on the feed tells that ingest to let go of the
# call (its caller is closed 1001, it publishes nothing more; workers ignore what it sent meanwhile).
START = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 6))
if redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[2]) == 1 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'i', ARGV[2])
end
local prev = redis.call('GET', KEYS[4])
redis.call('SET', KEYS[4], ARGV[4])
if prev and prev ~= ARGV[4] then
  local notice = cjson.encode({type = '_superseded', interaction_id = ARGV[2], origin = prev, by = ARGV[4], at = id})
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'm', notice)
end
return id
"""

# KEYS: lease, fence, registry. ARGV: worker_id, lease_ms, iid. -> token, 0 (held by another), -1 (no such call)
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if not redis.call('ZSCORE', KEYS[3], ARGV[3]) then return -1 end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. t, 'PX', ARGV[2])
return t
"""

# KEYS: leases. ARGV: lease_ms, value per lease. -> 1-based indexes of the leases no longer ours
RENEW = """
local lost = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i + 1] then redis.call('PEXPIRE', k, ARGV[1]) else table.insert(lost, i) end
end
return lost
"""

# KEYS: lease, ckpt, feed, stream. ARGV: value, message ('' none), feed_maxlen, minid ('' none), ckpt field, value...
# -> the feed entry id (1: no message), 0: fenced (the lease is not ours)
PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local id = 1
if ARGV[2] ~= '' then id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'm', ARGV[2]) end
if #ARGV > 4 then redis.call('HSET', KEYS[2], unpack(ARGV, 5)) end
if ARGV[4] ~= '' then redis.call('XTRIM', KEYS[4], 'MINID', ARGV[4]) end
return id
"""

# KEYS: stream, lease, fence, ckpt, registry, src. ARGV: value, end_id, iid.
# The call ended and nothing follows its END: delete every key of it. -> 1 deleted, 0 more entries, -1 not ours
CLEANUP = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] and last[1][1] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6])
redis.call('ZREM', KEYS[5], ARGV[3])
return 1
"""

# KEYS: lease. ARGV: value. Hand a call over (graceful stop): the next sweep of another worker takes it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: registry. ARGV: lease key prefix, lease key suffix. -> live calls that nobody holds
ORPHANS = """
local out = {}
for _, iid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[1] .. iid .. ARGV[2]) == 0 then table.insert(out, iid) end
end
return out
"""
