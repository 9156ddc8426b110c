--- A game server's main loop: the client never blocks it. API calls run in
-- tasks; the loop gives the client the idle time of each frame and keeps
-- its frame rate while requests are in flight.
--
-- Against the emulator: `spec/emulator/with-emulator lua5.4 examples/gameloop.lua`.
local fly = require "fly"

-- The lua5.4 command turns on Lua 5.4's generational collector, whose collections are
-- not split into steps; a frame loop wants the incremental one, the default of Lua 5.2
-- and of a Lua 5.4 an engine embeds (Lua 5.1, 5.3 and LuaJIT have no other: there the
-- call fails, and nothing changes).
pcall(collectgarbage, "incremental")

local client = assert(fly.new())
local app = os.getenv("FLY_APP") or ("gameloop-" .. os.time())
local FRAME = 1 / 60

-- the server's state of the world, updated by tasks
local world = { status = "booting", frames = 0 }

local task = client:spawn(function()
  assert(client.apps:create { app_name = app, org_slug = os.getenv("FLY_ORG") or "personal" })
  local m = assert(client.machines:create(app, { config = { image = "nginx" } }))
  world.status = "machine " .. m.id .. " created"
  assert(m:wait("started", { timeout = 120 }))
  world.status = "machine started"
  assert(client.apps:destroy(app))
  world.status = "done"
end)

-- Each frame: update and draw, then give the client the rest of the frame.
-- poll(t) works at most its budget (fly.POLL_BUDGET, 0.5 ms, by default) and,
-- when that found nothing to do, waits at most t seconds for an answer: it
-- returns as soon as one comes, so the loop polls again until the frame's time
-- is up (it waits a budget less than the frame's rest). When many requests
-- start or finish at once, the rest waits for the next polls, so the loop
-- keeps its frame rate. An engine with its own frame pacing calls
-- client:poll(0) once a frame instead, which never blocks; one with time to
-- spare passes a larger budget.
local last
local next_frame = fly.now()
local late = 0 -- frames that began more than 2 ms after their time
while task:status() == "running" do
  if fly.now() - next_frame > 0.002 then late = late + 1 end
  world.frames = world.frames + 1
  if world.status ~= last then
    print(("frame %4d: %s"):format(world.frames, world.status))
    last = world.status
  end
  next_frame = next_frame + FRAME
  repeat
    local rest = next_frame - fly.now() - fly.POLL_BUDGET
    client:poll(math.max(0, rest))
  until rest <= 0
end
local _, err = task:result()
if err then error(tostring(err), 0) end
print(("%d frames rendered while the API calls ran, %d of them late"):format(world.frames, late))
