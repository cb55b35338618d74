-- Which nodes still serve without having applied a commit.
--
-- KEYS[1] nodes hash (node -> applied seq).
-- ARGV[1] the lease keys' prefix, ARGV[2] the commit's seq.
--
-- Returns the nodes that hold a lease and applied less than the seq, by what
-- they last renewed with; forgets every node whose lease ran out, which
-- serves nothing.

local nodes = KEYS[1]
local prefix, seq = ARGV[1], tonumber(ARGV[2])
local all = redis.call('HGETALL', nodes)
local behind = {}
for i = 1, #all, 2 do
  if redis.call('EXISTS', prefix .. all[i]) == 1 then
    if tonumber(all[i + 1]) < seq then
      behind[#behind + 1] = all[i]
    end
  else
    redis.call('HDEL', nodes, all[i])
  end
end
return behind
