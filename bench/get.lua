-- bench/get.lua — N sequential get calls through the fly module.
--
--   usage: lua5.4 bench/get.lua [--machines] BASE_URL N TOKEN [WARMUP]
--
-- Without --machines: `client.apps:get("bench-app")` on a client made with
-- `rate_limit = false`.  With --machines: the default settings
-- (`fly.new { token, base_url }`, so every call goes through the rate
-- limiter) and `client.machines:get("bench-app", id)` with a new machine id
-- for every call ("e2865" and 9 hex digits of a counter, as
-- `build/bench-plain --ids` makes them), so every call meets a per-machine
-- bucket that does not exist yet: the limiter's worst case.
--
-- Run by bench/run against its local nginx (bench/server.conf.in), next to
-- build/bench-plain doing the same requests with bare libcurl.  Every call
-- goes the whole way: request through the core, response body decoded into a
-- Lua table, and the result checked (the app's name, or the machine's id).
--
-- Output (stdout, one line, first field is the rate), same shape as plain.c
-- (cpu: this process's processor time, os.clock, over the timed calls):
--   <rate> requests/s (N=<n>, <seconds> s, clock=<which>, cpu=<us> us/request)
-- Any failed call raises an error (non-zero exit).

local APP = "bench-app"

local machines = arg[1] == "--machines"
local a0 = machines and 1 or 0
local base_url, n, token, warmup = arg[a0 + 1], tonumber(arg[a0 + 2]), arg[a0 + 3], tonumber(arg[a0 + 4] or "")
if not (base_url and n and token) or n < 1 or n ~= math.floor(n) then
  io.stderr:write("usage: lua5.4 bench/get.lua [--machines] BASE_URL N TOKEN [WARMUP]\n")
  os.exit(2)
end
warmup = warmup or math.min(n, 500)

local fly = require "fly"

---------------------------------------------------------------------------
-- Wall clock.  os.clock() is CPU time (it misses the time spent waiting on
-- the server), os.time() has 1 s resolution.  `date +%s.%N` through popen is
-- read once before and once after the timed loop (~1 ms of error in total);
-- when the module exports a clock (fly.now or fly.core.now) it is read right
-- beside it, its unit is inferred from the two intervals, and it is used
-- instead.
---------------------------------------------------------------------------
local function date_now()
  local p = assert(io.popen("date +%s.%N", "r"))
  local s = p:read("*l")
  p:close()
  return assert(tonumber(s), "cannot read the clock from `date +%s.%N`")
end

local module_now
do
  if type(fly.now) == "function" then
    module_now = fly.now
  else
    local ok, core = pcall(require, "fly.core")
    if ok and type(core) == "table" and type(core.now) == "function" then
      module_now = core.now
    end
  end
  if module_now and type(module_now()) ~= "number" then module_now = nil end
end

local function stamp()
  return { date = date_now(), mod = module_now and module_now() }
end

-- seconds between two stamps, and the name of the clock used
local function elapsed(a, b)
  local dt = b.date - a.date
  if a.mod and dt > 0.05 then
    local dm = b.mod - a.mod
    for _, u in ipairs { { 1, "fly.now [s]" }, { 1e3, "fly.now [ms]" },
                         { 1e6, "fly.now [us]" }, { 1e9, "fly.now [ns]" } } do
      local r = dm / u[1] / dt
      if r > 0.9 and r < 1.1 then return dm / u[1], u[2] end
    end
  end
  return dt, "date"
end

---------------------------------------------------------------------------

local client

local function failed(i, what)
  error(("get.lua: %s %d %s"):format(i < 0 and "warm-up call" or "call", math.abs(i), what), 0)
end

local get_once -- i < 0: warm-up call -i
if machines then
  client = fly.new { token = token, base_url = base_url }
  local seq = 0
  get_once = function(i)
    seq = seq + 1
    local id = ("e2865%09x"):format(seq)
    local m, err = client.machines:get(APP, id)
    if not m then failed(i, "failed: " .. tostring(err)) end
    if m.id ~= id then failed(i, ("unexpected result (id = %s, want %s)"):format(tostring(m.id), id)) end
  end
else
  client = fly.new { token = token, base_url = base_url, rate_limit = false }
  get_once = function(i)
    local app, err = client.apps:get(APP)
    if not app then failed(i, "failed: " .. tostring(err)) end
    if app.name ~= APP then failed(i, ("unexpected result (name = %s)"):format(tostring(app.name))) end
  end
end

for i = 1, warmup do get_once(-i) end
collectgarbage()

local c0, t0 = os.clock(), stamp()
for i = 1, n do get_once(i) end
local t1, c1 = stamp(), os.clock()

local dt, clock = elapsed(t0, t1)
io.write(("%.1f requests/s (N=%d, %.3f s, clock=%s, cpu=%.2f us/request)\n"):format(n / dt, n, dt, clock,
  (c1 - c0) / n * 1e6))
