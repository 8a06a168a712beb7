-- release.lua: void a hold (the call failed), exactly once.
--
-- KEYS[1] reservation hash   KEYS[2] org's hold index
-- ARGV[1] reservation id     ARGV[2] record ttl ms
--
-- Returns {status, released_micros, state}
--   status: 'released' | 'resolved' (already committed, released or expired) | 'missing'
-- Input and output token estimates go back to their buckets; the request itself stays counted.

local rkey, holds = KEYS[1], KEYS[2]
local now = now_ms()
local r = redis.call('HMGET', rkey, 'st', 'plan', 'dl')
local state = r[1]
if not state then
  return {'missing', 0, ''}
end
if state ~= 'held' then
  return {'resolved', 0, state}
end
local plan = cjson.decode(r[2])
touch(plan_keys(plan))
if now > tonumber(r[3]) then
  -- Race: the lease ran out first; the hold expires and is not refunded as a release.
  void_hold(plan, now, false)
  redis.call('HSET', rkey, 'st', 'expired', 'rt', int(now))
  redis.call('ZREM', holds, ARGV[1])
  return {'resolved', 0, 'expired'}
end
void_hold(plan, now, true)
redis.call('HSET', rkey, 'st', 'released', 'rt', int(now))
redis.call('PEXPIRE', rkey, int(tonumber(ARGV[2])))
redis.call('ZREM', holds, ARGV[1])
return {'released', plan.a, 'released'}
