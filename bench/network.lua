--- The network row: the TLS emulator behind bench/latency-proxy.lua (a round trip of
-- BENCH_RTT ms), a fresh client (default settings) per measurement. 20 sequential machine
-- gets, 20 sequential machine starts, 100 starts at once with client:map (concurrency 100),
-- each on distinct machines: seconds, round trips per call and connections opened, with the
-- targets next to them. Then, with the emulator enforcing Fly's limits, 13 gets of one
-- machine at once from a fresh client (a burst of 10, then one every 0.2 s): the burst waits
-- for the handshakes, and the requests after it must still reach the server after its bucket
-- refilled (target: no 429).
--
-- Environment (set by bench/run): FLY_API_HOSTNAME (the emulator's plain listener, for setup
-- and control), FLY_API_TOKEN, BENCH_PROXY_URL, BENCH_CA_FILE, BENCH_PROXY_STATS, BENCH_RTT.
local fly = require "fly"
local E = require "emulator"

local PROXY = assert(os.getenv("BENCH_PROXY_URL"))
local CA = assert(os.getenv("BENCH_CA_FILE"))
local STATS = assert(os.getenv("BENCH_PROXY_STATS"))
local RTT = assert(tonumber(os.getenv("BENCH_RTT"))) / 1000

local function proxy_connections()
  for line in io.lines(STATS) do
    local n = line:match("^connections (%d+)")
    if n then return tonumber(n) end
  end
  error("no connection count in " .. STATS)
end

E.control("POST", "reset")
E.control("POST", "config", { rate_limits = { enabled = false }, delays = { transition = 0 } })
local setup = E.setup_client()
local burst_id = E.machines(setup, "net-burst", 1)[1]
local get_ids = E.machines(setup, "net-get", 20)
local seq_ids = E.machines(setup, "net-seq", 20)
local map_ids = E.machines(setup, "net-map", 100)
setup:close()

local rows = {}

-- Runs fn(client) with a fresh client through the proxy; records seconds, round trips per
-- call (sequential) or in all (concurrent), connections opened, HTTP versions seen.
local function measure(name, calls, concurrent, fn, target)
  local client = assert(fly.new { token = E.TOKEN, base_url = PROXY, ca_file = CA })
  local before_conn = proxy_connections()
  local before = E.control("GET", "stats").protocols or {}
  local t0 = fly.now()
  fn(client)
  local seconds = fly.now() - t0
  client:close()
  local after = E.control("GET", "stats").protocols or {}
  local versions = {}
  for v, n in pairs(after) do
    if n > (before[v] or 0) then versions[#versions + 1] = v == "2.0" and "h2" or ("http/" .. v) end
  end
  table.sort(versions)
  local rt = seconds / RTT
  rows[#rows + 1] = { name = name, seconds = seconds, rt = concurrent and rt or rt / calls,
                      per = concurrent and "in all" or "per call",
                      conns = proxy_connections() - before_conn, proto = table.concat(versions, "+"),
                      target = target(seconds, rt, proxy_connections() - before_conn) }
end

measure("20 sequential gets", 20, false, function(c)
  for _, id in ipairs(get_ids) do assert(c.machines:get("net-get", id)) end
end, function() return "-" end)

measure("20 sequential starts", 20, false, function(c)
  for _, id in ipairs(seq_ids) do assert(c.machines:start("net-seq", id)) end
end, function(_, rt)
  local per = rt / 20
  return ("<= 1.3 RT/call: %s"):format(per <= 1.3 and "met" or "MISSED")
end)

measure("100 starts, map(100)", 100, true, function(c)
  local _, errs = c:map(map_ids, function(id) return c.machines:start("net-map", id) end, { concurrency = 100 })
  for i = 1, #map_ids do assert(errs[i] == nil, tostring(errs[i])) end
end, function(_, rt, conns)
  return ("<= 4 RT on <= 2 conns: %s"):format((rt <= 4 and conns <= 2) and "met" or "MISSED")
end)

E.control("POST", "config", { rate_limits = { enabled = true } })
local limited_before = E.control("GET", "stats").rate_limited or 0
local burst_429s
measure("13 gets of 1 machine", 13, true, function(c)
  local list = {}
  for i = 1, 13 do list[i] = i end
  local _, errs = c:map(list, function() return c.machines:get("net-burst", burst_id) end, { concurrency = 13 })
  for i = 1, 13 do assert(errs[i] == nil, tostring(errs[i])) end
  burst_429s = (E.control("GET", "stats").rate_limited or 0) - limited_before
end, function()
  return ("limits on, 429s: %d (target 0): %s"):format(burst_429s, burst_429s == 0 and "met" or "MISSED")
end)
E.control("POST", "config", { rate_limits = { enabled = false } })

print(("  round trip %.0f ms (bench/latency-proxy.lua), TLS emulator, fresh client per row"):format(RTT * 1000))
print(("  %-22s %9s %14s %6s %6s  %s"):format("work", "seconds", "round trips", "conns", "proto", "target"))
for _, r in ipairs(rows) do
  print(("  %-22s %9.3f %5.2f %-8s %6d %6s  %s"):format(r.name, r.seconds, r.rt, r.per, r.conns, r.proto, r.target))
end
