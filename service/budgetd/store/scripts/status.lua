-- status.lua: read budgets and buckets without changing them.
--
-- KEYS: per budget: held key, then its spent keys; then one key per bucket
-- ARGV[1] budget count B   ARGV[2] bucket count T
-- then per budget: spent-key count; per bucket: per minute, capacity
--
-- Returns {now_ms, {spent, held}..., {level}...} flattened: now, then 2 per budget, 1 per bucket.

local nb, nt = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local out = {now}
local k, a = 1, 3
for i = 1, nb do
  local n = tonumber(ARGV[a])
  local spent = 0
  for j = 1, n do
    spent = spent + counter(KEYS[k + j], 'spent')
  end
  table.insert(out, int(spent))
  table.insert(out, int(counter(KEYS[k], 'held')))
  k = k + 1 + n
  a = a + 1
end
for i = 1, nt do
  local level = bucket_read(KEYS[k], tonumber(ARGV[a]), tonumber(ARGV[a + 1]), now)
  table.insert(out, int(math.floor(level / SCALE)))
  k = k + 1
  a = a + 2
end
return out
