-- record.lua: charge usage that had no reservation (batch results, Agent SDK totals).
--
-- KEYS[1] idempotency record   KEYS[2] org's ledger stream   KEYS[3] org's event stream
-- (counter and bucket hashes come from the plan; same hash tag, same slot)
-- ARGV[1] record id   ARGV[2] fingerprint   ARGV[3] record ttl ms   ARGV[4] org key prefix
-- ARGV[5] ledger field count F; then F ledger field/value pairs; then the plan's tokens
-- (lib.lua): its amount is the cost, its token counts those used
--
-- Returns {status, ledger_id}
--   status: 'recorded' | 'replay' | 'conflict' | 'bound'; on a replay, the ledger id of the first
--   recording; 'bound': a counter would leave the exact range (nothing written; `ledger_id`
--   names the counter)
-- Spend already happened, so nothing is checked: it is recorded even past a limit. The
-- thresholds it crosses are emitted, as a commit's are.

local idem, ledger, events = KEYS[1], KEYS[2], KEYS[3]
local rid, fp = ARGV[1], ARGV[2]
local tag_prefix = ARGV[4]
local nf = tonumber(ARGV[5])
local plan = read_plan(ARGV, 6 + 2 * nf)
local cost = plan.a
local now = now_ms()

local prior = redis.call('HMGET', idem, 'fp', 'res')
if prior[1] then
  if prior[1] ~= fp then
    return {'conflict', ''}
  end
  return {'replay', prior[2]}
end

-- Everything is read and decided before the first write.
for _, b in ipairs(plan.b) do
  want_budget(b)
end
want_buckets(plan.t)
load()
local charged = charge(plan.b, cost)
buckets_give(plan.t, function(q) return -kind_amount(plan, q) end, now)
local bad = out_of_bounds()
if bad then
  return {'bound', bad}
end
local candidates = usage_events(plan.b, cost, now, rid)
touch_markers(tag_prefix, candidates, events)
expect(ledger, 'stream')

flush()
emit_all(events, tag_prefix, candidates)
local fields = {'kind', 'record', 'reservation_id', rid, 'cost_micros', int(cost), 'at_ms', int(now),
  'charged', charged}
for i = 6, 5 + 2 * nf do
  table.insert(fields, ARGV[i])
end
local id = redis.call('XADD', ledger, '*', unpack(fields))
redis.call('HSET', idem, 'fp', fp, 'res', id)
redis.call('PEXPIRE', idem, int(tonumber(ARGV[3])))
return {'recorded', id}
