--- The driver: runs a client's libcurl loop and the tasks spawned on it.
--
-- Every request lives in the C core until it finishes. A plain call steps
-- the loop until its own request is done; a call made inside a task yields
-- instead, and the loop resumes the task when the request is done. Either
-- way, stepping the loop also resumes every other task whose request
-- finished, so tasks progress while a plain call waits.
-- @module fly.loop
local core = require "fly.core"
local Error = require "fly.error"
local task_base = require "fly.task"
local compat = require "fly.compat"
local drain = require("fly.trace").drain

-- Inside nginx, calls go over cosockets and tasks are light threads: fly.ngx.loop.
if require("fly.ngx.phase").current() then return require "fly.ngx.loop" end

local now_fn = core.now
local c_step, c_step_until, wait_in_c = core.Client._step, core.Client._step_until, core.Client._wait
local done_fn = core.request_mt.methods.done
local client_state = core.Client._state
local pack, unpack, running, can_yield = compat.pack, compat.unpack, compat.running, compat.can_yield
local co_resume, co_status = coroutine.resume, coroutine.status

-- A step of the C loop, after which the trace hook sees what the step
-- recorded, before any task hears of the requests it finished.
local function drained(client, ...)
  drain(client)
  return ...
end
local function step(client, ...) return drained(client, c_step(client, ...)) end
local function step_until(client, ...) return drained(client, c_step_until(client, ...)) end

local loop = {}

--- Builds and admits a call and queues it on the client's libcurl loop
-- (`client:_submit`): the request `loop.await` waits for.
loop.submit = core.Client._submit

-- The task running in each coroutine. Weak both ways, so that it holds
-- neither (Lua 5.1 and LuaJIT have no ephemerons: a weak-keyed table would
-- keep a coroutine alive through its task). A task is held elsewhere while its
-- coroutine runs: by its client's state, or by the step resuming it.
local task_of = setmetatable({}, { __mode = "kv" })

local AWAIT = {}  -- the value a task yields while it waits for a request

-- The client's scheduler state, kept in the client's own state table
-- (client:_state()), so it is collected with the client on every Lua.
local function state(client)
  local cs = client_state(client)
  local st = cs.loop
  if not st then
    st = { waiting = {}, ready = {}, tasks = {}, count = 0, background = 0, woken = {}, woken_at = 1,
      woken_end = 0, turn = 0, free = 0, did = false }
    cs.loop = st
  end
  return st
end

-- The state if the client has one yet, without making it.
local function existing(client)
  return client_state(client).loop
end

--- The Task metatable (`fly.Task`).
local Task = task_base.class()
loop.Task = Task

local function finish(task, status, ...)
  if task._status ~= "running" then return end -- cancelled meanwhile: that stays
  local st = state(task.client)
  task._status = status
  task._results = pack(...)
  if st.tasks[task] then
    st.tasks[task] = nil
    st.count = st.count - 1
    if task._background then st.background = st.background - 1 end
  end
  for _, joiner in ipairs(task._joiners) do st.ready[#st.ready + 1] = joiner end
  task._joiners = {}
end

-- Records how a resume of `task` (its coroutine `co`) ended, if it did:
-- `ok, ...` are what coroutine.resume returned. Taken as arguments, not
-- packed in a table: a task is resumed once for every request it makes, and
-- every table made here is garbage the collector must sweep during a poll.
local function resumed(task, co, ok, ...)
  if co_status(co) == "dead" then
    if ok then
      finish(task, "done", ...)
    else
      local err = ...
      task.traceback = debug.traceback(co, tostring(err))
      finish(task, "failed", nil, Error.new { code = "task_failed", message = tostring(err), cause = err })
    end
  elseif (...) ~= AWAIT then
    -- the task yielded on its own: give it another turn on the next step
    local st = state(task.client)
    st.ready[#st.ready + 1] = task
  end
end

-- Resumes a task and records how it ended, if it did.
local function step_task(task, ...)
  if task._status ~= "running" then return end
  local co = task._co
  resumed(task, co, co_resume(co, ...))
  -- what its calls recorded meanwhile (one that failed at once, as it was made) goes to the hook
  -- now: thousands of tasks resumed in one turn would otherwise overflow the event queue
  drain(task.client)
end

-- Resumes the task waiting on a finished request, if any.
local function wake_one(st, finished)
  local task = st.waiting[finished]
  if task then
    st.waiting[finished] = nil
    step_task(task)
  end
end

-- The stages of a budgeted turn (see loop.drive): the Lua loop's two, then
-- the C step's three (sockets, finished attempts, starts).
local WOKEN, READY, STAGES = 1, 2, 5

-- Whether a unit of work of `stage` (a task to resume) may begin: always
-- without a budget (`t_end` nil); with one, while the clock is before
-- `t_end`, and past it for the first unit of the turn and the first unit of
-- the stage whose turn it is (st.free). If it may, it counts as begun.
local function may_begin(st, t_end, stage)
  if t_end == nil then return true end
  if st.did and st.free ~= stage and now_fn() >= t_end then return false end
  if st.free == stage then st.free = 0 end
  st.did = true
  return true
end

-- Resumes the tasks waiting on finished requests in st.woken, oldest first,
-- while the budget lets it; the rest stay queued for the next turn. A finished
-- request nobody waits for (any more) costs no unit.
local function wake_woken(st, t_end)
  local q, i, last, waiting = st.woken, st.woken_at, st.woken_end, st.waiting
  while i <= last do
    local finished = q[i]
    if finished ~= nil and waiting[finished] and not may_begin(st, t_end, WOKEN) then break end
    q[i] = nil
    i = i + 1
    if finished ~= nil then wake_one(st, finished) end
  end
  if i > last then
    if last > 0 then st.woken, st.woken_at, st.woken_end = {}, 1, 0 end
  else
    st.woken_at = i
  end
end

-- Resumes the tasks waiting on the finished requests given (a step's
-- results), after those left over from earlier turns.
local function wake(st, t_end, ...)
  local n = select("#", ...)
  if n == 0 then return end
  if n == 1 and t_end == nil and st.woken_at > st.woken_end then return wake_one(st, (...)) end
  local q, last = st.woken, st.woken_end
  if n == 1 then
    q[last + 1] = (...)
  else
    local list = { ... }
    for i = 1, n do q[last + i] = list[i] end
  end
  st.woken_end = last + n
  wake_woken(st, t_end)
end

-- Resumes the tasks that are ready, in order, while the budget lets it; the
-- rest stay first in line.
local function run_ready(st, t_end)
  local ready = st.ready
  if #ready == 0 then return end
  st.ready = {}
  for i = 1, #ready do
    if ready[i]._status == "running" and not may_begin(st, t_end, READY) then
      local rest = {}
      for j = i, #ready do rest[#rest + 1] = ready[j] end
      for _, task in ipairs(st.ready) do rest[#rest + 1] = task end
      st.ready = rest
      return
    end
    step_task(ready[i])
  end
end

-- After a budgeted step: resumes the tasks of the requests it finished within
-- the budget it gave (it ends `t_end`, after the step's wait if it waited;
-- `did`: whether a unit of the turn has begun).
local function wake_budgeted(st, t_end, did, ...)
  st.did = did
  wake(st, t_end, ...)
  return t_end
end

-- Whether a turn left work over (tasks to resume).
local function pending(st)
  return #st.ready > 0 or st.woken_at <= st.woken_end
end

--- One turn of the loop: resume tasks that are ready, then let libcurl work
-- for at most `wait` seconds (or, given `req`, until `req` or another
-- request finishes) and resume the tasks whose requests finished. Given a
-- `budget` (seconds), the turn starts, finishes and resumes only what fits
-- in it, and leaves the rest, oldest first, for the next turn: a unit of
-- work (a task to resume, a ready socket, a finished attempt, a start)
-- begins only while the budget lasts, except the turn's first unit, so that
-- every turn makes progress, and the first unit of one stage, a different
-- one each turn, so that none waits for ever behind the others. A turn thus
-- ends at most two units past its budget.
-- @return the number of unfinished tasks
function loop.drive(client, wait, req, budget)
  local st = state(client)
  local t_end = budget and now_fn() + budget
  if t_end then
    local turn = st.turn % STAGES + 1
    st.turn, st.free, st.did = turn, turn, false
  end
  if pending(st) then
    wake_woken(st, t_end)
    run_ready(st, t_end)
    wait = 0
  end
  if client:is_closed() then return st.count end -- a task closed it: nothing left to drive
  if req and wait ~= 0 and not t_end then
    wake(st, nil, step_until(client, req))
  elseif t_end then
    local left = t_end - now_fn()
    local free = st.free > READY and st.free - READY or 0 -- the C step's stages count from 1
    t_end = wake_budgeted(st, step(client, wait, left > 0 and left or 0, free, st.did))
  else
    wake(st, nil, step(client, wait))
  end
  run_ready(st, t_end)
  return st.count - st.background
end

--- The task running the current coroutine on this client, if any.
function loop.current(client)
  local task = task_of[running()]
  if task and task.client == client then return task end
end

-- Waits for `req` to finish: yields inside a task of this client, steps the loop otherwise.
-- `call`: req is an API call (not a timer), which the task then counts as made (`_made_call`:
-- something of it may have reached the server, see client:map).
local function await(client, req, call)
  local st = existing(client)
  if st ~= nil then -- (a client that never had tasks has no cancelled one)
    local task = loop.current(client)
    if task and task._status ~= "running" then -- cancelled, and went on (it caught the stop)
      req:cancel()
      error(task_base.cancelled(), 0)
    end
  end
  if st == nil or st.count == 0 then
    -- no tasks (so not inside one): nobody else waits for anything, and the
    -- whole wait happens in C
    wait_in_c(client, req)
    drain(client)
    return req
  end
  local task = loop.current(client)
  if task and not can_yield() then
    -- inside a task, but where the Lua cannot yield (a generic-for iterator
    -- on Lua 5.1): step the loop from here, which resumes the other tasks
    while not done_fn(req) do
      if task._status ~= "running" then
        req:cancel()
        error(Error.new { code = "cancelled", message = "the task was cancelled" }, 0)
      end
      loop.drive(client, 1, req)
    end
  elseif task then
    if not done_fn(req) then
      state(client).waiting[req] = task
      task._req = req
      -- resumed when the request is done; a resume for anything else (a
      -- stale wake-up from an earlier join) just waits again
      repeat coroutine.yield(AWAIT) until done_fn(req)
      task._req = nil
    end
  else
    while not done_fn(req) do loop.drive(client, 1, req) end
  end
  if task and call then task._made_call = true end
  return req
end

--- Waits for a request to finish: yields inside a task of this client, steps the loop otherwise.
-- @return the request
function loop.await(client, req) return await(client, req, true) end

--- Sleeps without blocking the loop.
function loop.sleep(client, seconds)
  await(client, client:_timer(seconds), false)
end

local next_id = 0

--- Starts `fn(...)` as a task on the client's loop.
function loop.spawn(client, fn, ...)
  next_id = next_id + 1
  local args = pack(...)
  local task = setmetatable({
    client = client, _status = "running", _joiners = {}, _id = next_id,
  }, Task)
  task._co = coroutine.create(function() return fn(unpack(args, 1, args.n)) end)
  task_of[task._co] = task
  local st = state(client)
  st.tasks[task] = true
  st.count = st.count + 1
  st.ready[#st.ready + 1] = task
  return task
end

--- Waits for the task to finish (at most `timeout` seconds), from outside any
-- task or from another task, and returns its result (see Task:result).
function Task:join(timeout)
  task_base.check_self(self, "join")
  local client = self.client
  local me = loop.current(client)
  task_base.check_join(self, timeout, me)
  local deadline = timeout and (now_fn() + timeout)
  while self._status == "running" do
    local now = now_fn()
    if deadline and now >= deadline then return nil, task_base.timeout() end
    if me then
      self._joiners[#self._joiners + 1] = me
      local timer = deadline and client:_timer(deadline - now)
      if timer then
        state(client).waiting[timer] = me
        me._req = timer -- so that cancelling `me` drops the timer too
      end
      coroutine.yield(AWAIT)
      if timer then
        me._req = nil
        state(client).waiting[timer] = nil
        timer:cancel()
      end
      for i = #self._joiners, 1, -1 do
        if self._joiners[i] == me then table.remove(self._joiners, i) end
      end
    else
      loop.drive(client, deadline and math.min(1, deadline - now) or 1)
    end
  end
  return self:result()
end

-- Cancels a task (see Task:cancel), without stopping the one running.
local function cancel(self)
  if self._status ~= "running" then return false end
  local st = state(self.client)
  if self._req then
    st.waiting[self._req] = nil
    self._req:cancel()
  end
  local err = task_base.cancelled(self._req)
  finish(self, "cancelled", nil, err)
  compat.close_coroutine(self._co)
  task_base.run_cascade(self, err) -- the tasks that go with it (map's workers)
  -- what the task left to clean up (a lease to release, …) runs as tasks of its own
  for _, fn in pairs(self._on_cancel or {}) do loop.spawn(self.client, fn) end
  self._on_cancel = nil
  return true
end

--- Cancels the task: its request is abandoned and it never runs again. A task that this
-- cancels itself (or with the task it goes with) stops here: the cancel raises in it.
-- @treturn boolean false when it had finished already
function Task:cancel()
  task_base.check_self(self, "cancel")
  local client = self.client
  return task_base.cancel(self, cancel, function()
    local me = loop.current(client)
    if me and me._status == "cancelled" then error(task_base.cancelled(), 0) end
  end)
end

-- Cleanups a cancelled task can no longer do itself (task_base.on_cancel): each runs as a task of
-- its own.
loop.on_cancel, loop.off_cancel = task_base.on_cancel, task_base.off_cancel

--- Cancels every task of a client (when it closes), but for shielded ones unless `all`.
function loop.cancel_all(client, all)
  local st = existing(client)
  -- (each cancel's events delivered at once: a close of thousands of calls overflows no queue)
  if st then task_base.cancel_all(st.tasks, function(t) cancel(t); drain(client) end, all) end
end

--- Makes a task one of the library's own (task_base.background).
function loop.background(client, task) task_base.background(state(client), task) end

loop.shield = task_base.shield

--- The number of unfinished tasks, the library's own counted too when `all`.
function loop.count(client, all)
  local st = existing(client)
  if not st then return 0 end
  return all and st.count or st.count - st.background
end

--- Whether some task can run right now.
function loop.has_ready(client)
  local st = existing(client)
  return st ~= nil and pending(st)
end

return loop
