-- reserve.lua: check every limit, then hold on all of them at once, or change nothing.
--
-- KEYS[1]  reservation hash   KEYS[2]  org's hold index (zset: lease deadline ms)
-- KEYS[3]  org's event stream
-- (counter and bucket hashes come from the plan; same hash tag, same slot)
-- ARGV[1] reservation id   ARGV[2] request fingerprint   ARGV[3] lease ms
-- ARGV[4] record ttl ms (after the lease)   ARGV[5] meta JSON   ARGV[6] org key prefix
-- ARGV[7..] the plan's tokens (lib.lua), stored tab-joined in the reservation
--
-- Events (threshold crossings, first hard-limit denial, warn-only and shadow overages) go to
-- the event stream once per budget, entity, period and kind: a marker key dedupes them. They
-- are the only write a denial makes; no counter, bucket or reservation changes.
-- A hard_limit event only for a request that would fit the budget's whole limit (one that
-- never could is its own denial, not the period's exhaustion).
--
-- Returns {status, now_ms, deadline_ms, result, denials, shadow}
--   status: 'granted' | 'denied' | 'replay' | 'conflict' | 'bound' (a held counter would leave
--   the exact range: nothing written; `denials` names the counter)
--   result: "spent,held;spent,held;...|level;level;..." after the hold (also stored for replay)
--   denials/shadow: {{'b', index, spent, held} | {'t', index, level, wait_ms (-1: never)}}
--   (a bucket's index counts kinds across the plan's bucket hashes, in order)
-- A replay returns the stored result and deadline with the reservation's state in `denials`.

local rkey, holds, events = KEYS[1], KEYS[2], KEYS[3]
local rid, fp = ARGV[1], ARGV[2]
local lease, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local tag_prefix = ARGV[6]
local plan = read_plan(ARGV, 7)
local amount, budgets, buckets = plan.a, plan.b, plan.t
local now = now_ms()

-- Lazy expiry first, so stale holds of this org never deny a request: decided here, written
-- with this call's other writes.
local due = due_holds(holds, tag_prefix .. 'r:', now, 8)
local prior = redis.call('HMGET', rkey, 'fp', 'res', 'dl', 'st')
if not prior[1] then
  for i = 1, #budgets do
    want_budget(budgets[i])
  end
  want_buckets(buckets)
end
load()
expiry_decisions(due)
assert_in_bounds()

if prior[1] then
  -- Idempotency: the reservation id is the key. Same request: the original answer, with the
  -- state this call leaves (its own lazy expiry may be what expires this very hold).
  local state = prior[4]
  for _, d in ipairs(due) do
    if d.rid == rid and d.plan then state = 'expired' end
  end
  flush()
  expire_holds(holds, due, now)
  if prior[1] ~= fp then
    return {'conflict', now, 0, '', state, {}}
  end
  return {'replay', now, tonumber(prior[3]), prior[2], state, {}}
end

-- Phase 1: check everything; write nothing.
-- (parallel arrays, not a table per budget or bucket kind: tables are what a script costs)
-- (ARRAY8: lib.lua)
local spents = {nil, nil, nil, nil, nil, nil, nil, nil}
local helds = {nil, nil, nil, nil, nil, nil, nil, nil}
local denials, shadow = {}, {}
for i = 1, #budgets do
  local b = budgets[i]
  local spent = budget_spent(b)
  local held = cur(b.h, b.fh)
  spents[i], helds[i] = spent, held
  if spent + held + amount > b.l then
    local row = {'b', i, int(spent), int(held)}
    if b.m == 'b' then table.insert(denials, row) else table.insert(shadow, row) end
  end
end
local take_key = {nil, nil, nil, nil, nil, nil, nil, nil}
local take_kind = {nil, nil, nil, nil, nil, nil, nil, nil}
local take_level = {nil, nil, nil, nil, nil, nil, nil, nil}
local take_at = {nil, nil, nil, nil, nil, nil, nil, nil}
local n = 0
for i = 1, #buckets do
  local t = buckets[i]
  local kinds = t.kinds
  for j = 1, #kinds do
    local q = kinds[j]
    n = n + 1
    local need = kind_amount(plan, q)
    local level, at = bucket_level(t.k, q, now)
    take_key[n], take_kind[n], take_level[n], take_at[n] = t.k, q, level - need * SCALE, at
    if level < need * SCALE then
      local wait = -1
      if need <= q.c and q.r > 0 then
        wait = math.ceil((need * SCALE - level) / q.r)
      end
      local units = level / SCALE
      local row = {'t', n, int(units - units % 1), int(wait)}
      if q.e then table.insert(denials, row) else table.insert(shadow, row) end
    end
  end
end
local candidates = {}
if #denials > 0 then
  for _, row in ipairs(denials) do
    -- The period's hard-limit event is for a budget this request finds full, not for a request
    -- larger than the whole limit (that denial says so itself, and must not use up the event).
    if row[1] == 'b' and amount <= plan.b[row[2]].l then
      local u = spents[row[2]] + helds[row[2]]
      budget_events(candidates, plan.b[row[2]], u, u, now, rid,
        {'requested_micros', int(amount)})
    end
  end
  touch_markers(tag_prefix, candidates, events)
  flush()
  expire_holds(holds, due, now)
  emit_all(events, tag_prefix, candidates)
  return {'denied', now, 0, '', denials, shadow}
end

-- Events this hold will emit, and every write, decided before the first write.
for i = 1, #budgets do
  hold(budgets[i], amount)
end
for i = 1, n do
  bucket_set(take_key[i], take_kind[i], take_level[i], take_at[i])
end
local bad = out_of_bounds()
if bad then
  return {'bound', now, 0, '', bad, {}}
end
local parts = {nil, nil, nil, nil, nil, nil, nil, nil} -- ARRAY8
for i = 1, #budgets do
  local before = spents[i] + helds[i]
  budget_events(candidates, budgets[i], before, before + amount, now, rid)
  parts[i] = int(spents[i]) .. ',' .. int(helds[i] + amount)
end
local levels = {nil, nil, nil, nil, nil, nil, nil, nil} -- ARRAY8
for i = 1, n do
  local units = take_level[i] / SCALE
  levels[i] = int(units - units % 1) -- floor, without a call
end
touch_markers(tag_prefix, candidates, events)
local sg = generations(plan)

-- Phase 2: every check passed; hold on all of them.
flush()
expire_holds(holds, due, now)
emit_all(events, tag_prefix, candidates)
local result = table.concat(parts, ';') .. '|' .. table.concat(levels, ';')
local deadline = now + lease

local plan_text, dl, ct = table.concat(ARGV, '\t', 7), int(deadline), int(now)
if sg then
  redis.call('HSET', rkey, 'st', 'held', 'fp', fp, 'res', result, 'dl', dl,
    'plan', plan_text, 'meta', ARGV[5], 'ct', ct, 'sg', sg)
else
  redis.call('HSET', rkey, 'st', 'held', 'fp', fp, 'res', result, 'dl', dl,
    'plan', plan_text, 'meta', ARGV[5], 'ct', ct)
end
redis.call('PEXPIRE', rkey, int(lease + keep))
redis.call('ZADD', holds, dl, rid)
return {'granted', now, deadline, result, 'held', shadow}
