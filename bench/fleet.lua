--- A fleet sharing one machine's limit through Redis, against the emulator enforcing Fly's
-- real limits: three processes (spec/redis/client.lua) make 6 starts each of the same machine
-- (1/s, burst 3), all at once. Prints the 429s (target 0), the total time against the 15 s
-- minimum (target <= 1.1x), and the cost of one admission through Redis on loopback (calls
-- without limits in the way, with and without Redis).
--   lua bench/fleet.lua REDIS_URL   (through spec/emulator/with-emulator)
local fly = require "fly"
local socket = require "socket"
local E = require "emulator"

local REDIS = assert(..., "usage: fleet.lua REDIS_URL")
local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/bench/fleet%.lua$")) or "."
local LUA = os.getenv("BENCH_LUA") or "lua5.4"
local PROCS, STARTS = 3, 6

E.control("POST", "reset")
E.control("POST", "config", { rate_limits = { enabled = false }, delays = { transition = 0 } })
local setup = E.setup_client()
local id = E.machines(setup, "bench-fleet", 1)[1]
setup:close()

-- the real limits from now on, on both sides
E.control("POST", "config", { rate_limits = { enabled = true, scale = 1 } })
local files = {}
local t0 = socket.gettime()
for i = 1, PROCS do
  files[i] = os.tmpname()
  os.execute(("(env FLY_SPEC_RATE_LIMIT=%q %s %s/spec/redis/client.lua %s %s bench-fleet %s %d > %s 2>&1; "
    .. "echo \"exit $?\" >> %s) </dev/null >/dev/null 2>&1 &"):format(
    ("{ redis = %q }"):format(REDIS), LUA, ROOT, E.URL, E.TOKEN, id, STARTS, files[i], files[i]))
end
local ok, last, warnings = 0, t0, 0
for i = 1, PROCS do
  local out
  repeat
    socket.sleep(0.05)
    local f = io.open(files[i])
    out = f and f:read("*a") or ""
    if f then f:close() end
    assert(socket.gettime() - t0 < 120, "a process did not finish:\n" .. out)
  until out:find("exit %d+\n")
  os.remove(files[i])
  for at, status in out:gmatch("call %d+ (%S+) (%a+)") do
    if status == "ok" then ok = ok + 1 end
    last = math.max(last, tonumber(at))
  end
  for _ in out:gmatch("fly: the shared rate limiter") do warnings = warnings + 1 end
end
local total = last - t0
local floor = (PROCS * STARTS - 3) / 1
local stats = E.control("GET", "stats")
print(("  starts:              %d by %d processes (%d failed)"):format(PROCS * STARTS, PROCS, PROCS * STARTS - ok))
print(("  429s received:       %d (target 0)"):format(stats.rate_limited))
print(("  Redis warnings:      %d"):format(warnings))
print(("  total time:          %.2f s"):format(total))
print(("  theoretical minimum: %.2f s"):format(floor))
print(("  ratio:               %.3f (target <= 1.1: %s)"):format(total / floor,
  total / floor <= 1.1 and stats.rate_limited == 0 and "met" or "MISSED"))

-- the cost of an admission: the same calls with Redis and without, no limit in the way
E.control("POST", "config", { rate_limits = { enabled = false } })
local N = tonumber(os.getenv("BENCH_FLEET_N") or "2000")
local function per_call(rate_limit)
  local c = assert(fly.new { token = E.TOKEN, base_url = E.URL, rate_limit = rate_limit })
  for _ = 1, 200 do assert(c.machines:get("bench-fleet", id)) end -- warm: connections, script
  local best = math.huge
  for _ = 1, 3 do
    local s = fly.now()
    for _ = 1, N do assert(c.machines:get("bench-fleet", id)) end
    best = math.min(best, (fly.now() - s) / N)
  end
  c:close()
  return best
end
-- a limit that never makes a call wait: a huge rate alone would not do, since a request goes at
-- least the margin after its token came, and at such a rate each token comes just before it is
-- taken; a burst as large keeps tokens that came long ago in the bucket
local OPEN = { rate = 1e9, burst = 1e9 }
local plain = per_call { Machines_show = OPEN }
local shared = per_call { Machines_show = OPEN, redis = REDIS }
print(("  call, local buckets: %.1f us (best of 3 x %d gets)"):format(plain * 1e6, N))
print(("  call, through Redis: %.1f us"):format(shared * 1e6))
print(("  one admission:       %.1f us on loopback"):format((shared - plain) * 1e6))
if ok < PROCS * STARTS then os.exit(1) end
