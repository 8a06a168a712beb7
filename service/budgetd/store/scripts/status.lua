-- status.lua: read budgets and buckets without changing them.
--
-- ARGV: a plan (lib.lua; amounts 0)
--
-- Returns {now_ms, {spent, held}..., {level}...} flattened: now, then 2 per budget, 1 per
-- bucket kind (in the plan's order).

local plan = read_plan(ARGV, 1)
local now = now_ms()
for _, b in ipairs(plan.b) do
  want_budget(b)
end
want_buckets(plan.t)
load()
local out = {now}
for _, b in ipairs(plan.b) do
  table.insert(out, int(budget_spent(b)))
  table.insert(out, int(val(b.h, b.fh)))
end
for _, t in ipairs(plan.t) do
  for _, q in ipairs(t.kinds) do
    local level = bucket_level(t.k, q, now)
    table.insert(out, int(math.floor(level / SCALE)))
  end
end
return out
