-- emit.lua: append one event to the org's stream, once per id (forecasts, spikes, period
-- closes: events the jobs find, as opposed to those reserve and commit emit themselves).
--
-- KEYS[1] org's event stream
-- ARGV[1] org key prefix "bd:{o:<org>}:"   ARGV[2] event id   ARGV[3] keep the marker this long (ms)
-- ARGV[4..] field/value pairs
--
-- Returns 1 when the event was appended, 0 when an event with this id already was.

local fields = {}
for i = 4, #ARGV do
  table.insert(fields, ARGV[i])
end
expect(KEYS[1], 'stream')
-- A duration, not an instant: the caller's idea of time may differ from Redis's.
if EV().emit(KEYS[1], ARGV[1], ARGV[2], now_ms() + tonumber(ARGV[3]), fields) then
  return 1
end
return 0
