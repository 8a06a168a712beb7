-- trim.lua: drop ledger entries older than a stream id, keeping what they charged.
--
-- KEYS[1] org's ledger stream   KEYS[2] org's archive hash (counter key -> micros trimmed)
-- ARGV[1] first stream id to keep ("<ms>-0")   ARGV[2] most entries to drop in this call
--
-- Returns the number of entries dropped (call again until 0). The archive keeps reconcile
-- exact after a trim: counter = ledger + archive + open holds.

local ledger, archive = KEYS[1], KEYS[2]
local keep_from, limit = ARGV[1], tonumber(ARGV[2])
local ms, seq = string.match(keep_from, '^(%d+)-(%d+)$')
local last = int(tonumber(ms) - 1) .. '-18446744073709551615'
if tonumber(ms) == 0 then
  return 0
end
-- Read and add up first; then write (lib.lua: the rule).
local rows = redis.call('XRANGE', ledger, '-', last, 'COUNT', limit)
local adds = {}
for _, row in ipairs(rows) do
  local fields = row[2]
  local cost, charged = nil, ''
  for i = 1, #fields, 2 do
    if fields[i] == 'cost_micros' then
      cost = string.match(fields[i + 1], '^%-?%d+$') and tonumber(fields[i + 1])
    end
    if fields[i] == 'charged' then charged = fields[i + 1] end
  end
  if not cost then
    error('budgetd: ledger entry ' .. row[1] .. ' has no cost_micros')
  end
  for key in string.gmatch(charged, '%S+') do
    table.insert(adds, {archive, key, cost})
  end
end
assert_in_bounds(adds)
for _, add in ipairs(adds) do
  redis.call('HINCRBY', archive, add[2], int(add[3]))
end
for _, row in ipairs(rows) do
  redis.call('XDEL', ledger, row[1])
end
return #rows
