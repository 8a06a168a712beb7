-- adjust.lua: an admin's correction of one budget counter (a refund, a credit, a charge made
-- outside budgetd), in the same script as its ledger entry, exactly once per adjustment id.
--
-- KEYS[1] idempotency record   KEYS[2] org's ledger stream   KEYS[3] org's event stream
-- ARGV[1] adjustment id   ARGV[2] fingerprint   ARGV[3] record ttl ms   ARGV[4] org key prefix
-- ARGV[5] ledger field count F; then F ledger field/value pairs; then a plan (lib.lua) of one
-- budget, whose amount is the adjustment (micros; negative = credit)
--
-- Returns {status, ledger_id, spent, period}
--   status: 'adjusted' | 'replay' | 'conflict' | 'negative' | 'bound' (the counter would leave
--   the exact range; nothing written)
--   spent: the counter's spend after the adjustment ('negative': before it, unchanged)
--   period: the period id of the counter that moved (on a replay: the first call's)
-- A credit may not take the counter below zero: a rolling window would otherwise gain room
-- once the spend it offsets aged out. No limit is checked: the correction is the admin's call.
-- Thresholds it crosses are emitted, as a commit's are.

local idem, ledger, events = KEYS[1], KEYS[2], KEYS[3]
local aid, fp = ARGV[1], ARGV[2]
local tag_prefix = ARGV[4]
local nf = tonumber(ARGV[5])
local plan = read_plan(ARGV, 6 + 2 * nf)
local amount, b = plan.a, plan.b[1]
local now = now_ms()

local prior = redis.call('HMGET', idem, 'fp', 'res', 'spent', 'p')
if prior[1] then
  if prior[1] ~= fp then
    return {'conflict', '', 0, ''}
  end
  return {'replay', prior[2], tonumber(prior[3]), prior[4]}
end

want_budget(b)
load()
local key, field = charge_slot(b)
local spent = val(key, field)
local _, _, period = EV().label(b)
if spent + amount < 0 then
  return {'negative', '', spent, period}
end
local charged = charge({b}, amount)
if out_of_bounds() then
  return {'bound', '', spent, period}
end
local candidates = usage_events({b}, amount, now, aid)
touch_markers(tag_prefix, candidates, events)
expect(ledger, 'stream')

flush()
emit_all(events, tag_prefix, candidates)
local fields = {'kind', 'adjustment', 'reservation_id', aid, 'cost_micros', int(amount),
  'at_ms', int(now), 'charged', charged}
for i = 6, 5 + 2 * nf do
  table.insert(fields, ARGV[i])
end
local id = redis.call('XADD', ledger, '*', unpack(fields))
redis.call('HSET', idem, 'fp', fp, 'res', id, 'spent', int(spent + amount), 'p', period)
redis.call('PEXPIRE', idem, int(tonumber(ARGV[3])))
return {'adjusted', id, spent + amount, period}
