-- wrk script for benches/compare/run.sh: spreads requests uniformly at random
-- over the first N orgs of an org list ("org<TAB>key" lines), as
-- GET /{org}/v1/ping with the org's key (or a wrong one) in x-api-key.
--
--   wrk -t1 -c64 -d10s -s spread.lua http://127.0.0.1:18080 -- ORGFILE N good|bad [MARKER]
--
-- MARKER, when given, is a file created once the requests are built, just
-- before the load starts: run.sh samples CPU from then on.
-- Requests are built once in init(), so request() only picks one. done()
-- prints one "wrk key=value ..." line that run.sh reads.
--
-- With SPREAD_DRAIN_AFTER=S in the environment, each connection sends no new
-- request once S seconds (whole seconds of os.time) have passed since its
-- first: the load drains instead of being cut off, so that when wrk stops
-- (give it -d a second or more beyond S) no request is in flight. A request
-- cut off in flight makes a proxy close its upstream connection (nginx does,
-- unless proxy_ignore_client_abort), and the next run opens it again, which
-- for an HTTPS upstream is a TLS handshake. The instructions stage uses it.

local reqs = {}
local n = 0

function init(args)
  local file, count, mode = args[1], tonumber(args[2]), args[3] or "good"
  for line in io.lines(file) do
    if n >= count then break end
    local org, key = line:match("^([^\t]+)\t(%w+)")
    if org then
      if mode == "bad" then key = "WrongKey0000" end
      n = n + 1
      reqs[n] = "GET /" .. org .. "/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: "
        .. key .. "\r\n\r\n"
    end
  end
  if n == 0 then error("no orgs in " .. file) end
  math.randomseed(os.time())
  if args[4] then
    local f = io.open(args[4], "w")
    if f then f:close() end
  end
end

local drain_after = tonumber(os.getenv("SPREAD_DRAIN_AFTER") or "")
if drain_after then
  local stop_at
  -- wrk calls delay() before each request it sends: 0 sends it now; an hour
  -- is past the end of any run.
  function delay()
    local now = os.time()
    if not stop_at then stop_at = now + drain_after end
    if now >= stop_at then return 3600000 end
    return 0
  end
end

function request()
  return reqs[math.random(n)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "wrk requests=%d duration_us=%d errors_connect=%d errors_read=%d errors_write=%d " ..
    "errors_status=%d errors_timeout=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d " ..
    "mean_us=%.1f max_us=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
