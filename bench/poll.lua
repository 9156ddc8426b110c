--- A poll fits in a frame: a game-style loop calls client:poll(0) once per frame
-- (BENCH_FPS frames per second, default 60, sleeping out the rest of each frame)
-- while 200 tasks each start and stop their machine BENCH_POLL_ROUNDS times (default
-- 5), every request answered 100 ms late by the emulator, so 200 requests are in
-- flight and they start and finish together. Reports the worst, 99th-percentile
-- and mean time of one poll(0) with the default budget and with no budget
-- (poll(0, math.huge): everything due in one call), how long the work took,
-- and how many polls with the default budget took 2 ms or more. Another run, the
-- default budget with Lua's garbage collector stopped, tells the loop's own time
-- from the collector's steps (which any allocation may pay, in a poll or anywhere
-- else in the program). Each run starts from a collected heap.
--
-- Under Lua 5.4 the first row runs the incremental collector, the default of a
-- state an application makes (luaL_newstate: a game server or engine embedding
-- Lua), and a second row the generational one, which the lua5.4 command turns on
-- before it runs a script (its collections are not split into steps); each run
-- puts the mode back after.
local fly = require "fly"
local socket = require "socket"
local E = require "emulator"

local N = 200
local ROUNDS = tonumber(os.getenv("BENCH_POLL_ROUNDS") or "5")
local FPS = tonumber(os.getenv("BENCH_FPS") or "60")
local FRAME = 1 / FPS

E.control("POST", "reset")
E.control("POST", "config", { rate_limits = { enabled = false }, delays = { transition = 0 } })
local setup = E.setup_client()
local ids = E.machines(setup, "bench-poll", N)
setup:close()
for _, action in ipairs { "start", "stop" } do
  E.control("POST", "faults", { method = "POST", path = "/v1/apps/bench%-poll/machines/[^/]+/" .. action,
    kind = "delay", delay = 0.1, count = 0 })
end

-- One run: N tasks of ROUNDS start/stop pairs, driven by poll(0, budget) once a frame;
-- `gc`: "stopped" (the collector stopped), "incremental" or "generational" (Lua 5.4: that
-- mode for the run), or nil (as the program runs it).
local function run(budget, gc)
  local mode -- the mode to put back
  if gc == "incremental" or gc == "generational" then mode = collectgarbage(gc) end
  -- each run starts from a collected heap: what the setup (or the run before) left is not
  -- the loop's to sweep
  collectgarbage()
  local client = assert(fly.new { token = E.TOKEN, base_url = E.URL, rate_limit = false })
  for _, id in ipairs(ids) do
    client:spawn(function()
      for _ = 1, ROUNDS do
        assert(client.machines:start("bench-poll", id))
        assert(client.machines:stop("bench-poll", id))
      end
    end)
  end
  local times, cpu, now, clock = {}, {}, fly.now, os.clock
  if gc == "stopped" then collectgarbage("stop") end
  local t0 = now()
  local next_frame = t0
  local left = N
  while left > 0 do
    local a, c = now(), clock()
    left = client:poll(0, budget)
    times[#times + 1] = now() - a
    cpu[#cpu + 1] = clock() - c
    next_frame = next_frame + FRAME
    local rest = next_frame - now()
    if rest > 0 then socket.sleep(rest) else next_frame = now() end
    assert(now() - t0 < 120, "the work did not finish in 120 s")
  end
  local total = now() - t0
  if gc == "stopped" then collectgarbage("restart") end
  if mode then collectgarbage(mode) end
  collectgarbage()
  client:close()
  local function stats(list)
    table.sort(list)
    local sum, over = 0, 0
    for _, t in ipairs(list) do
      sum = sum + t
      if t >= 0.002 then over = over + 1 end
    end
    return { worst = list[#list], p99 = list[math.max(1, math.ceil(#list * 0.99))], mean = sum / #list,
      over = over }
  end
  return { wall = stats(times), cpu = stats(cpu), polls = #times, total = total }
end

local lua54 = _VERSION == "Lua 5.4"
local default_gc = lua54 and "incremental" or nil
local rows = { { name = lua54 and "incremental" or "default budget", r = run(nil, default_gc) } }
if lua54 then rows[#rows + 1] = { name = "  generational", r = run(nil, "generational") } end
rows[#rows + 1] = { name = "  collector off", r = run(nil, "stopped") }
rows[#rows + 1] = { name = "no budget", r = run(math.huge, default_gc) }
print(("  %d tasks x %d start+stop, 100 ms server latency, poll(0) once per %.1f ms frame, default budget %g ms")
  :format(N, ROUNDS, FRAME * 1000, fly.POLL_BUDGET * 1000))
print("  (wall: time a poll took; cpu: processor time it used, without the waits a busy machine adds;"
  .. (lua54 and "\n  incremental: the default budget, Lua 5.4's incremental collector (an embedded state's default);"
    .. "\n  generational: the same with the generational collector (the lua5.4 command's default);" or "")
  .. "\n  collector off: the default budget with Lua's garbage collector stopped, the loop's own time)")
print(("  %-16s %5s %10s %10s %10s %7s %8s"):format("poll(0)", "", "worst ms", "p99 ms", "mean ms", "polls",
  "total s"))
for _, row in ipairs(rows) do
  local r = row.r
  for _, k in ipairs { "wall", "cpu" } do
    local t = r[k]
    print(("  %-16s %5s %10.3f %10.3f %10.3f %7s %8s"):format(k == "wall" and row.name or "", k, t.worst * 1000,
      t.p99 * 1000, t.mean * 1000, k == "wall" and r.polls or "", k == "wall" and ("%.2f"):format(r.total) or ""))
  end
end
local worst, r1 = rows[1].r.wall.worst, rows[1].r
print(("  worst poll(0) with the default budget%s: %.3f ms (target < 2 ms: %s); polls of 2 ms or more:"
  .. " %d wall, %d cpu, of %d")
  :format(lua54 and " (incremental collector)" or "", worst * 1000, worst < 0.002 and "met" or "MISSED",
    r1.wall.over, r1.cpu.over, r1.polls))
