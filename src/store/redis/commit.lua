-- One or more keygate commits, checked and applied in one atomic step.
--
-- KEYS[1] orgs hash, KEYS[2] tokens hash, KEYS[3] seq counter,
-- KEYS[4] feed stream, KEYS[5] audited set, KEYS[6] API users hash,
-- KEYS[6 + i] commit i's audit stream,
-- KEYS[6 + n + i] the threshold window hash of commit i's org.
-- ARGV[1] the feed's approximate length cap, ARGV[2] how many commits,
-- then six arguments per commit: kind ("org", "put", "del", "rotate",
-- "delorg", "putuser" or "deluser"), the org id, token name or
-- "org/username", the expectation (an org's version, "" for none, meaning the
-- org must not exist; for "rotate", the hex digest the stored token must
-- have), the record as JSON (an org, a token or an API user; "" for "del",
-- "deluser" and "delorg"), the org the audit event is about, and the audit
-- event as JSON. "delorg" removes the org, every token and API user of it and
-- its threshold window; its audit stream stays. "rotate" replaces a token's
-- record and goes on the feed as a "put", which replaces any token of its name.
--
-- Every expectation is checked first, each against the state the commits
-- before it leave, and nothing is written unless all hold: a script's writes
-- are not rolled back. Returns {"ok", seq of the last commit}, or
-- {"conflict", i} for the first commit whose expectation failed.

local orgs, tokens, seq, feed, audited, users = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local maxlen = ARGV[1]
local n = tonumber(ARGV[2])

local function field(i, k)
  return ARGV[2 + (i - 1) * 6 + k]
end

-- What the earlier commits of this batch leave: org versions, and each token
-- name's digest (false once gone).
local versions = {}
local digests = {}
local users_taken = {}

for i = 1, n do
  local kind, name = field(i, 1), field(i, 2)
  local holds
  if kind == 'org' or kind == 'delorg' then
    local now = versions[name]
    if now == nil then
      local stored = redis.call('HGET', orgs, name)
      if stored then
        now = tonumber(cjson.decode(stored).version) or 0
      else
        now = false
      end
    end
    local expected = field(i, 3)
    if expected == '' then
      holds = (now == false)
    else
      holds = (now ~= false) and (now == tonumber(expected))
    end
    if kind == 'org' then
      versions[name] = tonumber(cjson.decode(field(i, 4)).version) or 0
    else
      versions[name] = false
    end
  elseif kind == 'putuser' or kind == 'deluser' then
    local is_taken = users_taken[name]
    if is_taken == nil then
      is_taken = redis.call('HEXISTS', users, name) == 1
    end
    if kind == 'putuser' then
      holds = not is_taken
      users_taken[name] = true
    else
      holds = is_taken
      users_taken[name] = false
    end
  else
    local now = digests[name]
    if now == nil then
      local stored = redis.call('HGET', tokens, name)
      if stored then
        now = cjson.decode(stored).digest
      else
        now = false
      end
    end
    if kind == 'put' then
      holds = (now == false)
      digests[name] = cjson.decode(field(i, 4)).digest
    elseif kind == 'rotate' then
      holds = (now ~= false) and (now == field(i, 3))
      digests[name] = cjson.decode(field(i, 4)).digest
    else
      holds = (now ~= false)
      digests[name] = false
    end
  end
  if not holds then
    return {'conflict', i}
  end
end

local last = 0
for i = 1, n do
  local kind, name, value = field(i, 1), field(i, 2), field(i, 4)
  if kind == 'org' then
    redis.call('HSET', orgs, name, value)
  elseif kind == 'delorg' then
    redis.call('HDEL', orgs, name)
    local all = redis.call('HGETALL', tokens)
    for j = 1, #all, 2 do
      if cjson.decode(all[j + 1]).org == name then
        redis.call('HDEL', tokens, all[j])
      end
    end
    local prefix = name .. '/'
    local everyone = redis.call('HKEYS', users)
    for j = 1, #everyone do
      if string.sub(everyone[j], 1, #prefix) == prefix then
        redis.call('HDEL', users, everyone[j])
      end
    end
    redis.call('DEL', KEYS[6 + n + i])
    value = name
  elseif kind == 'putuser' then
    redis.call('HSET', users, name, value)
  elseif kind == 'deluser' then
    redis.call('HDEL', users, name)
    value = name
  elseif kind == 'put' or kind == 'rotate' then
    redis.call('HSET', tokens, name, value)
    kind = 'put'
  else
    redis.call('HDEL', tokens, name)
    value = name
  end
  redis.call('XADD', KEYS[6 + i], '*', 'event', field(i, 6))
  redis.call('SADD', audited, field(i, 5))
  last = redis.call('INCR', seq)
  redis.call('XADD', feed, 'MAXLEN', '~', maxlen, '*', 'seq', last, 'kind', kind, 'payload', value)
end
return {'ok', last}
