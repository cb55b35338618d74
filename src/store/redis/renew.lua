-- Renews one node's lease and reports what it applied.
--
-- KEYS[1] nodes hash (node -> applied seq), KEYS[2] seq counter.
-- ARGV[1] the lease keys' prefix (what precedes a node's name), ARGV[2] this
-- node, ARGV[3] the lease in milliseconds, ARGV[4] the seq this node applied,
-- ARGV[5] "1" if the node is serving.
--
-- A node that serves renews. A node that does not (it starts, or it lapsed)
-- takes a lease only once it has applied every commit so far: its lease and
-- the seq it is compared with are one step, so every commit after it waits
-- for the node, and every commit before it is one the node applied. Until
-- then no one waits for a node that serves nothing.
--
-- Forgets every node whose lease ran out, and returns {live nodes, seq,
-- 1 if this node holds a lease now, else 0}.

local nodes, seq = KEYS[1], KEYS[2]
local prefix, node = ARGV[1], ARGV[2]
local now = tonumber(redis.call('GET', seq) or '0')
local held = 0
if ARGV[5] == '1' or tonumber(ARGV[4]) >= now then
  redis.call('SET', prefix .. node, '1', 'PX', ARGV[3])
  redis.call('HSET', nodes, node, ARGV[4])
  held = 1
end
local live = 0
for _, other in ipairs(redis.call('HKEYS', nodes)) do
  if redis.call('EXISTS', prefix .. other) == 1 then
    live = live + 1
  else
    redis.call('HDEL', nodes, other)
  end
end
return {live, now, held}
