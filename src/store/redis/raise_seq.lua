-- Raises the feed's counter to ARGV[1] if it is lower: Redis lost commits a
-- node had seen, and their seqs must not be handed out again.
-- KEYS[1] the seq counter. Returns the counter.
local now = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if now < floor then
  redis.call('SET', KEYS[1], ARGV[1])
  return floor
end
return now
