"""The largest number a caller may send, and the largest amount budgetd ever keeps.

Every amount a script writes must stay exact in Lua (a double: integers below 2**53) and in
Redis (HINCRBY: signed 64 bits). The bounds below make that provable: a caller's counts are
capped by the contract (422 naming the field, before anything is priced), so one call's cost
is capped too, and the scripts refuse (write nothing) a change that would take a counter past
``MAX_COUNTER_MICROS``. README, "Bounds", lists them.
"""

from __future__ import annotations

MAX_TOKENS = 100_000_000
"""Per call and per kind (input, output, cache writes, cache reads): a hundred times the
largest context window, so no real call comes near it."""

MAX_OUTPUT_TOKENS = 10_000_000
"""A reservation's ``max_tokens``."""

MAX_WEB_SEARCHES = 10_000
"""Per call: web searches (and web fetches) a call may run or report."""

MAX_CALL_MICROS = 10**12
"""One call's cost ($1,000,000): a reported ``cost_micros``, and any priced call (the dearest
model at every count's maximum costs far less; a price table that makes a call dearer is
refused at that call)."""

MAX_COUNTER_MICROS = 2**53 - 1
"""The most one counter (a period's spend, an entity's held) may hold; scripts check it before
their first write, as lib.lua's ``MAX_AMOUNT``."""

MAX_ADJUSTMENT_MICROS = 10**15
"""An admin adjustment's magnitude ($1,000,000,000)."""
