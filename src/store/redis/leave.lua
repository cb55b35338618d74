-- A node that stops: its lease and its entry go at once, so no one waits
-- for it. KEYS[1] nodes hash; ARGV[1] the lease keys' prefix, ARGV[2] the node.
redis.call('DEL', ARGV[1] .. ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[2])
return 1
