-- expire.lua: reclaim holds of one org whose lease (Redis time) ran out.
--
-- KEYS[1] org's hold index
-- ARGV[1] reservation key prefix   ARGV[2] most holds to reclaim in this call
--
-- Returns {reclaimed, still_due}: how many it expired and how many due holds remain.

local holds = KEYS[1]
local now = now_ms()
local due = due_holds(holds, ARGV[1], now, tonumber(ARGV[2]))
load()
expiry_decisions(due)
assert_in_bounds()
flush()
expire_holds(holds, due, now)
local remaining = redis.call('ZCOUNT', holds, '-inf', int(now))
return {#due, remaining}
