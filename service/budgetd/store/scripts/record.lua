-- record.lua: charge usage that had no reservation (batch results, Agent SDK totals).
--
-- KEYS[1] idempotency record   KEYS[2] org's ledger stream   KEYS[3] org's event stream
-- KEYS[4..] one key per bucket
-- ARGV[1] record id   ARGV[2] fingerprint   ARGV[3] cost (micros)   ARGV[4] record ttl ms
-- ARGV[5] budget entries JSON (lib.lua: the plan's `b`)   ARGV[6] org key prefix
-- ARGV[7] bucket count T   ARGV[8] ledger field count F
-- then per bucket: per minute, capacity, tokens used; then F ledger field/value pairs
--
-- Returns {status, ledger_id}
--   status: 'recorded' | 'replay' | 'conflict' | 'bound'; on a replay, the ledger id of the first
--   recording; 'bound': a counter would leave the exact range (nothing written; `ledger_id`
--   names the counter)
-- Spend already happened, so nothing is checked: it is recorded even past a limit. The
-- thresholds it crosses are emitted, as a commit's are.

local idem, ledger, events = KEYS[1], KEYS[2], KEYS[3]
local rid, fp, cost = ARGV[1], ARGV[2], tonumber(ARGV[3])
local budgets = cjson.decode(ARGV[5])
local tag_prefix = ARGV[6]
local nt, nf = tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()

local prior = redis.call('HMGET', idem, 'fp', 'res')
if prior[1] then
  if prior[1] ~= fp then
    return {'conflict', ''}
  end
  return {'replay', prior[2]}
end

-- Everything is read and decided before the first write.
local bad = out_of_bounds(charge_adds({}, budgets, cost))
if bad then
  return {'bound', bad}
end
local candidates = usage_events(budgets, cost, now, rid)
touch_markers(tag_prefix, candidates)
local buckets = {}
local a = 9
for i = 1, nt do
  buckets[i] = {k = KEYS[3 + i], r = tonumber(ARGV[a]), c = tonumber(ARGV[a + 1]),
    n = tonumber(ARGV[a + 2])}
  a = a + 3
end
local takes = bucket_changes(buckets, function(t) return -t.n end, now)
expect(ledger, 'stream')
expect(events, 'stream')

local charged = charge(budgets, cost)
buckets_write(takes)
emit_all(events, tag_prefix, candidates)
local fields = {'kind', 'record', 'reservation_id', rid, 'cost_micros', int(cost), 'at_ms', int(now),
  'charged', charged}
for i = a, a + 2 * nf - 1 do
  table.insert(fields, ARGV[i])
end
local id = redis.call('XADD', ledger, '*', unpack(fields))
redis.call('HSET', idem, 'fp', fp, 'res', id)
redis.call('PEXPIRE', idem, int(tonumber(ARGV[4])))
return {'recorded', id}
