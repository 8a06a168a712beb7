-- record.lua: charge usage that had no reservation (batch results, Agent SDK totals).
--
-- KEYS[1] idempotency record   KEYS[2] org's ledger stream
-- KEYS[3..] per budget: its charge key; then one key per bucket
-- ARGV[1] record id   ARGV[2] fingerprint   ARGV[3] cost (micros)   ARGV[4] record ttl ms
-- ARGV[5] budget count B   ARGV[6] bucket count T   ARGV[7] ledger field count F
-- then per budget: expire-at ms; per bucket: per minute, capacity, tokens used;
-- then F ledger field/value pairs
--
-- Returns {status, ledger_id, stored}
--   status: 'recorded' | 'replay' | 'conflict'; stored: the ledger id of the first recording
-- Spend already happened, so nothing is checked: it is recorded even past a limit.

local idem, ledger = KEYS[1], KEYS[2]
local rid, fp, cost = ARGV[1], ARGV[2], tonumber(ARGV[3])
local nb, nt, nf = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()

local prior = redis.call('HMGET', idem, 'fp', 'res')
if prior[1] then
  if prior[1] ~= fp then
    return {'conflict', '', ''}
  end
  return {'replay', prior[2], prior[2]}
end

local k, a = 3, 8
for i = 1, nb do
  redis.call('HINCRBY', KEYS[k], 'spent', int(cost))
  redis.call('PEXPIREAT', KEYS[k], keep_until(tonumber(ARGV[a])))
  k = k + 1
  a = a + 1
end
for i = 1, nt do
  local t = {k = KEYS[k], r = tonumber(ARGV[a]), c = tonumber(ARGV[a + 1])}
  bucket_adjust(t, -tonumber(ARGV[a + 2]), now)
  k = k + 1
  a = a + 3
end
local charged = {}
for i = 1, nb do
  charged[i] = KEYS[2 + i]
end
local fields = {'kind', 'record', 'reservation_id', rid, 'cost_micros', int(cost), 'at_ms', int(now),
  'charged', table.concat(charged, ' ')}
for i = a, a + 2 * nf - 1 do
  table.insert(fields, ARGV[i])
end
local id = redis.call('XADD', ledger, '*', unpack(fields))
redis.call('HSET', idem, 'fp', fp, 'res', id)
redis.call('PEXPIRE', idem, int(tonumber(ARGV[4])))
return {'recorded', id, id}
