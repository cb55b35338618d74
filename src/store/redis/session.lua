-- Makes or ends a session on every node (Backend::put_session and
-- end_session): kept in the sessions hash, and a feed entry of its own with
-- the next seq, so feed readers apply it in order and confirm counts it. No
-- audit event: a login is not a change to the org.
--
-- KEYS[1] sessions hash (digest -> JSON), KEYS[2] sessions by creation
-- (sorted set, seconds), KEYS[3] seq counter, KEYS[4] feed stream, KEYS[5]
-- last uses (digest -> nanoseconds).
-- ARGV[1] the feed's approximate length cap, ARGV[2] kind ("putsession" or
-- "endsession"), ARGV[3] the digest (hex), ARGV[4] the record as JSON (""
-- for "endsession"), ARGV[5] its creation (seconds), ARGV[6] the oldest
-- creation a session may have and live (older ones are dropped here: no
-- session outlives the longest maximum age keygate accepts).
local sessions, by_time, seq, feed, uses = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local kind, digest = ARGV[2], ARGV[3]
local payload = digest
if kind == 'putsession' then
  redis.call('HSET', sessions, digest, ARGV[4])
  redis.call('ZADD', by_time, ARGV[5], digest)
  payload = ARGV[4]
  local old = redis.call('ZRANGEBYSCORE', by_time, '-inf', '(' .. ARGV[6], 'LIMIT', 0, 100)
  for i = 1, #old do
    redis.call('HDEL', sessions, old[i])
    redis.call('HDEL', uses, old[i])
    redis.call('ZREM', by_time, old[i])
  end
else
  redis.call('HDEL', sessions, digest)
  redis.call('HDEL', uses, digest)
  redis.call('ZREM', by_time, digest)
end
local last = redis.call('INCR', seq)
redis.call('XADD', feed, 'MAXLEN', '~', ARGV[1], '*', 'seq', last, 'kind', kind, 'payload', payload)
return last
