-- Asks every node to hand back the calls of one org's threshold window it
-- holds unspent (Backend::reclaim_calls): a feed entry of its own, with the
-- next seq, so feed readers see it in order and count it like any entry.
--
-- KEYS[1] seq counter, KEYS[2] feed stream.
-- ARGV[1] the feed's approximate length cap, ARGV[2] the org id.
local last = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'seq', last, 'kind', 'reclaim', 'payload', ARGV[2])
return last
