-- emu.lifecycle: the machine state machine.
--
-- A user action turns into a *plan*: a list of steps { state, type, source }. The first step
-- happens at once; each later step happens `delay` seconds after the previous one, where the
-- delay is config.delays[kind] or config.delays.transition (0 = immediately). Pending steps are
-- stored on the machine (m.steps, with absolute times) and applied lazily by settle(m), which
-- every reader calls first, so a long-polling wait sees transitions without timers.
-- A new action cancels the steps still pending from the previous one.
--
-- Every applied step appends an event { id = ulid, type, status = new state, source, timestamp ms }
-- to m.events (oldest first).
--
-- Machines whose config.image starts with "emulator/fail" end their launch in state "failed".
local util = require "emu.util"
local state = require "emu.state"

local lifecycle = {}

lifecycle.SETTLED = { created = true, started = true, stopped = true, suspended = true,
                      failed = true, destroyed = true }

local function delay_for(kind)
  local d = state.config.delays or {}
  local v = tonumber(d[kind]) or tonumber(d.transition) or 0
  if v < 0 then v = 0 end
  return v
end

local function push_event(m, step, t)
  local ev = {
    id = util.ulid(),
    type = step.type,
    status = step.state,
    source = step.source,
    timestamp = math.floor(t * 1000),
  }
  if step.request then ev.request = step.request end
  local evs = m.events
  evs[#evs + 1] = ev
  -- keep memory bounded for long benchmarks
  if #evs > 200 then table.remove(evs, 1) end
  return ev
end

local function apply(m, step, t)
  m.state = step.state
  m.updated_t = t
  m.updated_at = util.now_iso(t)
  if step.state == "destroyed" then m.destroyed_t = t end
  push_event(m, step, t)
end

-- Apply every pending step whose time has come.
function lifecycle.settle(m)
  local steps = m.steps
  if not steps or #steps == 0 then return m end
  local now = util.now()
  while steps[1] and steps[1].at <= now do
    local step = table.remove(steps, 1)
    apply(m, step, step.at)
  end
  return m
end

-- Replace pending steps with `plan` (delay kind `kind`).
function lifecycle.run(m, kind, plan)
  lifecycle.settle(m)
  m.steps = {}
  local now = util.now()
  local d = delay_for(kind)
  local t = now
  for i, step in ipairs(plan) do
    if i > 1 then t = t + d end
    if t <= now then
      apply(m, step, now)
    else
      step.at = t
      m.steps[#m.steps + 1] = step
    end
  end
  return m
end

-- Whether the machine is (or is about to be, by its own plan) in a transitional state.
function lifecycle.pending(m)
  return m.steps and #m.steps > 0
end

local function launch_tail(m, plan, source)
  local fail = type(m.config) == "table" and type(m.config.image) == "string"
               and m.config.image:find("^emulator/fail") ~= nil
  plan[#plan + 1] = { state = "starting", type = "start", source = source or "flyd" }
  if fail then
    plan[#plan + 1] = { state = "failed", type = "exit", source = "flyd",
                        request = { exit_event = { exit_code = 1, oom_killed = false,
                                                   requested_stop = false } } }
  else
    plan[#plan + 1] = { state = "started", type = "start", source = "flyd" }
  end
  return plan
end

function lifecycle.create(m, skip_launch)
  local plan = { { state = "created", type = "launch", source = "user" } }
  if not skip_launch then launch_tail(m, plan) end
  return lifecycle.run(m, "create", plan)
end

function lifecycle.start(m)
  return lifecycle.run(m, "start", launch_tail(m, {}, "user"))
end

function lifecycle.stop(m)
  return lifecycle.run(m, "stop", {
    { state = "stopping", type = "stop", source = "user" },
    { state = "stopped", type = "exit", source = "flyd",
      request = { exit_event = { exit_code = 0, requested_stop = true } } },
  })
end

function lifecycle.suspend(m)
  return lifecycle.run(m, "suspend", {
    { state = "suspending", type = "suspend", source = "user" },
    { state = "suspended", type = "suspend", source = "flyd" },
  })
end

function lifecycle.restart(m)
  return lifecycle.run(m, "restart", launch_tail(m, {
    { state = "stopping", type = "restart", source = "user" },
  }))
end

-- Update: a started (or launching) machine is replaced and started again; with skip_launch
-- it ends stopped; a machine that was not running keeps its state.
function lifecycle.update(m, was_running, skip_launch)
  if was_running and not skip_launch then
    return lifecycle.run(m, "update", launch_tail(m, {
      { state = "replacing", type = "update", source = "user" },
    }))
  elseif was_running then
    return lifecycle.run(m, "update", {
      { state = "replacing", type = "update", source = "user" },
      { state = "stopped", type = "exit", source = "flyd" },
    })
  elseif not skip_launch and m.state ~= "created" then
    return lifecycle.run(m, "update", launch_tail(m, {
      { state = "replacing", type = "update", source = "user" },
    }))
  end
  return lifecycle.run(m, "update", { { state = m.state, type = "update", source = "user" } })
end

function lifecycle.destroy(m)
  return lifecycle.run(m, "destroy", {
    { state = "destroying", type = "destroy", source = "user" },
    { state = "destroyed", type = "destroy", source = "flyd" },
  })
end

-- Force a state (control endpoint), e.g. "failed".
function lifecycle.force(m, new_state)
  return lifecycle.run(m, "transition", {
    { state = new_state, type = new_state == "failed" and "exit" or "update", source = "flyd" },
  })
end

return lifecycle
