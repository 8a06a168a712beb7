-- apply.lua: fold a batch of ledger entries into an org's report aggregates, exactly once.
--
-- KEYS[1] the org's report cursor (string: id of the last ledger entry folded in)
-- KEYS[2k], KEYS[2k+1] for each group k = 1..n: a rows hash and its rank sorted set
-- ARGV[1] the cursor the follower read the batch after ('' for none yet)
-- ARGV[2] the id of the batch's last entry (the new cursor)
-- ARGV[3] JSON list, group k at index k: {x = expire-at ms, e = {{entity, cost, calls,
--         input, cache write 5m, cache write 1h, cache read, output}, ...}}
--
-- Returns 1 when applied, 0 when the cursor had moved (another follower applied this batch or
-- a later one: nothing is written, and the caller reads the cursor again).
-- A rows field packs the seven totals as space-separated integers, so one field per entity.
--
-- Race: two replicas' followers may read the same batch at once. The cursor check and every
-- increment are in this one script, so exactly one of them applies it.

local cursor = redis.call('GET', KEYS[1]) or ''
if cursor ~= ARGV[1] then
  return 0
end
local groups = cjson.decode(ARGV[3])
for k, g in ipairs(groups) do
  local rows, rank = KEYS[2 * k], KEYS[2 * k + 1]
  for _, e in ipairs(g.e) do
    local name = e[1]
    local old = redis.call('HGET', rows, name)
    local sum = {e[2], e[3], e[4], e[5], e[6], e[7], e[8]}
    if old then
      local i = 1
      for n in string.gmatch(old, '%S+') do
        sum[i] = sum[i] + tonumber(n)
        i = i + 1
      end
    end
    redis.call('HSET', rows, name, string.format('%d %d %d %d %d %d %d',
      sum[1], sum[2], sum[3], sum[4], sum[5], sum[6], sum[7]))
    redis.call('ZINCRBY', rank, string.format('%d', e[2]), name)
  end
  redis.call('PEXPIREAT', rows, string.format('%d', g.x))
  redis.call('PEXPIREAT', rank, string.format('%d', g.x))
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
