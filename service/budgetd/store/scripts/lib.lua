-- lib.lua: helpers prepended to every script when it is loaded (see store/scripts.py).
--
-- Conventions shared by all scripts:
--   * Time is Redis TIME in milliseconds; it is never taken from the caller.
--   * Numbers handed to redis.call go through int(): Lua's tostring turns 1e12 into "1e+12",
--     which HINCRBY would reject.
--   * A token bucket is a hash {t = level * 60000, ms = time of that level}; it refills at
--     `per_minute` scaled units per millisecond, so integer arithmetic stays exact in doubles.
--   * A reservation's plan (JSON written by the service at reserve time) lists every key its
--     hold touched: {a = amount, b = {{h = held key, c = charge key, x = expire-at ms}},
--     t = {{k = key, r = per minute, c = capacity, n = amount, q = kind}}}. All of those keys
--     carry the org's hash tag, so they share the slot of the reservation key itself.
--     A rolling budget's entry also names its window's earlier sub-buckets: `ps`, their period
--     ids; each counter key is the charge key with its period id (`p`) swapped for one of them.
--     record.lua and adjust.lua take budget entries of the same shape.

local SCALE = 60000

-- The largest amount a script keeps or formats (bounds.py, MAX_COUNTER_MICROS): integers up to
-- it are exact in Lua's doubles, and far from HINCRBY's 64-bit overflow. Scripts check the
-- amounts they will write before their first write; int() refusing one is a bug caught loudly,
-- never a number formatted as INT64_MIN (what '%d' makes of 2^63 and beyond).
local MAX_AMOUNT = 9007199254740991

local function int(n)
  if not (n >= -MAX_AMOUNT and n <= MAX_AMOUNT) then -- NaN fails both comparisons
    error('budgetd: ' .. tostring(n) .. ' is out of bounds')
  end
  return string.format('%d', n)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Expiry instants come from the service's period clock; a key must never expire less than a
-- day from now by Redis's own clock (a skewed or frozen service clock must not be able to make
-- a live counter or an event marker vanish at once). In normal operation the instants are
-- always later than that: a period's counters live 8 days past its end.
local MIN_KEEP_MS = 86400000

local function keep_until(at)
  return int(math.max(at, now_ms() + MIN_KEEP_MS))
end

-- Level of a bucket at `now`, after refill, and the time that level belongs to. A clock that
-- ran backwards (failover to a replica whose clock is behind) refills nothing, never negative.
local function bucket_read(key, per_minute, capacity, now)
  local v = redis.call('HMGET', key, 't', 'ms')
  local cap = capacity * SCALE
  if not v[1] then
    return cap, now
  end
  local level = tonumber(v[1])
  local last = tonumber(v[2])
  if now > last then
    level = level + (now - last) * per_minute
    last = now
  end
  if level > cap then
    level = cap
  end
  return level, last
end

-- A bucket's debt is at most one capacity: an under-estimate is taken, but one huge call cannot
-- lock its scope out for longer than a minute's refill (plus the next call's own need).
local function bucket_write(key, level, at, per_minute, capacity)
  if level < -capacity * SCALE then
    level = -capacity * SCALE
  end
  redis.call('HSET', key, 't', int(level), 'ms', int(at))
  local missing = capacity * SCALE - level
  local ttl = 86400000
  if per_minute > 0 then
    ttl = math.ceil(missing / per_minute) + 60000
  end
  redis.call('PEXPIRE', key, int(ttl))
end

-- Give `tokens` back to a bucket (negative: take more), never above its capacity.
local function bucket_adjust(t, tokens, now)
  if tokens == 0 then
    return
  end
  local level, at = bucket_read(t.k, t.r, t.c, now)
  level = level + tokens * SCALE
  if level > t.c * SCALE then
    level = t.c * SCALE
  end
  bucket_write(t.k, level, at, t.r, t.c)
end

-- A script that touches keys it did not declare (a plan's keys, event markers) reads every one
-- of them before its first write. On a cluster slot being migrated, a key that already moved
-- fails the script when touched, and Redis keeps the writes made before the failure: reading
-- first means a failed script wrote nothing, so the caller's retry is safe.
local function touch(keys_list)
  for _, k in ipairs(keys_list) do
    redis.call('EXISTS', k)
  end
end

-- Counter keys of a budget entry's earlier sub-buckets (none for a calendar period).
local function window_keys(b)
  local out = {}
  if b.ps then
    local base = string.sub(b.c, 1, #b.c - #b.p)
    for _, p in ipairs(b.ps) do
      table.insert(out, base .. p)
    end
  end
  return out
end

-- What a budget entry has used in its whole window: spent in every sub-bucket, plus held.
local function budget_used(b)
  local used = tonumber(redis.call('HGET', b.c, 'spent') or '0')
    + tonumber(redis.call('HGET', b.h, 'held') or '0')
  for _, k in ipairs(window_keys(b)) do
    used = used + tonumber(redis.call('HGET', k, 'spent') or '0')
  end
  return used
end

local function budget_keys(out, budgets)
  for _, b in ipairs(budgets) do
    table.insert(out, b.h)
    table.insert(out, b.c)
    for _, k in ipairs(window_keys(b)) do
      table.insert(out, k)
    end
  end
  return out
end

local function plan_keys(plan)
  local out = budget_keys({}, plan.b)
  for _, t in ipairs(plan.t) do
    table.insert(out, t.k)
  end
  return out
end

-- Add `amount` (micros; negative for a credit) to the spend of each budget entry, keeping
-- its counter until the entry's expire-at. Returns the counter keys, space-separated: the
-- ledger entry's `charged` field, which reconcile and trim read.
local function charge(budgets, amount)
  local charged = {}
  for i, b in ipairs(budgets) do
    redis.call('HINCRBY', b.c, 'spent', int(amount))
    redis.call('PEXPIREAT', b.c, keep_until(b.x))
    charged[i] = b.c
  end
  return table.concat(charged, ' ')
end

-- Free a reservation's hold on every budget; with `refund_estimates`, also give back the token
-- estimates charged to input and output buckets (the call never ran). Request counts stay spent.
local function void_hold(plan, now, refund_estimates)
  for _, b in ipairs(plan.b) do
    redis.call('HINCRBY', b.h, 'held', int(-plan.a))
  end
  if refund_estimates then
    for _, t in ipairs(plan.t) do
      if t.q ~= 'requests' then
        bucket_adjust(t, t.n, now)
      end
    end
  end
end

-- Reclaim up to `limit` holds whose lease (Redis time) ran out. Returns how many.
local function expire_due(holds_key, reservation_prefix, now, limit)
  local due = redis.call('ZRANGEBYSCORE', holds_key, '-inf', int(now), 'LIMIT', 0, limit)
  for _, rid in ipairs(due) do
    local rkey = reservation_prefix .. rid
    local fields = redis.call('HMGET', rkey, 'st', 'plan')
    -- Race: commit/release may have resolved it after it was indexed; only a 'held' one expires.
    if fields[1] == 'held' then
      local plan = cjson.decode(fields[2])
      touch(plan_keys(plan))
      void_hold(plan, now, false)
      redis.call('HSET', rkey, 'st', 'expired', 'rt', int(now))
    end
    redis.call('ZREM', holds_key, rid)
  end
  return #due
end

-- Append an event to the org's stream, once per `id` for as long as `until_ms` (ms): the
-- marker key is the dedupe, so every replica and every restart agrees it was sent.
local function emit(events_key, tag_prefix, id, until_ms, fields)
  local marker = tag_prefix .. 'ev:' .. id
  if redis.call('SET', marker, '1', 'NX', 'PXAT', keep_until(until_ms)) then
    local entry = {'id', id}
    for _, v in ipairs(fields) do
      table.insert(entry, v)
    end
    -- No MAXLEN: a length cap would also drop events still waiting for delivery. The delivery
    -- job trims what its group has acknowledged (store/events.py, trim_acknowledged).
    redis.call('XADD', events_key, '*', unpack(entry))
    return true
  end
  return false
end

-- Add to `out` the events of plan entry `b` whose usage goes from `before` to `after` (micros):
-- thresholds crossed, the overage of a warn-only or shadow budget, and a shadow budget coming
-- back under its limit. {id, keep, fields} each.
local function budget_events(out, b, before, after, now, rid, kind_override)
  local base = b.n .. '|' .. b.en .. '|' .. b.p
  local function add(suffix, kind, threshold, extra)
    local fields = {'type', kind, 'budget', b.n, 'scope', b.s, 'entity', b.en, 'period', b.p,
      'threshold', int(threshold), 'used_micros', int(after), 'limit_micros', int(b.l),
      'at_ms', int(now), 'reservation_id', rid, 'period_end_ms', int(b.pe or 0)}
    for _, v in ipairs(extra or {}) do
      table.insert(fields, v)
    end
    table.insert(out, {id = base .. suffix, keep = b.x, fields = fields})
  end
  if kind_override then
    add('|block', 'hard_limit', 100, kind_override)
    return
  end
  for _, pct in ipairs(b.th) do
    -- Crossed now: below the mark before, at or above it after.
    if before * 100 < pct * b.l and after * 100 >= pct * b.l then
      add('|t' .. pct, 'threshold', pct)
    end
  end
  if after > b.l then
    if b.m == 'warn' then
      add('|over', 'over_limit', 100)
    elseif b.m == 'shadow' then
      add('|shadow', 'shadow_would_deny', 100)
    end
  elseif b.m == 'shadow' and before > b.l then
    -- A shadow budget leaving would-deny (a commit or release brought it back under).
    add('|shadow_clear', 'shadow_clear', 100)
  end
end

-- The events of every budget entry whose usage (its whole window, held included) moves by
-- `delta` micros; {id, keep, fields} each, as budget_events makes them.
local function usage_events(budgets, delta, now, rid)
  local out = {}
  for _, b in ipairs(budgets) do
    local used = budget_used(b)
    budget_events(out, b, used, used + delta, now, rid)
  end
  return out
end

local function touch_markers(tag_prefix, candidates)
  for _, e in ipairs(candidates) do
    redis.call('EXISTS', tag_prefix .. 'ev:' .. e.id)
  end
end

local function emit_all(events_key, tag_prefix, candidates)
  for _, e in ipairs(candidates) do
    emit(events_key, tag_prefix, e.id, e.keep, e.fields)
  end
end
