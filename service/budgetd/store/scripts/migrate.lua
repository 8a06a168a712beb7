-- migrate.lua: fold one org's counters, buckets and open holds from the layout before issue 13
-- (one hash per budget, entity and period; one per bucket kind; JSON plans) into today's
-- (lib.lua), in one atomic step. Idempotent: what it folded is gone, a second run finds nothing.
--
-- KEYS: the old keys, then the reservation keys whose plans it rewrites (budgetd store migrate
-- finds them with SCAN, which a script may not use, and works out where each goes)
-- ARGV[1] C old counter keys   ARGV[2] B old bucket keys   ARGV[3] R reservations
-- then per old counter: spent hash, spent field, held hash, held field, its expiry by design
--   (ms; 0: unknown, its own expiry carries over)
-- then per old bucket: new hash, kind
-- then per reservation: the plan it must still have (JSON), its plan in today's layout
--
-- Returns {counters folded, buckets folded, plans rewritten}.
-- An old counter's expiry carries over (the later of the two); an old bucket kind already
-- present in the new hash (traffic since the upgrade) is kept and the old one dropped: a bucket
-- refills within minutes, the new state is the recent one.

local nc, nb, nr = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local a = 4
local folds, buckets, plans = {}, {}, {}
for i = 1, nc do
  local old = KEYS[i]
  local v = redis.call('HMGET', old, 'spent', 'held')
  local ttl = tonumber(redis.call('PTTL', old))
  local f = {old = old, sk = ARGV[a], sf = ARGV[a + 1], hk = ARGV[a + 2], hf = ARGV[a + 3],
    at = math.max(ttl > 0 and now + ttl or 0, tonumber(ARGV[a + 4]))}
  for j, name in ipairs({'spent', 'held'}) do
    local raw = v[j]
    local n = raw and string.match(raw, '^%-?%d+$') and tonumber(raw)
    if raw and (not n or not fits(n)) then
      error('budgetd: ' .. old .. ' ' .. name .. ' is not a counter: ' .. raw)
    end
    f[name] = n or 0
  end
  if f.spent ~= 0 then want(f.sk, f.sf) end
  if f.held ~= 0 then want(f.hk, f.hf) end
  folds[i] = f
  a = a + 5
end
for i = 1, nb do
  local old = KEYS[nc + i]
  local v = redis.call('HMGET', old, 't', 'ms', 'x')
  local ttl = tonumber(redis.call('PTTL', old))
  local t, ms = tonumber(v[1]), tonumber(v[2])
  if v[1] and not (t and ms and fits(t) and fits(ms)) then
    error('budgetd: ' .. old .. ' is not a token bucket')
  end
  buckets[i] = {old = old, key = ARGV[a], kind = ARGV[a + 1], t = t, ms = ms,
    at = ttl > 0 and now + ttl or 0}
  want(ARGV[a], ARGV[a + 1] .. '.t', 'x')
  want(ARGV[a], 'ms', 'x')
  a = a + 2
end
for i = 1, nr do
  local rkey = KEYS[nc + nb + i]
  local r = redis.call('HMGET', rkey, 'st', 'plan')
  if r[1] == 'held' and r[2] == ARGV[a] then
    table.insert(plans, {rkey, ARGV[a + 1]})
  end
  a = a + 2
end
load()
for _, f in ipairs(folds) do
  -- A key without an expiry (none known either) gets none: nothing is made to expire sooner.
  if f.spent ~= 0 then
    add(f.sk, f.sf, f.spent)
    if f.at > 0 then expire_rule(f.sk, 'a', f.at) end
  end
  if f.held ~= 0 then
    add(f.hk, f.hf, f.held)
    if f.at > 0 then expire_rule(f.hk, 'a', f.at) end
  end
end
local expiries = {}
for _, b in ipairs(buckets) do
  if b.t and not present(b.key, b.kind .. '.t') then
    -- One time for the hash's kinds (lib.lua): the latest of theirs, so a level is never
    -- taken as older than it is (at most less refill, never more).
    put(b.key, b.kind .. '.t', b.t)
    put(b.key, 'ms', math.max(b.ms, cur(b.key, 'ms')))
    expiries[b.key] = math.max(expiries[b.key] or 0, b.at, val(b.key, 'x'))
  end
end
assert_in_bounds()

flush()
for key, at in pairs(expiries) do
  if at > 0 then
    redis.call('HSET', key, 'x', int(at))
    redis.call('PEXPIREAT', key, int(at))
  end
end
for _, f in ipairs(folds) do
  redis.call('DEL', f.old)
end
for _, b in ipairs(buckets) do
  redis.call('DEL', b.old)
end
for _, p in ipairs(plans) do
  redis.call('HSET', p[1], 'plan', p[2])
end
return {#folds, #buckets, #plans}
