-- lib.lua: helpers prepended to every script when it is loaded (see store/scripts.py).
--
-- Conventions shared by all scripts:
--   * Time is Redis TIME in milliseconds, asked once per script; never taken from the caller.
--   * Numbers handed to redis.call go through int(): Lua's tostring turns 1e15 into "1e+15",
--     and a number handed as it is costs Redis a %.17g printf, twice what int() costs.
--   * Strings become numbers by arithmetic (`s + 0`: one strtod; tonumber costs two and a
--     call), except where a bad value must read as nothing (tonumber, then a default).
--   * Counters live in one hash per org and period (store/keys.py, `counters`): fields
--     `<budget>|<entity>|s` (spent) and `<budget>|<entity>|h` (held); a rolling budget's
--     spend in hashes of 25 sub-buckets (`<budget>|<entity>|<index>|s`), its held amount in
--     the org's `held` hash. `_x` is the expiry last set on a counter hash. A sliding
--     (session) hash has no `_x`: its sentinel is `g`, its generation (the Redis ms it was
--     created at). A hold on it keeps that generation (the reservation's `sg`); voiding it
--     frees nothing when the hash idled out since (gone, or created again: another `g`).
--   * A rate-limit rule's buckets for one entity share one hash: `<kind>.t` = level * 60000,
--     `ms` = the time of every kind's level (a write sets all the hash's kinds as of one time),
--     `x` = the expiry last set. A bucket refills at `per_minute` scaled units per millisecond,
--     so integer arithmetic stays exact in doubles. A hash from before the shared time (a
--     `<kind>.ms` per kind) reads as levels of now: no refill until written again.
--   * Each hash is read with one HMGET (`want` then `load`) and written with one HSET
--     (`add`/`put` then `flush`) of absolute values computed here (the script is atomic).
--   * A plan (the engine packs it: store/scripted.py, `plan_tokens`) is a flat list of tokens:
--       amount, input tokens, output tokens, B, T,
--       B budgets: field, scope, limit, mode (b|w|s), thresholds ("50,80" or "-"), period end
--         ms, then  C <hash> <expire-at ms>   (a calendar period: spent and held in one hash)
--               or  S <hash> <slide ms>       (a sliding hash, e.g. a session: its expiry
--                                              moves to now + slide on every write)
--               or  R <hash prefix> <width ms> <expiry after the sub-bucket's end, ms>
--                     <sub-bucket index> <held hash> <held hash expire-at ms>   (rolling)
--       T bucket hashes: key, K, then K kinds: kind, per minute, capacity, enforce (1/0).
--     A kind takes `requests`: 1, `input`/`output`: the tokens, `cost`: the amount (micros).
--     Reserve gets it as ARGV and stores it tab-joined in the reservation; the other scripts
--     split it back. All keys carry the org's hash tag: one slot.
--
-- THE RULE: a script decides everything before its first write. Every read, every check, and
-- every operation that could fail (a key of the wrong type, a counter that is not an integer or
-- would leave the exact range, a malformed plan) comes first; then the writes, none of which can
-- fail. Redis keeps the writes a failing script made before its error, so this is what makes a
-- failed call a call that changed nothing, which its retry (or the sweep) can repeat safely.
-- Reads and checks: want, load, val, cur, out_of_bounds, due_holds, bucket_level, expect;
-- writes happen only in flush, expire_holds, emit_all (and the scripts' own last lines).
-- tests/engine/test_decide_before_write.py checks the rule on every script, on each store, by
-- corrupting each key in turn.

local SCALE = 60000

-- The largest amount a script keeps or formats (bounds.py, MAX_COUNTER_MICROS): integers up to
-- it are exact in Lua's doubles. Scripts check the amounts they will write before their first
-- write; int() refusing one is a bug caught loudly, never a number formatted as INT64_MIN.
local MAX_AMOUNT = 9007199254740991

-- The exact range (NaN fails both comparisons). int(), load() and out_of_bounds(), which run for
-- every value a call reads or writes, spell the same two comparisons out instead of calling
-- this: a Lua call per value is a measurable share of a script (bench/redis_instructions.py).
local function fits(n)
  return n >= -MAX_AMOUNT and n <= MAX_AMOUNT
end

local function int(n)
  if not (n >= -MAX_AMOUNT and n <= MAX_AMOUNT) then
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

-- Expiry instants come from the service's period clock; a key must never expire less than a
-- day from now by Redis's own clock (a skewed or frozen service clock must not be able to make
-- a live counter or an event marker vanish at once).
local MIN_KEEP_MS = 86400000

local function keep_until(at)
  return math.max(at, now_ms() + MIN_KEEP_MS)
end

-- Reads. `want(key, field)` names a field to read; `load()` reads every named field of each
-- hash with one HMGET (its expiry sentinel first) and checks it: a counter or bucket value that
-- is not an integer in the exact range fails here, before any write. A sentinel (`_x`, `x`)
-- that is missing or bad reads as 0: the expiry is set again, nothing worse.
-- Per hash, one table names the fields (array: HMGET's arguments; field → position) and the
-- HMGET reply, checked in place, holds the values (false: absent): tables are most of what a
-- script costs, so none more per hash or field.
-- ARRAY8: an array presized to 8 by its constructor, `{nil, nil, nil, nil, nil, nil, nil, nil}`:
-- one built item by item from `{}` is reallocated and rehashed at 1, 2, 4 and 8 items, and
-- rehashes are a large part of what a script costs (bench/redis_instructions.py). Written out
-- where used: a constructor cannot be shared.
local WANT, ORDER, VAL = {}, {nil, nil, nil, nil, nil, nil, nil, nil}, {}

local function want(key, field, sentinel)
  local w = WANT[key]
  if not w then
    w = {sentinel or '_x', nil, nil, nil, nil, nil, nil, nil} -- ARRAY8
    w[w[1]] = 1
    WANT[key] = w
    ORDER[#ORDER + 1] = key
  end
  if not w[field] then
    w[#w + 1] = field
    w[field] = #w
  end
end

local function load()
  for o = 1, #ORDER do
    local key = ORDER[o]
    if not VAL[key] then
      local w = WANT[key]
      local v = redis.call('HMGET', key, unpack(w))
      local x = tonumber(v[1])
      v[1] = (x and x >= -MAX_AMOUNT and x <= MAX_AMOUNT) and x or 0
      for i = 2, #w do
        local raw = v[i]
        if raw then
          -- Arithmetic coerces the string (one strtod; tonumber costs two and a call): a value
          -- that is no number at all fails here too, with Lua's own message.
          local n = raw + 0
          if n % 1 ~= 0 or n < -MAX_AMOUNT or n > MAX_AMOUNT then
            error('budgetd: ' .. key .. ' ' .. w[i] .. ' is not a counter: ' .. raw)
          end
          v[i] = n
        end
      end
      VAL[key] = v
    end
  end
end

-- A field's value before this call (0 when absent), and whether it was there. Asking about a
-- field that was not loaded is a bug, refused loudly rather than read after a write. (The hot
-- helpers below do their lookups inline: a Lua function call costs about what a table does.)
local function unread(key, field)
  error('budgetd: ' .. key .. ' ' .. field .. ' was not read before the writes')
end

local function val(key, field)
  local v = VAL[key]
  local i = v and WANT[key][field]
  if not i then unread(key, field) end
  return v[i] or 0
end

local function present(key, field)
  local v = VAL[key]
  local i = v and WANT[key][field]
  if not i then unread(key, field) end
  return v[i] ~= false
end

-- Writes, decided first: per hash written, one table: the fields in order (array) and their new
-- absolute values (field → value); [0], [-1]: its expiry rule: 'a', at (live until at least
-- `at`: set when the hash's sentinel falls short, i.e. when the hash is created, not on every
-- call), 's', ms (slides to now + ms on every write), 'b', ttl (a bucket hash: bucket_set).
local PEND, PORDER = {}, {nil, nil, nil, nil, nil, nil, nil, nil} -- ARRAY8

local function pending(key)
  local p = PEND[key]
  if not p then
    p = {nil, nil, nil, nil, nil, nil, nil, nil} -- ARRAY8
    PEND[key] = p
    PORDER[#PORDER + 1] = key
  end
  return p
end

-- The value a field will have after the writes decided so far.
local function cur(key, field)
  local p = PEND[key]
  local n = p and p[field]
  if n ~= nil then
    return n
  end
  local v = VAL[key]
  local i = v and WANT[key][field]
  if not i then unread(key, field) end
  return v[i] or 0
end

local function put(key, field, value)
  local p = PEND[key] or pending(key)
  if p[field] == nil then
    p[#p + 1] = field
  end
  p[field] = value
end

local function add(key, field, delta)
  local p = PEND[key] or pending(key)
  local n = p[field]
  if n == nil then
    local v = VAL[key]
    local i = v and WANT[key][field]
    if not i then unread(key, field) end
    n = v[i] or 0
    p[#p + 1] = field
  end
  p[field] = n + delta
end

local function expire_rule(key, kind, n)
  local p = PEND[key] or pending(key)
  if not p[0] then
    p[0], p[-1] = kind, n
  elseif n > p[-1] then
    p[-1] = n
  end
end

-- The first hash whose decided value would leave the exact range (the caller refuses the
-- call), or nil.
local function out_of_bounds()
  for o = 1, #PORDER do
    local key = PORDER[o]
    if not VAL[key] then
      error('budgetd: ' .. key .. ' was not read before the writes')
    end
    local p = PEND[key]
    for j = 1, #p do
      local n = p[p[j]]
      if not (n >= -MAX_AMOUNT and n <= MAX_AMOUNT) then -- NaN fails both
        return key .. ' ' .. p[j]
      end
    end
  end
  return nil
end

local function assert_in_bounds()
  local bad = out_of_bounds()
  if bad then
    error('budgetd: ' .. bad .. ' would leave the exact range')
  end
end

-- Writes every decided value: one HSET per hash (its expiry sentinel with it when the expiry
-- moves), then the expiry. None of these can fail: every hash was read (its type checked) and
-- every value bounded before.
local function flush()
  -- one HSET argument list (presized to 16), reused for every hash: its first n items
  local args = {nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}
  for o = 1, #PORDER do
    local key = PORDER[o]
    local p = PEND[key]
    local n = 0
    for j = 1, #p do
      local f = p[j]
      args[n + 1] = f
      args[n + 2] = int(p[f])
      n = n + 2
    end
    local rule, at = p[0], nil
    if rule == 'a' then
      local need = keep_until(p[-1])
      if VAL[key][1] < need then
        at = need
        args[n + 1] = '_x'
        args[n + 2] = int(at)
        n = n + 2
      end
    elseif rule == 's' and VAL[key][1] == 0 then
      -- A sliding hash created by this call (or one from before generations): its generation.
      args[n + 1] = 'g'
      args[n + 2] = int(now_ms())
      n = n + 2
    elseif rule == 'b' then
      -- A bucket hash must live until its emptiest bucket has refilled (plus a minute). Its
      -- expiry is moved only when the one it has falls short, and then that far again (at
      -- most an hour) ahead: set about once per refill time, not on every call.
      local ttl = p[-1]
      if VAL[key][1] < now_ms() + ttl then
        at = now_ms() + ttl + math.min(ttl, 3600000)
        args[n + 1] = 'x'
        args[n + 2] = int(at)
        n = n + 2
      end
    end
    if n > 0 then
      redis.call('HSET', key, unpack(args, 1, n))
    end
    if at then
      redis.call('PEXPIREAT', key, int(at))
    elseif rule == 's' then
      redis.call('PEXPIRE', key, int(p[-1]))
    end
  end
  PEND, PORDER = {}, {nil, nil, nil, nil, nil, nil, nil, nil} -- ARRAY8
end

-- A bucket kind's level field (literals for the known kinds: no string built per call).
local function kind_field(kind)
  if kind == 'requests' then return 'requests.t' end
  if kind == 'input' then return 'input.t' end
  if kind == 'output' then return 'output.t' end
  if kind == 'cost' then return 'cost.t' end
  return kind .. '.t'
end

-- The plan: tokens from index i of T (ARGV, or a stored plan split by split_plan).
local function read_plan(T, i)
  if string.sub(T[i] or '', 1, 1) == '{' then
    error('budgetd: a reservation made before the counter layout of issue 13: run '
      .. '`budgetd store migrate` for its org')
  end
  -- (a malformed token fails the arithmetic that turns it into a number, before any write;
  -- each table is made whole by one constructor: one that grows key by key rehashes)
  local plan = {a = T[i] + 0, inp = T[i + 1] + 0, out = T[i + 2] + 0,
    b = {nil, nil, nil, nil, nil, nil, nil, nil}, t = {nil, nil, nil, nil, nil, nil, nil, nil}}
  local nb, nt = T[i + 3] + 0, T[i + 4] + 0
  local budgets, buckets = plan.b, plan.t
  i = i + 5
  for j = 1, nb do
    -- fs, fh: the entry's spent and held field, named once per call (not per use)
    local f, k = T[i], T[i + 6]
    if k == 'R' then
      budgets[j] = {f = f, s = T[i + 1], l = T[i + 2] + 0, m = T[i + 3], th = T[i + 4],
        pe = T[i + 5] + 0, k = k, fs = f .. '|s', fh = f .. '|h',
        base = T[i + 7], w = T[i + 8] + 0, xo = T[i + 9] + 0, idx = T[i + 10] + 0,
        h = T[i + 11], hx = T[i + 12] + 0, wk = false, wf = false}
      i = i + 13
    elseif k == 'C' or k == 'S' then
      local c = T[i + 7]
      budgets[j] = {f = f, s = T[i + 1], l = T[i + 2] + 0, m = T[i + 3], th = T[i + 4],
        pe = T[i + 5] + 0, k = k, fs = f .. '|s', fh = f .. '|h', c = c, h = c,
        x = T[i + 8] + 0}
      i = i + 9
    else
      error('budgetd: malformed plan')
    end
  end
  for j = 1, nt do
    local kinds = {nil, nil, nil, nil, nil, nil, nil, nil} -- ARRAY8
    buckets[j] = {k = T[i], kinds = kinds}
    local nk = T[i + 1] + 0
    i = i + 2
    for q = 1, nk do
      local kind = T[i]
      kinds[q] = {q = kind, r = T[i + 1] + 0, c = T[i + 2] + 0, e = T[i + 3] == '1',
        ft = kind_field(kind)}
      i = i + 4
    end
  end
  return plan, i
end

local function split_plan(text)
  local out, n = {}, 0
  for tok in string.gmatch(text, '[^\t]+') do
    n = n + 1
    out[n] = tok
  end
  return out
end

-- A rolling budget's counters: the hash and field of sub-bucket `i`.
local ROLLING_CHUNK = 25

local function sub_bucket(b, i)
  return b.base .. math.floor(i / ROLLING_CHUNK), b.f .. '|' .. i .. '|s'
end

-- Where a budget entry's spend lands (its current sub-bucket, for a rolling one), and the
-- expiry that hash gets.
local function charge_slot(b)
  if b.k == 'R' then
    local key, field = sub_bucket(b, b.idx)
    local chunk_end = (math.floor(b.idx / ROLLING_CHUNK) + 1) * ROLLING_CHUNK * b.w
    return key, field, chunk_end + b.xo
  end
  return b.c, b.fs, b.x
end

-- A rolling budget entry as of `clock_ms` (the service's period clock): charged to the
-- sub-bucket of that moment. A calendar entry as it is (a hold settles in its own period).
local function entry_now(b, clock_ms)
  if b.k ~= 'R' then
    return b
  end
  local out = {}
  for k, v in pairs(b) do
    out[k] = v
  end
  out.idx = math.floor(clock_ms / b.w)
  out.pe = (out.idx + 1) * b.w
  out.wk, out.wf = false, false -- its window is that of its own sub-bucket
  return out
end

-- A rolling entry's window: the hash and field of each of its 25 sub-buckets, named once per
-- call (the names are what costs: a reserve or commit reads them, then sums them).
local function window(b)
  if not b.wk then
    local wk, wf = {}, {}
    local prefix = b.f .. '|'
    -- The window spans at most two chunk hashes: each name is built once. A field name is
    -- "<prefix><i>|s": a number turned into a string costs ~3 concatenations of strings, so
    -- <i>'s decimal digits but the last are made once per ten sub-buckets, the last digit
    -- is a literal.
    local chunk = math.floor((b.idx - 24) / ROLLING_CHUNK)
    local key = b.base .. chunk
    local digits = {'0', '1', '2', '3', '4', '5', '6', '7', '8', '9'}
    local tens, head = nil, nil
    for i = b.idx - 24, b.idx do
      if math.floor(i / ROLLING_CHUNK) ~= chunk then
        chunk = math.floor(i / ROLLING_CHUNK)
        key = b.base .. chunk
      end
      wk[#wk + 1] = key
      if i < 10 then
        wf[#wf + 1] = prefix .. i .. '|s'
      else
        local t = math.floor(i / 10)
        if t ~= tens then
          tens, head = t, prefix .. t
        end
        wf[#wf + 1] = head .. digits[i - t * 10 + 1] .. '|s'
      end
    end
    b.wk, b.wf = wk, wf
  end
  return b.wk, b.wf
end

-- Names the fields a budget entry's checks read: its window's spend, and its held amount.
local function want_budget(b)
  if b.k == 'R' then
    local wk, wf = window(b)
    for i = 1, #wk do
      want(wk[i], wf[i])
    end
  else
    want(b.c, b.fs, b.k == 'S' and 'g' or nil)
  end
  want(b.h, b.fh, b.k == 'S' and 'g' or nil)
end

-- A sliding entry's generation after this call's writes (its hash's `g`; now for a hash this
-- call creates). Only for an entry whose hash this call writes.
local function generation(b)
  local g = VAL[b.h][1]
  if g == 0 then
    return now_ms()
  end
  return g
end

-- The generations of a plan's sliding entries, as a reservation keeps them (`sg`), or nil.
local function generations(plan)
  local out = nil
  local budgets = plan.b
  for i = 1, #budgets do
    local b = budgets[i]
    if b.k == 'S' then
      out = out or {}
      out[#out + 1] = int(generation(b))
    end
  end
  return out and table.concat(out, ' ')
end

-- What a budget entry has spent in its whole window, before this call.
local function budget_spent(b)
  if b.k ~= 'R' then
    return val(b.c, b.fs)
  end
  local wk, wf = window(b)
  local spent = 0
  for i = 1, #wk do
    spent = spent + val(wk[i], wf[i])
  end
  return spent
end

-- Decides: add `delta` to an entry's held amount.
local function hold(b, delta)
  add(b.h, b.fh, delta)
  if b.k == 'R' then
    expire_rule(b.h, 'a', b.hx)
  elseif b.k == 'S' then
    expire_rule(b.h, 's', b.x)
  else
    expire_rule(b.h, 'a', b.x)
  end
end

-- Decides: add `amount` to each entry's spend. Returns the counters as the ledger entry's
-- `charged` field names them ("<hash>#<field>", space-separated), which reconcile and trim read.
local function charge(budgets, amount)
  local charged = {nil, nil, nil, nil, nil, nil, nil, nil} -- ARRAY8
  for i = 1, #budgets do
    local b = budgets[i]
    local key, field, at = charge_slot(b)
    add(key, field, amount)
    if b.k == 'S' then
      expire_rule(key, 's', b.x)
    else
      expire_rule(key, 'a', at)
    end
    charged[i] = key .. '#' .. field
  end
  return table.concat(charged, ' ')
end

-- Token buckets. Names the fields of every bucket hash of the plan: its time, each kind's level.
local function want_buckets(buckets)
  for i = 1, #buckets do
    local t = buckets[i]
    want(t.k, 'ms', 'x')
    local kinds = t.kinds
    for j = 1, #kinds do
      want(t.k, kinds[j].ft, 'x')
    end
  end
end

-- Level of a bucket kind at `now`, after refill, and the time that level belongs to (as the
-- writes decided so far leave it). A clock that ran backwards refills nothing.
local function bucket_level(key, q, now)
  local cap = q.c * SCALE
  local level, last
  local p = PEND[key]
  if p and p[q.ft] ~= nil then
    level, last = p[q.ft], p.ms
  else
    -- As read (not as decided: another kind's write may have moved the pending time, and this
    -- kind's level read is as of the time read with it).
    local v = VAL[key]
    local w = v and WANT[key]
    local i, j = w and w[q.ft], w and w.ms
    if not (i and j) then unread(key, q.ft) end
    level, last = v[i], v[j]
    if not level then
      return cap, now
    end
    if not last then
      -- A hash of the per-kind layout (lib.lua's header): a level of now, never a refill
      -- that the hash cannot show.
      last = now
    end
  end
  if now > last then
    level = level + (now - last) * q.r
    last = now
  end
  if level > cap then
    level = cap
  end
  return level, last
end

-- Decides a bucket kind's new level. Its debt is at most one capacity: an under-estimate is
-- taken, but one huge call cannot lock its scope out for longer than a minute's refill.
local function bucket_set(key, q, level, at)
  if level < -q.c * SCALE then
    level = -q.c * SCALE
  end
  put(key, q.ft, level)
  put(key, 'ms', at)
  local ttl = 86400000
  if q.r > 0 then
    local t = (q.c * SCALE - level) / q.r
    ttl = t - t % 1 -- floor, then up: math.ceil without a call
    if ttl < t then ttl = ttl + 1 end
    ttl = ttl + 60000
  end
  expire_rule(key, 'b', ttl)
  return level
end

-- What a kind takes from its bucket for a plan (requests: 1; tokens; cost: micros).
local function kind_amount(plan, q)
  if q.q == 'requests' then return 1 end
  if q.q == 'input' then return plan.inp end
  if q.q == 'output' then return plan.out end
  return plan.a
end

-- Decides: give back `back(q)` (negative: take) to each bucket kind, never above capacity.
-- A hash with anything to give is written whole: every kind as of one time (`ms`), a kind with
-- nothing to give at its level refilled to that time (the same level, told from a later time).
local function buckets_give(buckets, back, now)
  for i = 1, #buckets do
    local t = buckets[i]
    local kinds = t.kinds
    local any = false
    for j = 1, #kinds do
      if back(kinds[j]) ~= 0 then
        any = true
      end
    end
    if any then
      for j = 1, #kinds do
        local q = kinds[j]
        local level, at = bucket_level(t.k, q, now)
        bucket_set(t.k, q, math.min(level + back(q) * SCALE, q.c * SCALE), at)
      end
    end
  end
end

-- Fails (before any write) when `key` exists with another type than `kind`: the commands a
-- script writes it with (XADD, ZADD, ZREM) would fail after earlier writes.
local function expect(key, kind)
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then
    t = t.ok
  end
  if t ~= 'none' and t ~= kind then
    error('budgetd: ' .. key .. ' is a ' .. t .. ', not a ' .. kind)
  end
end

-- Up to `limit` holds whose lease (Redis time) ran out, read and checked, none written:
-- {rid, rkey, plan} each (plan nil for an id already resolved). Names the fields they hold on.
local function due_holds(holds_key, reservation_prefix, now, limit)
  local due = redis.call('ZRANGEBYSCORE', holds_key, '-inf', int(now), 'LIMIT', 0, limit)
  local out = {}
  for i, rid in ipairs(due) do
    local rkey = reservation_prefix .. rid
    local fields = redis.call('HMGET', rkey, 'st', 'plan', 'sg')
    local plan = nil
    -- A hold made before the layout upgrade (a JSON plan) waits for `budgetd store migrate`,
    -- which rewrites its plan; it is left in the index, untouched.
    local legacy = fields[1] == 'held' and string.sub(fields[2], 1, 1) == '{'
    -- Race: commit/release may have resolved it after it was indexed; only a 'held' one expires.
    if fields[1] == 'held' and not legacy then
      plan = read_plan(split_plan(fields[2]), 1)
      for _, b in ipairs(plan.b) do
        want(b.h, b.fh, b.k == 'S' and 'g' or nil)
      end
    end
    if not legacy then
      out[#out + 1] = {rid = rid, rkey = rkey, plan = plan, sg = fields[3]}
    end
  end
  return out
end

-- Decides: free a plan's hold on every budget. `sg`: the reservation's generations of its
-- sliding entries. A sliding hash that idled out since the hold (gone, or created again with
-- another generation) holds nothing of it: that entry is left as it is (not re-created with a
-- negative `held`, nor a reused id's hold freed). A hold made before generations (no `sg`)
-- frees only a `held` that is there.
local function void_hold(plan, sg)
  local j, gens = 0, nil
  local budgets = plan.b
  for i = 1, #budgets do
    local b = budgets[i]
    local live = true
    if b.k == 'S' then
      j = j + 1
      if sg then
        gens = gens or {}
        if j == 1 then
          for g in string.gmatch(sg, '%d+') do
            gens[#gens + 1] = tonumber(g)
          end
        end
        live = gens[j] == VAL[b.h][1]
      else
        live = present(b.h, b.fh)
      end
    end
    if live then
      hold(b, -plan.a)
    end
  end
end

-- Decides the counter side of expiring the holds due_holds found (after load()).
local function expiry_decisions(due)
  for _, d in ipairs(due) do
    if d.plan then
      void_hold(d.plan, d.sg)
    end
  end
end

-- Writes: the reservation side of expiring the holds due_holds found.
local function expire_holds(holds_key, due, now)
  for _, d in ipairs(due) do
    if d.plan then
      redis.call('HSET', d.rkey, 'st', 'expired', 'rt', int(now))
    end
    redis.call('ZREM', holds_key, d.rid)
  end
end

-- Events are rare: their helpers are made only by a call that has one (EV()), so the common
-- call does not pay for defining them (each function a script defines is made on every call).
local EVH = nil

local function EV()
  if EVH then
    return EVH
  end
  local E = {}

  -- An entry's label: name, entity, period id, period end, keep-until.
  function E.label(b)
    local name, entity = string.match(b.f, '^([^|]*)|(.*)$')
    if b.k == 'R' then
      local _, _, at = charge_slot(b)
      return name, entity, 'r' .. string.format('%d', b.idx), b.pe, at
    end
    local period = string.match(b.c, ':c:(.*)$')
    local keep = b.x
    if b.k == 'S' then
      keep = now_ms() + b.x
    end
    return name, entity, period, b.pe, keep
  end

  -- Adds to `out` the event `kind` of entry `b` ({id, keep, fields}).
  function E.add(out, b, after, now, rid, suffix, kind, threshold, extra)
    local name, entity, period, pe, keep = E.label(b)
    local fields = {'type', kind, 'budget', name, 'scope', b.s, 'entity', entity, 'period',
      period, 'threshold', int(threshold), 'used_micros', int(after), 'limit_micros', int(b.l),
      'at_ms', int(now), 'reservation_id', rid, 'period_end_ms', int(pe or 0)}
    for _, v in ipairs(extra or {}) do
      table.insert(fields, v)
    end
    table.insert(out, {id = name .. '|' .. entity .. '|' .. period .. suffix, keep = keep,
      fields = fields})
  end

-- Append an event to the org's stream, once per `id` for as long as `until_ms` (ms): the
-- marker key is the dedupe, so every replica and every restart agrees it was sent.
function E.emit(events_key, tag_prefix, id, until_ms, fields)
  local marker = tag_prefix .. 'ev:' .. id
  if redis.call('SET', marker, '1', 'NX', 'PXAT', int(keep_until(until_ms))) then
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


  function E.touch(tag_prefix, candidates)
    for _, e in ipairs(candidates) do
      redis.call('EXISTS', tag_prefix .. 'ev:' .. e.id)
    end
  end

  function E.emit_all(events_key, tag_prefix, candidates)
    for _, e in ipairs(candidates) do
      E.emit(events_key, tag_prefix, e.id, e.keep, e.fields)
    end
  end

  EVH = E
  return E
end

-- Add to `out` the events of entry `b` whose usage goes from `before` to `after` (micros):
-- thresholds crossed, the overage of a warn-only or shadow budget, and a shadow budget coming
-- back under its limit. The thresholds ("50,80,100", percents 1 to 100) are read digit by
-- digit, and only when one can be crossed (below the limit before, 1 % of it after).
local function budget_events(out, b, before, after, now, rid, kind_override)
  local l = b.l
  if kind_override then
    EV().add(out, b, after, now, rid, '|block', 'hard_limit', 100, kind_override)
    return
  end
  local th = b.th
  if th ~= '-' and before < l and after * 100 >= l then
    local n = 0
    for i = 1, #th + 1 do
      local c = string.byte(th, i)
      if c and c >= 48 and c <= 57 then
        n = n * 10 + c - 48
      else
        -- Crossed now: below the mark before, at or above it after.
        if before * 100 < n * l and after * 100 >= n * l then
          EV().add(out, b, after, now, rid, '|t' .. n, 'threshold', n)
        end
        n = 0
      end
    end
  end
  if after > l then
    if b.m == 'w' then
      EV().add(out, b, after, now, rid, '|over', 'over_limit', 100)
    elseif b.m == 's' then
      EV().add(out, b, after, now, rid, '|shadow', 'shadow_would_deny', 100)
    end
  elseif b.m == 's' and before > l then
    -- A shadow budget leaving would-deny (a commit or release brought it back under).
    EV().add(out, b, after, now, rid, '|shadow_clear', 'shadow_clear', 100)
  end
end

-- The events of every budget entry whose usage (its whole window, held included) moves by
-- `delta` micros, as budget_events makes them.
local function usage_events(budgets, delta, now, rid)
  local out = {}
  for i = 1, #budgets do
    local b = budgets[i]
    local used = budget_spent(b) + val(b.h, b.fh)
    budget_events(out, b, used, used + delta, now, rid)
  end
  return out
end

-- Before the first write: the event stream is a stream (XADD would fail after writes) and the
-- markers are read. Only a call with events to emit touches either.
local function touch_markers(tag_prefix, candidates, events_key)
  if #candidates > 0 then
    expect(events_key, 'stream')
    EV().touch(tag_prefix, candidates)
  end
end

local function emit_all(events_key, tag_prefix, candidates)
  if #candidates > 0 then
    EV().emit_all(events_key, tag_prefix, candidates)
  end
end
