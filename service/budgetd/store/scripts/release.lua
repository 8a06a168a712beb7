-- release.lua: void a hold (the call failed), exactly once.
--
-- KEYS[1] reservation hash   KEYS[2] org's hold index   KEYS[3] org's event stream
-- ARGV[1] reservation id     ARGV[2] record ttl ms     ARGV[3] org key prefix "bd:{o:<org>}:"
--
-- Returns {status, released_micros, state}
--   status: 'released' | 'resolved' (already committed, released or expired) | 'missing'
-- Input and output token estimates go back to their buckets; the request itself stays counted.
-- Emits shadow_clear when the freed hold brings a shadow budget back under its limit.

local rkey, holds, events = KEYS[1], KEYS[2], KEYS[3]
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
assert_in_bounds(hold_adds({}, plan))
expect(holds, 'zset')
if now > tonumber(r[3]) then
  -- Race: the lease ran out first; the hold expires and is not refunded as a release.
  void_hold(plan)
  redis.call('HSET', rkey, 'st', 'expired', 'rt', int(now))
  redis.call('ZREM', holds, ARGV[1])
  return {'resolved', 0, 'expired'}
end
-- Input and output token estimates go back to their buckets (the call never ran).
local refunds = bucket_changes(plan.t, function(t)
  if t.q == 'requests' then return 0 end
  return t.n
end, now)
local candidates = usage_events(plan.b, -plan.a, now, ARGV[1])
touch_markers(ARGV[3], candidates)
expect(events, 'stream')

void_hold(plan)
buckets_write(refunds)
emit_all(events, ARGV[3], candidates)
redis.call('HSET', rkey, 'st', 'released', 'rt', int(now))
redis.call('PEXPIRE', rkey, int(tonumber(ARGV[2])))
redis.call('ZREM', holds, ARGV[1])
return {'released', plan.a, 'released'}
