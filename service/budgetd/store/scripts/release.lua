-- release.lua: void a hold (the call failed), exactly once.
--
-- KEYS[1] reservation hash   KEYS[2] org's hold index   KEYS[3] org's event stream
-- ARGV[1] reservation id     ARGV[2] record ttl ms     ARGV[3] org key prefix "bd:{o:<org>}:"
--
-- Returns {status, released_micros, state}
--   status: 'released' | 'resolved' (already committed, released or expired) | 'missing'
-- Token and cost estimates go back to their buckets; the request itself stays counted.
-- Emits shadow_clear when the freed hold brings a shadow budget back under its limit.

local rkey, holds, events = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
local r = redis.call('HMGET', rkey, 'st', 'plan', 'dl', 'sg')
local state = r[1]
if not state then
  return {'missing', 0, ''}
end
if state ~= 'held' then
  return {'resolved', 0, state}
end
local plan = read_plan(split_plan(r[2]), 1)
local expired = now > tonumber(r[3])
for _, b in ipairs(plan.b) do
  want_budget(b)
end
if not expired then
  want_buckets(plan.t)
end
load()
expect(holds, 'zset')
if expired then
  -- Race: the lease ran out first; the hold expires and is not refunded as a release.
  void_hold(plan, r[4])
  assert_in_bounds()
  flush()
  redis.call('HSET', rkey, 'st', 'expired', 'rt', int(now))
  redis.call('ZREM', holds, ARGV[1])
  return {'resolved', 0, 'expired'}
end
void_hold(plan, r[4])
-- Token and cost estimates go back to their buckets (the call never ran).
buckets_give(plan.t, function(q)
  if q.q == 'requests' then return 0 end
  return kind_amount(plan, q)
end, now)
assert_in_bounds()
local candidates = usage_events(plan.b, -plan.a, now, ARGV[1])
touch_markers(ARGV[3], candidates, events)

flush()
emit_all(events, ARGV[3], candidates)
redis.call('HSET', rkey, 'st', 'released', 'rt', int(now))
redis.call('PEXPIRE', rkey, int(tonumber(ARGV[2])))
redis.call('ZREM', holds, ARGV[1])
return {'released', plan.a, 'released'}
