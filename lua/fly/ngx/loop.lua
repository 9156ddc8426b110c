--- The driver inside nginx (OpenResty): API calls over cosockets, tasks on light threads.
--
-- `fly.loop` hands over to this module when it is loaded inside nginx, so `require "fly"`
-- needs no option there. A call is built by the core without touching the core's
-- rate-limit buckets (`client:_build(..., true)`), admitted through `fly.ngx.limiter`
-- (`lua_shared_dict fly_limits`: one set of buckets for every worker), sent with
-- `fly.ngx.http`, and classified by the core, which decides retries exactly as it does for
-- the libcurl transport; waits (rate limit, backoff) are `ngx.sleep`s, so a worker serves
-- other requests meanwhile.
--
-- Tasks (`client:spawn`, `map`, `join`, `sleep`, `cancel`, `with_lease`'s refresher) are
-- light threads (`ngx.thread.spawn`) of the request or timer that spawned them; joins wait on
-- an `ngx.semaphore`. nginx lets only the thread that spawned a light thread kill it: a task
-- cancelled from elsewhere is woken from its sleep or join (they wait on semaphores) and
-- stops; one in the middle of an HTTP exchange stops when the exchange ends.
--
-- In a phase without cosockets (`init_by_lua`, `set_by_lua`, filters, `log`) a call, a
-- sleep or a spawn raises a programmer error naming the phase (`fly.ngx.phase`).
-- @module fly.ngx.loop
local core = require "fly.core"
local Error = require "fly.error"
local task_base = require "fly.task"
local compat = require "fly.compat"
local phase = require "fly.ngx.phase"
local http = require "fly.ngx.http"
local limiter = require "fly.ngx.limiter"
local drain = require("fly.trace").drain

local ngx = rawget(_G, "ngx")
local pack, unpack = compat.pack, compat.unpack
local now = core.now
local build = core.Client._build
local request_methods = core.request_mt.methods
local done_fn = request_methods.done

local loop = {}

-- This worker's limiter, made at the first call (it warns once when fly_limits is missing).
-- This worker's limiters: one on the shared dict, and one for each Redis URL
-- clients name (`rate_limit.redis`: `fly.ngx.redis`, falling back to the dict).
local limiters = {}

-- The task running in each light thread.
local task_of = setmetatable({}, { __mode = "k" })

-- What a task cancelled from outside raises at its next wait: it unwinds the task's thread.
local CANCELLED = setmetatable({}, { __tostring = function() return "fly: the task was cancelled" end })

-- Where fly's modules live ("@/…/fly/"): frames from there are not the caller's.
local HERE = debug.getinfo(1, "S").source:match("^(@.*[/\\])ngx[/\\]loop%.lua$")

-- The level of the first caller outside fly's modules, as `error` counts from the function
-- calling this one: where a programmer error raised there points.
local function user_level()
  local level = 2
  while true do
    local info = debug.getinfo(level + 1, "S")
    if not info then return 1 end
    if not HERE or info.source:sub(1, #HERE) ~= HERE then return level end
    level = level + 1
  end
end

local function state(client)
  local s = client:_state()
  local st = s.ngx_loop
  if not st then
    st = { tasks = {}, count = 0, background = 0, waiting = 0 }
    s.ngx_loop = st
  end
  return st
end

local function new_semaphore()
  return require("ngx.semaphore").new(0)
end

--- The Task metatable (`fly.Task`) inside nginx.
local Task = task_base.class()
loop.Task = Task

--- The task running the current light thread, whatever its client.
local function running_task()
  local co = coroutine.running()
  return co and task_of[co]
end

-- Raises CANCELLED in a task that was cancelled while it waited.
local function check_cancelled()
  local task = running_task()
  if task and task._status == "cancelled" then error(CANCELLED, 0) end
end

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
  for sema in pairs(task._joiners) do sema:post(1) end
  if st.sema and st.waiting > 0 then st.sema:post(st.waiting) end
end

-- Sleeps `seconds`; inside a task on its wake-up semaphore, so that a cancel from a thread
-- that may not kill it ends the sleep at once; then stops the task if it was cancelled.
local function sleep(seconds)
  if seconds > 0 then
    local task = running_task()
    if task then
      local wake = task._wake or new_semaphore()
      task._wake, task._waits_on = wake, wake
      wake:wait(seconds)
      task._waits_on = nil
    else
      ngx.sleep(seconds)
    end
  end
  check_cancelled()
end

-- The client's limiter: on the shared dict, or on Redis with rate_limit.redis.
local function buckets_of(client)
  local shared = client:_state().shared_limit -- set by fly.new from rate_limit.redis
  local url = shared and shared.url or false
  local buckets = limiters[url]
  if not buckets then
    buckets = url and require("fly.ngx.redis").new { url = url, timeout = shared.timeout, retry = shared.retry }
      or limiter.new()
    limiters[url] = buckets
  end
  return buckets
end

-- A bucket's wait for one more request, `req` (after emptying it for a 429), and whether it
-- took a token. A request that would wait past its deadline takes none: it fails
-- (req:_admit) and leaves the bucket to the requests after it.
local function bucket_wait(client, req, key, rate, burst, margin, penalize)
  local buckets = buckets_of(client)
  local max_wait = req:_latest()
  -- after a 429 the bucket is emptied all the same; a retry that cannot go in time takes no
  -- token there either
  if penalize then buckets:penalize(key, rate, burst, margin, max_wait) end
  if max_wait and max_wait <= 0 then return 0, false end -- past its deadline already: no token
  local wait, err = buckets:reserve(key, rate, burst, margin, max_wait)
  if not wait then
    -- the dict failed (it is full of locks?): pace by the core's published limit instead
    ngx.log(ngx.ERR, err)
    return 1 / rate + margin, false
  end
  -- a refused reservation answers a wait of max_wait or more (Redis's rounds up)
  return wait, not (max_wait and wait >= max_wait)
end

-- http.request's options for a request's wire form.
local function http_options(w)
  local opts = { timeout = w.timeout, connect_timeout = w.connect_timeout, insecure = w.insecure,
    max_body = w.max_body }
  local host = w.host
  local v6 = host:byte(1) == 91 and host:match("^%[(.*)%]$") -- "[v6 address]"
  if v6 then
    opts.address, opts.server_name = v6, v6
  elseif host == "localhost" then
    -- cosockets resolve through nginx's `resolver`, which does not read /etc/hosts;
    -- localhost is the loopback address whatever a resolver says (RFC 6761)
    opts.address = "127.0.0.1"
  end
  return opts
end

-- The requests whose attempt is being sent (weak keys): a task cancelled meanwhile may have run.
local sending = setmetatable({}, { __mode = "k" })

-- The tokens that threads carrying a request hold for attempts not sent yet: the thread ->
-- what gives its token back. nginx may end a thread while it waits for its turn (its request or
-- timer ended, its client went away under lua_check_client_abort, a kill), and no code of that
-- thread runs then: the next reservation in this worker gives back what a dead thread held, so
-- the requests after it do not wait for a turn no one takes. Strong keys: a dead thread stays
-- here until then.
local held = {}

-- Whether a light thread has ended: "zombie" (OpenResty's) until its parent waits for it.
local function ended(co)
  local status = coroutine.status(co)
  return status == "dead" or status == "zombie"
end

local function reclaim()
  for co, give_back in pairs(held) do
    if ended(co) then
      held[co] = nil
      give_back()
    end
  end
end

-- A task whose light thread nginx ended (its request or timer ended, ngx.exit, a client gone
-- under lua_check_client_abort) without its end being recorded: cancelled now, so that joins,
-- counts and client:run do not wait for it.
local function settle(task)
  local thread = task._thread
  if task._status == "running" and thread and ended(thread) then
    finish(task, "cancelled", nil, Error.new { code = "cancelled", retryable = false,
      message = "nginx ended the task's light thread (the request or timer it belonged to ended)",
      may_have_run = task._req and sending[task._req] or nil })
  end
end

-- Carries a request built by loop.submit to its end: admission, attempts, retries.
-- The trace hook sees each step's events as the libcurl loop's do (fly.trace).
local function carry(client, req)
  local key, rate, burst, margin = req:_rate()
  -- whether the request holds a token of its bucket for an attempt not sent yet: given back
  -- when that attempt never goes out (the request ended while it waited, or its connection
  -- could not be made)
  local holds = false
  local co = coroutine.running()
  local function give_back()
    held[co] = nil
    if holds then buckets_of(client):refund(key, rate, burst) end
    holds = false
  end
  local function admit(penalize)
    reclaim()
    local wait, took = bucket_wait(client, req, key, rate, burst, margin, penalize)
    holds = took
    if took then held[co] = give_back end
    req:_admit(wait)
  end
  if key and not done_fn(req) then admit(false) end
  drain(client)
  local ok, failure = pcall(function() -- a cancel raises out of a sleep: the token goes back
    while not done_fn(req) do
      sleep(req:_ready_at() - now())
      if done_fn(req) then break end -- cancelled while it waited
      -- woken late (or a slow trace hook): past the deadline, or a retry with less time left
      -- than the attempt before it took, ends here instead of going out
      if req:_admit(0) == "done" then break end
      local w = req:_wire()
      sending[req] = true -- from here a cancel may leave it running on the server
      held[co] = nil -- and a thread ended meanwhile may have used its token
      local res, err = http.send(w, http_options(w)) -- the phase was checked by loop.submit
      sending[req] = nil
      if res or err.sent then holds = false end -- it may have reached the server: used
      give_back()
      local verdict, bucket, _
      if res then
        verdict, _, bucket = req:_complete(res.status, res.headers, res.body)
      else
        verdict, _, bucket = req:_failed(err.code, err.message, err.sent, err.status)
      end
      if verdict == "done" then
        -- a 429 that is the answer empties the bucket all the same, taking no token
        if bucket == "penalize" then buckets_of(client):penalize(key, rate, burst, margin, 0) end
      elseif bucket then
        admit(bucket == "penalize")
      end
      drain(client)
      check_cancelled()
    end
  end)
  give_back()
  if not ok then error(failure, 0) end
  drain(client) -- what ended it while it waited (a giveup)
  return req
end

--- Builds a call (programmer errors raised at `level`, as `error` counts from the caller of
-- this function): the request `loop.await` carries.
function loop.submit(client, op, params, opts, level)
  phase.check(level + 1)
  return build(client, op, params, opts, level + 1, true)
end

--- Carries a request built by `loop.submit` until it is done: over cosockets, waiting with
-- `ngx.sleep`. Inside a task, cancelling the task abandons the request.
-- @return the request
function loop.await(client, req)
  local task = loop.current(client)
  if task then task._req = req end
  carry(client, req)
  if task then task._req, task._made_call = nil, true end -- (see client:map)
  return req
end

--- Sleeps without blocking the worker.
function loop.sleep(_, seconds)
  phase.check(user_level())
  sleep(seconds)
end

--- The task running the current light thread for this client, if any.
function loop.current(client)
  local task = running_task()
  if task and task.client == client then return task end
end

local next_id = 0

-- The body of a task's light thread.
local function run(task, fn, args)
  task_of[coroutine.running()] = task
  local function traceback(err)
    if err ~= CANCELLED then task.traceback = debug.traceback(tostring(err), 2) end
    return err
  end
  local res = pack(xpcall(function() return fn(unpack(args, 1, args.n)) end, traceback))
  if res[1] then
    finish(task, "done", unpack(res, 2, res.n))
  else
    local err = res[2]
    finish(task, "failed", nil, Error.new { code = "task_failed", message = tostring(err), cause = err })
  end
end

--- Starts `fn(...)` as a task: a light thread of the current request or timer.
function loop.spawn(client, fn, ...)
  phase.check(user_level())
  next_id = next_id + 1
  local task = setmetatable({ client = client, _status = "running", _id = next_id, _joiners = {} }, Task)
  local st = state(client)
  st.tasks[task] = true
  st.count = st.count + 1
  task._parent = coroutine.running() -- the only thread that may wait for (and so free) its thread
  local thread, err = ngx.thread.spawn(run, task, fn, pack(...))
  if not thread then
    finish(task, "failed", nil, Error.new { code = "task_failed", message = tostring(err) })
  end
  task._thread = thread
  return task
end

--- Waits for the task to finish (at most `timeout` seconds) and returns its result.
function Task:join(timeout)
  task_base.check_self(self, "join")
  task_base.check_join(self, timeout, running_task())
  if self._status == "running" then phase.check(user_level()) end
  local deadline = timeout and (now() + timeout)
  settle(self)
  while self._status == "running" do
    local left = deadline and (deadline - now()) or 60
    if left <= 0 then return nil, task_base.timeout() end
    -- a semaphore for this wait alone: the end of the task posts it, and so does a cancel of
    -- the joiner, which then wakes this joiner and no other
    local sema = new_semaphore()
    self._joiners[sema] = true
    local me = running_task()
    if me then me._waits_on = sema end
    sema:wait(math.min(left, 60))
    if me then me._waits_on = nil end
    self._joiners[sema] = nil
    check_cancelled()
    settle(self)
  end
  -- nginx keeps an ended light thread (and what it holds) until its parent waits for it or the
  -- request ends: the parent joining it frees it, so a long handler or timer does not pile them up
  local thread = self._thread
  if thread and self._parent == coroutine.running() and ended(thread) then
    self._thread = nil
    pcall(ngx.thread.wait, thread)
  end
  return self:result()
end

-- Cancels a task (see Task:cancel), without stopping the one running.
local function cancel(self)
  if self._status ~= "running" then return false end
  local req = self._req
  local was_sending = req and sending[req]
  if req then req:cancel() end
  local err = task_base.cancelled(req, was_sending)
  finish(self, "cancelled", nil, err)
  local thread = self._thread
  if thread and task_of[coroutine.running()] ~= self then
    -- only the thread that spawned it may kill it (and not in every phase); otherwise it stops
    -- at once if it sleeps or waits for a join, else when its exchange in flight ends
    local ok, killed = pcall(ngx.thread.kill, thread)
    if ok and killed then
      reclaim() -- a token it held for an attempt not sent goes back
    elseif self._waits_on then
      self._waits_on:post(1)
    end
  end
  task_base.run_cascade(self, err) -- the tasks that go with it (map's workers)
  -- what the task left to clean up (a lease to release, …) runs as tasks of its own
  local cleanups = self._on_cancel
  self._on_cancel = nil
  if cleanups and phase.cosockets() then
    for _, fn in pairs(cleanups) do loop.spawn(self.client, fn) end
  end
  return true
end

--- Cancels the task: its request is abandoned and it never runs again. A task that this
-- cancels itself (or with the task it goes with) stops here: the cancel raises in it.
-- @treturn boolean false when it had finished already
function Task:cancel()
  task_base.check_self(self, "cancel")
  return task_base.cancel(self, cancel, check_cancelled)
end

-- Cleanups a cancelled task can no longer do itself (task_base.on_cancel): each runs as a task of
-- its own.
loop.on_cancel, loop.off_cancel = task_base.on_cancel, task_base.off_cancel

--- Cancels every task of a client (when it closes), but for shielded ones unless `all`.
function loop.cancel_all(client, all)
  local st = client:_state().ngx_loop
  if st then task_base.cancel_all(st.tasks, cancel, all) end
end

--- Makes a task one of the library's own (task_base.background).
function loop.background(client, task) task_base.background(state(client), task) end

loop.shield = task_base.shield

-- Settles every task of the client's state whose light thread nginx ended.
local function settle_all(st)
  for task in pairs(st.tasks) do settle(task) end
end

--- Waits until a task of the client finishes or `wait` seconds pass (0: lets the other
-- light threads run once).
-- @return the number of unfinished tasks
function loop.drive(client, wait)
  local st = state(client)
  settle_all(st)
  if st.count - st.background == 0 then return 0 end
  phase.check(user_level())
  if not wait or wait <= 0 then
    ngx.sleep(0)
  else
    st.sema = st.sema or new_semaphore()
    st.waiting = st.waiting + 1
    st.sema:wait(wait)
    st.waiting = st.waiting - 1
  end
  check_cancelled()
  return st.count - st.background
end

--- The number of unfinished tasks, the library's own counted too when `all`.
function loop.count(client, all)
  local st = client:_state().ngx_loop
  if not st then return 0 end
  settle_all(st)
  return all and st.count or st.count - st.background
end

--- Whether some task can run right now (light threads run as soon as they can).
function loop.has_ready()
  return false
end

return loop
