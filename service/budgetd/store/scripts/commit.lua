-- commit.lua: settle a reservation's actual cost into the periods of its hold, exactly once.
--
-- KEYS[1] reservation hash   KEYS[2] org's hold index   KEYS[3] org's ledger stream
-- KEYS[4] org's event stream
-- (budget and bucket keys come from the reservation's plan; same hash tag, same slot)
-- ARGV[1] reservation id  ARGV[2] cost (micros)  ARGV[3] commit fingerprint
-- ARGV[4] record ttl ms   ARGV[5] actual input tokens  ARGV[6] actual output tokens
-- ARGV[7] org key prefix "bd:{o:<org>}:"   ARGV[8..] ledger field/value pairs
--
-- Returns {status, cost, released, overrun, late, ledger_id, after, state}
--   status: 'committed' | 'replay' | 'conflict' | 'missing'
--   after: "spent,held;..." of every budget after the commit
-- A commit after the lease ran out (swept or not) still records the spend, flagged late+overrun.
-- Emits threshold events the settled spend crosses, and one overrun event per reservation.

local rkey, holds, ledger, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid, cost, cfp = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local keep = tonumber(ARGV[4])
local now = now_ms()

local r = redis.call('HMGET', rkey, 'st', 'plan', 'dl', 'cfp', 'cres', 'meta')
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

local plan = cjson.decode(r[2])
local before = {}
for i, b in ipairs(plan.b) do
  before[i] = tonumber(redis.call('HGET', b.c, 'spent') or '0')
    + tonumber(redis.call('HGET', b.h, 'held') or '0')
end
local late = 0
if state == 'held' and now > tonumber(r[3]) then
  -- Race: the lease ran out before the sweep reached it; expire it here, then settle late.
  void_hold(plan, now, false)
  state = 'expired'
end

local released = 0
if state == 'held' then
  void_hold(plan, now, false)
  released = plan.a - cost
  if released < 0 then released = 0 end
  -- Token buckets: give back what the estimate over-charged (never above capacity), and
  -- take what it under-charged.
  local actual = {input = tonumber(ARGV[5]), output = tonumber(ARGV[6])}
  for _, t in ipairs(plan.t) do
    if t.q ~= 'requests' then
      bucket_adjust(t, t.n - actual[t.q], now)
    end
  end
else
  late = 1
end

local overrun = 0
if cost > plan.a or late == 1 then overrun = 1 end
local after = {}
for i, b in ipairs(plan.b) do
  redis.call('HINCRBY', b.c, 'spent', int(cost))
  redis.call('PEXPIREAT', b.c, int(b.x))
  local spent = redis.call('HGET', b.c, 'spent')
  local held = redis.call('HGET', b.h, 'held') or '0'
  after[i] = spent .. ',' .. held
  budget_events(events, ARGV[7], b, before[i], tonumber(spent) + tonumber(held), now, rid)
end
if overrun == 1 then
  local b = plan.b[1]
  emit(events, ARGV[7], 'overrun|' .. rid, now + keep,
    {'type', 'overrun', 'budget', b and b.n or '', 'scope', b and b.s or '',
     'entity', b and b.en or '', 'period', b and b.p or '', 'threshold', '0',
     'used_micros', int(cost), 'limit_micros', int(plan.a), 'late', int(late),
     'at_ms', int(now), 'reservation_id', rid})
end
local after_s = table.concat(after, ';')
redis.call('ZREM', holds, rid)

local charged = {}
for i, b in ipairs(plan.b) do
  charged[i] = b.c
end
local fields = {'kind', 'commit', 'reservation_id', rid, 'cost_micros', int(cost),
  'charged', table.concat(charged, ' '),
  'held_micros', int(plan.a), 'overrun', int(overrun), 'late', int(late), 'at_ms', int(now),
  'reservation', r[6]}
for i = 8, #ARGV do
  table.insert(fields, ARGV[i])
end
local id = redis.call('XADD', ledger, '*', unpack(fields))

redis.call('HSET', rkey, 'st', 'committed', 'cfp', cfp, 'rt', int(now),
  'cres', int(cost) .. ':' .. int(released) .. ':' .. int(overrun) .. ':' .. int(late) .. ':' .. id
    .. ':' .. after_s)
redis.call('PEXPIRE', rkey, int(keep))
return {'committed', cost, released, overrun, late, id, after_s, 'committed'}
