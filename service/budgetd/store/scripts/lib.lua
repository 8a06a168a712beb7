-- lib.lua: helpers prepended to every script when it is loaded (see store/scripts.py).
--
-- Conventions shared by all scripts:
--   * Time is Redis TIME in milliseconds; it is never taken from the caller.
--   * Numbers handed to redis.call go through int(): Lua's tostring turns 1e12 into "1e+12",
--     which HINCRBY would reject.
--   * A token bucket is a hash {t = level * 60000, ms = time of that level, x = the expiry last
--     set on it (bucket_write)}; it refills at
--     `per_minute` scaled units per millisecond, so integer arithmetic stays exact in doubles.
--   * A reservation's plan (JSON written by the service at reserve time) lists every key its
--     hold touched: {a = amount, b = {{h = held key, c = charge key, x = expire-at ms}},
--     t = {{k = key, r = per minute, c = capacity, n = amount, q = kind}}}. All of those keys
--     carry the org's hash tag, so they share the slot of the reservation key itself.
--     A rolling budget's entry also names its window's earlier sub-buckets: `ps`, their period
--     ids; each counter key is the charge key with its period id (`p`) swapped for one of them.
--     record.lua and adjust.lua take budget entries of the same shape. A rolling budget's
--     entry also carries `w`, its sub-bucket width (ms), and `xo`, how long after a sub-bucket
--     ends its counter is kept (ms): a commit charges the sub-bucket of its own time.
--
-- THE RULE: a script decides everything before its first write. Every read, every check, and
-- every operation that could fail (a key of the wrong type, a counter that is not an integer or
-- would leave the exact range, a malformed plan) comes first; then the writes, none of which can
-- fail. Redis keeps the writes a failing script made before its error, so this is what makes a
-- failed call a call that changed nothing, which its retry (or the sweep) can repeat safely.
-- Helpers that read and check are named for what they decide (counter, out_of_bounds,
-- due_holds, bucket_changes, expect); helpers that write say so (expire_holds, void_hold,
-- buckets_write, charge, emit_all). tests/engine/test_decide_before_write.py checks the rule
-- on every script, on each store, by corrupting each key in turn.

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

-- Redis time (ms), asked once per script: one instant for every decision and write of a call.
local NOW_MS = nil

local function now_ms()
  if not NOW_MS then
    local t = redis.call('TIME')
    NOW_MS = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return NOW_MS
end

local function fits(n)
  return n >= -MAX_AMOUNT and n <= MAX_AMOUNT
end

-- Counter fields this script has read: value, or false for a field that did not exist. Reads
-- all come before the first write (THE RULE), so a field is read from Redis once per script and
-- what is remembered is its state before the call.
local READ = {}

-- A counter field, read and checked: HGET fails on a key of another type, and a value that is
-- not an integer in the exact range (HINCRBY would fail or overflow on it) fails here; both
-- before any write.
local function counter(key, field)
  local id = key .. '\n' .. field
  local known = READ[id]
  if known ~= nil then
    return known or 0
  end
  local v = redis.call('HGET', key, field)
  if not v then
    READ[id] = false
    return 0
  end
  local n = string.match(v, '^%-?%d+$') and tonumber(v)
  if not n or not fits(n) then
    error('budgetd: ' .. key .. ' ' .. field .. ' is not a counter: ' .. v)
  end
  READ[id] = n
  return n
end

-- Whether a counter field this script read did not exist before the call: the write that adds
-- it may be creating its key, and sets the key's expiry (TTLs are set when a key is created,
-- not on every call: see docs/decisions.md, "Redis work per call"). Asking about a field the
-- script did not read is a bug, refused loudly rather than read after a write.
local function absent(key, field)
  local known = READ[key .. '\n' .. field]
  if known == nil then
    error('budgetd: ' .. key .. ' ' .. field .. ' was not read before the writes')
  end
  return known == false
end

-- Fails (before any write) when `key` exists with another type than `kind`: the commands a
-- script writes it with (XADD, ZADD, ZREM, HSET, HINCRBY) would fail after earlier writes.
local function expect(key, kind)
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then
    t = t.ok
  end
  if t ~= 'none' and t ~= kind then
    error('budgetd: ' .. key .. ' is a ' .. t .. ', not a ' .. kind)
  end
end

-- Counter changes {key, field, delta} a script is about to make: reads every counter (so a bad
-- one fails now) and returns the first whose total change would take it out of the exact range
-- (the caller refuses the call), or nil.
local function out_of_bounds(adds)
  local totals = {}
  for _, a in ipairs(adds) do
    local id = a[1] .. '\n' .. a[2]
    if totals[id] == nil then
      totals[id] = counter(a[1], a[2])
    end
    totals[id] = totals[id] + a[3]
  end
  for _, a in ipairs(adds) do
    if not fits(totals[a[1] .. '\n' .. a[2]]) then
      return a[1]
    end
  end
  return nil
end

-- As out_of_bounds, for changes that cannot leave the range unless a counter was corrupted.
local function assert_in_bounds(adds)
  local bad = out_of_bounds(adds)
  if bad then
    error('budgetd: ' .. bad .. ' would leave the exact range')
  end
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
-- A bucket also keeps `x`: the expiry instant (Redis ms) its last PEXPIREAT set. bucket_read
-- remembers it per key for bucket_write (nothing else reads it; a missing or bad one is 0).
local BUCKET_EXPIRY = {}

local function bucket_read(key, per_minute, capacity, now)
  local v = redis.call('HMGET', key, 't', 'ms', 'x')
  local x = tonumber(v[3])
  BUCKET_EXPIRY[key] = (x and fits(x)) and x or 0
  local cap = capacity * SCALE
  if not v[1] then
    return cap, now
  end
  local level, last = tonumber(v[1]), tonumber(v[2])
  if not level or not last or not fits(level) or not fits(last) then
    error('budgetd: ' .. key .. ' is not a token bucket')
  end
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
-- The key must live until the level has refilled (plus a minute). Its expiry is moved only when
-- the one it has (`x`, as bucket_read found it) falls short of that, and then moved that far
-- again (at most an hour) ahead, so a busy bucket's expiry is set about once per refill time
-- rather than on every call (docs/decisions.md, "Redis work per call").
local function bucket_write(key, level, at, per_minute, capacity)
  if level < -capacity * SCALE then
    level = -capacity * SCALE
  end
  local missing = capacity * SCALE - level
  local ttl = 86400000
  if per_minute > 0 then
    ttl = math.ceil(missing / per_minute) + 60000
  end
  if (BUCKET_EXPIRY[key] or 0) >= now_ms() + ttl then
    redis.call('HSET', key, 't', int(level), 'ms', int(at))
    return
  end
  local x = now_ms() + ttl + math.min(ttl, 3600000)
  redis.call('HSET', key, 't', int(level), 'ms', int(at), 'x', int(x))
  redis.call('PEXPIREAT', key, int(x))
  BUCKET_EXPIRY[key] = x
end

-- The new state of each plan bucket `t` given back `tokens(t)` (negative: taking more), never
-- above its capacity; read and computed now, written by buckets_write.
local function bucket_changes(buckets, tokens, now)
  local out = {}
  for _, t in ipairs(buckets) do
    local n = tokens(t)
    if n ~= 0 then
      local level, at = bucket_read(t.k, t.r, t.c, now)
      level = math.min(level + n * SCALE, t.c * SCALE)
      table.insert(out, {t = t, level = level, at = at})
    end
  end
  return out
end

local function buckets_write(changes)
  for _, ch in ipairs(changes) do
    bucket_write(ch.t.k, ch.level, ch.at, ch.t.r, ch.t.c)
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

-- A rolling budget entry as of `clock_ms` (the service's period clock): charged to the
-- sub-bucket of that moment, its window the sub-buckets before it. A calendar entry as it is
-- (a hold settles in the period it was reserved in).
local function entry_now(b, clock_ms)
  if not b.w then
    return b
  end
  local index = math.floor(clock_ms / b.w)
  local base = string.sub(b.c, 1, #b.c - #b.p)
  local out = {}
  for k, v in pairs(b) do
    out[k] = v
  end
  out.p = 'r' .. int(index)
  out.c = base .. out.p
  out.ps = {}
  for i = index - #b.ps, index - 1 do
    table.insert(out.ps, 'r' .. int(i))
  end
  out.pe = (index + 1) * b.w
  out.x = out.pe + b.xo
  return out
end

-- What a budget entry has used in its whole window: spent in every sub-bucket, plus held.
local function budget_used(b)
  local used = counter(b.c, 'spent') + counter(b.h, 'held')
  for _, k in ipairs(window_keys(b)) do
    used = used + counter(k, 'spent')
  end
  return used
end

-- Adds to `adds` what charge(budgets, amount) will change.
local function charge_adds(adds, budgets, amount)
  for _, b in ipairs(budgets) do
    table.insert(adds, {b.c, 'spent', amount})
  end
  return adds
end

-- Adds to `adds` what void_hold(plan) will change.
local function hold_adds(adds, plan)
  for _, b in ipairs(plan.b) do
    table.insert(adds, {b.h, 'held', -plan.a})
  end
  return adds
end

-- Writes: add `amount` (micros; negative for a credit) to the spend of each budget entry; a
-- counter that did not exist (charge_adds' check read it) gets its expiry, the entry's
-- expire-at. Returns the counter keys, space-separated: the ledger entry's `charged` field,
-- which reconcile and trim read.
local function charge(budgets, amount)
  local charged = {}
  for i, b in ipairs(budgets) do
    redis.call('HINCRBY', b.c, 'spent', int(amount))
    if absent(b.c, 'spent') then
      redis.call('PEXPIREAT', b.c, keep_until(b.x))
    end
    charged[i] = b.c
  end
  return table.concat(charged, ' ')
end

-- Writes: free a reservation's hold on every budget. A held counter that no longer existed
-- (its key expired while the hold was open) is re-created with an expiry, never without one.
local function void_hold(plan)
  for _, b in ipairs(plan.b) do
    redis.call('HINCRBY', b.h, 'held', int(-plan.a))
    if absent(b.h, 'held') then
      redis.call('PEXPIREAT', b.h, keep_until(b.x))
    end
  end
end

-- Up to `limit` holds whose lease (Redis time) ran out, read and checked, none written:
-- {rid, rkey, plan} each (plan nil for an id already resolved). Adds their freed holds to `adds`.
local function due_holds(holds_key, reservation_prefix, now, limit, adds)
  local due = redis.call('ZRANGEBYSCORE', holds_key, '-inf', int(now), 'LIMIT', 0, limit)
  local out = {}
  for i, rid in ipairs(due) do
    local rkey = reservation_prefix .. rid
    local fields = redis.call('HMGET', rkey, 'st', 'plan')
    local plan = nil
    -- Race: commit/release may have resolved it after it was indexed; only a 'held' one expires.
    if fields[1] == 'held' then
      plan = cjson.decode(fields[2])
      hold_adds(adds, plan)
    end
    out[i] = {rid = rid, rkey = rkey, plan = plan}
  end
  return out
end

-- Writes: expire the holds due_holds found.
local function expire_holds(holds_key, due, now)
  for _, d in ipairs(due) do
    if d.plan then
      void_hold(d.plan)
      redis.call('HSET', d.rkey, 'st', 'expired', 'rt', int(now))
    end
    redis.call('ZREM', holds_key, d.rid)
  end
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
