-- Renews one node's lease and reports what it applied.
--
-- KEYS[1] nodes hash (node -> applied seq), KEYS[2] seq counter.
-- ARGV[1] the lease keys' prefix (what precedes a node's name), ARGV[2] this
-- node, ARGV[3] the lease in milliseconds, ARGV[4] the seq this node applied.
--
-- Forgets every node whose lease ran out, and returns {live nodes, seq}.

local nodes, seq = KEYS[1], KEYS[2]
local prefix, node = ARGV[1], ARGV[2]
redis.call('SET', prefix .. node, '1', 'PX', ARGV[3])
redis.call('HSET', nodes, node, ARGV[4])
local live = 0
for _, other in ipairs(redis.call('HKEYS', nodes)) do
  if redis.call('EXISTS', prefix .. other) == 1 then
    live = live + 1
  else
    redis.call('HDEL', nodes, other)
  end
end
return {live, tonumber(redis.call('GET', seq) or '0')}
