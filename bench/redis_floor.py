"""Benchmark: the floor of the design: what Redis spends on a reserve + commit pair of the bench
policy when the scripts do only what any design keeping DESIGN.md's guarantees must do.

    .venv/bin/python bench/redis_floor.py [--pairs 2000] [--concurrency 8] [--rounds 3]
        [--callgrind-ops 200] [--no-callgrind] [--no-engine]

The scripts measured here are **not product code**: they are throwaway Lua, string constants of
this file, hand-written for exactly the bench policy's shape (``bench/redis_work.py``'s ``bench``
case: 3 budgets in 2 counter hashes, the month's and the day's; 2 rate-limit hashes of 3 kinds),
with the product's key names, field names, amounts, limits, expiry rules and ledger fields
(taken from a recorded product pair). A reserve: one ``TIME``; one ``HMGET`` per counter hash
and per bucket hash; the checks; one ``HSET`` per hash; the reservation record (one ``HSET``,
hold amounts and counter names included, so commit parses no plan), its ``PEXPIRE`` and the hold
index's ``ZADD``. A commit: ``TIME``; the record's ``HMGET``; one ``HMGET`` and one ``HSET`` per
counter hash (spent += cost, held -= hold) and per bucket hash (the over-estimate given back,
never above capacity); the ledger ``XADD``; the record marked committed; ``ZREM``. Every value
read is checked (an integer in the exact range) before the first write; expiries are set when a
hash's sentinel (``_x``, ``x``) falls short, as the product does. Variants:

  * ``fixed``: positions hard-coded for this shape (no loop over a plan);
  * ``generic``: the same calls, from a compact positional plan in ARGV (loops; reserve stores
    the plan tab-joined in the record and commit splits it): what a product script with no
    extra feature could cost;
  * ``fixed+<feature>``: ``fixed`` plus one feature, priced alone: ``idem`` (reserve reads the
    record first: the reservation id as idempotency key, its fingerprint stored; commit compares
    its own), ``lazy`` (reserve's read of due holds, ``ZRANGEBYSCORE``: none are due here),
    ``events`` (3 thresholds per budget, absolute micros in ARGV, checked on every reserve;
    none crossed, so no marker or ``XADD``), ``rolling`` (a rolling 24h budget of the user as
    the example policy has: 25 hourly sub-buckets in two chunk hashes, field names passed by
    the caller, the held amount in the org's ``held`` hash), ``session`` (a session budget: a
    sliding hash with its generation, ``PEXPIRE`` on every write);
  * ``fixed+idem+lazy+events``: the three together (what DESIGN.md's guarantees ask of every
    call of this policy), at B = 1 and 8;
  * ``generic`` and ``fixed`` batched: B = 1, 4, 8 operations per ``EVALSHA`` (B reserves in
    one call, then their B commits in one call), each operation's reads after the previous
    one's writes, so the outcome is that of B separate calls;
  * ``calls only`` (B = 1, 8): a decomposition, not a working script: the fixed pair's
    ``redis.call``s with the same keys, fields and argument counts and no logic around them
    (values copied as they are): what the calls cost by themselves.

Per variant it reports calls per script (``INFO commandstats`` deltas), keys + arguments per
script call, instructions per reserve, commit and pair under callgrind (the helpers of
``bench/redis_instructions.py``: exact, load-independent), and Redis process CPU per pair
(``used_cpu_user + used_cpu_sys`` over ``--pairs`` pairs at ``--concurrency`` in flight, one
connection per worker, one script call per socket read) and again 50 script calls per socket
read (``pipelined``), with the load average and CPU steal of each figure. Beside them, in the
same run: the product's pair (its recorded calls replayed by the same driver;
``bench/redis_instructions.py``'s counts; ``bench/redis_work.py``'s engine-driven CPU) and the
PING floor. Before timing, the scripts are checked: a grant, a denial that writes
nothing (budget and bucket), a commit, a second commit that changes nothing, and after every
phase the counters equal what its pairs should have left (spent = pairs × cost, held 0, one
ledger entry per commit, no open hold; the rolling window's and the session's sums too).
Output: one JSON line per round of timings, then the counts, then one line per variant of
callgrind figures. Needs ``redis-server``, and ``valgrind`` unless ``--no-callgrind``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, steal_ticks
from _servers import HOST, throwaway_redis
from redis_instructions import Counter, record_pair, redis_under_callgrind
from redis_instructions import measure as product_instructions
from redis_work import CASES, bench_engine, ping_floor, redis_cpu, run_slots
from redis_work import measure as product_work

# -- the throwaway scripts (NOT product code) -------------------------------------------------

# Shared by every script below: one TIME per call (every operation of a batch at that instant),
# a checked reader of counters, the bucket arithmetic of lib.lua (levels scaled by 60000).
PRELUDE = """
local SCALE, MAX = 60000, 9007199254740991
local t = redis.call('TIME')
local now = t[1] * 1000 + (t[2] - t[2] % 1000) / 1000
local function num(v)
  if not v then return 0 end
  local n = v + 0
  if n % 1 ~= 0 or n < -MAX or n > MAX then error('floor: not a counter: ' .. v) end
  return n
end
local function fmt(n) return string.format('%d', n) end
local function level(v, dt, rate, cap)
  if not v then return cap end
  local l = num(v) + dt * rate
  if l > cap then return cap end
  return l
end
local function ttl(l, rate, cap)
  if rate <= 0 then return 86400000 end
  local s = (cap - l) / rate
  local c = s - s % 1
  if c < s then c = c + 1 end
  return c + 60000
end
local function give(v, back, cap)
  local l = num(v) + back
  if l > cap then return cap end
  if l < -cap then return -cap end
  return l
end
local out = {}
"""

# KEYS per op (6): reservation, hold index, month counters, day counters, org bucket, user bucket.
# ARGV per op: 1 rid, 2 lease ms, 3 record keep ms, 4 amount, 5 input, 6 output, 7 meta,
# 8-11 month: spent field, held field, limit, expire-at; 12-14 feature-day: spent, held, limit;
# 15-17 user-day: spent, held, limit; 18 day expire-at; 19-30 per bucket kind (org requests,
# input, output, user requests, input, output): capacity, per minute; then the features'
# arguments (@FP@: fingerprint; @TH@..: 3 thresholds per budget, micros).
FIXED_RESERVE = (
    "-- NOT PRODUCT CODE: bench/redis_floor.py, hand-optimal reserve of the bench policy's shape"
    + PRELUDE
    + """
local function reserve(k, a)
  local rkey, holds = KEYS[k + 1], KEYS[k + 2]
  local cm, cd, bo, bu = KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]
  local rid, amount, inp, outp = ARGV[a + 1], ARGV[a + 4] + 0, ARGV[a + 5] + 0, ARGV[a + 6] + 0
  --@IDEM@
  --@LAZY@
  local sm, hm, sf, hf = ARGV[a + 8], ARGV[a + 9], ARGV[a + 12], ARGV[a + 13]
  local su, hu = ARGV[a + 15], ARGV[a + 16]
  local m = redis.call('HMGET', cm, '_x', sm, hm)
  local d = redis.call('HMGET', cd, '_x', sf, hf, su, hu)
  local o = redis.call('HMGET', bo, 'x', 'ms', 'requests.t', 'input.t', 'output.t')
  local u = redis.call('HMGET', bu, 'x', 'ms', 'requests.t', 'input.t', 'output.t')
  local m3, d3, d5 = num(m[3]), num(d[3]), num(d[5])
  local um, uf, uu = num(m[2]) + m3, num(d[2]) + d3, num(d[4]) + d5
  local deny = nil
  if um + amount > ARGV[a + 10] + 0 then deny = {'org-month'} end
  if uf + amount > ARGV[a + 14] + 0 then deny = deny or {}; deny[#deny + 1] = 'feature-day' end
  if uu + amount > ARGV[a + 17] + 0 then deny = deny or {}; deny[#deny + 1] = 'user-day' end
  local odt, udt = now - num(o[2]), now - num(u[2])
  if odt < 0 then odt = 0 end
  if udt < 0 then udt = 0 end
  local c1, c2, c3 = ARGV[a + 19] * SCALE, ARGV[a + 21] * SCALE, ARGV[a + 23] * SCALE
  local c4, c5, c6 = ARGV[a + 25] * SCALE, ARGV[a + 27] * SCALE, ARGV[a + 29] * SCALE
  local r1, r2, r3 = ARGV[a + 20] + 0, ARGV[a + 22] + 0, ARGV[a + 24] + 0
  local r4, r5, r6 = ARGV[a + 26] + 0, ARGV[a + 28] + 0, ARGV[a + 30] + 0
  local l1 = level(o[3], odt, r1, c1) - SCALE
  local l2 = level(o[4], odt, r2, c2) - inp * SCALE
  local l3 = level(o[5], odt, r3, c3) - outp * SCALE
  local l4 = level(u[3], udt, r4, c4) - SCALE
  local l5 = level(u[4], udt, r5, c5) - inp * SCALE
  local l6 = level(u[5], udt, r6, c6) - outp * SCALE
  if l1 < 0 or l2 < 0 or l3 < 0 then deny = deny or {}; deny[#deny + 1] = 'org-rate' end
  if l4 < 0 or l5 < 0 or l6 < 0 then deny = deny or {}; deny[#deny + 1] = 'user-rate' end
  --@ROLLR@
  --@SESSR@
  if deny then return {'denied', now, 0, deny} end
  --@EVENTS@
  -- Writes: every value was read and checked above.
  local em, ed = ARGV[a + 11], ARGV[a + 18]
  if (tonumber(m[1]) or 0) < em + 0 then
    redis.call('HSET', cm, hm, fmt(m3 + amount), '_x', em)
    redis.call('PEXPIREAT', cm, em)
  else
    redis.call('HSET', cm, hm, fmt(m3 + amount))
  end
  if (tonumber(d[1]) or 0) < ed + 0 then
    redis.call('HSET', cd, hf, fmt(d3 + amount), hu, fmt(d5 + amount), '_x', ed)
    redis.call('PEXPIREAT', cd, ed)
  else
    redis.call('HSET', cd, hf, fmt(d3 + amount), hu, fmt(d5 + amount))
  end
  --@ROLLW@
  --@SESSW@
  local at = fmt(now)
  local span = math.max(ttl(l1, r1, c1), ttl(l2, r2, c2), ttl(l3, r3, c3))
  if (tonumber(o[1]) or 0) < now + span then
    redis.call('HSET', bo, 'ms', at, 'requests.t', fmt(l1), 'input.t', fmt(l2),
      'output.t', fmt(l3), 'x', fmt(now + 2 * span))
    redis.call('PEXPIRE', bo, fmt(2 * span))
  else
    redis.call('HSET', bo, 'ms', at, 'requests.t', fmt(l1), 'input.t', fmt(l2), 'output.t', fmt(l3))
  end
  span = math.max(ttl(l4, r4, c4), ttl(l5, r5, c5), ttl(l6, r6, c6))
  if (tonumber(u[1]) or 0) < now + span then
    redis.call('HSET', bu, 'ms', at, 'requests.t', fmt(l4), 'input.t', fmt(l5),
      'output.t', fmt(l6), 'x', fmt(now + 2 * span))
    redis.call('PEXPIRE', bu, fmt(2 * span))
  else
    redis.call('HSET', bu, 'ms', at, 'requests.t', fmt(l4), 'input.t', fmt(l5), 'output.t', fmt(l6))
  end
  local dl = fmt(now + ARGV[a + 2])
  redis.call('HSET', rkey, 'st', 'held', 'a', ARGV[a + 4], 'i', ARGV[a + 5], 'o', ARGV[a + 6],
    'dl', dl, 'cm', cm, 'cd', cd, 'em', em, 'ed', ed, 'sm', sm, 'hm', hm, 'sf', sf, 'hf', hf,
    'su', su, 'hu', hu, 'bo', bo, 'bu', bu, 'oi', ARGV[a + 21], 'oo', ARGV[a + 23],
    'ui', ARGV[a + 27], 'uo', ARGV[a + 29], 'meta', ARGV[a + 7]--@IDEMW@--@ROLLREC@--@SESSREC@
    )
  redis.call('PEXPIRE', rkey, fmt(ARGV[a + 2] + ARGV[a + 3]))
  redis.call('ZADD', holds, dl, rid)
  return {'granted', now, dl + 0}
end
local n = #KEYS / 6
for i = 0, n - 1 do
  out[i + 1] = reserve(6 * i, @NA@ * i)
end
return out
"""
)
FIXED_IDEM_RESERVE = """
  local prior = redis.call('HMGET', rkey, 'fp', 'dl', 'st')
  if prior[1] then
    if prior[1] ~= ARGV[a + @FP@] then return {'conflict', now, 0, prior[3]} end
    return {'replay', now, prior[2] + 0, prior[3]}
  end"""
FIXED_IDEM_RESERVE_WRITE = ", 'fp', ARGV[a + @FP@]"
FIXED_LAZY = """
  local due = redis.call('ZRANGEBYSCORE', holds, '-inf', fmt(now), 'LIMIT', 0, 8)
  if #due > 0 then error('floor: this bench expires no hold') end"""
# A threshold is crossed when usage before the hold is under it and after is at or over it:
# the event itself (marker, XADD) is rare and not measured; the checks run on every reserve.
FIXED_EVENTS = """
  local ev = nil
  for j = 0, 2 do
    local th = ARGV[a + @TH@ + j] + 0
    if um < th and um + amount >= th then ev = ev or {}; ev[#ev + 1] = 'org-month' end
    th = ARGV[a + @TH@ + 3 + j] + 0
    if uf < th and uf + amount >= th then ev = ev or {}; ev[#ev + 1] = 'feature-day' end
    th = ARGV[a + @TH@ + 6 + j] + 0
    if uu < th and uu + amount >= th then ev = ev or {}; ev[#ev + 1] = 'user-day' end
  end
  -- (a crossing's marker and XADD are not written: the timed runs cross none)"""

# A rolling 24 h budget of the user (the example policy's kind): 25 sub-buckets of an hour in
# chunk hashes of 25 (lib.lua's layout), the window's 25 field names passed by the caller (no
# name built in Lua), the held amount in the org's `held` hash. Reserve: the window's two
# HMGETs and the held one, the sum, the check, the held write. Commit: the held hash and the
# current sub-bucket's chunk read and written. ARGV at @RO@: held hash, held field, limit,
# chunk 1, chunk 2, how many of the 25 fields are in chunk 1, the 25 fields.
FIXED_ROLLING_READ = """
  local rb = a + @RO@
  local rh, rf, n1 = ARGV[rb], ARGV[rb + 1], ARGV[rb + 5] + 0
  local w1 = redis.call('HMGET', ARGV[rb + 3], unpack(ARGV, rb + 6, rb + 5 + n1))
  local w2 = redis.call('HMGET', ARGV[rb + 4], unpack(ARGV, rb + 6 + n1, rb + 30))
  local wh = redis.call('HMGET', rh, rf)
  local wheld = num(wh[1])
  local used = wheld
  for i = 1, n1 do used = used + num(w1[i]) end
  for i = 1, 25 - n1 do used = used + num(w2[i]) end
  if used + amount > ARGV[rb + 2] + 0 then deny = deny or {}; deny[#deny + 1] = 'user-24h' end"""
FIXED_ROLLING_WRITE = """
  redis.call('HSET', rh, rf, fmt(wheld + amount))"""
FIXED_ROLLING_RECORD = ", 'rh', rh, 'rf', rf"
# Commit: ARGV at @RC@: the commit's sub-bucket chunk hash, its field, the chunk's expire-at.
FIXED_ROLLING_COMMIT_READ = """
  local rh, rf = r[@RI@], r[@RI@ + 1]
  local ck, cf, ce = ARGV[a + @RC@], ARGV[a + @RC@ + 1], ARGV[a + @RC@ + 2]
  local wh = redis.call('HMGET', rh, rf)
  local wc = redis.call('HMGET', ck, '_x', cf)"""
FIXED_ROLLING_COMMIT_WRITE = """
  if holding then redis.call('HSET', rh, rf, fmt(num(wh[1]) - freed)) end
  if (tonumber(wc[1]) or 0) < ce + 0 then
    redis.call('HSET', ck, cf, fmt(num(wc[2]) + cost), '_x', ce)
    redis.call('PEXPIREAT', ck, ce)
  else
    redis.call('HSET', ck, cf, fmt(num(wc[2]) + cost))
  end"""


# A session budget (the session engineer's `period: session`): its spent and held fields in a
# sliding hash whose expiry moves to now + the idle time on every write, and its generation `g`
# (the instant it was created): a hold on a hash that idled out and was created again frees
# nothing there. ARGV at @SE@: session hash, spent field, held field, limit, idle ms.
FIXED_SESSION_READ = """
  local sb = a + @SE@
  local sh, ss, sx = ARGV[sb], ARGV[sb + 1], ARGV[sb + 2]
  local sv = redis.call('HMGET', sh, 'g', ss, sx)
  local sheld = num(sv[3])
  if num(sv[2]) + sheld + amount > ARGV[sb + 3] + 0 then
    deny = deny or {}
    deny[#deny + 1] = 'session'
  end
  local sg = sv[1] or fmt(now)"""
FIXED_SESSION_WRITE = """
  redis.call('HSET', sh, 'g', sg, sx, fmt(sheld + amount))
  redis.call('PEXPIRE', sh, ARGV[sb + 4])"""
FIXED_SESSION_RECORD = ", 'sh', sh, 'ss', ss, 'sx', sx, 'sl', ARGV[sb + 4], 'sg', sg"
FIXED_SESSION_COMMIT_READ = """
  local sh, ss, sx, sl, sg = r[@SI@], r[@SI@ + 1], r[@SI@ + 2], r[@SI@ + 3], r[@SI@ + 4]
  local sv = redis.call('HMGET', sh, 'g', ss, sx)"""
FIXED_SESSION_COMMIT_WRITE = """
  if holding and sv[1] == sg then
    redis.call('HSET', sh, 'g', sv[1], ss, fmt(num(sv[2]) + cost), sx, fmt(num(sv[3]) - freed))
  else
    redis.call('HSET', sh, 'g', sv[1] or fmt(now), ss, fmt(num(sv[2]) + cost))
  end
  redis.call('PEXPIRE', sh, sl)"""


# KEYS per op (3): reservation, hold index, ledger. ARGV per op: 1 rid, 2 cost, 3 actual input,
# 4 actual output, 5 record keep ms, 6-13 the ledger's other field/value pairs (model, pricing
# version, usage, lines), then @CFP@: the commit's fingerprint (idempotency variant).
FIXED_COMMIT = (
    "-- NOT PRODUCT CODE: bench/redis_floor.py, hand-optimal commit of the bench policy's shape"
    + PRELUDE
    + """
local function commit(k, a)
  local rkey, holds, ledger = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local rid, cost = ARGV[a + 1], ARGV[a + 2] + 0
  local r = redis.call('HMGET', rkey, 'st', 'a', 'i', 'o', 'dl', 'cm', 'cd', 'em', 'ed', 'sm',
    'hm', 'sf', 'hf', 'su', 'hu', 'bo', 'bu', 'oi', 'oo', 'ui', 'uo', 'meta', 'cres'--@CFPR@
    --@ROLLF@--@SESSF@
    )
  local st = r[1]
  if not st then return {'missing', 0, 0, 0, 0, ''} end
  if st == 'committed' then
    --@CFPC@
    return {'replay', 0, 0, 0, 0, r[23]}
  end
  if st ~= 'held' and st ~= 'expired' then return {'conflict', 0, 0, 0, 0, st} end
  local amount = num(r[2])
  local holding = st == 'held'
  local late = 0
  if not holding or now > num(r[5]) then late = 1 end
  local cm, cd, sm, hm, sf, hf, su, hu = r[6], r[7], r[10], r[11], r[12], r[13], r[14], r[15]
  local m = redis.call('HMGET', cm, '_x', sm, hm)
  local d = redis.call('HMGET', cd, '_x', sf, hf, su, hu)
  --@ROLLCR@
  --@SESSCR@
  local freed = 0
  if holding then freed = amount end
  local nsm, nsf, nsu = fmt(num(m[2]) + cost), fmt(num(d[2]) + cost), fmt(num(d[4]) + cost)
  local nhm, nhf, nhu = fmt(num(m[3]) - freed), fmt(num(d[3]) - freed), fmt(num(d[5]) - freed)
  local o, u, l1, l2, l3, l4 = nil, nil, 0, 0, 0, 0
  if holding and late == 0 then
    o = redis.call('HMGET', r[16], 'input.t', 'output.t')
    u = redis.call('HMGET', r[17], 'input.t', 'output.t')
    local bi, bo = (r[3] - ARGV[a + 3]) * SCALE, (r[4] - ARGV[a + 4]) * SCALE
    l1, l2 = give(o[1], bi, r[18] * SCALE), give(o[2], bo, r[19] * SCALE)
    l3, l4 = give(u[1], bi, r[20] * SCALE), give(u[2], bo, r[21] * SCALE)
  end
  local released, overrun = 0, '0'
  if holding and late == 0 and amount > cost then released = amount - cost end
  if cost > amount or late == 1 then overrun = '1' end
  -- Writes. The ledger entry first: the one write that can fail (a key of another type).
  local at = fmt(now)
  local id = redis.call('XADD', ledger, '*', 'kind', 'commit', 'reservation_id', rid,
    'cost_micros', ARGV[a + 2],
    'charged', cm .. '#' .. sm .. ' ' .. cd .. '#' .. sf .. ' ' .. cd .. '#' .. su--@ROLLCH@,
    'held_micros', r[2], 'overrun', overrun, 'late', late .. '', 'at_ms', at, 'reservation', r[22],
    unpack(ARGV, a + 6, a + 13))
  if (tonumber(m[1]) or 0) < r[8] + 0 then
    redis.call('HSET', cm, sm, nsm, hm, nhm, '_x', r[8])
    redis.call('PEXPIREAT', cm, r[8])
  else
    redis.call('HSET', cm, sm, nsm, hm, nhm)
  end
  if (tonumber(d[1]) or 0) < r[9] + 0 then
    redis.call('HSET', cd, sf, nsf, hf, nhf, su, nsu, hu, nhu, '_x', r[9])
    redis.call('PEXPIREAT', cd, r[9])
  else
    redis.call('HSET', cd, sf, nsf, hf, nhf, su, nsu, hu, nhu)
  end
  --@ROLLCW@
  --@SESSCW@
  if o then
    if o[1] or o[2] then redis.call('HSET', r[16], 'input.t', fmt(l1), 'output.t', fmt(l2)) end
    if u[1] or u[2] then redis.call('HSET', r[17], 'input.t', fmt(l3), 'output.t', fmt(l4)) end
  end
  local cres = ARGV[a + 2] .. ':' .. fmt(released) .. ':' .. overrun .. ':' .. late .. ':' .. id
  redis.call('HSET', rkey, 'st', 'committed', 'rt', at, 'cres', cres--@CFPW@
    )
  if late == 1 then redis.call('PEXPIRE', rkey, ARGV[a + 5]) end
  redis.call('ZREM', holds, rid)
  return {'committed', cost, released, overrun, late, id}
end
local n = #KEYS / 3
for i = 0, n - 1 do
  out[i + 1] = commit(3 * i, @NA@ * i)
end
return out
"""
)

# KEYS per op (2): reservation, hold index. ARGV per op: 1 rid, 2 lease ms, 3 keep ms, 4 amount,
# 5 input, 6 output, 7 meta, then the plan: nC, nC × (hash, expire-at, nF, nF × (spent field,
# held field, limit)), nT, nT × (hash, nK, nK × (kind field, what: 1 requests 2 input 3 output,
# per minute, capacity)). The plan is stored tab-joined in the record for commit.
GENERIC_RESERVE = (
    "-- NOT PRODUCT CODE: bench/redis_floor.py, a generic reserve from a positional plan"
    + PRELUDE
    + """
local function reserve(k, a)
  local rkey, holds = KEYS[k + 1], KEYS[k + 2]
  local amount = ARGV[a + 4] + 0
  local take = {SCALE, ARGV[a + 5] * SCALE, ARGV[a + 6] * SCALE}
  local p0 = a + 8
  local j = p0
  local nc = ARGV[j] + 0
  j = j + 1
  local cv, cj = {nil, nil, nil, nil}, {nil, nil, nil, nil}
  for c = 1, nc do
    local nf = ARGV[j + 2] + 0
    local args = {'_x', nil, nil, nil, nil, nil, nil, nil, nil}
    for f = 0, nf - 1 do
      args[2 * f + 2], args[2 * f + 3] = ARGV[j + 3 + 3 * f], ARGV[j + 4 + 3 * f]
    end
    cj[c] = j
    cv[c] = redis.call('HMGET', ARGV[j], unpack(args, 1, 2 * nf + 1))
    j = j + 3 + 3 * nf
  end
  local nt = ARGV[j] + 0
  j = j + 1
  local tv, tj = {nil, nil, nil, nil}, {nil, nil, nil, nil}
  for b = 1, nt do
    local nk = ARGV[j + 1] + 0
    local args = {'x', 'ms', nil, nil, nil, nil}
    for q = 0, nk - 1 do args[q + 3] = ARGV[j + 2 + 4 * q] end
    tj[b] = j
    tv[b] = redis.call('HMGET', ARGV[j], unpack(args, 1, nk + 2))
    j = j + 2 + 4 * nk
  end
  local last = j - 1
  local deny = nil
  for c = 1, nc do
    local v, jj = cv[c], cj[c]
    for f = 0, ARGV[jj + 2] - 1 do
      local h = num(v[2 * f + 3])
      if num(v[2 * f + 2]) + h + amount > ARGV[jj + 5 + 3 * f] + 0 then
        deny = deny or {}
        deny[#deny + 1] = ARGV[jj + 3 + 3 * f]
      end
      v[2 * f + 3] = h + amount
    end
  end
  for b = 1, nt do
    local v, jj = tv[b], tj[b]
    local dt = now - num(v[2])
    if dt < 0 then dt = 0 end
    local span = 0
    for q = 0, ARGV[jj + 1] - 1 do
      local o = jj + 2 + 4 * q
      local rate, cap = ARGV[o + 2] + 0, ARGV[o + 3] * SCALE
      local l = level(v[q + 3], dt, rate, cap) - take[ARGV[o + 1] + 0]
      if l < 0 then
        deny = deny or {}
        deny[#deny + 1] = ARGV[jj]
      end
      v[q + 3] = l
      local s = ttl(l, rate, cap)
      if s > span then span = s end
    end
    if (tonumber(v[1]) or 0) < now + span then v[1] = span else v[1] = false end
  end
  if deny then return {'denied', now, 0, deny}, last end
  -- Writes: every value was read and checked above.
  for c = 1, nc do
    local v, jj = cv[c], cj[c]
    local nf = ARGV[jj + 2] + 0
    local args = {nil, nil, nil, nil, nil, nil, nil, nil}
    for f = 0, nf - 1 do
      args[2 * f + 1], args[2 * f + 2] = ARGV[jj + 4 + 3 * f], fmt(v[2 * f + 3])
    end
    local exp = ARGV[jj + 1]
    if (tonumber(v[1]) or 0) < exp + 0 then
      args[2 * nf + 1], args[2 * nf + 2] = '_x', exp
      redis.call('HSET', ARGV[jj], unpack(args, 1, 2 * nf + 2))
      redis.call('PEXPIREAT', ARGV[jj], exp)
    else
      redis.call('HSET', ARGV[jj], unpack(args, 1, 2 * nf))
    end
  end
  local at = fmt(now)
  for b = 1, nt do
    local v, jj = tv[b], tj[b]
    local nk = ARGV[jj + 1] + 0
    local args = {'ms', at, nil, nil, nil, nil, nil, nil}
    for q = 0, nk - 1 do
      args[2 * q + 3], args[2 * q + 4] = ARGV[jj + 2 + 4 * q], fmt(v[q + 3])
    end
    if v[1] then
      args[2 * nk + 3], args[2 * nk + 4] = 'x', fmt(now + 2 * v[1])
      redis.call('HSET', ARGV[jj], unpack(args, 1, 2 * nk + 4))
      redis.call('PEXPIRE', ARGV[jj], fmt(2 * v[1]))
    else
      redis.call('HSET', ARGV[jj], unpack(args, 1, 2 * nk + 2))
    end
  end
  local dl = fmt(now + ARGV[a + 2])
  redis.call('HSET', rkey, 'st', 'held', 'a', ARGV[a + 4], 'i', ARGV[a + 5], 'o', ARGV[a + 6],
    'dl', dl, 'meta', ARGV[a + 7], 'p', table.concat(ARGV, '\\t', p0, last))
  redis.call('PEXPIRE', rkey, fmt(ARGV[a + 2] + ARGV[a + 3]))
  redis.call('ZADD', holds, dl, ARGV[a + 1])
  return {'granted', now, dl + 0}, last
end
local a, i = 0, 0
while 2 * i < #KEYS do
  local res
  res, a = reserve(2 * i, a)
  i = i + 1
  out[i] = res
end
return out
"""
)

GENERIC_COMMIT = (
    "-- NOT PRODUCT CODE: bench/redis_floor.py, a generic commit from the stored plan"
    + PRELUDE
    + """
local function commit(k, a)
  local rkey, holds, ledger = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local rid, cost = ARGV[a + 1], ARGV[a + 2] + 0
  local r = redis.call('HMGET', rkey, 'st', 'a', 'i', 'o', 'dl', 'meta', 'cres', 'p')
  local st = r[1]
  if not st then return {'missing', 0, 0, 0, 0, ''} end
  if st == 'committed' then return {'replay', 0, 0, 0, 0, r[7]} end
  if st ~= 'held' and st ~= 'expired' then return {'conflict', 0, 0, 0, 0, st} end
  local amount = num(r[2])
  local holding = st == 'held'
  local late = 0
  if not holding or now > num(r[5]) then late = 1 end
  local refund = holding and late == 0
  local freed = 0
  if holding then freed = amount end
  local back = {0, (r[3] - ARGV[a + 3]) * SCALE, (r[4] - ARGV[a + 4]) * SCALE}
  local P, n = {}, 0
  for tok in string.gmatch(r[8], '[^\\t]+') do
    n = n + 1
    P[n] = tok
  end
  local j = 1
  local nc = P[j] + 0
  j = j + 1
  local cv, cj, charged = {nil, nil, nil, nil}, {nil, nil, nil, nil}, {nil, nil, nil, nil}
  for c = 1, nc do
    local nf = P[j + 2] + 0
    local args = {'_x', nil, nil, nil, nil, nil, nil, nil, nil}
    for f = 0, nf - 1 do
      args[2 * f + 2], args[2 * f + 3] = P[j + 3 + 3 * f], P[j + 4 + 3 * f]
      charged[#charged + 1] = P[j] .. '#' .. P[j + 3 + 3 * f]
    end
    cj[c] = j
    cv[c] = redis.call('HMGET', P[j], unpack(args, 1, 2 * nf + 1))
    j = j + 3 + 3 * nf
  end
  local nt = P[j] + 0
  j = j + 1
  local tv, tj = {nil, nil, nil, nil}, {nil, nil, nil, nil}
  if refund then
    for b = 1, nt do
      local nk = P[j + 1] + 0
      local args = {nil, nil, nil, nil}
      local na = 0
      for q = 0, nk - 1 do
        if P[j + 3 + 4 * q] ~= '1' then
          na = na + 1
          args[na] = P[j + 2 + 4 * q]
        end
      end
      tj[b] = j
      if na > 0 then tv[b] = redis.call('HMGET', P[j], unpack(args, 1, na)) end
      j = j + 2 + 4 * nk
    end
  end
  for c = 1, nc do
    local v, jj = cv[c], cj[c]
    for f = 0, P[jj + 2] - 1 do
      v[2 * f + 2] = fmt(num(v[2 * f + 2]) + cost)
      v[2 * f + 3] = fmt(num(v[2 * f + 3]) - freed)
    end
  end
  if refund then
    for b = 1, nt do
      local v, jj = tv[b], tj[b]
      if v then
        local i = 0
        for q = 0, P[jj + 1] - 1 do
          local o = jj + 2 + 4 * q
          if P[o + 1] ~= '1' then
            i = i + 1
            v[i] = v[i] and fmt(give(v[i], back[P[o + 1] + 0], P[o + 3] * SCALE))
          end
        end
      end
    end
  end
  local released, overrun = 0, '0'
  if refund and amount > cost then released = amount - cost end
  if cost > amount or late == 1 then overrun = '1' end
  -- Writes. The ledger entry first: the one write that can fail (a key of another type).
  local at = fmt(now)
  local id = redis.call('XADD', ledger, '*', 'kind', 'commit', 'reservation_id', rid,
    'cost_micros', ARGV[a + 2], 'charged', table.concat(charged, ' '), 'held_micros', r[2],
    'overrun', overrun, 'late', late .. '', 'at_ms', at, 'reservation', r[6],
    unpack(ARGV, a + 6, a + 13))
  for c = 1, nc do
    local v, jj = cv[c], cj[c]
    local nf = P[jj + 2] + 0
    local args = {nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}
    for f = 0, nf - 1 do
      args[4 * f + 1], args[4 * f + 2] = P[jj + 3 + 3 * f], v[2 * f + 2]
      args[4 * f + 3], args[4 * f + 4] = P[jj + 4 + 3 * f], v[2 * f + 3]
    end
    local exp = P[jj + 1]
    if (tonumber(v[1]) or 0) < exp + 0 then
      args[4 * nf + 1], args[4 * nf + 2] = '_x', exp
      redis.call('HSET', P[jj], unpack(args, 1, 4 * nf + 2))
      redis.call('PEXPIREAT', P[jj], exp)
    else
      redis.call('HSET', P[jj], unpack(args, 1, 4 * nf))
    end
  end
  if refund then
    for b = 1, nt do
      local v, jj = tv[b], tj[b]
      if v then
        local args, na, i = {nil, nil, nil, nil}, 0, 0
        for q = 0, P[jj + 1] - 1 do
          if P[jj + 3 + 4 * q] ~= '1' then
            i = i + 1
            if v[i] then
              args[na + 1], args[na + 2] = P[jj + 2 + 4 * q], v[i]
              na = na + 2
            end
          end
        end
        if na > 0 then redis.call('HSET', P[jj], unpack(args, 1, na)) end
      end
    end
  end
  local cres = ARGV[a + 2] .. ':' .. fmt(released) .. ':' .. overrun .. ':' .. late .. ':' .. id
  redis.call('HSET', rkey, 'st', 'committed', 'rt', at, 'cres', cres)
  if late == 1 then redis.call('PEXPIRE', rkey, ARGV[a + 5]) end
  redis.call('ZREM', holds, rid)
  return {'committed', cost, released, overrun, late, id}
end
local n = #KEYS / 3
for i = 0, n - 1 do
  out[i + 1] = commit(3 * i, 13 * i)
end
return out
"""
)

# A decomposition, not a working script: the fixed pair's redis.calls with the same keys, fields
# and argument counts, values copied from ARGV or the reads as they are (no conversion, check or
# arithmetic): what the calls cost without the logic around them.
CALLS_ONLY_RESERVE = (
    "-- NOT PRODUCT CODE: bench/redis_floor.py, the fixed reserve's calls without its logic"
    + PRELUDE
    + """
local function reserve(k, a)
  local rkey, holds = KEYS[k + 1], KEYS[k + 2]
  local cm, cd, bo, bu = KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]
  local sm, hm, sf, hf = ARGV[a + 8], ARGV[a + 9], ARGV[a + 12], ARGV[a + 13]
  local su, hu, v = ARGV[a + 15], ARGV[a + 16], ARGV[a + 4]
  redis.call('HMGET', cm, '_x', sm, hm)
  redis.call('HMGET', cd, '_x', sf, hf, su, hu)
  redis.call('HMGET', bo, 'x', 'ms', 'requests.t', 'input.t', 'output.t')
  redis.call('HMGET', bu, 'x', 'ms', 'requests.t', 'input.t', 'output.t')
  redis.call('HSET', cm, hm, v)
  redis.call('HSET', cd, hf, v, hu, v)
  redis.call('HSET', bo, 'ms', v, 'requests.t', v, 'input.t', v, 'output.t', v)
  redis.call('HSET', bu, 'ms', v, 'requests.t', v, 'input.t', v, 'output.t', v)
  redis.call('HSET', rkey, 'st', 'held', 'a', ARGV[a + 4], 'i', ARGV[a + 5], 'o', ARGV[a + 6],
    'dl', ARGV[a + 11], 'cm', cm, 'cd', cd, 'em', ARGV[a + 11], 'ed', ARGV[a + 18], 'sm', sm,
    'hm', hm, 'sf', sf, 'hf', hf, 'su', su, 'hu', hu, 'bo', bo, 'bu', bu, 'oi', ARGV[a + 21],
    'oo', ARGV[a + 23], 'ui', ARGV[a + 27], 'uo', ARGV[a + 29], 'meta', ARGV[a + 7])
  redis.call('PEXPIRE', rkey, ARGV[a + 3])
  redis.call('ZADD', holds, ARGV[a + 11], ARGV[a + 1])
  return {'granted', 0, 0}
end
local n = #KEYS / 6
for i = 0, n - 1 do
  out[i + 1] = reserve(6 * i, 30 * i)
end
return out
"""
)
CALLS_ONLY_COMMIT = (
    "-- NOT PRODUCT CODE: bench/redis_floor.py, the fixed commit's calls without its logic"
    + PRELUDE
    + """
local function commit(k, a)
  local rkey, holds, ledger = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local rid, v = ARGV[a + 1], ARGV[a + 2]
  local r = redis.call('HMGET', rkey, 'st', 'a', 'i', 'o', 'dl', 'cm', 'cd', 'em', 'ed', 'sm',
    'hm', 'sf', 'hf', 'su', 'hu', 'bo', 'bu', 'oi', 'oo', 'ui', 'uo', 'meta', 'cres')
  local cm, cd = r[6], r[7]
  redis.call('HMGET', cm, '_x', r[10], r[11])
  redis.call('HMGET', cd, '_x', r[12], r[13], r[14], r[15])
  redis.call('HMGET', r[16], 'input.t', 'output.t')
  redis.call('HMGET', r[17], 'input.t', 'output.t')
  local id = redis.call('XADD', ledger, '*', 'kind', 'commit', 'reservation_id', rid,
    'cost_micros', v, 'charged', cm, 'held_micros', r[2], 'overrun', '0', 'late', '0',
    'at_ms', v, 'reservation', r[22], unpack(ARGV, a + 6, a + 13))
  redis.call('HSET', cm, r[10], v, r[11], v)
  redis.call('HSET', cd, r[12], v, r[13], v, r[14], v, r[15], v)
  redis.call('HSET', r[16], 'input.t', v, 'output.t', v)
  redis.call('HSET', r[17], 'input.t', v, 'output.t', v)
  redis.call('HSET', rkey, 'st', 'committed', 'rt', v, 'cres', id)
  redis.call('ZREM', holds, rid)
  return {'committed', 0, 0, 0, 0, id}
end
local n = #KEYS / 3
for i = 0, n - 1 do
  out[i + 1] = commit(3 * i, 13 * i)
end
return out
"""
)

# What EVALSHA costs before any logic: the same keys and arguments, a script that only returns.
RETURN_ONLY = "return {}"


def fixed_sources(
    idem: bool = False,
    lazy: bool = False,
    events: bool = False,
    rolling: bool = False,
    session: bool = False,
) -> tuple[str, str]:
    """The fixed reserve and commit with the features asked for (their extra arguments follow
    the base ones in this order: fingerprint, thresholds, rolling window, session)."""
    reserve_na, fp, th, ro, se = 30, 0, 0, 0, 0
    if idem:
        reserve_na += 1
        fp = reserve_na
    if events:
        th = reserve_na + 1
        reserve_na += 9
    if rolling:
        ro = reserve_na + 1
        reserve_na += 31
    if session:
        se = reserve_na + 1
        reserve_na += 5
    commit_na, ri, rc = 13 + idem, 24 + idem, 0
    si = ri + 2 * rolling
    if rolling:
        rc = commit_na + 1
        commit_na += 3
    reserve = (
        FIXED_RESERVE.replace("--@IDEM@", FIXED_IDEM_RESERVE if idem else "")
        .replace("--@IDEMW@", FIXED_IDEM_RESERVE_WRITE if idem else "")
        .replace("--@LAZY@", FIXED_LAZY if lazy else "")
        .replace("--@EVENTS@", FIXED_EVENTS if events else "")
        .replace("--@ROLLR@", FIXED_ROLLING_READ if rolling else "")
        .replace("--@ROLLW@", FIXED_ROLLING_WRITE if rolling else "")
        .replace("--@ROLLREC@", FIXED_ROLLING_RECORD if rolling else "")
        .replace("--@SESSR@", FIXED_SESSION_READ if session else "")
        .replace("--@SESSW@", FIXED_SESSION_WRITE if session else "")
        .replace("--@SESSREC@", FIXED_SESSION_RECORD if session else "")
        .replace("@SE@", str(se))
        .replace("@FP@", str(fp))
        .replace("@TH@", str(th))
        .replace("@RO@", str(ro))
        .replace("@NA@", str(reserve_na))
    )
    commit = (
        FIXED_COMMIT.replace("--@CFPR@", ", 'cfp'" if idem else "")
        .replace(
            "--@CFPC@",
            "if r[24] ~= ARGV[a + 14] then return {'conflict', 0, 0, 0, 0, st} end" if idem else "",
        )
        .replace("--@CFPW@", ", 'cfp', ARGV[a + 14]" if idem else "")
        .replace("--@ROLLF@", ", 'rh', 'rf'" if rolling else "")
        .replace("--@ROLLCR@", FIXED_ROLLING_COMMIT_READ if rolling else "")
        .replace("--@ROLLCW@", FIXED_ROLLING_COMMIT_WRITE if rolling else "")
        .replace("--@ROLLCH@", " .. ' ' .. ck .. '#' .. cf" if rolling else "")
        .replace("--@SESSF@", ", 'sh', 'ss', 'sx', 'sl', 'sg'" if session else "")
        .replace("--@SESSCR@", FIXED_SESSION_COMMIT_READ if session else "")
        .replace("--@SESSCW@", FIXED_SESSION_COMMIT_WRITE if session else "")
        .replace("@SI@", str(si))
        .replace("@RI@", str(ri))
        .replace("@RC@", str(rc))
        .replace("@NA@", str(commit_na))
    )
    return reserve, commit


# -- the calls: the bench policy's values, taken from a recorded product pair ----------------


@dataclass(frozen=True)
class Shape:
    """The bench policy's values for one call, from the product's recorded reserve and commit
    (amount, tokens, limits, period expiries, bucket rates; the commit's cost and ledger
    fields): the throwaway scripts get exactly what the product's do."""

    lease: str
    keep: str
    meta: str
    amount: str
    inp: str
    out: str
    limits: tuple[str, str, str]  # org-month, feature-day, user-day
    expire: tuple[str, str]  # month hash, day hash
    periods: tuple[str, str]  # the hashes' period ids (`2026-11`, `2026-11-30`)
    buckets: tuple[tuple[str, str], ...]  # (capacity, per minute): org r/i/o, then user r/i/o
    cost: str
    actual: tuple[str, str]
    ledger: tuple[str, ...]

    @classmethod
    def from_product(cls, reserve: list[str], commit: list[str]) -> Shape:
        plan = reserve[6:]
        assert plan[3:5] == ["3", "2"], plan[:5]  # 3 budgets, 2 bucket hashes
        budgets = [plan[5 + 9 * i : 14 + 9 * i] for i in range(3)]
        assert [b[0].split("|")[0] for b in budgets] == ["org-month", "feature-day", "user-day"]
        assert all(b[6] == "C" for b in budgets), budgets
        rest = plan[32:]
        kinds = []
        for h in range(2):
            part = rest[14 * h : 14 * h + 14]
            assert part[1] == "3" and [part[2 + 4 * q] for q in range(3)] == [
                "requests",
                "input",
                "output",
            ], part
            kinds += [(part[4 + 4 * q], part[3 + 4 * q]) for q in range(3)]
        return cls(
            lease=reserve[2],
            keep=reserve[3],
            meta=reserve[4],
            amount=plan[0],
            inp=plan[1],
            out=plan[2],
            limits=(budgets[0][2], budgets[1][2], budgets[2][2]),
            expire=(budgets[0][8], budgets[1][8]),
            periods=(budgets[0][7].rsplit(":", 1)[1], budgets[1][7].rsplit(":", 1)[1]),
            buckets=tuple(kinds),
            cost=commit[1],
            actual=(commit[4], commit[5]),
            ledger=tuple(commit[8:]),
        )


@dataclass(frozen=True)
class Variant:
    name: str
    reserve: str  # Lua source
    commit: str
    reserve_call: Callable[[Shape, str, str, str], tuple[list[str], list[str]]]
    commit_call: Callable[[Shape, str, str, str], tuple[list[str], list[str]]]
    batch: int = 1
    checked: bool = True  # a working script: its answers and counters are checked


def prefix(org: str) -> str:
    return f"bd:{{o:{org}}}:"


def fields(shape: Shape, org: str, user: str) -> list[str]:
    return [f"org-month|{org}", "feature-day|chat", f"user-day|{user}"]


def threshold_args(shape: Shape) -> list[str]:
    return [str(int(limit) * pct // 100) for limit in shape.limits for pct in (50, 80, 100)]


def window_start(shape: Shape) -> int:
    """The first sub-bucket (hour) of the rolling window: 10 of its 25 in one chunk hash, 15 in
    the next (a window spans two chunks unless aligned)."""
    hour = int(shape.expire[1]) // 3600000
    return hour - hour % 25 + 15


def rolling_keys(shape: Shape, org: str, user: str) -> tuple[str, str, str, str]:
    """The held hash, the held field, the commit's chunk hash and sub-bucket field."""
    p, i0 = prefix(org), window_start(shape)
    chunk = f"{p}c:r3600000:{(i0 + 24) // 25}"
    return f"{p}c:held", f"user-24h|{user}|h", chunk, f"user-24h|{user}|{i0 + 24}|s"


def fixed_reserve_call(
    idem: bool = False, events: bool = False, rolling: bool = False, session: bool = False
) -> Callable[[Shape, str, str, str], tuple[list[str], list[str]]]:
    def call(shape: Shape, org: str, user: str, rid: str) -> tuple[list[str], list[str]]:
        p = prefix(org)
        keys = [
            f"{p}r:{rid}",
            f"{p}holds",
            f"{p}c:{shape.periods[0]}",
            f"{p}c:{shape.periods[1]}",
            f"{p}tb:org-rate:{org}",
            f"{p}tb:user-rate:{user}",
        ]
        fm, ff, fu = fields(shape, org, user)
        args = [rid, shape.lease, shape.keep, shape.amount, shape.inp, shape.out, shape.meta]
        args += [f"{fm}|s", f"{fm}|h", shape.limits[0], shape.expire[0]]
        args += [f"{ff}|s", f"{ff}|h", shape.limits[1]]
        args += [f"{fu}|s", f"{fu}|h", shape.limits[2], shape.expire[1]]
        for cap, rate in shape.buckets:
            args += [cap, rate]
        if idem:
            args.append(f"fp-{rid}")
        if events:
            args += threshold_args(shape)
        if rolling:
            held, held_field, _, _ = rolling_keys(shape, org, user)
            i0 = window_start(shape)
            args += [held, held_field, str(int(shape.limits[2]) * 10)]
            args += [f"{p}c:r3600000:{i0 // 25}", f"{p}c:r3600000:{i0 // 25 + 1}", "10"]
            args += [f"user-24h|{user}|{i}|s" for i in range(i0, i0 + 25)]
        if session:
            # One session per user here; a limit no run reaches, idle time 30 minutes.
            args += [f"{p}c:s:sess-{user}", "session|sess|s", "session|sess|h"]
            args += [str(int(shape.limits[2]) * 10), "1800000"]
        return keys, args

    return call


def generic_reserve_call(
    shape: Shape, org: str, user: str, rid: str
) -> tuple[list[str], list[str]]:
    p = prefix(org)
    fm, ff, fu = fields(shape, org, user)
    args = [rid, shape.lease, shape.keep, shape.amount, shape.inp, shape.out, shape.meta, "2"]
    args += [f"{p}c:{shape.periods[0]}", shape.expire[0], "1", f"{fm}|s", f"{fm}|h"]
    args += [shape.limits[0]]
    args += [f"{p}c:{shape.periods[1]}", shape.expire[1], "2"]
    args += [f"{ff}|s", f"{ff}|h", shape.limits[1], f"{fu}|s", f"{fu}|h", shape.limits[2], "2"]
    for h, key in enumerate((f"{p}tb:org-rate:{org}", f"{p}tb:user-rate:{user}")):
        args += [key, "3"]
        for q, kind in enumerate(("requests", "input", "output")):
            cap, rate = shape.buckets[3 * h + q]
            args += [f"{kind}.t", str(q + 1), rate, cap]
    return [f"{p}r:{rid}", f"{p}holds"], args


def commit_call(
    idem: bool = False, rolling: bool = False
) -> Callable[[Shape, str, str, str], tuple[list[str], list[str]]]:
    def call(shape: Shape, org: str, user: str, rid: str) -> tuple[list[str], list[str]]:
        p = prefix(org)
        args = [rid, shape.cost, *shape.actual, shape.keep, *shape.ledger]
        assert len(args) == 13, args
        if idem:
            args.append(f"cfp-{rid}")
        if rolling:
            _, _, chunk, field = rolling_keys(shape, org, user)
            args += [chunk, field, shape.expire[1]]
        return [f"{p}r:{rid}", f"{p}holds", f"{p}ledger"], args

    return call


def featured(batch: int, **features: bool) -> Variant:
    """``fixed`` with the features named (``idem``, ``lazy``, ``events``, ``rolling``,
    ``session``)."""
    reserve, commit = fixed_sources(**features)
    idem, rolling = features.get("idem", False), features.get("rolling", False)
    return Variant(
        "+".join(["fixed", *(f for f, on in features.items() if on)]),
        reserve,
        commit,
        fixed_reserve_call(
            idem, features.get("events", False), rolling, features.get("session", False)
        ),
        commit_call(idem, rolling),
        batch,
    )


def variants() -> list[Variant]:
    out = []
    for batch in (1, 4, 8):
        out.append(featured(batch))
        out.append(
            Variant(
                "generic",
                GENERIC_RESERVE,
                GENERIC_COMMIT,
                generic_reserve_call,
                commit_call(),
                batch,
            )
        )
    for batch in (1, 8):
        out.append(
            Variant(
                "calls only",
                CALLS_ONLY_RESERVE,
                CALLS_ONLY_COMMIT,
                fixed_reserve_call(),
                commit_call(),
                batch,
                checked=False,
            )
        )
    for feature in ("idem", "lazy", "events", "rolling", "session"):
        out.append(featured(1, **{feature: True}))
    for batch in (1, 8):
        out.append(featured(batch, idem=True, lazy=True, events=True))
    return out


def label(v: Variant) -> str:
    return f"{v.name} B={v.batch}"


def org_of(v: Variant) -> str:
    return "floor-" + label(v).replace(" ", "").replace("+", "-").replace("=", "")


# -- driving the scripts ----------------------------------------------------------------------


class Driver:
    """Sends one variant's batched reserves and commits, fresh reservation ids each time."""

    def __init__(self, client: Any, v: Variant, shape: Shape, users: int) -> None:
        self.client, self.v, self.shape, self.users = client, v, shape, users
        self.org = org_of(v)
        self.seq = itertools.count()
        self.shas: dict[str, str] = {}

    async def load(self) -> None:
        for name, source in (("reserve", self.v.reserve), ("commit", self.v.commit)):
            self.shas[name] = await self.client.script_load(source)
            self.shas[name + "-floor"] = await self.client.script_load(RETURN_ONLY)

    def reserve_call(self, rids: list[str]) -> tuple[list[str], list[str]]:
        keys: list[str] = []
        args: list[str] = []
        for rid in rids:
            user = f"user-{int(rid.rsplit('-', 1)[1]) % self.users}"
            k, a = self.v.reserve_call(self.shape, self.org, user, rid)
            keys += k
            args += a
        return keys, args

    def commit_call(self, rids: list[str]) -> tuple[list[str], list[str]]:
        keys: list[str] = []
        args: list[str] = []
        for rid in rids:
            user = f"user-{int(rid.rsplit('-', 1)[1]) % self.users}"
            k, a = self.v.commit_call(self.shape, self.org, user, rid)
            keys += k
            args += a
        return keys, args

    def fresh(self) -> list[str]:
        return [f"r-{next(self.seq)}" for _ in range(self.v.batch)]

    async def call(self, script: str, keys: list[str], args: list[str]) -> Any:
        return await self.client.evalsha(self.shas[script], len(keys), *keys, *args)

    def slot(self, _: int) -> Awaitable[None]:
        """``pair`` for ``run_slots``."""
        return self.pair()

    async def pair(self) -> None:
        rids = self.fresh()
        replies = await self.call("reserve", *self.reserve_call(rids))
        assert all(r[0] == "granted" for r in replies), replies
        replies = await self.call("commit", *self.commit_call(rids))
        assert all(r[0] == "committed" for r in replies), replies

    async def pipelined(self, script: str, calls: list[tuple[list[str], list[str]]]) -> None:
        """``calls`` 50 script calls per pipeline (for callgrind: no socket round trip each)."""
        for start in range(0, len(calls), 50):
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls[start : start + 50]:
                pipe.evalsha(self.shas[script], len(keys), *keys, *args)
            for reply in await pipe.execute():
                if not script.endswith("-floor"):
                    assert all(r[0] in ("granted", "committed") for r in reply), reply


async def check_counters(client: Any, d: Driver, pairs: int) -> None:
    """What ``pairs`` committed pairs of this variant must leave: every pair charged its cost to
    each budget once, no hold left, one ledger entry each, the hold index empty."""
    p, shape = prefix(d.org), d.shape
    cost = int(shape.cost)
    month = await client.hgetall(f"{p}c:{shape.periods[0]}")
    day = await client.hgetall(f"{p}c:{shape.periods[1]}")
    assert int(month[f"org-month|{d.org}|s"]) == pairs * cost, month
    assert int(month[f"org-month|{d.org}|h"]) == 0, month
    assert int(day["feature-day|chat|s"]) == pairs * cost, day
    assert int(day["feature-day|chat|h"]) == 0, day
    users = [k for k in day if k.startswith("user-day|") and k.endswith("|s")]
    assert sum(int(day[k]) for k in users) == pairs * cost, day
    assert all(int(v) == 0 for k, v in day.items() if k.startswith("user-day|") and k[-1] == "h")
    assert await client.xlen(f"{p}ledger") == pairs
    assert await client.zcard(f"{p}holds") == 0
    assert await client.ttl(f"{p}c:{shape.periods[0]}") > 0
    assert await client.ttl(f"{p}tb:org-rate:{d.org}") > 0
    if "rolling" in d.v.name:
        held_hash, _, chunk, _ = rolling_keys(shape, d.org, "user-0")
        held = await client.hgetall(held_hash)
        assert held and all(int(v) == 0 for v in held.values()), held
        i = window_start(shape) + 24
        spent = await client.hgetall(chunk)
        assert sum(int(v) for k, v in spent.items() if k.endswith(f"|{i}|s")) == pairs * cost
    if "session" in d.v.name:
        sessions = [await client.hgetall(f"{p}c:s:sess-user-{u}") for u in range(d.users)]
        assert sum(int(h.get("session|sess|s", 0)) for h in sessions) == pairs * cost, sessions
        assert all(int(h.get("session|sess|h", 0)) == 0 for h in sessions), sessions


async def check_semantics(client: Any, shape: Shape, v: Variant) -> None:
    """A grant, a budget denial and a bucket denial that write nothing, a commit, a second
    commit that changes nothing: the scripts measured are working code."""
    tight = replace(shape, limits=(*shape.limits[:2], str(int(shape.amount) * 3 // 2)))
    d = Driver(client, replace(v, batch=1), tight, users=1)
    d.org = org_of(v) + "-check"
    await d.load()
    p = prefix(d.org)
    (first,) = await d.call("reserve", *d.reserve_call(["r-0"]))
    assert first[0] == "granted", first
    before = await client.hgetall(f"{p}c:{shape.periods[1]}")
    (second,) = await d.call("reserve", *d.reserve_call(["r-1"]))
    # (the fixed scripts name the limit, the generic ones its field or bucket hash)
    assert second[0] == "denied", second
    assert second[3] in (["user-day"], ["user-day|user-0|s"]), second
    assert await client.hgetall(f"{p}c:{shape.periods[1]}") == before
    assert not await client.exists(f"{p}r:r-1")
    (done,) = await d.call("commit", *d.commit_call(["r-0"]))
    assert done[0] == "committed" and done[1] == int(shape.cost), done
    assert done[2] == int(shape.amount) - int(shape.cost), done
    after = await client.hgetall(f"{p}c:{shape.periods[1]}")
    (again,) = await d.call("commit", *d.commit_call(["r-0"]))
    assert again[0] == "replay", again
    assert await client.hgetall(f"{p}c:{shape.periods[1]}") == after
    assert int(after["user-day|user-0|s"]) == int(shape.cost), after
    assert int(after["user-day|user-0|h"]) == 0, after
    # A user request bucket of capacity 1: the first reserve takes it, the second is denied.
    one = list(shape.buckets)
    one[3] = ("1", "1")
    d.shape = replace(shape, buckets=tuple(one))
    d.org = org_of(v) + "-check2"
    (first,) = await d.call("reserve", *d.reserve_call(["r-0"]))
    assert first[0] == "granted", first
    (second,) = await d.call("reserve", *d.reserve_call(["r-1"]))
    assert second[0] == "denied", second
    assert second[3] in (["user-rate"], [prefix(d.org) + "tb:user-rate:user-0"]), second
    assert not await client.exists(f"{prefix(d.org)}r:r-1")


async def calls_per_script(client: Any, d: Driver, n: int) -> dict[str, float]:
    """``redis.call``s per operation (INFO commandstats deltas over ``n`` ops of each script)."""

    async def stats() -> dict[str, int]:
        info = await client.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    rids = [f"cps-{i}" for i in range(n)]
    s0 = await stats()
    await d.call("reserve", *d.reserve_call(rids))
    s1 = await stats()
    await d.call("commit", *d.commit_call(rids))
    s2 = await stats()
    skip = {"evalsha", "info", "script", "client", "hello", "ping"}

    def delta(a: dict[str, int], b: dict[str, int]) -> float:
        return sum(b[c] - a.get(c, 0) for c in b if c not in skip) / n

    return {"reserve": delta(s0, s1), "commit": delta(s1, s2)}


@dataclass
class Window:
    """Redis CPU, load average and steal over one timed phase."""

    cpu0: float
    steal0: tuple[int, int]
    load0: str

    @classmethod
    async def start(cls, engine: Any) -> Window:
        return cls(await redis_cpu(engine), steal_ticks(), load_average())

    async def stop(self, engine: Any, ops: int) -> dict[str, Any]:
        cpu = await redis_cpu(engine)
        steal, total = steal_ticks()
        return {
            "redis_cpu_us_per_pair": round((cpu - self.cpu0) / ops * 1e6, 1),
            "load": [self.load0, load_average()],
            "steal_pct": round(100 * (steal - self.steal0[0]) / max(1, total - self.steal0[1]), 1),
        }


async def timed_pairs(
    engine: Any, ops: int, concurrency: int, batch: int, pair: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    window = await Window.start(engine)
    await run_slots(ops // batch, concurrency, lambda _: pair())
    return await window.stop(engine, ops)


# -- the phases -------------------------------------------------------------------------------


async def record_product(port: int, tmp: Path, users: int) -> tuple[Any, Shape, list[Any]]:
    """An engine on ``port``, the bench policy's Shape, and one recorded product pair per user."""
    org, _, model = CASES["bench"]
    engine = bench_engine("bench", port, tmp)
    recorded = [await record_pair(engine, org, model, f"user-{u}") for u in range(users)]
    reserve, commit, _ = recorded[0]
    return engine, Shape.from_product(reserve[2], commit[2]), recorded


async def product_replay(
    engine: Any, recorded: list[Any], pairs: int, concurrency: int, round_: int
) -> Any:
    """The product's pair as this bench's driver sends it: the recorded reserve and commit of
    each user, fresh ids, one script call per socket read, ``concurrency`` in flight."""
    client = engine.store.client
    shas = {}
    for reserve, commit, _ in recorded[:1]:
        shas["reserve"] = await client.script_load(reserve[0])
        shas["commit"] = await client.script_load(commit[0])
    seq = itertools.count()

    def fresh(value: str, rid: str, new: str) -> str:
        if value == rid or value.endswith(":r:" + rid):
            return value[: len(value) - len(rid)] + new
        return value

    async def pair() -> None:
        i = next(seq)
        reserve, commit, rid = recorded[i % len(recorded)]
        new = f"replay-{round_}-{i}"
        for name, (_, keys, args) in (("reserve", reserve), ("commit", commit)):
            keys_ = [fresh(k, rid, new) for k in keys]
            reply = await client.evalsha(
                shas[name], len(keys_), *keys_, *(fresh(a, rid, new) for a in args)
            )
            assert reply[0] in ("granted", "committed"), reply

    await run_slots(len(recorded) * 2, concurrency, lambda _: pair())  # warm
    return await timed_pairs(engine, pairs, concurrency, 1, pair)


async def cpu_phase(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Calls per script, the semantic checks, and Redis CPU per pair of every variant, the
    product (replayed, and through the engine) and PING, on a plain redis-server."""
    results: list[dict[str, Any]] = []
    server = shutil.which("redis-server")
    assert server
    with throwaway_redis(server, str(tmp)) as port:
        engine, shape, recorded = await record_product(port, tmp, args.users)
        client = Redis(host=HOST, port=port, decode_responses=True, max_connections=64)
        drivers = [Driver(client, v, shape, args.users) for v in variants()]
        for d in drivers:
            await d.load()
            if d.v.batch == 1 and d.v.checked:
                await check_semantics(client, shape, d.v)
            await run_slots(args.users * 2, args.concurrency, d.slot)  # warm
        counts = {}
        for d in drivers:
            keys, argv = d.reserve_call(d.fresh())
            ckeys, cargv = d.commit_call(d.fresh())
            counts[label(d.v)] = {
                "calls": await calls_per_script(client, d, d.v.batch),
                "reserve_keys_and_args": len(keys) + len(argv),
                "commit_keys_and_args": len(ckeys) + len(cargv),
            }
            if d.v.checked:
                await check_counters(client, d, args.users * 2 * d.v.batch + d.v.batch)
        for r in range(args.rounds):
            row: dict[str, Any] = {"round": r}
            row["product (replayed)"] = await product_replay(
                engine, recorded, args.pairs, args.concurrency, r
            )
            for d in drivers:
                row[label(d.v)] = await timed_pairs(
                    engine, args.pairs, args.concurrency, d.v.batch, d.pair
                )
                # The same ops again, 50 script calls per socket read: the scripts without
                # a read and a reply each.
                rids = [d.fresh() for _ in range(args.pairs // d.v.batch)]
                window = await Window.start(engine)
                await d.pipelined("reserve", [d.reserve_call(r) for r in rids])
                await d.pipelined("commit", [d.commit_call(r) for r in rids])
                row[label(d.v)]["pipelined"] = await window.stop(engine, args.pairs)
            window = await Window.start(engine)
            row["ping"] = {**(await ping_floor(engine)), **(await window.stop(engine, 1))}
            del row["ping"]["redis_cpu_us_per_pair"]
            results.append(row)
            print(json.dumps(row), flush=True)
        for d in (d for d in drivers if d.v.checked):
            calls = args.users * 2 + 1 + 2 * args.rounds * (args.pairs // d.v.batch)
            await check_counters(client, d, calls * d.v.batch)
        await client.aclose()
        await engine.store.close()
        if args.engine:
            (tmp / "work").mkdir()
            work = await product_work("bench", port, args.pairs, args.concurrency, 50, tmp / "work")
            keep = ["redis_cpu_us_per_pair", "calls_per_reserve", "calls_per_commit"]
            keep += ["ping_us_one_per_read", "load_average_before_after", "steal_pct"]
            print(json.dumps({"product (redis_work.py, engine)": {k: work[k] for k in keep}}))
    print(json.dumps({"counts": counts}), flush=True)
    return results


async def callgrind_phase(args: argparse.Namespace, tmp: Path) -> None:
    """Instructions per reserve, commit and pair of every variant and of the product, and of
    return-only scripts with the same keys and arguments, under callgrind."""
    with redis_under_callgrind(str(tmp)) as (port, pid):
        counter = Counter(pid, str(tmp))
        (tmp / "ri").mkdir()
        product = await product_instructions("bench", port, counter, 100, tmp / "ri")
        print(json.dumps({"product (redis_instructions.py)": product}), flush=True)
        (tmp / "rec").mkdir()
        engine, shape, _ = await record_product(port, tmp / "rec", 1)
        await engine.store.close()
        client = Redis(host=HOST, port=port, decode_responses=True, socket_timeout=600)
        n = args.callgrind_ops
        for v in variants():
            d = Driver(client, v, shape, args.users)
            await d.load()
            await run_slots(args.users * 2, 1, d.slot)  # every key exists
            out: dict[str, Any] = {"variant": label(v)}
            for script in ("reserve", "commit", "reserve-floor", "commit-floor"):
                if script.startswith("reserve"):
                    rids = [d.fresh() for _ in range(n // v.batch)]
                    calls = [d.reserve_call(r) for r in rids]
                else:
                    calls = [d.commit_call(r) for r in rids]
                await asyncio.to_thread(counter.start)
                await d.pipelined(script, calls)
                out[script + "_kinstr"] = round(await asyncio.to_thread(counter.stop) / n / 1000, 1)
            out["pair_kinstr"] = round(out["reserve_kinstr"] + out["commit_kinstr"], 1)
            out["floor_pair_kinstr"] = round(
                out.pop("reserve-floor_kinstr") + out.pop("commit-floor_kinstr"), 1
            )
            print(json.dumps(out), flush=True)
        await client.aclose()


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cpu").mkdir()
        await cpu_phase(args, Path(tmp) / "cpu")
        if args.callgrind:
            (Path(tmp) / "cg").mkdir()
            await callgrind_phase(args, Path(tmp) / "cg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callgrind-ops", type=int, default=200)
    parser.add_argument("--no-callgrind", dest="callgrind", action="store_false")
    parser.add_argument("--no-engine", dest="engine", action="store_false")
    args = parser.parse_args()
    for tool in ("redis-server", *(("valgrind", "callgrind_control") if args.callgrind else ())):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not on PATH")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
