-- Loads an export into an empty keygate store in one atomic step, or
-- writes nothing.
--
-- KEYS[1] orgs hash, KEYS[2] tokens hash, KEYS[3] seq counter,
-- KEYS[4] feed stream, KEYS[5] audited set, KEYS[6] API users hash,
-- KEYS[6 + k] the audit stream of the k-th org with events in the export.
-- ARGV[1] the feed's approximate length cap, ARGV[2] the audit streams' key
-- prefix (what precedes an org id), ARGV[3] orgs, ARGV[4] tokens, ARGV[5]
-- audit events, ARGV[6] API users; then (id, record JSON) per org, (name,
-- record JSON) per token, ("org/username", record JSON) per API user, (k,
-- org id, event JSON) per audit event, each org's oldest first.
--
-- Returns {"done", seq}, or {"not_empty", orgs, tokens, audit events} when
-- the store holds anything.

local orgs, tokens, seq, feed, audited = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local users = KEYS[6]
local maxlen, audit_prefix = ARGV[1], ARGV[2]
local n_orgs, n_tokens, n_audit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local n_users = tonumber(ARGV[6])

local held_orgs = redis.call('HLEN', orgs)
local held_tokens = redis.call('HLEN', tokens)
local held_audit = 0
for _, org in ipairs(redis.call('SMEMBERS', audited)) do
  held_audit = held_audit + redis.call('XLEN', audit_prefix .. org)
end
if held_audit == 0 then
  -- A stream the set does not name is not keygate's doing, but it is not
  -- empty either.
  for k = 7, #KEYS do
    if redis.call('EXISTS', KEYS[k]) == 1 then
      held_audit = held_audit + redis.call('XLEN', KEYS[k])
    end
  end
end
if held_orgs + held_tokens + held_audit > 0 then
  return {'not_empty', held_orgs, held_tokens, held_audit}
end

local at = 7
for _ = 1, n_orgs do
  redis.call('HSET', orgs, ARGV[at], ARGV[at + 1])
  at = at + 2
end
for _ = 1, n_tokens do
  redis.call('HSET', tokens, ARGV[at], ARGV[at + 1])
  at = at + 2
end
for _ = 1, n_users do
  redis.call('HSET', users, ARGV[at], ARGV[at + 1])
  at = at + 2
end
for _ = 1, n_audit do
  redis.call('XADD', KEYS[6 + tonumber(ARGV[at])], '*', 'event', ARGV[at + 2])
  redis.call('SADD', audited, ARGV[at + 1])
  at = at + 3
end
local last = redis.call('INCR', seq)
redis.call('XADD', feed, 'MAXLEN', '~', maxlen, '*', 'seq', last, 'kind', 'resync', 'payload', '')
return {'done', last}
