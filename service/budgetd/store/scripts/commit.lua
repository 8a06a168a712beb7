-- commit.lua: settle a reservation's actual cost into the periods of its hold, exactly once.
--
-- KEYS[1] reservation hash   KEYS[2] org's hold index   KEYS[3] org's ledger stream
-- KEYS[4] org's event stream
-- (counter and bucket hashes come from the reservation's plan; same hash tag, same slot)
-- ARGV[1] reservation id  ARGV[2] cost (micros)  ARGV[3] commit fingerprint
-- ARGV[4] record ttl ms   ARGV[5] actual input tokens  ARGV[6] actual output tokens
-- ARGV[7] org key prefix "bd:{o:<org>}:"   ARGV[8] the service's period clock (ms)
-- ARGV[9..] ledger field/value pairs
--
-- Returns {status, cost, released, overrun, late, ledger_id, stored, state}
--   status: 'committed' | 'replay' | 'conflict' | 'missing' | 'bound' (a counter would leave
--   the exact range: nothing written; `state` names the counter)
-- A calendar budget settles in the period of the hold; a rolling budget in the sub-bucket of
-- the commit (ARGV[8]), so the spend is counted by every window that contains the commit.
--   stored: on a replay, the first answer as "cost:released:overrun:late:ledger_id"
-- A commit after the lease ran out (swept or not) still records the spend, flagged late+overrun.
-- Emits threshold events the settled spend crosses, and one overrun event per reservation.

local rkey, holds, ledger, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid, cost, cfp = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local keep = tonumber(ARGV[4])
local now = now_ms()

local r = redis.call('HMGET', rkey, 'st', 'plan', 'dl', 'cfp', 'cres', 'meta', 'sg')
local state = r[1]
if not state then
  return {'missing', 0, 0, 0, 0, '', '', ''}
end
if state == 'committed' then
  -- Idempotency: the same commit answers as before; a different one is a conflict.
  if r[4] == cfp then
    return {'replay', 0, 0, 0, 0, '', r[5], state}
  end
  return {'conflict', 0, 0, 0, 0, '', '', state}
end
if state == 'released' then
  return {'conflict', 0, 0, 0, 0, '', '', state}
end

-- Everything this commit will do is decided before its first write.
local plan = read_plan(split_plan(r[2]), 1)
local clock = tonumber(ARGV[8])
local budgets = {nil, nil, nil, nil, nil, nil, nil, nil} -- ARRAY8
for i = 1, #plan.b do
  budgets[i] = entry_now(plan.b[i], clock)
  want_budget(budgets[i])
end
local holding = state == 'held'
local late = 0
if not holding or now > tonumber(r[3]) then
  -- Expired (swept, or the lease ran out before the sweep reached it): settle late.
  late = 1
end
local refunding = holding and late == 0
if refunding then
  want_buckets(plan.t)
end
load()
local overrun = 0
if cost > plan.a or late == 1 then overrun = 1 end
local released = 0
if refunding then
  released = math.max(0, plan.a - cost)
end
local freed = 0
if holding then
  freed = plan.a
  void_hold(plan, r[7])
end
local charged = charge(budgets, cost)
if refunding then
  -- Token buckets: give back what the estimate over-charged (never above capacity), and
  -- take what it under-charged.
  local actual = {input = tonumber(ARGV[5]), output = tonumber(ARGV[6]), cost = cost}
  buckets_give(plan.t, function(q)
    if q.q == 'requests' then return 0 end
    return kind_amount(plan, q) - actual[q.q]
  end, now)
end
local bad = out_of_bounds()
if bad then
  return {'bound', 0, 0, 0, 0, '', '', bad}
end
-- Events from the counters as they were before this call (val), now that every amount is known
-- to be in range.
local candidates = usage_events(budgets, cost - freed, now, rid)
if overrun == 1 then
  local b = budgets[1]
  local name, entity, period = '', '', ''
  if b then name, entity, period = EV().label(b) end
  table.insert(candidates, {id = 'overrun|' .. rid, keep = now + keep, fields = {
    'type', 'overrun', 'budget', name, 'scope', b and b.s or '',
    'entity', entity, 'period', period, 'threshold', '0',
    'used_micros', int(cost), 'limit_micros', int(plan.a), 'late', int(late),
    'at_ms', int(now), 'reservation_id', rid}})
end
touch_markers(ARGV[7], candidates, events)
expect(holds, 'zset')

-- Writes. The ledger entry first: XADD is the one write that can still fail (the ledger key of
-- another type), and as the first write it fails with nothing written.
local at, cost_text = int(now), int(cost)
local id = redis.call('XADD', ledger, '*', 'kind', 'commit', 'reservation_id', rid,
  'cost_micros', cost_text, 'charged', charged, 'held_micros', int(plan.a),
  'overrun', overrun == 1 and '1' or '0', 'late', late == 1 and '1' or '0', 'at_ms', at,
  'reservation', r[6], unpack(ARGV, 9))
flush()
emit_all(events, ARGV[7], candidates)
redis.call('ZREM', holds, rid)

redis.call('HSET', rkey, 'st', 'committed', 'cfp', cfp, 'rt', at,
  'cres', cost_text .. ':' .. int(released) .. ':' .. overrun .. ':' .. late .. ':' .. id)
redis.call('PEXPIRE', rkey, int(keep))
return {'committed', cost, released, overrun, late, id, '', 'committed'}
