-- reserve.lua: check every limit, then hold on all of them at once, or change nothing.
--
-- KEYS[1]  reservation hash   KEYS[2]  org's hold index (zset: lease deadline ms)
-- KEYS[3]  org's event stream
-- KEYS[4..] per budget: held key, charge key, then its spent keys; then one key per bucket
-- ARGV[1] reservation id   ARGV[2] request fingerprint   ARGV[3] amount (micros)
-- ARGV[4] lease ms         ARGV[5] record ttl ms (after the lease)   ARGV[6] plan JSON
-- ARGV[7] meta JSON        ARGV[8] org key prefix "bd:{o:<org>}:"    ARGV[9] budget count B
-- ARGV[10] bucket count T
-- then per budget: spent-key count, limit, enforce (1/0), expire-at ms, thresholds ("50,80,100")
-- then per bucket: per minute, capacity, amount, enforce (1/0)
--
-- Events (threshold crossings, first hard-limit denial, warn-only and shadow overages) go to
-- the event stream once per budget, entity, period and kind: a marker key dedupes them. They
-- are the only write a denial makes; no counter, bucket or reservation changes.
--
-- Events: a hard_limit event only for a request that would fit the budget's whole limit (one
-- that never could is its own denial, not the period's exhaustion).
--
-- Returns {status, now_ms, deadline_ms, result, denials, shadow}
--   status: 'granted' | 'denied' | 'replay' | 'conflict' | 'bound' (a held counter would leave
--   the exact range: nothing written; `denials` names the counter)
--   result: "spent,held;spent,held;...|level;level;..." after the hold (also stored for replay)
--   denials/shadow: {{'b', index, spent, held} | {'t', index, level, wait_ms (-1: never)}}
-- A replay returns the stored result and deadline with the reservation's state in `denials`.

local rkey, holds, events = KEYS[1], KEYS[2], KEYS[3]
local tag_prefix = ARGV[8]
local rid, fp, amount = ARGV[1], ARGV[2], tonumber(ARGV[3])
local lease, keep = tonumber(ARGV[4]), tonumber(ARGV[5])
local nb, nt = tonumber(ARGV[9]), tonumber(ARGV[10])
local now = now_ms()

-- Lazy expiry first, so stale holds of this org never deny a request: decided here, written
-- with this call's other writes.
local expiries = {}
local due = due_holds(holds, tag_prefix .. 'r:', now, 8, expiries)
assert_in_bounds(expiries)
local freed = {}
for _, e in ipairs(expiries) do
  freed[e[1]] = (freed[e[1]] or 0) - e[3]
end

local prior = redis.call('HMGET', rkey, 'fp', 'res', 'dl', 'st')
if prior[1] then
  -- Idempotency: the reservation id is the key. Same request: the original answer, with the
  -- state this call leaves (its own lazy expiry may be what expires this very hold).
  local state = prior[4]
  for _, d in ipairs(due) do
    if d.rid == rid and d.plan then state = 'expired' end
  end
  expire_holds(holds, due, now)
  if prior[1] ~= fp then
    return {'conflict', now, 0, '', state, {}}
  end
  return {'replay', now, tonumber(prior[3]), prior[2], state, {}}
end

-- Phase 1: check everything; write nothing.
local budgets, buckets, denials, shadow = {}, {}, {}, {}
local k, a = 4, 11
for i = 1, nb do
  local held_key, charge_key = KEYS[k], KEYS[k + 1]
  local n = tonumber(ARGV[a])
  local spent = 0
  for j = 0, n - 1 do
    spent = spent + counter(KEYS[k + 2 + j], 'spent')
  end
  local held = counter(held_key, 'held') - (freed[held_key] or 0)
  local limit, enforce = tonumber(ARGV[a + 1]), ARGV[a + 2] == '1'
  budgets[i] = {held_key, charge_key, tonumber(ARGV[a + 3]), spent, held, ARGV[a + 4], limit,
    enforce}
  if spent + held + amount > limit then
    local row = {'b', i, int(spent), int(held)}
    if enforce then table.insert(denials, row) else table.insert(shadow, row) end
  end
  k = k + 2 + n
  a = a + 5
end
for i = 1, nt do
  local key = KEYS[k]
  local per_minute, capacity = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local need, enforce = tonumber(ARGV[a + 2]), ARGV[a + 3] == '1'
  local level, at = bucket_read(key, per_minute, capacity, now)
  buckets[i] = {key, per_minute, capacity, need, level, at}
  if level < need * SCALE then
    local wait = -1
    if need <= capacity and per_minute > 0 then
      wait = math.ceil((need * SCALE - level) / per_minute)
    end
    local row = {'t', i, int(math.floor(level / SCALE)), int(wait)}
    if enforce then table.insert(denials, row) else table.insert(shadow, row) end
  end
  k = k + 1
  a = a + 4
end
expect(events, 'stream')
local candidates = {}
if #denials > 0 then
  local plan = cjson.decode(ARGV[6])
  for _, row in ipairs(denials) do
    -- The period's hard-limit event is for a budget this request finds full, not for a request
    -- larger than the whole limit (that denial says so itself, and must not use up the event).
    if row[1] == 'b' and amount <= budgets[row[2]][7] then
      local used = tonumber(row[3]) + tonumber(row[4])
      budget_events(candidates, plan.b[row[2]], used, used, now, rid,
        {'requested_micros', int(amount)})
    end
  end
  touch_markers(tag_prefix, candidates)
  expire_holds(holds, due, now)
  emit_all(events, tag_prefix, candidates)
  return {'denied', now, 0, '', denials, shadow}
end

-- Events this hold will emit, found before the first write (and the plan decoded only when
-- there are some: most holds emit none).
local plan = nil
local adds = {}
for _, e in ipairs(expiries) do
  table.insert(adds, e)
end
for i, b in ipairs(budgets) do
  table.insert(adds, {b[1], 'held', amount})
  local before = b[4] + b[5]
  local after = before + amount
  local eventful = after > b[7] and not b[8]
  for pct in string.gmatch(b[6], '%d+') do
    local mark = tonumber(pct) * b[7]
    if before * 100 < mark and after * 100 >= mark then
      eventful = true
    end
  end
  if eventful then
    plan = plan or cjson.decode(ARGV[6])
    budget_events(candidates, plan.b[i], before, after, now, rid)
  end
end
local bad = out_of_bounds(adds)
if bad then
  return {'bound', now, 0, '', bad, {}}
end
touch_markers(tag_prefix, candidates)

-- Phase 2: every check passed; hold on all of them.
expire_holds(holds, due, now)
local parts = {}
for i, b in ipairs(budgets) do
  local held_key, charge_key, expire_at = b[1], b[2], b[3]
  -- Expiries are set when a key is created (its counter field was absent before this call;
  -- docs/decisions.md, "Redis work per call"), except a rolling budget's held key: it
  -- outlives every sub-bucket, so its expiry slides with each hold.
  redis.call('HINCRBY', held_key, 'held', int(amount))
  if charge_key ~= held_key then
    redis.call('PEXPIREAT', held_key, keep_until(expire_at))
    if absent(charge_key, 'spent') then
      redis.call('HSET', charge_key, 'spent', '0')
      redis.call('PEXPIREAT', charge_key, keep_until(expire_at))
    end
  elseif absent(held_key, 'held') then
    redis.call('PEXPIREAT', held_key, keep_until(expire_at))
  end
  parts[i] = int(b[4]) .. ',' .. int(b[5] + amount)
end
emit_all(events, tag_prefix, candidates)
local levels = {}
for i, t in ipairs(buckets) do
  local level = t[5] - t[4] * SCALE
  bucket_write(t[1], level, t[6], t[2], t[3])
  levels[i] = int(math.floor(level / SCALE))
end
local result = table.concat(parts, ';') .. '|' .. table.concat(levels, ';')
local deadline = now + lease
redis.call('HSET', rkey, 'st', 'held', 'fp', fp, 'res', result, 'dl', int(deadline),
  'plan', ARGV[6], 'meta', ARGV[7], 'ct', int(now))
redis.call('PEXPIRE', rkey, int(lease + keep))
redis.call('ZADD', holds, int(deadline), rid)
return {'granted', now, deadline, result, 'held', shadow}
