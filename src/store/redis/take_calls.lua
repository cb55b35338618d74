-- Grants calls of one org's threshold window to one node, atomically
-- against every node's grants (Backend::take_calls).
-- KEYS[1]: the org's window hash (start, granted)
-- ARGV: threshold, window_secs, want, nodes, returned_start, returned_unused
-- Returns {window_start, calls}. The window opens, by Redis's clock, with the
-- first take after the previous one ended.
local threshold = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local nodes = math.max(1, tonumber(ARGV[4]))
local returned_start = tonumber(ARGV[5])
local returned_unused = tonumber(ARGV[6])

local now = tonumber(redis.call('TIME')[1])
local held = redis.call('HMGET', KEYS[1], 'start', 'granted')
local start = tonumber(held[1])
local granted = tonumber(held[2]) or 0
if start == nil or now >= start + window then
  start = now
  granted = 0
end
if returned_unused > 0 and returned_start == start then
  granted = math.max(0, granted - returned_unused)
end
local remaining = math.max(0, threshold - granted)
local fair = math.max(1, math.floor(remaining / (2 * nodes)))
local calls = math.min(want, fair, remaining)
granted = granted + calls
redis.call('HSET', KEYS[1], 'start', start, 'granted', granted)
-- Gone a minute after the window ends: an idle org keeps nothing.
redis.call('EXPIREAT', KEYS[1], start + window + 60)
return {start, calls}
