-- Failed session logins, counted for every node (Backend::login_lockout):
-- one counter per org and one per (org, username), each living for the
-- window from its first failure (INCR, then EXPIRE on the first), so the
-- windows are fixed and by Redis's clock.
--
-- KEYS[1] the org's counter, KEYS[2] the (org, username) counter.
-- ARGV[1] "1" to count a failure first, "0" only to ask; ARGV[2] the
-- window (seconds); ARGV[3] the failures allowed per username; ARGV[4] per
-- org.
--
-- Returns the seconds until logins may be tried again (at least 1) if either
-- count has reached its limit, else 0.
local window = tonumber(ARGV[2])
local limits = {tonumber(ARGV[4]), tonumber(ARGV[3])}
if ARGV[1] == '1' then
  for i = 1, 2 do
    if redis.call('INCR', KEYS[i]) == 1 then
      redis.call('EXPIRE', KEYS[i], window)
    end
  end
end
local wait = 0
for i = 1, 2 do
  local n = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n >= limits[i] then
    local ttl = redis.call('TTL', KEYS[i])
    if ttl < 0 then
      -- A count without an expiry (not one this script made): it ends a
      -- window from now, so it cannot lock logins out for good.
      redis.call('EXPIRE', KEYS[i], window)
      ttl = window
    end
    if ttl < 1 then
      ttl = 1
    end
    if ttl > wait then
      wait = ttl
    end
  end
end
return wait
